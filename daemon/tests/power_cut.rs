//! Crash safety with real power cuts: the real `mintd` process is killed with SIGKILL at
//! random instants of install (verify, staging, store), activation, health check, trial,
//! commit, health-failure rollback, operator rollback and startup recovery; restarted; and
//! checked after every restart:
//!
//! 1. it comes back: the database opens (also checked on a copy of the file exactly as the
//!    kill left it) and the daemon is ready within 30 s, without a panic in its log;
//! 2. for every model, what `GET /v1/status` serves is the committed revision or the
//!    current candidate of `GET /v1/models` (nothing only if neither exists, and never
//!    nothing once a revision was committed), and `GET /v2/models/{name}/ready` agrees;
//! 3. everything served, committed, retained or on trial is a bundle this test signed; a
//!    deliberately broken bundle (verified, but failing its health check) may serve while
//!    activated, but is never committed, never kept in the history, never on trial after a
//!    restart, and ends quarantined;
//! 4. the store holds only complete entries (`manifest.cbor` hashes to the directory name and
//!    parses, every listed file has its size and SHA-256), exactly those the records
//!    reference, and `staging/` is empty;
//! 5. nothing goes backwards: after a restart the committed revision is the one committed at
//!    the kill or the candidate of that moment; the anti-rollback floor never decreases.
//!
//! `MINT_POWER_CUT_KILLS` sets the number of kills (default 200; `scripts/soak.sh` runs
//! 1000), `MINT_POWER_CUT_SEED` the seed (decimal or 0x-hex) that drives every random choice.
//! A failure names the seed, the iteration, the kill point and the daemon's log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mint_updater::bundle::verify::{read_header, Limits, Policy};
use mint_updater::lifecycle::{LifecycleEvent, ModelRecord, Phase};
use mint_updater::state::StateDb;
use mint_updater::{Manifest, TrustStore};
use mintd::client::Client;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use sha2::{Digest, Sha256};

const MINTD: &str = env!("CARGO_BIN_EXE_mintd");
const MINTCTL: &str = env!("CARGO_BIN_EXE_mintctl");

/// The binaries under test, pinned (hard-linked, else copied) into the test's directory: a
/// build running meanwhile in the shared target directory relinks `target/debug/mintd`, and
/// a campaign must neither find it missing nor mix two versions.
static PINNED: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();

fn pin_binaries(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    let pin = |from: &str| {
        let to = dir.join(Path::new(from).file_name().unwrap());
        if fs::hard_link(from, &to).is_err() {
            fs::copy(from, &to).unwrap_or_else(|e| panic!("copying {from}: {e}"));
        }
        to
    };
    let pinned = (pin(MINTD), pin(MINTCTL));
    PINNED.set(pinned).expect("binaries pinned once");
}

fn mintd_bin() -> &'static Path {
    &PINNED.get().expect("binaries pinned").0
}

fn mintctl_bin() -> &'static Path {
    &PINNED.get().expect("binaries pinned").1
}

const DEFAULT_SEED: u64 = 0x6d69_6e74_2d6b_696c;
const DEFAULT_KILLS: u64 = 200;
/// How long a restarted daemon may take to be ready (recovery included).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Trial window of every bundle: the daemon's one-second tick ends it by time.
const TRIAL_SECONDS: u32 = 1;
/// Restarts during a trial that roll the candidate back (`update.trial_max_restarts`).
const TRIAL_MAX_RESTARTS: u32 = 2;

/// A model name and the fixture it is built from.
struct Model {
    name: &'static str,
    file: &'static str,
    golden: &'static str,
}

/// `alpha` is small and fast; `beta` (4.5 MB of weights) takes longer to verify, store, load
/// and health-check, so kills land inside those steps.
const MODELS: [Model; 2] = [
    Model {
        name: "alpha",
        file: "mlp.onnx",
        golden: "auto:4",
    },
    Model {
        name: "beta",
        file: "convnet.onnx",
        golden: "auto:4",
    },
];

/// splitmix64: a tiny deterministic generator, so a seed replays the same campaign.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A uniformly random delay in `0..=max`, microsecond resolution.
    fn delay(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.below(max.as_micros() as u64 + 1))
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}"))
        }
        Err(_) => default,
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn short(digest: &str) -> &str {
    &digest[..12.min(digest.len())]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

// ---------------------------------------------------------------------------------------
// Bundles

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    /// Passes its health check.
    Good,
    /// Signed and verified, but its golden file expects a wrong output: fails its health
    /// check on the device and must be rolled back.
    Broken,
}

#[derive(Debug, Clone)]
struct Built {
    path: PathBuf,
    name: String,
    sequence: u64,
    kind: Kind,
    digest: String,
}

/// The bundles of the campaign, built when first needed (anti-rollback: each install needs
/// a sequence above the model's highest accepted one).
struct Bundles {
    dir: PathBuf,
    key: PathBuf,
    trust: TrustStore,
    /// Bundle files still installable, by (name, sequence, kind).
    files: BTreeMap<(String, u64, Kind), Built>,
    /// Every bundle ever built, by manifest digest.
    known: HashMap<String, Built>,
    broken_golden: HashMap<String, PathBuf>,
    builds: u32,
    build_time: Duration,
}

impl Bundles {
    fn new(dir: &Path) -> Bundles {
        fs::create_dir_all(dir.join("keys")).unwrap();
        run_ok(
            Command::new(mintctl_bin())
                .args(["key", "gen", "--out", "op"])
                .current_dir(dir),
        );
        fs::copy(dir.join("op.pub"), dir.join("keys/op.pub")).unwrap();
        let trust = TrustStore::load(&[dir.join("keys")], 1).expect("trust store");
        let mut bundles = Bundles {
            dir: dir.to_owned(),
            key: dir.join("op.key"),
            trust,
            files: BTreeMap::new(),
            known: HashMap::new(),
            broken_golden: HashMap::new(),
            builds: 0,
            build_time: Duration::ZERO,
        };
        for model in &MODELS {
            bundles.make_broken_golden(model);
        }
        bundles
    }

    /// A golden file whose first expected value is off by 1.0 (far beyond the tolerances),
    /// from the golden cases of a good bundle.
    fn make_broken_golden(&mut self, model: &Model) {
        let probe = self.dir.join(format!("probe-{}.mint", model.name));
        self.create(model, 1, None, &probe);
        let unpacked = self.dir.join(format!("probe-{}", model.name));
        run_ok(
            Command::new(mintctl_bin())
                .args(["bundle", "verify"])
                .arg(&probe)
                .arg("--trust")
                .arg(self.dir.join("op.pub"))
                .arg("--unpack")
                .arg(&unpacked),
        );
        let mut golden: Value =
            serde_json::from_slice(&fs::read(unpacked.join("golden.json")).unwrap()).unwrap();
        let first = &mut golden["cases"][0]["outputs"][0]["data"][0];
        *first = Value::from(first.as_f64().expect("an expected output value") + 1.0);
        let path = self.dir.join(format!("broken-{}.json", model.name));
        fs::write(&path, golden.to_string()).unwrap();
        fs::remove_dir_all(&unpacked).unwrap();
        fs::remove_file(&probe).unwrap();
        self.broken_golden.insert(model.name.to_owned(), path);
    }

    fn create(&mut self, model: &Model, sequence: u64, broken: Option<&Path>, out: &Path) {
        let started = Instant::now();
        let mut cmd = Command::new(mintctl_bin());
        cmd.args(["bundle", "create", "--model"])
            .arg(fixture(model.file))
            .args(["--name", model.name])
            .args(["--version", &format!("{sequence}.0")])
            .args(["--sequence", &sequence.to_string()])
            .arg("--key")
            .arg(&self.key)
            .args(["--trial-requests", "1000000"])
            .args(["--trial-seconds", &TRIAL_SECONDS.to_string()])
            .arg("--out")
            .arg(out);
        match broken {
            Some(golden) => cmd.arg("--golden").arg(golden).arg("--no-golden-check"),
            None => cmd.args(["--golden", model.golden]),
        };
        run_ok(&mut cmd);
        self.builds += 1;
        self.build_time += started.elapsed();
    }

    /// The bundle of `model` at `sequence`, built if needed.
    fn get(&mut self, model: &Model, sequence: u64, kind: Kind) -> Built {
        let key = (model.name.to_owned(), sequence, kind);
        if let Some(b) = self.files.get(&key) {
            return b.clone();
        }
        let path = self
            .dir
            .join(format!("{}-{sequence}-{kind:?}.mint", model.name).to_lowercase());
        let golden = match kind {
            Kind::Good => None,
            Kind::Broken => Some(self.broken_golden[model.name].clone()),
        };
        self.create(model, sequence, golden.as_deref(), &path);
        let digest = self.digest(&path);
        let built = Built {
            path,
            name: model.name.to_owned(),
            sequence,
            kind,
            digest: digest.clone(),
        };
        self.known.insert(digest, built.clone());
        self.files.insert(key, built.clone());
        built
    }

    /// The manifest digest of a bundle: the name of its store directory.
    fn digest(&self, path: &Path) -> String {
        let mut input = BufReader::new(fs::File::open(path).unwrap());
        let policy = Policy {
            trust: &self.trust,
            now: unix_now(),
            trusted_time: None,
            device_targets: None,
            min_sequence: None,
            limits: Limits::default(),
        };
        let header = read_header(&mut input, &policy).expect("our own bundle verifies");
        hex::encode(header.manifest_sha256)
    }

    /// Deletes bundle files that can no longer be installed (sequence at or below the floor).
    fn prune(&mut self, name: &str, highest: u64) {
        self.files.retain(|(n, seq, _), b| {
            let keep = n != name || *seq > highest;
            if !keep {
                let _ = fs::remove_file(&b.path);
            }
            keep
        });
    }

    fn kind(&self, digest: &str) -> Option<Kind> {
        self.known.get(digest).map(|b| b.kind)
    }
}

// ---------------------------------------------------------------------------------------
// The daemon and the operator's commands, as processes

/// The `mintd` process; stopped (SIGTERM, then SIGKILL) when dropped, also when a test
/// assertion panics.
struct Daemon {
    child: Option<Child>,
    config: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    log_from: u64,
    spawned: Instant,
}

impl Daemon {
    fn start(&mut self) {
        assert!(self.child.is_none(), "mintd is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.log_from = log.metadata().unwrap().len();
        self.spawned = Instant::now();
        let child = Command::new(mintd_bin())
            .arg("--config")
            .arg(&self.config)
            .env("MINT_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn mintd");
        self.child = Some(child);
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("mintd running").id() as i32)
    }

    /// Waits until `GET /v2/health/ready` answers ready; returns the time since the spawn.
    fn wait_ready(&mut self) -> Result<Duration, String> {
        let client = Client::new(&self.socket);
        loop {
            let child = self.child.as_mut().expect("mintd running");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Err(format!("mintd exited ({status}) before it was ready"));
            }
            if let Ok(v) = client.get("/v2/health/ready") {
                if v["ready"] == Value::Bool(true) {
                    return Ok(self.spawned.elapsed());
                }
            }
            if self.spawned.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "mintd not ready within {} s (database or recovery stuck?)",
                    READY_TIMEOUT.as_secs()
                ));
            }
            sleep(Duration::from_millis(3));
        }
    }

    /// SIGKILL, then reap. Returns whether the process was still alive when killed.
    fn sigkill(&mut self) -> bool {
        let mut child = self.child.take().expect("mintd running");
        let alive = child.try_wait().unwrap().is_none();
        if alive {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).expect("SIGKILL mintd");
        }
        child.wait().expect("reap mintd");
        alive
    }

    /// SIGTERM, then SIGKILL after 10 s. Returns how it ended.
    fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if child.try_wait().ok()?.is_none() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok()?.is_none() && Instant::now() < deadline {
                sleep(Duration::from_millis(10));
            }
            if child.try_wait().ok()?.is_none() {
                let _ = child.kill();
            }
        }
        child.wait().ok()
    }

    /// This run's log (since the last start).
    fn run_log(&self) -> String {
        let bytes = fs::read(&self.log).unwrap_or_default();
        let from = (self.log_from as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }

    fn log_tail(&self, lines: usize) -> String {
        let log = self.run_log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `mintctl` command running against the daemon; killed and reaped when dropped.
struct Operation {
    child: Option<Child>,
}

impl Operation {
    fn spawn(socket: &Path, args: &[&str]) -> Operation {
        let child = Command::new(mintctl_bin())
            .arg("--socket")
            .arg(socket)
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mintctl");
        Operation { child: Some(child) }
    }

    fn finished(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_some())
    }

    /// Waits (bounded) for the command to end; its status and stdout.
    fn wait(mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        let mut child = self.child.take().expect("operation");
        let deadline = Instant::now() + timeout;
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            sleep(Duration::from_millis(2));
        }
        let timed_out = child.try_wait().unwrap().is_none();
        if timed_out {
            let _ = child.kill();
        }
        let status = child.wait().ok();
        let mut out = String::new();
        if let Some(mut stdout) = child.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        (if timed_out { None } else { status }, out)
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The store and the database

/// Checks one store entry: `manifest.cbor` hashes to the directory name and parses, the
/// signed header is there, every listed file has its declared size and SHA-256.
fn check_store_entry(dir: &Path) -> Result<(), String> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{} is not a digest", dir.display()));
    }
    let cbor = fs::read(dir.join("manifest.cbor"))
        .map_err(|e| format!("{}/manifest.cbor: {e}", dir.display()))?;
    let actual = sha256_hex(&cbor);
    if actual != name {
        return Err(format!(
            "{}/manifest.cbor hashes to {actual}",
            dir.display()
        ));
    }
    let manifest = Manifest::from_cbor(&cbor)
        .map_err(|e| format!("{}/manifest.cbor does not parse: {e}", dir.display()))?;
    let header = fs::metadata(dir.join("header.cose"))
        .map_err(|e| format!("{}/header.cose: {e}", dir.display()))?;
    if header.len() == 0 {
        return Err(format!("{}/header.cose is empty", dir.display()));
    }
    for file in &manifest.files {
        let bytes = fs::read(dir.join(&file.path))
            .map_err(|e| format!("{}/{}: {e}", dir.display(), file.path))?;
        if bytes.len() as u64 != file.size {
            return Err(format!(
                "{}/{} has {} bytes, the manifest says {}",
                dir.display(),
                file.path,
                bytes.len(),
                file.size
            ));
        }
        let digest = sha256_hex(&bytes);
        if digest != file.sha256 {
            return Err(format!(
                "{}/{} hashes to {digest}, the manifest says {}",
                dir.display(),
                file.path,
                file.sha256
            ));
        }
    }
    Ok(())
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

fn referenced(records: &BTreeMap<String, ModelRecord>) -> BTreeSet<String> {
    records
        .values()
        .flat_map(|r| {
            r.referenced_digests()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What the disk says at the instant of a kill (read before the restart).
struct AtKill {
    records: BTreeMap<String, ModelRecord>,
    events: Vec<LifecycleEvent>,
    staging_leftovers: usize,
    unreferenced_entries: usize,
    incomplete_entries: usize,
}

/// Opens a copy of the database exactly as the kill left it (the daemon is dead, so the file
/// is what it wrote), reads the records and the events after `after_event`, and looks at the
/// staging area and the store.
fn read_at_kill(state_dir: &Path, scratch: &Path, after_event: u64) -> Result<AtKill, String> {
    let db_file = state_dir.join("mintd.redb");
    let copy = scratch.join("at-kill.redb");
    let _ = fs::remove_file(&copy);
    fs::copy(&db_file, &copy).map_err(|e| format!("copying {}: {e}", db_file.display()))?;
    let (records, events) = {
        let db = StateDb::open(&copy)
            .map_err(|e| format!("the database as the kill left it does not open: {e}"))?;
        let records = db
            .all()
            .map_err(|e| format!("the database as the kill left it: {e}"))?;
        let events = db
            .events_since(after_event, 100_000)
            .map_err(|e| format!("the database as the kill left it: {e}"))?;
        (records, events)
    };
    let _ = fs::remove_file(&copy);
    let records: BTreeMap<String, ModelRecord> =
        records.into_iter().map(|r| (r.name.clone(), r)).collect();
    let refs = referenced(&records);
    let mut unreferenced_entries = 0;
    let mut incomplete_entries = 0;
    let store = state_dir.join("store");
    for name in list_dir(&store) {
        let complete = check_store_entry(&store.join(&name));
        if refs.contains(&name) {
            // A referenced entry was renamed into place whole, before its record named it.
            complete.map_err(|e| {
                format!("at the kill, a store entry the database references is damaged: {e}")
            })?;
        } else {
            unreferenced_entries += 1;
            if complete.is_err() {
                incomplete_entries += 1;
            }
        }
    }
    for digest in &refs {
        if !store.join(digest).is_dir() {
            return Err(format!(
                "at the kill, the database references store entry {digest}, which is missing"
            ));
        }
    }
    Ok(AtKill {
        records,
        events,
        staging_leftovers: list_dir(&state_dir.join("staging")).len(),
        unreferenced_entries,
        incomplete_entries,
    })
}

// ---------------------------------------------------------------------------------------
// The campaign

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    InstallGood,
    InstallBroken,
    Rollback,
    TrialWait,
    Idle,
    Startup,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::InstallGood => "install good",
            Op::InstallBroken => "install broken",
            Op::Rollback => "operator rollback",
            Op::TrialWait => "trial / tick",
            Op::Idle => "idle",
            Op::Startup => "startup recovery",
        })
    }
}

/// Upper bounds of the random kill delay, per operation and model.
#[derive(Debug, Default)]
struct Windows {
    install_good: HashMap<&'static str, Duration>,
    install_broken: HashMap<&'static str, Duration>,
    rollback: Duration,
    trial: Duration,
    startup: Duration,
}

fn window(measured: Duration) -> Duration {
    (measured * 3 / 2).max(Duration::from_millis(20))
}

struct Campaign {
    seed: u64,
    rng: Rng,
    daemon: Daemon,
    client: Client,
    bundles: Bundles,
    state_dir: PathBuf,
    scratch: PathBuf,
    windows: Windows,
    /// The newest event id seen.
    last_event: u64,
    /// Models that had a revision committed at some point.
    ever_committed: BTreeSet<String>,
    /// Records as last observed.
    records: BTreeMap<String, ModelRecord>,
    kills: u64,
    iteration: u64,
    /// Kills by operation, and by operation and the last durable event at the kill.
    by_op: BTreeMap<Op, u64>,
    by_point: BTreeMap<(Op, String), u64>,
    outcomes: BTreeMap<(Op, String), u64>,
    staging_leftovers: u64,
    unreferenced_entries: u64,
    incomplete_entries: u64,
    ops_returned: u64,
    restart_times: Vec<Duration>,
    kill_log: Vec<String>,
    /// Where the campaign's time goes.
    timers: BTreeMap<&'static str, Duration>,
}

/// What became of an operation on one model, from its record before the operation and after
/// the kill and restart (`installing`: the digest of the bundle being installed).
fn outcome(before: &ModelRecord, after: &ModelRecord, installing: Option<&str>) -> &'static str {
    let committed = |r: &ModelRecord| r.committed.as_ref().map(|c| c.digest.clone());
    let candidate = |r: &ModelRecord| r.candidate.as_ref().map(|c| c.rev.digest.clone());
    if let Some(d) = installing {
        let d = Some(d.to_owned());
        return if candidate(after) == d {
            "new revision on trial"
        } else if committed(after) == d {
            "new revision committed"
        } else if after.quarantine_entry(d.as_deref().unwrap()).is_some() {
            "new revision rolled back, old one served"
        } else if committed(after).is_some() {
            "install lost before its record, old one served"
        } else {
            "install lost before its record, nothing committed yet"
        };
    }
    match candidate(before) {
        Some(c) if candidate(after).as_ref() == Some(&c) => "candidate still on trial",
        Some(c) if committed(after).as_ref() == Some(&c) => "candidate committed",
        Some(_) => "candidate rolled back, committed one served",
        None if committed(after) == committed(before) => "committed kept",
        None if committed(after) == before.history.first().map(|r| r.digest.clone()) => {
            "rolled back to the previous committed"
        }
        None => "committed changed",
    }
}

/// What a kill interrupted, for failure messages.
#[derive(Debug, Clone)]
struct KillPoint {
    op: Op,
    model: Option<&'static str>,
    bundle: Option<String>,
    /// The manifest digest of the bundle being installed.
    digest: Option<String>,
    delay: Duration,
    last_event: String,
}

impl fmt::Display for KillPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} {}after {:.1} ms, last durable event {}",
            self.op,
            self.model.unwrap_or("-"),
            self.bundle
                .as_ref()
                .map_or(String::new(), |b| format!("({b}) ")),
            ms(self.delay),
            self.last_event
        )
    }
}

impl Campaign {
    fn fail(&self, what: &str, point: Option<&KillPoint>, why: &str) -> ! {
        panic!(
            "POWER CUT FAILURE: {why}\n  seed {:#x} (MINT_POWER_CUT_SEED), iteration {}, kill #{}\n  \
             {what}{}\n  recent kills:\n    {}\n  mintd log (this run, last lines):\n{}",
            self.seed,
            self.iteration,
            self.kills,
            point.map_or(String::new(), |p| format!(": {p}")),
            self.kill_log[self.kill_log.len().saturating_sub(6)..].join("\n    "),
            self.daemon.log_tail(40)
        )
    }

    fn get(&self, path: &str) -> Result<Value, String> {
        self.client
            .get(path)
            .map_err(|e| format!("GET {path}: {e}"))
    }

    fn models(&self) -> Result<BTreeMap<String, ModelRecord>, String> {
        let reply = self.get("/v1/models")?;
        let records: Vec<ModelRecord> = serde_json::from_value(reply["models"].clone())
            .map_err(|e| format!("GET /v1/models: {e}: {reply}"))?;
        Ok(records.into_iter().map(|r| (r.name.clone(), r)).collect())
    }

    fn serving(&self) -> Result<BTreeMap<String, String>, String> {
        let status = self.get("/v1/status")?;
        let mut out = BTreeMap::new();
        for m in status["serving"].as_array().into_iter().flatten() {
            let name = m["name"]
                .as_str()
                .ok_or("status: serving entry without name")?;
            let digest = m["digest"]
                .as_str()
                .ok_or("status: serving entry without digest")?;
            out.insert(name.to_owned(), digest.to_owned());
        }
        Ok(out)
    }

    /// Reads events up to the newest.
    fn catch_up_events(&mut self) -> Result<(), String> {
        loop {
            let reply = self.get(&format!("/v1/events?after={}&limit=1000", self.last_event))?;
            let events = reply["events"].as_array().cloned().unwrap_or_default();
            if events.is_empty() {
                return Ok(());
            }
            for e in events {
                self.last_event = self.last_event.max(e["id"].as_u64().unwrap_or(0));
            }
        }
    }

    fn start_and_wait(&mut self, point: Option<&KillPoint>) -> Duration {
        self.daemon.start();
        match self.daemon.wait_ready() {
            Ok(d) => d,
            Err(e) => self.fail("restart after", point, &e),
        }
    }

    /// Kills the daemon now; reads the disk as the kill left it; records the kill.
    /// `note` qualifies the kill point in the summary.
    fn power_cut(&mut self, mut point: KillPoint, note: &str) -> (AtKill, KillPoint) {
        let pid = self.daemon.pid();
        let alive = self.daemon.sigkill();
        let reading = Instant::now();
        if !alive {
            self.fail(
                "kill",
                Some(&point),
                &format!("mintd (pid {pid}) had exited before the kill"),
            );
        }
        self.kills += 1;
        let at_kill = match read_at_kill(&self.state_dir, &self.scratch, self.last_event) {
            Ok(a) => a,
            Err(e) => self.fail("kill", Some(&point), &e),
        };
        *self
            .timers
            .entry("reading the disk at the kill")
            .or_default() += reading.elapsed();
        let last = at_kill
            .events
            .iter()
            .rev()
            .find(|e| point.model.is_none() || e.model.as_deref() == point.model)
            .map_or_else(|| "(none new)".to_owned(), |e| e.kind.clone());
        point.last_event = if note.is_empty() {
            last
        } else {
            format!("{last} ({note})")
        };
        *self.by_op.entry(point.op).or_default() += 1;
        *self
            .by_point
            .entry((point.op, point.last_event.clone()))
            .or_default() += 1;
        self.staging_leftovers += u64::from(at_kill.staging_leftovers > 0);
        self.unreferenced_entries += u64::from(at_kill.unreferenced_entries > 0);
        self.incomplete_entries += u64::from(at_kill.incomplete_entries > 0);
        self.kill_log.push(format!(
            "#{} iteration {}: {point}",
            self.kills, self.iteration
        ));
        (at_kill, point)
    }

    /// `after` follows from `before` by the lifecycle: the committed revision is the one
    /// before, the candidate before, the bundle being installed, or (operator rollback) the
    /// newest of the history; the floor never decreases; a broken bundle is never committed.
    fn check_transition(
        &self,
        before: &BTreeMap<String, ModelRecord>,
        after: &BTreeMap<String, ModelRecord>,
        installing: Option<&str>,
        rollback: bool,
    ) -> Result<(), String> {
        if let Some(name) = before.keys().find(|n| !after.contains_key(*n)) {
            return Err(format!("model {name} disappeared from the records"));
        }
        for (name, a) in after {
            let fresh = ModelRecord::new(name.as_str());
            let b = before.get(name).unwrap_or(&fresh);
            let digest = |r: Option<&mint_updater::Revision>| r.map(|r| r.digest.clone());
            let mut allowed: Vec<Option<String>> = vec![
                digest(b.committed.as_ref()),
                digest(b.candidate.as_ref().map(|c| &c.rev)),
                installing.map(str::to_owned),
            ];
            if rollback {
                allowed.push(digest(b.history.first()));
            }
            let now = digest(a.committed.as_ref());
            if let (None, Some(was)) = (&now, &b.committed) {
                return Err(format!(
                    "model {name}: committed {} before, nothing committed after",
                    short(&was.digest)
                ));
            }
            if now.is_some() && !allowed.contains(&now) {
                return Err(format!(
                    "model {name}: committed {} comes from nowhere (before: committed {:?}, \
                     candidate {:?}, history {:?})",
                    short(now.as_deref().unwrap()),
                    digest(b.committed.as_ref()),
                    digest(b.candidate.as_ref().map(|c| &c.rev)),
                    b.history
                        .iter()
                        .map(|r| short(&r.digest))
                        .collect::<Vec<_>>()
                ));
            }
            if let Some(c) = &a.candidate {
                let ok = b
                    .candidate
                    .as_ref()
                    .is_some_and(|bc| bc.rev.digest == c.rev.digest)
                    || installing == Some(c.rev.digest.as_str());
                if !ok {
                    return Err(format!(
                        "model {name}: candidate {} appeared without an install",
                        short(&c.rev.digest)
                    ));
                }
            }
            if let Some(c) = a.candidate.as_ref().filter(|c| c.phase == Phase::Trial) {
                if self.bundles.kind(&c.rev.digest) != Some(Kind::Good) {
                    return Err(format!(
                        "model {name}: {:?} revision {} passed its health check and is on trial",
                        self.bundles.kind(&c.rev.digest),
                        short(&c.rev.digest)
                    ));
                }
            }
            if a.highest_sequence < b.highest_sequence {
                return Err(format!(
                    "model {name}: anti-rollback floor went down from {} to {}",
                    b.highest_sequence, a.highest_sequence
                ));
            }
            for r in a.committed.iter().chain(&a.history) {
                match self.bundles.kind(&r.digest) {
                    Some(Kind::Good) => {}
                    Some(Kind::Broken) => {
                        return Err(format!(
                            "model {name}: broken bundle {} (sequence {}) is committed or retained",
                            short(&r.digest),
                            r.sequence
                        ))
                    }
                    None => {
                        return Err(format!(
                            "model {name}: unknown revision {} is committed or retained",
                            short(&r.digest)
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    /// Every check after a restart.
    fn check_after_restart(&mut self, at_kill: &AtKill) -> Result<(), String> {
        let log = self.daemon.run_log();
        if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
            return Err(format!("the restarted daemon panicked: {line}"));
        }
        let staging = list_dir(&self.state_dir.join("staging"));
        if !staging.is_empty() {
            return Err(format!("staging/ not cleaned at restart: {staging:?}"));
        }
        // Records, then the store, then records again: a trial that commits meanwhile may
        // only drop (garbage-collect) entries, never add one; an entry being deleted may be
        // caught half-deleted, and must then be gone or unreferenced a moment later.
        let first = self.models()?;
        let store_dir = self.state_dir.join("store");
        let listing = list_dir(&store_dir);
        for name in &listing {
            let dir = store_dir.join(name);
            if let Err(e) = check_store_entry(&dir) {
                sleep(Duration::from_millis(300));
                let now_referenced = referenced(&self.models()?).contains(name);
                if dir.exists() || now_referenced {
                    check_store_entry(&dir)
                        .map_err(|e2| format!("incomplete store entry after restart: {e}; {e2}"))?;
                }
            }
        }
        // Recovery deletes the entries no record references. A trial that commits now may
        // unreference one (history trimmed) a moment before its garbage collection deletes
        // it: only an entry that stays is garbage.
        let refs_first = referenced(&first);
        let mut garbage: Vec<&String> = listing
            .iter()
            .filter(|n| !refs_first.contains(*n))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        while !garbage.is_empty() {
            if Instant::now() > deadline {
                return Err(format!(
                    "store entries no record references survived the restart: {garbage:?}"
                ));
            }
            sleep(Duration::from_millis(20));
            let refs = referenced(&self.models()?);
            garbage.retain(|n| store_dir.join(n).exists() && !refs.contains(*n));
        }
        let serving = self.serving()?;
        let records = self.models()?;
        for digest in referenced(&records) {
            if !listing.contains(&digest) {
                return Err(format!("referenced store entry {digest} is missing"));
            }
        }
        self.check_transition(&at_kill.records, &records, None, false)?;
        for name in serving.keys() {
            if !records.contains_key(name) {
                return Err(format!("{name} is served but has no record"));
            }
        }
        for (name, r) in &records {
            let served = serving.get(name);
            let committed = r.committed.as_ref().map(|c| &c.digest);
            let candidate = r.candidate.as_ref().map(|c| &c.rev.digest);
            if let Some(c) = &r.candidate {
                if c.phase != Phase::Trial {
                    return Err(format!(
                        "model {name}: after recovery the candidate {} is still {:?} \
                         (recovery must resume it to its trial or roll it back)",
                        short(&c.rev.digest),
                        c.phase
                    ));
                }
                if self.bundles.kind(&c.rev.digest) != Some(Kind::Good) {
                    return Err(format!(
                        "model {name}: candidate {} on trial is not a good bundle ({:?})",
                        short(&c.rev.digest),
                        self.bundles.kind(&c.rev.digest)
                    ));
                }
            }
            match served {
                None if committed.is_some() || candidate.is_some() => {
                    return Err(format!(
                        "model {name}: nothing served although committed {:?} / candidate {:?}",
                        committed.map(|d| short(d)),
                        candidate.map(|d| short(d))
                    ))
                }
                None => {}
                Some(d) if Some(d) == committed || Some(d) == candidate => {}
                Some(d) => {
                    return Err(format!(
                        "model {name}: serves {} which is neither committed {:?} nor the \
                         candidate {:?}",
                        short(d),
                        committed.map(|d| short(d)),
                        candidate.map(|d| short(d))
                    ))
                }
            }
            if self.ever_committed.contains(name) && served.is_none() {
                return Err(format!(
                    "model {name} had a committed revision and serves nothing"
                ));
            }
            let ready = self.client.get(&format!("/v2/models/{name}/ready"));
            match (served, ready) {
                (Some(d), Ok(_)) => {
                    let known = self.bundles.known.get(d.as_str());
                    if known.map(|b| b.name.as_str()) != Some(name.as_str()) {
                        return Err(format!("model {name} serves unknown revision {d}"));
                    }
                    let meta = self.get(&format!("/v2/models/{name}"))?;
                    if meta["digest"].as_str() != Some(d.as_str()) {
                        return Err(format!(
                            "model {name}: /v2/models says digest {}, /v1/status says {d}",
                            meta["digest"]
                        ));
                    }
                }
                (Some(_), Err(e)) => {
                    return Err(format!("model {name} is served but not ready: {e}"))
                }
                (None, Ok(v)) => return Err(format!("model {name} is not served but ready: {v}")),
                (None, Err(_)) => {}
            }
            let before = at_kill.records.get(name);
            let was_candidate = before.and_then(|b| b.candidate.as_ref());
            if let Some(bc) = was_candidate {
                if self.bundles.kind(&bc.rev.digest) == Some(Kind::Broken)
                    && r.candidate.is_none()
                    && r.quarantine_entry(&bc.rev.digest).is_none()
                {
                    return Err(format!(
                        "model {name}: broken candidate {} rolled back but not quarantined",
                        short(&bc.rev.digest)
                    ));
                }
            }
            if r.committed.is_some() {
                self.ever_committed.insert(name.clone());
            }
            self.bundles.prune(name, r.highest_sequence);
        }
        self.records = records;
        self.catch_up_events()?;
        Ok(())
    }

    /// Restarts after a kill and checks; counts the outcome for the models concerned.
    /// `before`: the records before the operation.
    fn restart_and_check(
        &mut self,
        before: &BTreeMap<String, ModelRecord>,
        at_kill: &AtKill,
        point: &KillPoint,
    ) {
        let took = self.start_and_wait(Some(point));
        self.restart_times.push(took);
        *self.timers.entry("restart to ready").or_default() += took;
        let checking = Instant::now();
        let checked = self.check_after_restart(at_kill);
        *self.timers.entry("checks after restart").or_default() += checking.elapsed();
        if let Err(e) = checked {
            self.fail("after the kill", Some(point), &e);
        }
        // The operation's model; for a startup kill, every model.
        let names: Vec<String> = self
            .records
            .keys()
            .filter(|n| point.model.is_none_or(|m| m == n.as_str()))
            .cloned()
            .collect();
        for name in names {
            let fresh = ModelRecord::new(name.as_str());
            let b = before.get(&name).unwrap_or(&fresh);
            let outcome = outcome(b, &self.records[&name], point.digest.as_deref());
            *self
                .outcomes
                .entry((point.op, outcome.to_owned()))
                .or_default() += 1;
        }
    }

    /// "op returned" if the operator's command had its answer before the kill.
    fn returned(&mut self, operation: &mut Operation) -> &'static str {
        if operation.finished() {
            self.ops_returned += 1;
            "op returned"
        } else {
            ""
        }
    }

    /// Sleeps until the kill (the random delay), counted as time spent in operations.
    fn pause(&mut self, delay: Duration) {
        sleep(delay);
        *self.timers.entry("operations until the kill").or_default() += delay;
    }

    fn has_candidate(&self, name: &str) -> bool {
        self.records
            .get(name)
            .is_some_and(|r| r.candidate.is_some())
    }

    fn next_sequence(&self, name: &str) -> u64 {
        self.records
            .get(name)
            .map_or(1, |r| r.minimum_sequence().max(1))
    }

    /// One iteration: an operation, a kill at a random instant of it, restart, checks.
    fn iterate(&mut self) {
        self.iteration += 1;
        let before = self.records.clone();
        let mut model = &MODELS[self.rng.below(MODELS.len() as u64) as usize];
        let mut op = match self.rng.below(100) {
            0..=34 => Op::InstallGood,
            35..=54 => Op::InstallBroken,
            55..=69 => Op::Rollback,
            70..=84 => Op::TrialWait,
            _ => Op::Startup,
        };
        if matches!(op, Op::InstallGood | Op::InstallBroken) && self.has_candidate(model.name) {
            match MODELS.iter().find(|m| !self.has_candidate(m.name)) {
                Some(other) => model = other,
                None => op = Op::TrialWait,
            }
        }
        if op == Op::Rollback {
            let can = |name: &str| {
                self.records
                    .get(name)
                    .is_some_and(|r| r.candidate.is_some() || !r.history.is_empty())
            };
            if !can(model.name) {
                match MODELS.iter().find(|m| can(m.name)) {
                    Some(other) => model = other,
                    None => op = Op::InstallGood,
                }
            }
        }
        if op == Op::TrialWait {
            // Only worth a kill while a trial runs (its tick commits it).
            match MODELS.iter().find(|m| self.has_candidate(m.name)) {
                Some(m) => model = m,
                None => op = Op::InstallGood,
            }
        }
        let point = |op, bundle: Option<&Built>, delay| KillPoint {
            op,
            model: Some(model.name),
            bundle: bundle.map(|b| format!("{:?} seq {} {}", b.kind, b.sequence, short(&b.digest))),
            digest: bundle.map(|b| b.digest.clone()),
            delay,
            last_event: String::new(),
        };
        match op {
            Op::InstallGood | Op::InstallBroken => {
                let kind = if op == Op::InstallGood {
                    Kind::Good
                } else {
                    Kind::Broken
                };
                let building = Instant::now();
                let built = self
                    .bundles
                    .get(model, self.next_sequence(model.name), kind);
                *self.timers.entry("building bundles").or_default() += building.elapsed();
                let max = if kind == Kind::Good {
                    self.windows.install_good[model.name]
                } else {
                    self.windows.install_broken[model.name]
                };
                let delay = self.rng.delay(max);
                let path = built.path.to_string_lossy().into_owned();
                let mut operation = Operation::spawn(&self.daemon.socket, &["install", &path]);
                self.pause(delay);
                let note = self.returned(&mut operation);
                let (at_kill, point) = self.power_cut(point(op, Some(&built), delay), note);
                operation.wait(Duration::from_secs(10));
                if let Err(e) =
                    self.check_transition(&before, &at_kill.records, Some(&built.digest), false)
                {
                    self.fail("at the kill", Some(&point), &e);
                }
                self.restart_and_check(&before, &at_kill, &point);
            }
            Op::Rollback => {
                let delay = self.rng.delay(self.windows.rollback);
                let mut operation =
                    Operation::spawn(&self.daemon.socket, &["rollback", model.name]);
                self.pause(delay);
                let note = self.returned(&mut operation);
                let (at_kill, point) = self.power_cut(point(op, None, delay), note);
                operation.wait(Duration::from_secs(10));
                if let Err(e) = self.check_transition(&before, &at_kill.records, None, true) {
                    self.fail("at the kill", Some(&point), &e);
                }
                self.restart_and_check(&before, &at_kill, &point);
            }
            Op::TrialWait => {
                let delay = self.rng.delay(self.windows.trial);
                self.pause(delay);
                let (at_kill, point) = self.power_cut(point(op, None, delay), "");
                if let Err(e) = self.check_transition(&before, &at_kill.records, None, false) {
                    self.fail("at the kill", Some(&point), &e);
                }
                self.restart_and_check(&before, &at_kill, &point);
            }
            Op::Startup => {
                // A kill while idle (or ticking), then a kill while the restarted daemon
                // recovers (opens the database, resumes candidates, loads models).
                let delay = self.rng.delay(Duration::from_millis(300));
                self.pause(delay);
                let mut p = point(Op::Idle, None, delay);
                p.model = None;
                let (first, idle_point) = self.power_cut(p, "");
                if let Err(e) = self.check_transition(&before, &first.records, None, false) {
                    self.fail("at the kill", Some(&idle_point), &e);
                }
                let delay = self.rng.delay(self.windows.startup);
                self.daemon.start();
                self.pause(delay);
                let ready = self.daemon.run_log().contains("mintd ready");
                let mut p = point(op, None, delay);
                p.model = None;
                let note = if ready {
                    "after ready"
                } else {
                    "during recovery"
                };
                let (at_kill, point) = self.power_cut(p, note);
                if let Err(e) = self.check_transition(&first.records, &at_kill.records, None, false)
                {
                    self.fail("at the kill", Some(&point), &e);
                }
                self.restart_and_check(&before, &at_kill, &point);
            }
            Op::Idle => unreachable!("idle kills are part of startup"),
        }
    }

    /// Measures each operation without a kill, to size the kill windows.
    fn calibrate(&mut self) {
        let socket = self.daemon.socket.clone();
        let time = |args: &[&str]| -> (Duration, Option<ExitStatus>, String) {
            let started = Instant::now();
            let (status, out) = Operation::spawn(&socket, args).wait(Duration::from_secs(60));
            (started.elapsed(), status, out)
        };
        let wait_committed = |c: &Campaign, name: &str| -> Duration {
            let started = Instant::now();
            loop {
                let records = c.models().expect("models");
                if records.get(name).is_some_and(|r| r.candidate.is_none()) {
                    return started.elapsed();
                }
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "trial never ended"
                );
                sleep(Duration::from_millis(20));
            }
        };
        println!("calibration (one run each, no kill):");
        let mut trial = Duration::ZERO;
        let mut rollback = Duration::ZERO;
        for model in &MODELS {
            for (seq, kind) in [(1, Kind::Good), (2, Kind::Broken), (3, Kind::Good)] {
                let built = self.bundles.get(model, seq, kind);
                let (took, status, out) = time(&["install", &built.path.to_string_lossy()]);
                let expect_ok = kind == Kind::Good;
                assert_eq!(
                    status.map(|s| s.success()),
                    Some(expect_ok),
                    "calibration install of {kind:?} {} seq {seq}: {out}",
                    model.name
                );
                println!(
                    "  install {:<6} {:<5} {:>4} KiB  {:>7.1} ms  ({})",
                    format!("{kind:?}"),
                    model.name,
                    fs::metadata(&built.path).unwrap().len() / 1024,
                    ms(took),
                    if expect_ok {
                        "on trial"
                    } else {
                        "health failed, rolled back"
                    }
                );
                let slot = match kind {
                    Kind::Good => &mut self.windows.install_good,
                    Kind::Broken => &mut self.windows.install_broken,
                };
                let w = slot.entry(model.name).or_default();
                *w = (*w).max(window(took));
                if kind == Kind::Good {
                    let t = wait_committed(self, model.name);
                    println!(
                        "  trial  {:<12} ended by the tick after {:>7.1} ms",
                        model.name,
                        ms(t)
                    );
                    trial = trial.max(t);
                }
            }
            let (took, status, out) = time(&["rollback", model.name]);
            assert_eq!(
                status.map(|s| s.success()),
                Some(true),
                "calibration rollback: {out}"
            );
            println!("  rollback {:<11} {:>7.1} ms", model.name, ms(took));
            rollback = rollback.max(took);
        }
        self.daemon.stop();
        self.start_and_wait(None);
        let startup = self.daemon.spawned.elapsed();
        println!(
            "  startup with both models      {:>7.1} ms (spawn to ready)",
            ms(startup)
        );
        self.windows.rollback = window(rollback);
        self.windows.trial = trial + Duration::from_millis(500);
        self.windows.startup = window(startup);
        println!(
            "kill windows: install good {:?}, install broken {:?}, rollback {:?}, trial {:?}, \
             startup {:?}",
            self.windows.install_good,
            self.windows.install_broken,
            self.windows.rollback,
            self.windows.trial,
            self.windows.startup
        );
        self.records = self.models().expect("models");
        for (name, r) in &self.records {
            if r.committed.is_some() {
                self.ever_committed.insert(name.clone());
            }
        }
        self.catch_up_events().expect("events");
    }

    fn summary(&self, took: Duration) {
        println!("\n=== power cut campaign: seed {:#x}", self.seed);
        println!(
            "{} kills in {} iterations, {:.1} s ({} bundles built in {:.1} s)",
            self.kills,
            self.iteration,
            took.as_secs_f64(),
            self.bundles.builds,
            self.bundles.build_time.as_secs_f64()
        );
        println!("\nkills by operation:");
        for (op, n) in &self.by_op {
            println!("  {:<20} {n:>5}", op.to_string());
        }
        println!("\nkills by operation and last durable event at the kill:");
        for ((op, point), n) in &self.by_point {
            println!("  {:<20} {:<48} {n:>5}", op.to_string(), point);
        }
        println!("\noutcomes after restart (models concerned by the kill):");
        for ((op, outcome), n) in &self.outcomes {
            println!("  {:<20} {:<48} {n:>5}", op.to_string(), outcome);
        }
        println!("\nat the kill (all cleaned up by the restart):");
        println!(
            "  staging dir left mid-write         {:>5}",
            self.staging_leftovers
        );
        println!(
            "  unreferenced store entry           {:>5}",
            self.unreferenced_entries
        );
        println!(
            "  ... of which incomplete            {:>5}",
            self.incomplete_entries
        );
        println!(
            "  operator command had returned      {:>5}",
            self.ops_returned
        );
        println!("\nwhere the time went:");
        for (what, t) in &self.timers {
            println!("  {what:<34} {:>7.1} s", t.as_secs_f64());
        }
        let mut times = self.restart_times.clone();
        times.sort();
        if !times.is_empty() {
            let mean = times.iter().sum::<Duration>() / times.len() as u32;
            println!(
                "\nrestart to ready: mean {:.1} ms, median {:.1} ms, max {:.1} ms",
                ms(mean),
                ms(times[times.len() / 2]),
                ms(*times.last().unwrap())
            );
        }
        for (name, r) in &self.records {
            println!(
                "final {name}: committed {:?}, candidate {:?}, history {}, quarantined {}, \
                 highest sequence {}",
                r.committed.as_ref().map(|c| c.sequence),
                r.candidate.as_ref().map(|c| c.rev.sequence),
                r.history.len(),
                r.quarantined.len(),
                r.highest_sequence
            );
        }
    }
}

/// A temporary directory kept (and named) if the test fails.
struct Workdir(Option<tempfile::TempDir>);

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.0.take() {
                eprintln!(
                    "power cut: state kept for inspection in {}",
                    dir.keep().display()
                );
            }
        }
    }
}

#[test]
fn sigkill_at_random_points_never_leaves_a_partial_or_unverified_model() {
    let started = Instant::now();
    let seed = env_u64("MINT_POWER_CUT_SEED", DEFAULT_SEED);
    let target = env_u64("MINT_POWER_CUT_KILLS", DEFAULT_KILLS);
    println!(
        "power cut: seed {seed:#x} (MINT_POWER_CUT_SEED), {target} kills (MINT_POWER_CUT_KILLS)"
    );

    let work = Workdir(Some(
        tempfile::Builder::new().prefix("pc").tempdir().unwrap(),
    ));
    let root = work.0.as_ref().unwrap().path().to_owned();
    pin_binaries(&root.join("bin"));
    let state_dir = root.join("state");
    let socket = root.join("s.sock");
    assert!(
        socket.as_os_str().len() < 100,
        "socket path too long: {}",
        socket.display()
    );
    let scratch = root.join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let bundles = Bundles::new(&root.join("bundles"));
    let config = root.join("mintd.toml");
    fs::write(
        &config,
        format!(
            "[device]\nid = \"power-cut\"\nclass = \"generic\"\n\n\
             [paths]\nstate_dir = \"{}\"\nsocket = \"{}\"\n\n\
             [trust]\nkeys_dir = \"{}\"\n\n\
             [update]\nhealth_timeout_ms = 10000\ntrial_max_restarts = {TRIAL_MAX_RESTARTS}\n\n\
             [attest]\nmode = \"software\"\n",
            state_dir.display(),
            socket.display(),
            root.join("bundles/keys").display()
        ),
    )
    .unwrap();

    let mut campaign = Campaign {
        seed,
        rng: Rng(seed),
        daemon: Daemon {
            child: None,
            config,
            socket: socket.clone(),
            log: root.join("mintd.log"),
            log_from: 0,
            spawned: Instant::now(),
        },
        client: Client::new(&socket),
        bundles,
        state_dir,
        scratch,
        windows: Windows::default(),
        last_event: 0,
        ever_committed: BTreeSet::new(),
        records: BTreeMap::new(),
        kills: 0,
        iteration: 0,
        by_op: BTreeMap::new(),
        by_point: BTreeMap::new(),
        outcomes: BTreeMap::new(),
        staging_leftovers: 0,
        unreferenced_entries: 0,
        incomplete_entries: 0,
        ops_returned: 0,
        restart_times: Vec::new(),
        kill_log: Vec::new(),
        timers: BTreeMap::new(),
    };
    campaign.start_and_wait(None);
    campaign.calibrate();

    let campaign_started = Instant::now();
    while campaign.kills < target {
        campaign.iterate();
        if campaign.iteration.is_multiple_of(50) {
            println!(
                "  ... {} kills, {} iterations, {:.1} s",
                campaign.kills,
                campaign.iteration,
                campaign_started.elapsed().as_secs_f64()
            );
        }
    }
    let status = campaign.daemon.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "mintd did not stop cleanly on SIGTERM: {status:?}\n{}",
        campaign.daemon.log_tail(20)
    );
    campaign.summary(started.elapsed());
    drop(work);
}
