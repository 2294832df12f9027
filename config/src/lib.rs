//! Typed configuration of mintd: the sections of `mintd.toml`, their built-in defaults, and
//! the validation every loaded file goes through.
//!
//! This crate sits at the bottom of the mintd stack: `updater`, `attest` and `daemon` read
//! their settings from a [`Config`] and never parse TOML themselves.
//!
//! * [`Config::load`] reads the service's file (default [`DEFAULT_CONFIG_PATH`]); a missing
//!   file means built-in defaults. [`Config::load_existing`] is the same for
//!   `mintctl config check FILE`, where a missing file is an error.
//! * Every section denies unknown keys, so a typo like `trust.treshold` is an error naming the
//!   key, its file, line and column, instead of a silently ignored setting.
//! * [`Config::validate`] collects every problem at once ([`ConfigError::Invalid`]), each a
//!   [`Problem`] reading like `trust.threshold = 3 but only 2 keys are listed`.
//! * The file is untrusted input: anything over [`MAX_CONFIG_BYTES`] is refused before it is
//!   read whole, bytes that are not UTF-8 are refused with their position, and the TOML parser
//!   bounds nesting depth, so no input makes loading panic, overflow the stack or allocate
//!   without bound.
//!
//! `config/mintd.toml` in the source tree is the documented example: every key with its
//! default.
//!
//! ```
//! use mint_config::Config;
//!
//! let text = r#"
//! [trust]
//! keys = ["/etc/mintd/alice.pub", "/etc/mintd/bob.pub"]
//! keys_dir = ""
//! threshold = 3
//! "#;
//! let err = Config::from_toml_str(text, "mintd.toml").unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "mintd.toml: invalid configuration: trust.threshold = 3 but only 2 keys are listed"
//! );
//! ```

#![deny(missing_docs)]

use std::io::Read;
use std::path::Path;

mod error;
mod model;
mod parse;
mod validate;

pub use error::{ConfigError, Problem};
pub use model::{
    Api, Attest, AttestMode, Config, Device, Limits, Log, Monitor, Mqtt, Paths, Tls, Trust, Update,
};

/// Where `mintd` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/mintd/mintd.toml";

/// Largest config file accepted, in bytes (1 MiB); larger files are refused unread.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The origin named in errors from [`Config::validate`], which has no file to name.
const UNNAMED_ORIGIN: &str = "configuration";

/// Where a loaded configuration came from, for the log line a daemon writes at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Read from this file.
    File(std::path::PathBuf),
    /// The file did not exist; built-in defaults apply.
    BuiltInDefaults,
}

impl Config {
    /// Load and validate the configuration at `path`. A file that does not exist means
    /// built-in defaults (the service runs without one); any other failure to read it is an
    /// error naming the path.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Self::load_with_source(path).map(|(config, _)| config)
    }

    /// Like [`Config::load`], and also says whether the file existed.
    pub fn load_with_source(path: impl AsRef<Path>) -> Result<(Config, ConfigSource), ConfigError> {
        let path = path.as_ref();
        match Self::load_existing(path) {
            Ok(config) => Ok((config, ConfigSource::File(path.to_owned()))),
            Err(ConfigError::Missing { .. }) => {
                Ok((Config::default(), ConfigSource::BuiltInDefaults))
            }
            Err(err) => Err(err),
        }
    }

    /// Load and validate the configuration at `path`, which must exist
    /// (`mintctl config check FILE`).
    pub fn load_existing(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let bytes = read_bounded(path)?;
        Self::from_toml_bytes(&bytes, &path.display().to_string())
    }

    /// Parse and validate TOML text. `origin` names the text in errors (usually its path).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        parse::check_size(text.len() as u64, origin)?;
        let config = parse::parse(text, origin)?;
        config.validate_as(origin)?;
        Ok(config)
    }

    /// Parse and validate untrusted bytes: the size limit, UTF-8, TOML, then
    /// [`Config::validate`]. `origin` names the bytes in errors.
    pub fn from_toml_bytes(bytes: &[u8], origin: &str) -> Result<Config, ConfigError> {
        parse::check_size(bytes.len() as u64, origin)?;
        let text = parse::utf8(bytes, origin)?;
        Self::from_toml_str(text, origin)
    }

    /// Check every rule and report all problems found, not just the first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_as(UNNAMED_ORIGIN)
    }

    /// Every problem [`Config::validate`] would report; empty when the configuration is valid.
    pub fn problems(&self) -> Vec<Problem> {
        validate::problems(self)
    }

    fn validate_as(&self, origin: &str) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                origin: origin.to_owned(),
                problems,
            })
        }
    }

    /// The configuration as pretty TOML that [`Config::from_toml_str`] reads back to an equal
    /// value (`mintctl config check --print`). Optional settings that are not set are left out.
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string_pretty(self).map_err(|source| ConfigError::Render { source })
    }
}

/// Read at most [`MAX_CONFIG_BYTES`] of `path`, refusing a larger file before reading it and
/// a file that turns out larger while read (a growing file, a device node).
fn read_bounded(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let io_error = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => ConfigError::Missing {
            path: path.to_owned(),
        },
        _ => ConfigError::Io {
            path: path.to_owned(),
            source,
        },
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let declared = file.metadata().map_err(io_error)?.len();
    let origin = path.display().to_string();
    parse::check_size(declared, &origin)?;

    let mut bytes = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    parse::check_size(bytes.len() as u64, &origin)?;
    Ok(bytes)
}
