//! The device side of an update: the thin IO shell around the pure [`lifecycle`].
//!
//! [`Updater::install`] verifies a bundle as a stream ([`read_header`], then [`unpack`] into
//! `staging/<unique>/`), moves it into the content-addressed store (`store/<manifest
//! sha256>/`: fsync of every file and of the staging directory, one atomic `rename`, fsync
//! of `store/`), and then drives the lifecycle: measure → activate (serve) → health check →
//! trial. Each transition's record and events are committed to the state database
//! (`mintd.redb`) in one durable transaction BEFORE its actions are performed, so a daemon
//! killed at any instant finds on restart ([`Updater::open`]) either the old committed
//! model or the new verified one, and resumes or rolls back.
//!
//! Layout under `state_dir`:
//! ```text
//! staging/<unique>/         a bundle being verified; removed on failure and at open
//! store/<digest>/           verified files + manifest.cbor + header.cose
//! mintd.redb                the state database
//! ```
//!
//! What is served is told to the daemon through [`UpdaterConfig::on_serve`] (called
//! synchronously for every `Serve` action, including those of recovery inside
//! [`Updater::open`]) and, for other listeners, [`Updater::subscribe`].
//!
//! Locks: one install at a time (`install`), and one transition at a time (`transitions`,
//! held while a transition's actions run, including the health check). Trial accounting
//! ([`Updater::record_request`]) and [`Updater::tick`] never wait for a transition: requests
//! are queued and counted as soon as no transition runs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, TryLockError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::bundle::verify::{read_header, unpack, Limits, Policy, Sink, VerifiedHeader};
use crate::error::{BundleError, Check};
use crate::integrity;
use crate::keys::TrustStore;
use crate::lifecycle::{
    self, severity, Action, Event, LifecycleError, LifecycleEvent, ModelRecord, Phase, Revision,
    TrialPolicy,
};
use crate::manifest::{HealthCheck, Manifest};
use crate::state::{StateDb, StateError};

/// File name of the state database under `state_dir`.
pub const DB_FILE: &str = "mintd.redb";
/// Directory of bundles being verified, under `state_dir`.
pub const STAGING_DIR: &str = "staging";
/// Directory of the content-addressed store, under `state_dir`.
pub const STORE_DIR: &str = "store";
/// The authenticated manifest bytes in a store entry.
pub const MANIFEST_FILE: &str = "manifest.cbor";
/// The signed header bytes in a store entry.
pub const HEADER_FILE: &str = "header.cose";

/// Requests queued per model while a transition runs; more are not counted.
const MAX_PENDING_REQUESTS: usize = 100_000;

/// The daemon's health check of an activated candidate (golden cases through the engine).
pub trait HealthProbe: Send + Sync {
    /// Runs the check; `Err` says why the model is unhealthy. Runs on its own thread and is
    /// abandoned after [`UpdaterConfig::health_timeout`].
    fn check(&self, model: &InstalledModel) -> Result<HealthReport, String>;
}

/// What a passed health check measured.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    /// Golden cases run.
    pub cases: usize,
    /// Slowest case, milliseconds (checked against the manifest's latency budget).
    pub worst_latency_ms: f64,
}

/// Measures a revision before it is served (PCR extend and measurement log, in the daemon).
pub trait Measurer: Send + Sync {
    /// Measures `model`; `Err` says why it could not be.
    fn measure(&self, model: &InstalledModel) -> Result<(), String>;
}

/// A revision in the store, with its authenticated manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct InstalledModel {
    /// Model name.
    pub name: String,
    /// The revision.
    pub rev: Revision,
    /// Its store directory, `store/<digest>`.
    pub dir: PathBuf,
    /// Its manifest (read from the store and checked against the digest).
    pub manifest: Manifest,
}

/// What one re-verification of the store found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCheck {
    /// Entries found intact.
    pub intact: usize,
    /// Entries newly found tampered (digests).
    pub tampered: Vec<String>,
    /// Bytes read.
    pub bytes: u64,
    /// Whether the check was stopped before the end.
    pub stopped: bool,
}

/// Called for every `Serve` action: what the daemon must serve for this model now.
pub type ServeCallback = Box<dyn Fn(&str, Option<&InstalledModel>) + Send + Sync>;

/// Everything the updater needs, every path under `state_dir`.
pub struct UpdaterConfig {
    /// Root of the store, staging area and database.
    pub state_dir: PathBuf,
    /// Trusted keys and threshold.
    pub trust: TrustStore,
    /// Size bounds for verification.
    pub limits: Limits,
    /// This device's target names (class, architecture).
    pub device_targets: Vec<String>,
    /// Previously committed revisions kept for operator rollback.
    pub retain: usize,
    /// Longest a health check may run before the candidate is rolled back.
    pub health_timeout: Duration,
    /// Restarts during a trial that roll the candidate back.
    pub trial_max_restarts: u32,
    /// Device-side caps on the trial window the manifest asks for (requests, seconds): a
    /// device can shorten how long it stays on trial, never lengthen what the operator signed.
    pub trial_cap: (u32, u32),
    /// Told synchronously of every `Serve` action, including recovery inside
    /// [`Updater::open`]. It runs while the updater holds its transition lock: it may call
    /// [`Updater::serving`], [`Updater::models`], [`Updater::record_request`], but not
    /// [`Updater::install`], [`Updater::rollback`] (they would wait for themselves).
    pub on_serve: Option<ServeCallback>,
}

impl std::fmt::Debug for UpdaterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpdaterConfig")
            .field("state_dir", &self.state_dir)
            .field("trust", &self.trust)
            .field("limits", &self.limits)
            .field("device_targets", &self.device_targets)
            .field("retain", &self.retain)
            .field("health_timeout", &self.health_timeout)
            .field("trial_max_restarts", &self.trial_max_restarts)
            .field("trial_cap", &self.trial_cap)
            .field("on_serve", &self.on_serve.as_ref().map(|_| "callback"))
            .finish()
    }
}

/// A change of what is served, as sent to [`Updater::subscribe`]rs.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeChange {
    /// Model name.
    pub name: String,
    /// What to serve (`None`: nothing).
    pub model: Option<InstalledModel>,
}

/// How an install ended.
#[derive(Debug, Clone)]
pub enum InstallOutcome {
    /// Committed: only when the manifest's trial window is empty (0 requests or 0 seconds).
    Committed(InstalledModel),
    /// Serving, health check passed, trial running.
    OnTrial(InstalledModel),
    /// The same revision is already committed or the candidate; nothing was read past the
    /// header.
    AlreadyInstalled(InstalledModel),
    /// The new revision failed (measurement or health check) and was rolled back.
    RolledBack {
        /// What is served now.
        to: Option<InstalledModel>,
        /// Why the new revision failed.
        reason: String,
    },
}

/// Why an update operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The bundle was refused by a verification check.
    #[error("bundle refused by the {check} check: {source}", check = .0.check(), source = .0)]
    Bundle(#[from] BundleError),
    /// This revision failed before and is not installed again.
    #[error(
        "model {name}: revision {digest} is quarantined ({reason}); a newer sequence is needed"
    )]
    Quarantined {
        /// Model name.
        name: String,
        /// Manifest digest.
        digest: String,
        /// Why it was rolled back.
        reason: String,
    },
    /// Another install or transition is in progress, or the model has a candidate on trial.
    #[error("busy{}: {reason}", name.as_ref().map(|n| format!(" (model {n})")).unwrap_or_default())]
    Busy {
        /// The model concerned, if one.
        name: Option<String>,
        /// What is in progress.
        reason: String,
    },
    /// The model store could not be read or written.
    #[error("model store: {context}: {source}")]
    Store {
        /// What was being done, naming the path.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The state database failed.
    #[error("{0}")]
    Db(String),
    /// The lifecycle refused an event.
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    /// Rollback asked with no candidate and no previous committed revision.
    #[error(
        "model {name}: nothing to roll back to (no candidate and no previously committed revision)"
    )]
    NoRollbackTarget {
        /// Model name.
        name: String,
    },
    /// No such model.
    #[error("no model named {name:?} is installed")]
    UnknownModel {
        /// Model name.
        name: String,
    },
}

impl UpdateError {
    /// The verification check that refused the bundle, for [`UpdateError::Bundle`].
    pub fn check(&self) -> Option<Check> {
        match self {
            UpdateError::Bundle(e) => Some(e.check()),
            _ => None,
        }
    }

    /// Stable name of what refused an install, as recorded in `install_refused` events:
    /// a [`Check`] name, `quarantine`, `busy`, `store`, `db` or `lifecycle`.
    pub fn refusal(&self) -> &'static str {
        match self {
            UpdateError::Bundle(e) => e.check().name(),
            UpdateError::Quarantined { .. } => "quarantine",
            UpdateError::Busy { .. } => "busy",
            UpdateError::Store { .. } => "store",
            UpdateError::Db(_) => "db",
            UpdateError::Lifecycle(_) => "lifecycle",
            UpdateError::NoRollbackTarget { .. } | UpdateError::UnknownModel { .. } => "model",
        }
    }

    fn store(context: impl Into<String>, source: io::Error) -> Self {
        UpdateError::Store {
            context: context.into(),
            source,
        }
    }
}

impl From<StateError> for UpdateError {
    fn from(e: StateError) -> Self {
        UpdateError::Db(e.to_string())
    }
}

/// Records the updater keeps in memory ahead of the database (trial counters only) since the
/// last flush.
type Dirty = BTreeSet<String>;

/// The device's updater. `Send + Sync`: share it in an `Arc`.
pub struct Updater {
    config: UpdaterConfig,
    db: StateDb,
    probe: Arc<dyn HealthProbe>,
    measurer: Arc<dyn Measurer>,
    /// One install at a time.
    install: Mutex<()>,
    /// One transition at a time; the set of records newer in memory than in the database.
    transitions: Mutex<Dirty>,
    /// Every record (written only while `transitions` is held).
    records: RwLock<BTreeMap<String, ModelRecord>>,
    /// What the last `Serve` action said, per model.
    served: RwLock<BTreeMap<String, InstalledModel>>,
    /// Manifests read from the store, by digest.
    manifests: Mutex<HashMap<String, Manifest>>,
    /// Store entries that failed re-verification: never loaded again.
    tampered: RwLock<HashSet<String>>,
    /// Trial requests not counted yet, per model.
    pending: Mutex<BTreeMap<String, Vec<bool>>>,
    subscribers: Mutex<Vec<Sender<ServeChange>>>,
}

impl std::fmt::Debug for Updater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Updater")
            .field("state_dir", &self.config.state_dir)
            .finish_non_exhaustive()
    }
}

impl Updater {
    /// Opens the state under `config.state_dir`: removes stale staging directories, opens
    /// the database, then feeds [`Event::Restarted`] to every model and performs the actions
    /// (serve the committed revision, resume a candidate, re-run a pending health check, or
    /// count a restart during a trial and roll back at the limit), and finally deletes store
    /// entries no record references (left by a crash between the rename and the commit).
    pub fn open(
        config: UpdaterConfig,
        probe: Arc<dyn HealthProbe>,
        measurer: Arc<dyn Measurer>,
    ) -> Result<Updater, UpdateError> {
        let state_dir = config.state_dir.clone();
        let store = state_dir.join(STORE_DIR);
        let staging = state_dir.join(STAGING_DIR);
        for dir in [&state_dir, &store, &staging] {
            fs::create_dir_all(dir)
                .map_err(|e| UpdateError::store(format!("creating {}", dir.display()), e))?;
        }
        remove_stale_staging(&staging)?;
        sync_dir(&state_dir)?;
        let db = StateDb::open(&state_dir.join(DB_FILE))?;
        let records: BTreeMap<_, _> = db.all()?.into_iter().map(|r| (r.name.clone(), r)).collect();
        let names: Vec<String> = records.keys().cloned().collect();
        let tampered: HashSet<String> = db.tampered()?.into_iter().map(|(d, _)| d).collect();
        let updater = Updater {
            config,
            db,
            probe,
            measurer,
            install: Mutex::new(()),
            transitions: Mutex::new(Dirty::new()),
            records: RwLock::new(records),
            served: RwLock::new(BTreeMap::new()),
            manifests: Mutex::new(HashMap::new()),
            tampered: RwLock::new(tampered),
            pending: Mutex::new(BTreeMap::new()),
            subscribers: Mutex::new(Vec::new()),
        };
        {
            let mut dirty = lock(&updater.transitions);
            for name in &names {
                updater.drive(&mut dirty, name, Event::Restarted, Vec::new())?;
            }
            updater.collect_garbage(&mut dirty);
        }
        Ok(updater)
    }

    /// Installs a bundle read from `input`, waiting for an install in progress to finish.
    ///
    /// Verifies the header (signatures, expiry against the later of the clock and the trusted
    /// time, target); returns [`InstallOutcome::AlreadyInstalled`] without reading the payload
    /// if the revision is committed or the candidate; refuses a quarantined revision, then a
    /// sequence not above the highest accepted, then a model with a candidate still pending.
    /// Then unpacks into staging (`progress` counts plain bytes), moves it into the store,
    /// and drives the lifecycle until the revision is on trial or rolled back. A refusal is
    /// recorded as an `install_refused` event naming the check.
    pub fn install(
        &self,
        input: &mut (dyn Read + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<InstallOutcome, UpdateError> {
        let _one = lock(&self.install);
        self.install_locked(input, progress)
    }

    /// [`Updater::install`], but [`UpdateError::Busy`] at once if another install runs.
    pub fn try_install(
        &self,
        input: &mut (dyn Read + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<InstallOutcome, UpdateError> {
        let _one = match self.install.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(self.refuse(
                    None,
                    UpdateError::Busy {
                        name: None,
                        reason: "another install is in progress".into(),
                    },
                ))
            }
        };
        self.install_locked(input, progress)
    }

    /// What is served for `name`: the candidate once activated, else the committed revision
    /// (exactly what the last `Serve` action said).
    pub fn serving(&self, name: &str) -> Option<InstalledModel> {
        read(&self.served).get(name).cloned()
    }

    /// Every model's record.
    pub fn models(&self) -> Vec<ModelRecord> {
        read(&self.records).values().cloned().collect()
    }

    /// Counts a finished request for trial accounting; may commit or roll back the
    /// candidate. Never waits for a transition: the request is queued and counted as soon as
    /// none runs. Requests to a model without a candidate on trial are ignored.
    pub fn record_request(&self, name: &str, ok: bool) {
        if !self.on_trial(name) {
            return;
        }
        {
            let mut pending = lock(&self.pending);
            let queue = pending.entry(name.to_owned()).or_default();
            if queue.len() < MAX_PENDING_REQUESTS {
                queue.push(ok);
            }
        }
        if let Some(mut dirty) = try_lock(&self.transitions) {
            self.count_pending(&mut dirty);
        }
    }

    /// Whether a candidate of `name` is on trial, i.e. whether [`Updater::record_request`]
    /// counts anything (a read lock, no I/O: callers skip handing the count to a blocking
    /// thread when it would not count).
    pub fn on_trial(&self, name: &str) -> bool {
        read(&self.records)
            .get(name)
            .and_then(|r| r.candidate.as_ref())
            .is_some_and(|c| c.phase == Phase::Trial)
    }

    /// Ends trials whose time is up, counts queued requests and persists trial counters.
    /// The daemon calls it every second; it returns at once if a transition runs.
    pub fn tick(&self) {
        let Some(mut dirty) = try_lock(&self.transitions) else {
            return;
        };
        self.count_pending(&mut dirty);
        let on_trial: Vec<String> = read(&self.records)
            .values()
            .filter(|r| {
                r.candidate
                    .as_ref()
                    .is_some_and(|c| c.phase == Phase::Trial)
            })
            .map(|r| r.name.clone())
            .collect();
        for name in on_trial {
            if let Err(e) = self.drive(&mut dirty, &name, Event::Tick, Vec::new()) {
                tracing::warn!(model = %name, error = %e, "trial tick failed");
            }
        }
        self.flush(&mut dirty);
    }

    /// Rolls back `name`: the candidate if there is one (quarantined), else the committed
    /// revision to the newest of the history (the committed one is quarantined). Returns what
    /// is served now.
    pub fn rollback(&self, name: &str) -> Result<Option<InstalledModel>, UpdateError> {
        let mut dirty = lock(&self.transitions);
        let Some(record) = read(&self.records).get(name).cloned() else {
            return Err(UpdateError::UnknownModel { name: name.into() });
        };
        // The revision a rollback would serve: the committed one when a candidate is
        // pending, else the newest of the history. A tampered one is refused up front, so
        // that a rollback never ends with nothing served.
        let target = match &record.candidate {
            Some(_) => record.committed.as_ref(),
            None => record.history.first(),
        };
        if let Some(target) = target.filter(|t| self.is_tampered(&t.digest)) {
            return Err(UpdateError::store(
                format!(
                    "model {name}: rollback target {} ({})",
                    target.version, target.digest
                ),
                io::Error::other(
                    "it failed re-verification (tamper_detected) and is never loaded again",
                ),
            ));
        }
        self.count_pending(&mut dirty);
        match self.drive(&mut dirty, name, Event::RollbackRequested, Vec::new()) {
            Err(UpdateError::Lifecycle(LifecycleError::NoRollbackTarget { name })) => {
                Err(UpdateError::NoRollbackTarget { name })
            }
            Err(e) => Err(e),
            Ok(()) => Ok(self.serving(name)),
        }
    }

    /// Up to `limit` events with an id above `after_id`, oldest first (empty if the database
    /// cannot be read; the error is logged).
    pub fn events_since(&self, after_id: u64, limit: usize) -> Vec<LifecycleEvent> {
        self.db.events_since(after_id, limit).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read events");
            Vec::new()
        })
    }

    /// A receiver of every later [`ServeChange`]; it first receives one change per model
    /// currently served (so nothing served before subscribing is missed).
    pub fn subscribe(&self) -> Receiver<ServeChange> {
        let (tx, rx) = mpsc::channel();
        let mut subscribers = lock(&self.subscribers);
        for (name, model) in read(&self.served).iter() {
            let _ = tx.send(ServeChange {
                name: name.clone(),
                model: Some(model.clone()),
            });
        }
        subscribers.push(tx);
        rx
    }

    /// The state database (read access for tools and tests).
    pub fn state(&self) -> &StateDb {
        &self.db
    }

    /// Reads and checks a bundle's header as [`Updater::install`] does, without installing
    /// and without the install lock: the signatures, the validity window, the device targets,
    /// reserved names, quarantine, rollback, a candidate on trial. `Ok(None)`: an install of
    /// this bundle would go ahead now; `Ok(Some(model))`: it is installed already. A refusal is
    /// recorded (`install_refused`) like an install's. For a download: the header can be
    /// judged as soon as it arrives, and the install lock taken only once the whole file is
    /// here, so a local install is not kept waiting by a slow transfer.
    pub fn check_header(
        &self,
        input: &mut (dyn Read + Send),
    ) -> Result<Option<InstalledModel>, UpdateError> {
        match self.admit(input)? {
            Admission::Installed(model) => Ok(Some(*model)),
            Admission::New { .. } => Ok(None),
        }
    }

    /// The header and the checks before anything is written (see [`Updater::check_header`]).
    fn admit(&self, mut input: &mut (dyn Read + Send)) -> Result<Admission, UpdateError> {
        let policy = Policy {
            trust: &self.config.trust,
            now: unix_now(),
            trusted_time: self.db.trusted_time()?,
            device_targets: Some(self.config.device_targets.clone()),
            min_sequence: None,
            limits: self.config.limits,
        };
        let header = read_header(&mut input, &policy).map_err(|e| self.refuse(None, e.into()))?;
        let manifest = &header.manifest;
        let name = manifest.name.clone();
        let digest = hex::encode(header.manifest_sha256);
        for file in &manifest.files {
            if file.path == MANIFEST_FILE || file.path == HEADER_FILE {
                let e = BundleError::BadPath {
                    path: file.path.clone(),
                    reason: "the name is reserved for the model store's own metadata",
                };
                return Err(self.refuse(Some(&name), e.into()));
            }
        }
        let rev = Revision {
            digest: digest.clone(),
            version: manifest.version.clone(),
            sequence: manifest.sequence,
            created: manifest.created,
            model_sha256: manifest
                .model_file()
                .map(|f| f.sha256.clone())
                .unwrap_or_default(),
        };
        if let Some(record) = self.record(&name) {
            let existing = record
                .committed
                .iter()
                .chain(record.candidate.as_ref().map(|c| &c.rev))
                .find(|r| r.digest == digest);
            if let Some(existing) = existing {
                tracing::info!(model = %name, digest = %digest, "already installed");
                return Ok(Admission::Installed(Box::new(
                    self.installed(&name, existing)?,
                )));
            }
            if let Some(q) = record.quarantine_entry(&digest) {
                let e = UpdateError::Quarantined {
                    name: name.clone(),
                    digest: digest.clone(),
                    reason: q.reason.clone(),
                };
                return Err(self.refuse(Some(&name), e));
            }
            let minimum = record.minimum_sequence();
            if rev.sequence < minimum {
                let e = BundleError::Rollback {
                    name: name.clone(),
                    sequence: rev.sequence,
                    minimum,
                };
                return Err(self.refuse(Some(&name), e.into()));
            }
            if let Some(c) = &record.candidate {
                let e = UpdateError::Busy {
                    name: Some(name.clone()),
                    reason: format!(
                        "candidate {} (sequence {}, digest {}) is in phase {}; install again \
                         once it is committed or rolled back, or roll it back",
                        c.rev.version,
                        c.rev.sequence,
                        c.rev.digest,
                        c.phase.name()
                    ),
                };
                return Err(self.refuse(Some(&name), e));
            }
        }
        Ok(Admission::New {
            header: Box::new(header),
            name,
            digest,
            rev,
        })
    }

    fn install_locked(
        &self,
        input: &mut (dyn Read + Send),
        progress: &mut dyn FnMut(u64),
    ) -> Result<InstallOutcome, UpdateError> {
        let (header, name, digest, rev) = match self.admit(input)? {
            Admission::Installed(model) => return Ok(InstallOutcome::AlreadyInstalled(*model)),
            Admission::New {
                header,
                name,
                digest,
                rev,
            } => (header, name, digest, rev),
        };
        let mut input = input;
        let manifest = &header.manifest;
        let signers: Vec<String> = header.signers.iter().map(|k| k.to_hex()).collect();
        self.record_event(LifecycleEvent::new(
            "install_started",
            severity::INFO,
            Some(&name),
            json!({"digest": digest, "version": rev.version, "sequence": rev.sequence,
                   "signers": signers}),
            unix_ms(),
        ));

        let staging = Staging::create(&self.config.state_dir.join(STAGING_DIR), &digest)
            .map_err(|e| self.fail(&name, e))?;
        let files = unpack(
            &mut input,
            &header,
            &self.config.limits,
            Sink::Directory(&staging.path),
            progress,
        )
        .map_err(|e| self.refuse(Some(&name), e.into()))?;
        staging
            .add_metadata(&header.manifest_cbor, &header.signed_header)
            .map_err(|e| self.fail(&name, e))?;

        // From the rename to the `Stored` commit no garbage collection may run: hold the
        // transition lock.
        let mut dirty = lock(&self.transitions);
        self.move_into_store(staging, &digest)
            .map_err(|e| self.fail(&name, e))?;
        self.db.raise_trusted_time(manifest.created)?;
        lock(&self.manifests).insert(digest.clone(), manifest.clone());
        let verified = LifecycleEvent::new(
            "verified",
            severity::INFO,
            Some(&name),
            json!({"digest": digest, "version": rev.version, "sequence": rev.sequence,
                   "files": files.len(), "bytes": files.iter().map(|f| f.size).sum::<u64>(),
                   "signers": signers}),
            unix_ms(),
        );
        self.drive(&mut dirty, &name, Event::Stored(rev), vec![verified])?;

        let record = self
            .record(&name)
            .unwrap_or_else(|| ModelRecord::new(&name));
        if let Some(c) = record.candidate.as_ref().filter(|c| c.rev.digest == digest) {
            return Ok(InstallOutcome::OnTrial(self.installed(&name, &c.rev)?));
        }
        if let Some(committed) = record.committed.as_ref().filter(|r| r.digest == digest) {
            return Ok(InstallOutcome::Committed(self.installed(&name, committed)?));
        }
        let reason = record
            .quarantine_entry(&digest)
            .map_or_else(|| "rolled back".to_owned(), |q| q.reason.clone());
        Ok(InstallOutcome::RolledBack {
            to: self.serving(&name),
            reason,
        })
    }

    /// Renames the staging directory to `store/<digest>` (or keeps an existing entry).
    fn move_into_store(&self, mut staging: Staging, digest: &str) -> Result<(), UpdateError> {
        let store = self.config.state_dir.join(STORE_DIR);
        let target = store.join(digest);
        if target.exists() {
            // Content-addressed: the entry is this very content, renamed into place whole.
            tracing::info!(digest, "store entry exists; reusing it");
            return Ok(());
        }
        fs::rename(&staging.path, &target).map_err(|e| {
            UpdateError::store(
                format!(
                    "renaming {} to {}",
                    staging.path.display(),
                    target.display()
                ),
                e,
            )
        })?;
        staging.disarm();
        sync_dir(&store)?;
        sync_dir(&self.config.state_dir.join(STAGING_DIR))?;
        Ok(())
    }

    /// Steps `name`'s lifecycle from `first` until no action feeds another event. Each
    /// step's record and events (`extra` joins the first) are committed before its actions
    /// run.
    fn drive(
        &self,
        dirty: &mut Dirty,
        name: &str,
        first: Event,
        mut extra: Vec<LifecycleEvent>,
    ) -> Result<(), UpdateError> {
        let mut queue = VecDeque::from([first]);
        while let Some(event) = queue.pop_front() {
            let record = self.record(name).unwrap_or_else(|| ModelRecord::new(name));
            let trial = self.trial_policy(&record);
            let event_name = event.name();
            let (next, actions) = lifecycle::step(&record, event, unix_now(), &trial)?;
            let mut events = std::mem::take(&mut extra);
            let mut effects = Vec::new();
            for action in actions {
                match action {
                    Action::Emit(e) => events.push(e),
                    other => effects.push(other),
                }
            }
            if effects.is_empty() && events.is_empty() {
                // Trial counters only: kept in memory, persisted by `tick`.
                if next != record {
                    self.set_record(next);
                    dirty.insert(name.to_owned());
                }
                continue;
            }
            if next != record || !events.is_empty() {
                let ms = unix_ms();
                for e in &mut events {
                    e.unix_ms = ms;
                }
                self.db.commit(name, &next, &events)?;
                dirty.remove(name);
                self.set_record(next);
            }
            tracing::debug!(model = name, event = event_name, ?effects, "transition");
            for effect in effects {
                self.perform(dirty, name, effect, &mut queue)?;
            }
        }
        Ok(())
    }

    fn perform(
        &self,
        dirty: &mut Dirty,
        name: &str,
        action: Action,
        queue: &mut VecDeque<Event>,
    ) -> Result<(), UpdateError> {
        match action {
            Action::Measure(rev) => {
                let is_candidate = self
                    .record(name)
                    .and_then(|r| r.candidate)
                    .is_some_and(|c| c.rev.digest == rev.digest);
                let result = self
                    .installed(name, &rev)
                    .map_err(|e| format!("cannot load the revision from the store: {e}"))
                    .and_then(|m| {
                        self.measurer
                            .measure(&m)
                            .map_err(|e| format!("measurement failed: {e}"))
                    });
                match (is_candidate, result) {
                    (true, Ok(())) => queue.push_back(Event::Measured),
                    (true, Err(reason)) => queue.push_back(Event::HealthFailed(reason)),
                    (false, Ok(())) => {}
                    (false, Err(reason)) => {
                        tracing::error!(model = name, digest = %rev.digest, %reason, "measurement failed");
                        self.record_event(LifecycleEvent::new(
                            "measure_failed",
                            severity::CRITICAL,
                            Some(name),
                            json!({"digest": rev.digest, "version": rev.version, "reason": reason}),
                            unix_ms(),
                        ));
                    }
                }
            }
            Action::RunHealth(rev) => {
                let event = match self.installed(name, &rev) {
                    Ok(model) => self.run_health(model),
                    Err(e) => Event::HealthFailed(format!(
                        "cannot load the candidate from the store: {e}"
                    )),
                };
                queue.push_back(event);
            }
            Action::Serve(rev) => self.serve(name, rev),
            Action::Quarantine { digest, reason } => {
                tracing::warn!(model = name, %digest, %reason, "quarantined");
            }
            Action::CollectGarbage => self.collect_garbage(dirty),
            Action::Emit(_) => {}
        }
        Ok(())
    }

    /// Runs the probe on its own thread, bounded by the health timeout, and checks the
    /// latency budget.
    fn run_health(&self, model: InstalledModel) -> Event {
        let timeout = self.config.health_timeout;
        let budget = model.manifest.health.latency_budget_ms;
        let (tx, rx) = mpsc::channel();
        let probe = self.probe.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("health-{}", model.name))
            .spawn(move || {
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probe.check(&model)));
                let _ = tx.send(result);
            });
        if let Err(e) = spawned {
            return Event::HealthFailed(format!("cannot start the health check: {e}"));
        }
        match rx.recv_timeout(timeout) {
            Ok(Ok(Ok(report))) => {
                if report.worst_latency_ms > f64::from(budget) {
                    Event::HealthFailed(format!(
                        "slowest golden case took {:.1} ms, above the latency budget of {budget} ms",
                        report.worst_latency_ms
                    ))
                } else {
                    tracing::info!(
                        cases = report.cases,
                        worst_ms = report.worst_latency_ms,
                        "health check passed"
                    );
                    Event::HealthPassed
                }
            }
            Ok(Ok(Err(reason))) => Event::HealthFailed(reason),
            Ok(Err(_panic)) => Event::HealthFailed("the health check panicked".into()),
            // The probe's thread cannot be stopped; it is abandoned, and its answer dropped.
            Err(RecvTimeoutError::Timeout) => Event::HealthFailed(format!(
                "health check timed out after {} ms",
                timeout.as_millis()
            )),
            Err(RecvTimeoutError::Disconnected) => {
                Event::HealthFailed("the health check ended without an answer".into())
            }
        }
    }

    fn serve(&self, name: &str, rev: Option<Revision>) {
        let model = rev.and_then(|rev| match self.installed(name, &rev) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(model = name, error = %e, "cannot serve the revision: serving nothing");
                None
            }
        });
        {
            let mut served = write(&self.served);
            match &model {
                Some(m) => served.insert(name.to_owned(), m.clone()),
                None => served.remove(name),
            };
        }
        tracing::info!(
            model = name,
            digest = model.as_ref().map(|m| m.rev.digest.as_str()),
            "serve"
        );
        if let Some(callback) = &self.config.on_serve {
            callback(name, model.as_ref());
        }
        let change = ServeChange {
            name: name.to_owned(),
            model,
        };
        lock(&self.subscribers).retain(|tx| tx.send(change.clone()).is_ok());
    }

    /// Trims histories to `retain`, then deletes store entries no record references.
    /// Failures are logged: garbage collection never fails a transition.
    fn collect_garbage(&self, dirty: &mut Dirty) {
        let records: Vec<ModelRecord> = read(&self.records).values().cloned().collect();
        for record in &records {
            let (trimmed, dropped) = lifecycle::trim_history(record, self.config.retain);
            if dropped.is_empty() {
                continue;
            }
            if let Err(e) = self.db.commit(&record.name, &trimmed, &[]) {
                tracing::warn!(error = %e, "garbage collection: cannot trim history");
                return;
            }
            dirty.remove(&record.name);
            self.set_record(trimmed);
        }
        let referenced: HashSet<String> = read(&self.records)
            .values()
            .flat_map(|r| {
                r.referenced_digests()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        let store = self.config.state_dir.join(STORE_DIR);
        let entries = match fs::read_dir(&store) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, dir = %store.display(), "garbage collection: cannot list the store");
                return;
            }
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(digest) = file_name.to_str() else {
                continue;
            };
            if !is_digest(digest) || referenced.contains(digest) {
                continue;
            }
            match fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    removed += 1;
                    lock(&self.manifests).remove(digest);
                    tracing::info!(digest, "garbage collection: store entry deleted");
                }
                Err(e) => {
                    tracing::warn!(digest, error = %e, "garbage collection: cannot delete store entry")
                }
            }
        }
        if removed > 0 {
            if let Err(e) = sync_dir(&store) {
                tracing::warn!(error = %e, "garbage collection: cannot sync the store");
            }
        }
    }

    /// Applies queued trial requests.
    fn count_pending(&self, dirty: &mut Dirty) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for (name, requests) in pending {
            for ok in requests {
                if let Err(e) = self.drive(dirty, &name, Event::RequestDone { ok }, Vec::new()) {
                    tracing::warn!(model = %name, error = %e, "trial accounting failed");
                    break;
                }
            }
        }
    }

    /// Persists records whose trial counters changed in memory only.
    fn flush(&self, dirty: &mut Dirty) {
        let names: Vec<String> = dirty.iter().cloned().collect();
        for name in names {
            let Some(record) = self.record(&name) else {
                dirty.remove(&name);
                continue;
            };
            match self.db.commit(&name, &record, &[]) {
                Ok(_) => {
                    dirty.remove(&name);
                }
                Err(e) => {
                    tracing::warn!(model = %name, error = %e, "cannot persist trial counters")
                }
            }
        }
    }

    fn trial_policy(&self, record: &ModelRecord) -> TrialPolicy {
        let health = record
            .candidate
            .as_ref()
            .and_then(|c| self.manifest(&c.rev.digest).ok())
            .map_or_else(HealthCheck::default, |m| m.health);
        let mut policy = TrialPolicy::from_health(&health, self.config.trial_max_restarts);
        policy.requests = policy.requests.min(self.config.trial_cap.0);
        policy.seconds = policy.seconds.min(self.config.trial_cap.1);
        policy
    }

    /// The store entry of `rev`, with its manifest checked against the digest; a damaged
    /// entry is reported as a `tamper_detected` event.
    fn installed(&self, name: &str, rev: &Revision) -> Result<InstalledModel, UpdateError> {
        if self.is_tampered(&rev.digest) {
            return Err(UpdateError::store(
                format!("model {name}: store entry {}", rev.digest),
                io::Error::other(
                    "it failed re-verification (tamper_detected) and is never loaded again; \
                     install a newer sequence",
                ),
            ));
        }
        match self.manifest(&rev.digest) {
            Ok(manifest) => Ok(InstalledModel {
                name: name.to_owned(),
                rev: rev.clone(),
                dir: self.config.state_dir.join(STORE_DIR).join(&rev.digest),
                manifest,
            }),
            Err(e) => {
                tracing::error!(model = name, digest = %rev.digest, error = %e, "store entry damaged");
                self.record_event(LifecycleEvent::new(
                    "tamper_detected",
                    severity::CRITICAL,
                    Some(name),
                    json!({"digest": rev.digest, "version": rev.version, "what": "store entry",
                           "reason": e.to_string()}),
                    unix_ms(),
                ));
                Err(e)
            }
        }
    }

    /// Reads `store/<digest>/manifest.cbor`, checks its SHA-256 is the digest the record
    /// names (the record was written only after the signatures over these bytes verified),
    /// and parses it.
    fn manifest(&self, digest: &str) -> Result<Manifest, UpdateError> {
        if let Some(m) = lock(&self.manifests).get(digest) {
            return Ok(m.clone());
        }
        let path = self
            .config
            .state_dir
            .join(STORE_DIR)
            .join(digest)
            .join(MANIFEST_FILE);
        let context = || format!("reading {}", path.display());
        let file = fs::File::open(&path).map_err(|e| UpdateError::store(context(), e))?;
        let mut bytes = Vec::new();
        file.take(self.config.limits.max_header_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| UpdateError::store(context(), e))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != digest {
            return Err(UpdateError::store(
                context(),
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("its SHA-256 is {actual}, not the digest it is stored under: the store entry was altered"),
                ),
            ));
        }
        let manifest = Manifest::from_cbor(&bytes).map_err(|e| {
            UpdateError::store(context(), io::Error::new(io::ErrorKind::InvalidData, e))
        })?;
        lock(&self.manifests).insert(digest.to_owned(), manifest.clone());
        Ok(manifest)
    }

    fn record(&self, name: &str) -> Option<ModelRecord> {
        read(&self.records).get(name).cloned()
    }

    fn set_record(&self, record: ModelRecord) {
        write(&self.records).insert(record.name.clone(), record);
    }

    /// Whether the store entry `digest` failed re-verification.
    pub fn is_tampered(&self, digest: &str) -> bool {
        read(&self.tampered).contains(digest)
    }

    /// Re-verifies every store entry a model refers to (see [`integrity::verify_entry`]),
    /// reading at most `bytes_per_sec` (0 = unlimited) and stopping early when `stop` says
    /// so. An entry that differs from what was installed is marked tampered for good (it is
    /// never loaded again: a rollback or restart cannot pick it) and reported by one
    /// `tamper_detected` event; what is loaded in memory keeps serving, since it was
    /// verified before it was parsed.
    pub fn verify_store(
        &self,
        bytes_per_sec: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<StoreCheck, UpdateError> {
        let mut pacer = integrity::Pacer::new(bytes_per_sec, stop);
        let mut check = StoreCheck::default();
        let digests: BTreeMap<String, (String, String)> = read(&self.records)
            .values()
            .flat_map(|r| {
                r.committed
                    .iter()
                    .chain(r.history.iter())
                    .chain(r.candidate.as_ref().map(|c| &c.rev))
                    .map(|rev| (rev.digest.clone(), (r.name.clone(), rev.version.clone())))
                    .collect::<Vec<_>>()
            })
            .collect();
        let store = self.config.state_dir.join(STORE_DIR);
        for (digest, (name, version)) in digests {
            if self.is_tampered(&digest) {
                continue;
            }
            let dir = store.join(&digest);
            match integrity::verify_entry(&dir, &digest, &mut pacer) {
                Ok(_) => check.intact += 1,
                Err(integrity::CheckError::Stopped) => {
                    check.stopped = true;
                    break;
                }
                Err(integrity::CheckError::Tampered(_)) => {
                    // A concurrent garbage collection or rollback may have removed the entry
                    // while it was read: judge again while no transition runs.
                    let _transitions = lock(&self.transitions);
                    let still_referenced = read(&self.records)
                        .values()
                        .any(|r| r.referenced_digests().any(|d| d == digest));
                    if !still_referenced {
                        continue;
                    }
                    let never_stop = || false;
                    let mut again = integrity::Pacer::new(0, &never_stop);
                    match integrity::verify_entry(&dir, &digest, &mut again) {
                        Ok(_) => check.intact += 1,
                        Err(integrity::CheckError::Stopped) => {}
                        Err(integrity::CheckError::Tampered(t)) => {
                            self.mark_tampered(&name, &version, &digest, &t)?;
                            check.tampered.push(digest.clone());
                        }
                    }
                }
            }
        }
        check.bytes = pacer.bytes();
        Ok(check)
    }

    fn mark_tampered(
        &self,
        name: &str,
        version: &str,
        digest: &str,
        tamper: &integrity::Tamper,
    ) -> Result<(), UpdateError> {
        let serving = read(&self.served)
            .get(name)
            .is_some_and(|m| m.rev.digest == digest);
        tracing::error!(
            model = name,
            %digest,
            file = %tamper.file,
            reason = %tamper.reason,
            serving,
            "store entry tampered: it is never loaded again"
        );
        let why = json!({"file": tamper.file, "reason": tamper.reason, "unix_ms": unix_ms()});
        let event = LifecycleEvent::new(
            "tamper_detected",
            severity::CRITICAL,
            Some(name),
            json!({
                "digest": digest,
                "version": version,
                "what": "re-verification",
                "file": tamper.file,
                "reason": tamper.reason,
                "serving": serving,
                "action": if serving {
                    "the verified copy in memory keeps serving; the store copy is never loaded again"
                } else {
                    "the store copy is never loaded again"
                },
            }),
            unix_ms(),
        );
        write(&self.tampered).insert(digest.to_owned());
        self.db.mark_tampered(digest, &why, event)?;
        Ok(())
    }

    /// Records an event that belongs to no transition, such as a daemon's `tamper_detected`
    /// or a fleet command's refusal (errors are logged, never returned: an event that cannot
    /// be stored must not stop what reported it).
    pub fn record_event(&self, event: LifecycleEvent) {
        if let Err(e) = self.db.append_events(&[event]) {
            tracing::error!(error = %e, "cannot record event");
        }
    }

    /// Records an `install_refused` event and hands the error back.
    fn refuse(&self, name: Option<&str>, error: UpdateError) -> UpdateError {
        tracing::warn!(model = name, check = error.refusal(), error = %error, "install refused");
        self.record_event(LifecycleEvent::new(
            "install_refused",
            severity::WARNING,
            name,
            json!({"check": error.refusal(), "reason": error.to_string()}),
            unix_ms(),
        ));
        error
    }

    /// Records an `install_failed` event (the device's fault, not the bundle's).
    fn fail(&self, name: &str, error: UpdateError) -> UpdateError {
        tracing::error!(model = name, error = %error, "install failed");
        self.record_event(LifecycleEvent::new(
            "install_failed",
            severity::WARNING,
            Some(name),
            json!({"stage": error.refusal(), "reason": error.to_string()}),
            unix_ms(),
        ));
        error
    }
}

impl Drop for Updater {
    fn drop(&mut self) {
        let mut dirty = lock(&self.transitions);
        self.flush(&mut dirty);
    }
}

/// A staging directory, removed on drop unless it was moved into the store.
struct Staging {
    path: PathBuf,
    armed: bool,
}

impl Staging {
    fn create(root: &Path, digest: &str) -> Result<Staging, UpdateError> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = root.join(format!(
            "{}.{}.{nanos}",
            &digest[..16.min(digest.len())],
            std::process::id()
        ));
        fs::create_dir(&path)
            .map_err(|e| UpdateError::store(format!("creating {}", path.display()), e))?;
        Ok(Staging { path, armed: true })
    }

    /// Writes `manifest.cbor` and `header.cose`, each fsynced, then fsyncs the directory.
    fn add_metadata(&self, manifest: &[u8], header: &[u8]) -> Result<(), UpdateError> {
        for (file, bytes) in [(MANIFEST_FILE, manifest), (HEADER_FILE, header)] {
            let path = self.path.join(file);
            let write = || -> io::Result<()> {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)?;
                f.write_all(bytes)?;
                f.sync_all()
            };
            write().map_err(|e| UpdateError::store(format!("writing {}", path.display()), e))?;
        }
        sync_dir(&self.path)
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = fs::remove_dir_all(&self.path) {
                tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove staging directory");
            }
        }
    }
}

/// Removes everything under `staging/`: bundles whose install a crash interrupted.
fn remove_stale_staging(staging: &Path) -> Result<(), UpdateError> {
    let entries = fs::read_dir(staging)
        .map_err(|e| UpdateError::store(format!("listing {}", staging.display()), e))?;
    let mut removed = 0;
    for entry in entries {
        let entry =
            entry.map_err(|e| UpdateError::store(format!("listing {}", staging.display()), e))?;
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let result = if is_dir {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        result.map_err(|e| UpdateError::store(format!("removing stale {}", path.display()), e))?;
        tracing::info!(path = %path.display(), "removed stale staging entry");
        removed += 1;
    }
    if removed > 0 {
        sync_dir(staging)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), UpdateError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| UpdateError::store(format!("syncing {}", dir.display()), e))
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What [`Updater::admit`] found.
enum Admission {
    /// This very bundle is installed (committed or the candidate).
    Installed(Box<InstalledModel>),
    /// A bundle that may be installed now.
    New {
        header: Box<VerifiedHeader>,
        name: String,
        digest: String,
        rev: Revision,
    },
}

fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

// The daemon shares one updater between its threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Updater>();
};
