//! The models in memory: one loaded engine per served revision, swapped atomically when the
//! updater says what to serve. The previous engine stays loaded while a candidate is on trial,
//! so a rollback is a pointer swap.

use std::collections::HashMap;
use std::fs;
use std::sync::{Arc, RwLock};

use mint_updater::updater::InstalledModel;

use crate::engine::{Engine, EngineError};

/// A verified model, loaded.
pub struct LoadedModel {
    /// What is loaded.
    pub installed: InstalledModel,
    /// The engine, built from bytes hashed in memory right before parsing.
    pub engine: Engine,
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The model file is missing from the store entry.
    #[error("model {name}: no model file in the manifest")]
    NoModelFile {
        /// Model name.
        name: String,
    },
    /// The model file cannot be read.
    #[error("model {name}: cannot read {path}: {source}")]
    Read {
        /// Model name.
        name: String,
        /// File.
        path: String,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// The engine refused the bytes.
    #[error("model {name}: {source}")]
    Engine {
        /// Model name.
        name: String,
        /// Engine error.
        #[source]
        source: EngineError,
    },
}

/// Loads a stored model: reads its bytes, checks their digest, parses them.
pub fn load(installed: &InstalledModel) -> Result<LoadedModel, LoadError> {
    let name = installed.name.clone();
    let file = installed
        .manifest
        .model_file()
        .ok_or_else(|| LoadError::NoModelFile { name: name.clone() })?;
    let path = installed.dir.join(&file.path);
    let bytes = fs::read(&path).map_err(|source| LoadError::Read {
        name: name.clone(),
        path: path.display().to_string(),
        source,
    })?;
    let engine = Engine::load_verified(&bytes, &file.sha256)
        .map_err(|source| LoadError::Engine { name, source })?;
    Ok(LoadedModel {
        installed: installed.clone(),
        engine,
    })
}

/// What is served, by model name, plus a cache of loaded revisions by digest.
#[derive(Default)]
pub struct Registry {
    serving: RwLock<HashMap<String, Arc<LoadedModel>>>,
    loaded: RwLock<HashMap<String, Arc<LoadedModel>>>,
}

impl Registry {
    /// The model served under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.serving
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
    }

    /// Every served model.
    pub fn all(&self) -> Vec<Arc<LoadedModel>> {
        let mut v: Vec<_> = self
            .serving
            .read()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.installed.name.cmp(&b.installed.name));
        v
    }

    /// The loaded revision with this digest, loading it if needed.
    pub fn load(&self, installed: &InstalledModel) -> Result<Arc<LoadedModel>, LoadError> {
        if let Some(m) = self
            .loaded
            .read()
            .expect("registry lock")
            .get(&installed.rev.digest)
        {
            return Ok(m.clone());
        }
        let model = Arc::new(load(installed)?);
        self.loaded
            .write()
            .expect("registry lock")
            .insert(installed.rev.digest.clone(), model.clone());
        Ok(model)
    }

    /// Switches what `name` serves (None: nothing).
    pub fn serve(&self, name: &str, model: Option<&InstalledModel>) -> Result<(), LoadError> {
        match model {
            Some(installed) => {
                let loaded = self.load(installed)?;
                self.serving
                    .write()
                    .expect("registry lock")
                    .insert(name.to_owned(), loaded);
            }
            None => {
                self.serving.write().expect("registry lock").remove(name);
            }
        }
        Ok(())
    }

    /// Drops loaded revisions that are neither served nor in `keep` (digests).
    pub fn retain(&self, keep: &[String]) {
        let serving: Vec<String> = self
            .serving
            .read()
            .expect("registry lock")
            .values()
            .map(|m| m.installed.rev.digest.clone())
            .collect();
        self.loaded
            .write()
            .expect("registry lock")
            .retain(|digest, _| serving.contains(digest) || keep.contains(digest));
    }
}
