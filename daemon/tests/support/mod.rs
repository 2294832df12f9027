//! Shared helpers of the daemon's integration tests: a workspace (short temporary directory,
//! an operator key, bundles built by the real `mintctl`), a `mintd` child process on a TOML
//! configuration (started, waited for, stopped with SIGTERM then SIGKILL on drop), and
//! clients for its socket (`mintd::client::Client`, and raw HTTP for what the client does not
//! send).
//!
//! Include with `mod support;`. Not every test file uses every helper.

#![allow(dead_code)]

pub mod broker;
pub mod http;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use mintd::client::{Client, ClientError};
use serde_json::Value;

/// The operator tool under test.
pub const MINTCTL: &str = env!("CARGO_BIN_EXE_mintctl");
/// The daemon under test.
pub const MINTD: &str = env!("CARGO_BIN_EXE_mintd");

/// How long a daemon may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A model from `tests/fixtures/models`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

/// The reference cases of `mlp.onnx` (`mlp_reference.json`, written by `make_models.py`):
/// (input row, expected output row).
pub fn mlp_reference_cases() -> Vec<(Vec<f64>, Vec<f64>)> {
    let text = fs::read(fixture("mlp_reference.json")).expect("mlp_reference.json");
    let doc: Value = serde_json::from_slice(&text).expect("reference JSON");
    let values = |v: &Value| -> Vec<f64> {
        v["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|x| x.as_f64().expect("a number"))
            .collect()
    };
    doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| (values(&c["inputs"][0]), values(&c["outputs"][0])))
        .collect()
}

/// Asserts `actual` is `expected` within 1e-5 per value.
pub fn assert_close(actual: &[f64], expected: &[f64], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: {actual:?}");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= 1e-5,
            "{what}: value #{i} is {a}, the reference says {e}"
        );
    }
}

/// A short temporary directory under /tmp (socket paths must stay below 108 bytes), with an
/// operator key `op.key`/`op.pub` and a trust directory `trust.d/` holding `op.pub`.
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// A new workspace with an operator key made by `mintctl key gen`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("m")
            .tempdir_in("/tmp")
            .expect("temporary directory");
        let ws = Workspace { dir };
        ws.mintctl_ok(&["key", "gen", "--out", "op"]);
        fs::create_dir(ws.path("trust.d")).expect("trust.d");
        fs::copy(ws.path("op.pub"), ws.path("trust.d/op.pub")).expect("copy op.pub");
        ws
    }

    /// The workspace directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path in the workspace.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `mintctl` in the workspace.
    pub fn mintctl(&self, args: &[&str]) -> Output {
        Command::new(MINTCTL)
            .args(args)
            .current_dir(self.dir())
            .output()
            .expect("spawn mintctl")
    }

    /// Runs `mintctl`, which must succeed; returns stdout.
    pub fn mintctl_ok(&self, args: &[&str]) -> String {
        let out = self.mintctl(args);
        stdout_ok(&out, &format!("mintctl {}", args.join(" ")))
    }

    /// A `mintctl bundle create` of `name` (model `mlp.onnx`, 4 golden cases, a trial window
    /// of 0 s so that an install commits at once unless changed).
    pub fn bundle(&self, name: &str, version: &str, sequence: u64) -> BundleBuilder<'_> {
        BundleBuilder {
            ws: self,
            name: name.to_owned(),
            version: version.to_owned(),
            sequence,
            model: fixture("mlp.onnx"),
            golden: "auto:4".to_owned(),
            trial_seconds: 0,
            extra: Vec::new(),
        }
    }

    /// A configuration for a daemon of this workspace: state in `state/`, socket `s.sock`,
    /// trusting `trust.d/`.
    pub fn config(&self) -> Config {
        let mut c = Config {
            path: self.path("mintd.toml"),
            values: BTreeMap::new(),
            log: self.path("mintd.log"),
            socket: self.path("s.sock"),
            state_dir: self.path("state"),
            env: Vec::new(),
        };
        c.set("device", "id", "\"test-device\"");
        c.set("device", "class", "\"generic\"");
        c.set("trust", "keys_dir", &toml_str(&self.path("trust.d")));
        c
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

/// A TOML string literal of a path.
pub fn toml_str(p: &Path) -> String {
    serde_json::Value::String(p.display().to_string()).to_string()
}

/// `mintctl bundle create` with its options.
pub struct BundleBuilder<'a> {
    ws: &'a Workspace,
    name: String,
    version: String,
    sequence: u64,
    model: PathBuf,
    golden: String,
    trial_seconds: u32,
    extra: Vec<String>,
}

impl BundleBuilder<'_> {
    /// The ONNX model (default: the `mlp.onnx` fixture).
    pub fn model(mut self, path: PathBuf) -> Self {
        self.model = path;
        self
    }

    /// `--golden` (default `auto:4`).
    pub fn golden(mut self, golden: &str) -> Self {
        self.golden = golden.to_owned();
        self
    }

    /// `--trial-seconds` (default 0: committed right after the health check).
    pub fn trial_seconds(mut self, seconds: u32) -> Self {
        self.trial_seconds = seconds;
        self
    }

    /// Any other `bundle create` argument.
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_owned());
        self
    }

    /// Builds `NAME-VERSION.mint` in the workspace and returns its path.
    pub fn create(self) -> PathBuf {
        let out = self
            .ws
            .path(&format!("{}-{}.mint", self.name, self.version));
        let sequence = self.sequence.to_string();
        let trial = self.trial_seconds.to_string();
        let mut args: Vec<&str> = vec![
            "bundle",
            "create",
            "--model",
            self.model.to_str().expect("utf-8 model path"),
            "--name",
            &self.name,
            "--version",
            &self.version,
            "--sequence",
            &sequence,
            "--key",
            "op.key",
            "--golden",
            &self.golden,
            "--trial-seconds",
            &trial,
            "--out",
            out.to_str().expect("utf-8 bundle path"),
        ];
        args.extend(self.extra.iter().map(String::as_str));
        self.ws.mintctl_ok(&args);
        out
    }
}

/// A `mintd.toml` being written: `[section] key = raw TOML value`, plus the environment of
/// the daemon.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file is written.
    pub path: PathBuf,
    values: BTreeMap<String, BTreeMap<String, String>>,
    /// The daemon's stderr.
    pub log: PathBuf,
    /// `paths.socket`.
    pub socket: PathBuf,
    /// `paths.state_dir`.
    pub state_dir: PathBuf,
    env: Vec<(String, String)>,
}

impl Config {
    /// Sets `key` of `[section]` to `raw`, a TOML value as written (`"text"`, `12`, `0o660`).
    pub fn set(&mut self, section: &str, key: &str, raw: &str) -> &mut Self {
        self.values
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), raw.to_owned());
        self
    }

    /// Uses another state directory.
    pub fn state_dir(&mut self, dir: &Path) -> &mut Self {
        self.state_dir = dir.to_owned();
        self
    }

    /// Uses another socket path.
    pub fn socket(&mut self, path: &Path) -> &mut Self {
        self.socket = path.to_owned();
        self
    }

    /// Passes an environment variable to the daemon.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The file's text.
    pub fn toml(&self) -> String {
        let mut values = self.values.clone();
        let paths = values.entry("paths".to_owned()).or_default();
        paths.insert("state_dir".to_owned(), toml_str(&self.state_dir));
        paths.insert("socket".to_owned(), toml_str(&self.socket));
        let mut text = String::new();
        for (section, keys) in &values {
            text.push_str(&format!("[{section}]\n"));
            for (k, v) in keys {
                text.push_str(&format!("{k} = {v}\n"));
            }
            text.push('\n');
        }
        text
    }

    /// Writes the file.
    pub fn write(&self) {
        fs::write(&self.path, self.toml()).expect("write mintd.toml");
    }

    /// `mintd --config PATH` with the daemon's environment (the file is written).
    fn command(&self) -> Command {
        self.write();
        let mut cmd = Command::new(MINTD);
        cmd.arg("--config")
            .arg(&self.path)
            .env("MINT_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Spawns `cmd` with stdin and stdout closed and stderr to the log file.
    fn spawn(&self, cmd: &mut Command) -> Child {
        let log = fs::File::create(&self.log).expect("create mintd.log");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn mintd")
    }

    /// Starts `mintd` on this configuration and waits until `/v2/health/ready` answers;
    /// panics with the daemon's stderr if it exits or is not ready in time.
    pub fn start(&self) -> Daemon {
        self.start_with(|c| c)
    }

    /// [`Config::start`], with the command changed by `wrap` first (e.g. a wrapper program;
    /// stdio is set after `wrap`).
    pub fn start_with(&self, wrap: impl FnOnce(&mut Command) -> &mut Command) -> Daemon {
        let mut cmd = self.command();
        let child = self.spawn(wrap(&mut cmd));
        let mut daemon = Daemon {
            child: Some(child),
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            log: self.log.clone(),
        };
        daemon.wait_ready();
        daemon
    }

    /// Runs `mintd` on this configuration expecting it to exit on its own within `timeout`;
    /// returns its exit status and stderr. Panics (after killing it) if it keeps running.
    pub fn run_to_exit(&self, timeout: Duration) -> (ExitStatus, String) {
        let child = self.spawn(&mut self.command());
        let mut guard = Daemon {
            child: Some(child),
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            log: self.log.clone(),
        };
        let start = Instant::now();
        loop {
            let child = guard.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("wait mintd") {
                guard.child = None;
                return (status, guard.stderr());
            }
            if start.elapsed() > timeout {
                panic!(
                    "mintd was expected to exit but still runs after {timeout:?}; stderr:\n{}",
                    guard.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A running `mintd`: SIGTERM on drop, SIGKILL if it has not exited 5 s later.
pub struct Daemon {
    child: Option<Child>,
    /// Its API socket.
    pub socket: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client of its socket.
    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// The address of its loopback TCP listener, from its log (tests set `api.tcp` to port 0
    /// so that concurrent tests never race for a port).
    pub fn tcp_address(&self) -> std::net::SocketAddr {
        let log = self.stderr();
        let line = log
            .lines()
            .find(|l| l.contains("inference on loopback TCP"))
            .unwrap_or_else(|| panic!("no TCP listener in the log:\n{log}"));
        let at = line.find("address=").expect("address= in the line") + "address=".len();
        line[at..]
            .split_whitespace()
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    fn wait_ready(&mut self) {
        let client = self.client();
        let start = Instant::now();
        loop {
            if client.get("/v2/health/ready").is_ok() {
                return;
            }
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("wait mintd") {
                self.child = None;
                panic!(
                    "mintd exited ({status}) before it was ready; stderr:\n{}",
                    self.stderr()
                );
            }
            if start.elapsed() > READY_DEADLINE {
                panic!(
                    "mintd was not ready after {READY_DEADLINE:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM and waits (at most `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Kills the daemon with SIGKILL (a crash: no shutdown code runs) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs `mintctl --socket SOCKET ARGS...`.
    pub fn mintctl(&self, args: &[&str]) -> Output {
        Command::new(MINTCTL)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("spawn mintctl")
    }

    /// `mintctl --json ARGS...`, which must succeed; its JSON document.
    pub fn mintctl_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.mintctl(&all);
        let text = stdout_ok(&out, &format!("mintctl {}", all.join(" ")));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("mintctl {all:?} printed no JSON ({e}): {text}"))
    }

    /// `mintctl --json ARGS...`, which must fail; its exit code and JSON error document.
    pub fn mintctl_json_err(&self, args: &[&str]) -> (i32, Value) {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.mintctl(&all);
        let code = out.status.code().expect("exit code");
        assert_ne!(
            code,
            0,
            "mintctl {all:?} should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "mintctl {all:?} printed no JSON error ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, doc)
    }

    /// GET, which must answer 2xx.
    pub fn get(&self, path: &str) -> Value {
        self.client()
            .get(path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nmintd stderr:\n{}", self.stderr()))
    }

    /// Installs a bundle file through the API (streamed body).
    pub fn install(&self, bundle: &Path) -> Result<Value, ClientError> {
        self.client().post_file("/v1/install", bundle)
    }

    /// Every recorded event.
    pub fn events(&self) -> Vec<Value> {
        self.get("/v1/events?limit=1000")["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Events of one kind.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["kind"] == kind)
            .collect()
    }

    /// The record of `name` in `/v1/models`.
    pub fn record(&self, name: &str) -> Value {
        let models = self.get("/v1/models");
        models["models"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no record of {name} in {models}"))
    }

    /// Asserts that `name` is served, committed and ready at manifest digest `digest`, with
    /// no candidate, its store entry in place and nothing left in staging.
    pub fn assert_serving(&self, name: &str, digest: &str) {
        let status = self.get("/v1/status");
        let served: Vec<&Value> = status["serving"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["name"] == name)
            .collect();
        assert_eq!(served.len(), 1, "{name} is not served: {status}");
        assert_eq!(
            served[0]["digest"], digest,
            "{name} serves another revision"
        );
        let record = self.record(name);
        assert_eq!(record["committed"]["digest"], digest, "{record}");
        assert!(record["candidate"].is_null(), "{record}");
        let ready = self.get(&format!("/v2/models/{name}/ready"));
        assert_eq!(ready["ready"], true);
        let meta = self.get(&format!("/v2/models/{name}"));
        assert_eq!(meta["digest"], digest);
        assert!(
            self.state_dir.join("store").join(digest).is_dir(),
            "store entry of {digest} is gone"
        );
        assert_eq!(
            self.staging_entries(),
            Vec::<String>::new(),
            "staging is not empty"
        );
    }

    /// Names under `state/staging`.
    pub fn staging_entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.state_dir.join("staging"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if self.terminate(Duration::from_secs(5)).is_none() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// stdout of a command that must have succeeded.
pub fn stdout_ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The status and message of an API error.
pub fn api_error(result: Result<Value, ClientError>) -> (u16, String, Option<String>, Value) {
    match result {
        Ok(v) => panic!("expected an API error, got {v}"),
        Err(ClientError::Api {
            status,
            message,
            check,
            body,
        }) => (status, message, check, body),
        Err(e) => panic!("expected an API error, got {e}"),
    }
}

/// The digest of the model a reply's `model` (or `serving`) object names.
pub fn digest(v: &Value) -> String {
    v["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no digest in {v}"))
        .to_owned()
}

/// One HTTP/1.1 request over the socket, written by hand (for methods, bodies and broken
/// uploads the client never sends): returns the status and the JSON body.
pub fn raw_request(socket: &Path, head: &str, body: &[u8], close_early: bool) -> (u16, Value) {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    stream.write_all(head.as_bytes()).expect("write head");
    let _ = stream.write_all(body);
    if close_early {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
    read_reply(&mut stream)
}

/// Reads one HTTP response with a Content-Length and a JSON body.
pub fn read_reply(stream: &mut UnixStream) -> (u16, Value) {
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().expect("content-length");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, value)
}

/// Unmounts a filesystem on drop (lazily, so a busy mount never stays behind).
pub struct MountGuard {
    /// The mount point.
    pub dir: PathBuf,
}

impl MountGuard {
    /// `mount -t tmpfs -o size=SIZE tmpfs DIR` (DIR is created); `Err` with mount's message
    /// if mounting is not possible here.
    pub fn tmpfs(dir: &Path, size: &str) -> Result<MountGuard, String> {
        fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(MountGuard {
            dir: dir.to_owned(),
        })
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}
