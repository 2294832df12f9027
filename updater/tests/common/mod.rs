//! Shared fixtures for the updater's tests: real bundles built by `build_bundle`, a real
//! state directory and database in a temporary directory, and two test doubles standing for
//! the daemon's side (the tract health probe and the attest measurer live in the daemon).
//!
//! The probe decides by the model's bytes, so that a model behaves the same across restarts:
//! `BAD…` fails its golden case, `HANG…` never answers (within the test), `SLOW…` reports a
//! latency above the budget, anything else passes.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mint_updater::bundle::write::{build_bundle, BuildOptions, FileSource, Source};
use mint_updater::manifest::{
    DataType, FileRole, GuardSettings, HealthCheck, TensorSpec, FORMAT_VERSION,
};
use mint_updater::updater::{
    HealthProbe, HealthReport, InstallOutcome, InstalledModel, Measurer, UpdateError, Updater,
    UpdaterConfig,
};
use mint_updater::{LifecycleEvent, Limits, Manifest, OperatorKey, TrustStore};

/// Every serve callback: (model, digest served or None).
pub type ServeLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A bundle to build.
#[derive(Clone)]
pub struct Spec {
    pub name: String,
    pub version: String,
    pub sequence: u64,
    /// Model bytes start with this (see the module docs for the probe's behaviour).
    pub behaviour: &'static str,
    pub trial_requests: u32,
    pub trial_seconds: u32,
    pub max_error_rate: f64,
    pub created: i64,
    pub expires: Option<i64>,
    pub extra_files: Vec<(String, Vec<u8>)>,
}

impl Spec {
    pub fn new(name: &str, sequence: u64) -> Spec {
        Spec {
            name: name.into(),
            version: format!("1.{sequence}.0"),
            sequence,
            behaviour: "GOOD",
            trial_requests: 5,
            trial_seconds: 3600,
            max_error_rate: 0.2,
            created: now() - 60,
            expires: None,
            extra_files: vec![],
        }
    }

    pub fn behaving(mut self, behaviour: &'static str) -> Spec {
        self.behaviour = behaviour;
        self
    }

    pub fn version(mut self, version: &str) -> Spec {
        self.version = version.into();
        self
    }

    pub fn trial(mut self, requests: u32, seconds: u32) -> Spec {
        self.trial_requests = requests;
        self.trial_seconds = seconds;
        self
    }
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub key: OperatorKey,
    pub trust: TrustStore,
    pub health: Arc<Probe>,
    pub measurer: Arc<CountingMeasurer>,
    /// Every serve callback: (model, digest served or None).
    pub served: ServeLog,
    pub retain: usize,
    pub health_timeout: Duration,
    pub trial_max_restarts: u32,
    pub limits: Limits,
    bundles: AtomicUsize,
}

impl Fixture {
    pub fn new() -> Fixture {
        let key = OperatorKey::generate().unwrap();
        let trust = TrustStore::new([key.public()], 1).unwrap();
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            key,
            trust,
            health: Arc::new(Probe::default()),
            measurer: Arc::new(CountingMeasurer::default()),
            served: Arc::default(),
            retain: 2,
            health_timeout: Duration::from_secs(10),
            trial_max_restarts: 3,
            limits: Limits::default(),
            bundles: AtomicUsize::new(0),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn store(&self) -> PathBuf {
        self.state_dir().join("store")
    }

    pub fn staging(&self) -> PathBuf {
        self.state_dir().join("staging")
    }

    pub fn config(&self) -> UpdaterConfig {
        let served = self.served.clone();
        UpdaterConfig {
            state_dir: self.state_dir(),
            trust: self.trust.clone(),
            limits: self.limits,
            device_targets: vec!["test-board".into(), "x86_64".into()],
            retain: self.retain,
            health_timeout: self.health_timeout,
            trial_max_restarts: self.trial_max_restarts,
            trial_cap: (u32::MAX, u32::MAX),
            on_serve: Some(Box::new(
                move |name: &str, model: Option<&InstalledModel>| {
                    served
                        .lock()
                        .unwrap()
                        .push((name.to_owned(), model.map(|m| m.rev.digest.clone())));
                },
            )),
        }
    }

    pub fn open(&self) -> Updater {
        Updater::open(self.config(), self.health.clone(), self.measurer.clone()).unwrap()
    }

    /// Builds a signed bundle file.
    pub fn bundle(&self, spec: &Spec) -> PathBuf {
        self.bundle_signed(spec, &[&self.key])
    }

    pub fn bundle_signed(&self, spec: &Spec, keys: &[&OperatorKey]) -> PathBuf {
        let n = self.bundles.fetch_add(1, Ordering::SeqCst);
        let out = self
            .dir
            .path()
            .join(format!("{}-{}-{n}.mint", spec.name, spec.version));
        let mut model =
            format!("{} model {} {}\n", spec.behaviour, spec.name, spec.version).into_bytes();
        model.extend((0..100_000u32).map(|i| (i % 251) as u8));
        let mut sources = vec![FileSource {
            path: "model.onnx".into(),
            role: FileRole::Model,
            data: Source::Bytes(model),
        }];
        for (path, data) in &spec.extra_files {
            sources.push(FileSource {
                path: path.clone(),
                role: FileRole::Other,
                data: Source::Bytes(data.clone()),
            });
        }
        let manifest = Manifest {
            format: FORMAT_VERSION,
            name: spec.name.clone(),
            version: spec.version.clone(),
            sequence: spec.sequence,
            created: spec.created,
            expires: spec.expires,
            targets: vec!["test-board".into()],
            files: vec![],
            inputs: vec![TensorSpec {
                name: "input".into(),
                datatype: DataType::FP32,
                shape: vec![-1, 16],
                range: None,
            }],
            outputs: vec![TensorSpec {
                name: "output".into(),
                datatype: DataType::FP32,
                shape: vec![-1, 4],
                range: None,
            }],
            health: HealthCheck {
                trial_requests: spec.trial_requests,
                trial_seconds: spec.trial_seconds,
                max_error_rate: spec.max_error_rate,
                latency_budget_ms: 1000,
                ..HealthCheck::default()
            },
            guard: GuardSettings::default(),
            reference: None,
        };
        let options = BuildOptions {
            threads: 0,
            ..BuildOptions::default()
        };
        build_bundle(manifest, &sources, keys, &out, options, &mut |_, _| {}).unwrap();
        out
    }

    /// Store entries (digests) on disk.
    pub fn store_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.store())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    pub fn staging_entries(&self) -> Vec<PathBuf> {
        fs::read_dir(self.staging())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    pub fn last_served(&self, name: &str) -> Option<Option<String>> {
        self.served
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
    }
}

pub fn install(updater: &Updater, bundle: &Path) -> Result<InstallOutcome, UpdateError> {
    let mut file = std::io::BufReader::new(fs::File::open(bundle).unwrap());
    updater.install(&mut file, &mut |_| {})
}

pub fn on_trial(outcome: InstallOutcome) -> InstalledModel {
    match outcome {
        InstallOutcome::OnTrial(m) => m,
        other => panic!("expected OnTrial, got {other:?}"),
    }
}

/// Installs and commits through the trial's requests.
pub fn install_committed(updater: &Updater, bundle: &Path) -> InstalledModel {
    let model = on_trial(install(updater, bundle).unwrap());
    let requests = model.manifest.health.trial_requests;
    for _ in 0..requests {
        updater.record_request(&model.name, true);
    }
    let record = updater
        .models()
        .into_iter()
        .find(|r| r.name == model.name)
        .unwrap();
    assert_eq!(
        record.committed.as_ref().map(|r| &r.digest),
        Some(&model.rev.digest),
        "not committed: {record:?}"
    );
    model
}

pub fn kinds(events: &[LifecycleEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

pub fn record(updater: &Updater, name: &str) -> mint_updater::ModelRecord {
    updater
        .models()
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no record for {name}"))
}

/// The health probe double, deciding by the model's first bytes.
#[derive(Default)]
pub struct Probe {
    pub calls: AtomicUsize,
    /// Fail every model (a device whose engine broke between two starts).
    pub fail_all: std::sync::atomic::AtomicBool,
}

impl HealthProbe for Probe {
    fn check(&self, model: &InstalledModel) -> Result<HealthReport, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let file = model.manifest.model_file().ok_or("no model file")?;
        let bytes = fs::read(model.dir.join(&file.path)).map_err(|e| e.to_string())?;
        if self.fail_all.load(Ordering::SeqCst) {
            Err("engine cannot load the model".into())
        } else if bytes.starts_with(b"BAD") {
            Err("golden case #0: output[0] is 0.9, expected 0.1".into())
        } else if bytes.starts_with(b"HANG") {
            std::thread::sleep(Duration::from_secs(30));
            Ok(HealthReport {
                cases: 1,
                worst_latency_ms: 1.0,
            })
        } else if bytes.starts_with(b"SLOW") {
            Ok(HealthReport {
                cases: 1,
                worst_latency_ms: 5000.0,
            })
        } else {
            Ok(HealthReport {
                cases: 1,
                worst_latency_ms: 1.0,
            })
        }
    }
}

/// The measurer double: remembers what it measured, in order.
#[derive(Default)]
pub struct CountingMeasurer {
    pub measured: Mutex<Vec<String>>,
}

impl CountingMeasurer {
    pub fn count(&self, digest: &str) -> usize {
        self.measured
            .lock()
            .unwrap()
            .iter()
            .filter(|d| *d == digest)
            .count()
    }
}

impl Measurer for CountingMeasurer {
    fn measure(&self, model: &InstalledModel) -> Result<(), String> {
        self.measured.lock().unwrap().push(model.rev.digest.clone());
        Ok(())
    }
}
