//! Inference benchmark (not a test): what the guard and the API add to tract, and how mintd
//! serves against an onnxruntime-based v2 server. Every figure is a ratio or a difference
//! against a reference measured in the same run; nothing is asserted.
//!
//! `scripts/bench-inference.sh` (builds, makes `.venv-bench` with onnxruntime, runs this).
//! Environment: `BENCH_SECS` (length of each load phase, default 5), `BENCH_ROUNDS`
//! (interleaved rounds, default 5), `BENCH_CONNECTIONS` (closed-loop connections, default 8),
//! `BENCH_PYTHON` (python with onnxruntime; part C is skipped without it), `BENCH_PARTS`
//! (which parts to run, default `ABC`), `BENCH_MINTD_API` (more lines for the daemon's `[api]`
//! section, e.g. `inline_max_us = 0`), `BENCH_PIN` (0: part B without pinning the server and
//! the generator to separate CPUs), `BENCH_TRACE` (a path: every open-loop run writes each
//! request's scheduled time and latency to `PATH.RATE`), `BENCH_MODELS` (comma-separated, default
//! `mlp,convnet`), `BENCH_PAIRS` (part B's one-at-a-time pairs, default 5000 for the MLP and
//! 300 for the convnet), `BENCH_HOME` (a directory with `mintd`, `mintctl`, `models/` and
//! `ort_server.py` to use instead of this build's: a board's copy, `cross/bench.sh`).
//!
//! A. In process, on one thread, against tract's own `run` on the same plan and input (the
//!    plan mintd runs: `mintd::engine::optimize`, tract's optimisation with mintd's kernels): the
//!    guard alone (`infer::guarded_run`: the manifest's checks, the deadline, tract through the
//!    engine with panics contained, output sanity, drift statistics; tensors in and out like
//!    raw tract), and the whole request (`infer::parse_request` + `infer::run`: the same plus
//!    decoding the request and encoding the answer). One more line per model: tract's stock
//!    plan (without mintd's kernels), measured in the same turns, against mintd's plan, and how
//!    far apart their outputs are (mintd's direct convolutions round differently).
//! B. End to end over the Unix socket against the release `mintd`: latency added over raw
//!    tract at low load (one connection), saturation throughput (closed loop), the highest
//!    rate an open loop sustains (bisection), then p50/p99 of an open-loop load at 80 % of it
//!    (latency from the scheduled send time when the server's delay held the request back, so
//!    no coordinated omission). The same phases against the floor (`support/floor.rs`): a
//!    minimal blocking server of the same model on the same CPUs (read the request, raw tract,
//!    write the answer), so that what the machine costs any server is told apart from what
//!    mintd adds; the one-at-a-time requests go to mintd and the floor in turn, each turn
//!    after one raw tract run.
//! C. Throughput over loopback TCP, mintd (`api.tcp`) against `ort_server.py` (onnxruntime
//!    behind the standard library's ThreadingHTTPServer), same load generator, same requests
//!    (binary tensor extension, what tritonclient sends by default), interleaved rounds.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mint_updater::bundle::verify::{read_header, Policy};
use mint_updater::updater::InstalledModel;
use mint_updater::{Revision, TrustStore};
use mintd::client::Client;
use mintd::engine::Engine;
use mintd::service::drift::DriftMonitor;
use mintd::service::infer;
use mintd::service::registry::LoadedModel;
use tract_onnx::prelude::*;

#[path = "support/floor.rs"]
mod floor;

/// A file of the bench's: under `BENCH_HOME` when it is set (a board's copy of the bench, made
/// by `cross/bench.sh`: `mintd`, `mintctl`, `models/`, `ort_server.py`), else where this build
/// put it.
fn file(packaged: &str, built: PathBuf) -> PathBuf {
    std::env::var_os("BENCH_HOME").map_or(built, |home| PathBuf::from(home).join(packaged))
}

fn mintd() -> PathBuf {
    file("mintd", env!("CARGO_BIN_EXE_mintd").into())
}

fn mintctl_exe() -> PathBuf {
    file("mintctl", env!("CARGO_BIN_EXE_mintctl").into())
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fixture(name: &str) -> PathBuf {
    file(
        "models",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models"),
    )
    .join(name)
}

/// A model of the benchmark: fixture, name, input and its shape.
struct Bench {
    name: &'static str,
    file: &'static str,
    input: &'static str,
    shape: Vec<usize>,
    /// In-process iterations per round.
    iterations: usize,
}

impl Bench {
    fn values(&self) -> Vec<f32> {
        let n: usize = self.shape.iter().product();
        (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// The request body in the binary tensor extension with the length of its JSON part:
    /// binary input, binary outputs (tritonclient's defaults).
    fn binary_body(&self) -> (Vec<u8>, usize) {
        let values = self.values();
        let header = serde_json::json!({
            "inputs": [{"name": self.input, "datatype": "FP32", "shape": self.shape,
                        "parameters": {"binary_data_size": values.len() * 4}}],
            "parameters": {"binary_data_output": true}
        })
        .to_string();
        let mut body = header.clone().into_bytes();
        body.extend(values.iter().flat_map(|x| x.to_le_bytes()));
        (body, header.len())
    }

    /// The same request in v2 JSON (JSON answer).
    fn json_body(&self) -> Vec<u8> {
        serde_json::json!({
            "inputs": [{"name": self.input, "datatype": "FP32", "shape": self.shape,
                        "data": self.values()}]
        })
        .to_string()
        .into_bytes()
    }

    /// One complete HTTP/1.1 request (keep-alive) with the binary body.
    fn http_request(&self) -> Vec<u8> {
        let (body, header_length) = self.binary_body();
        let mut request = format!(
            "POST /v2/models/{}/infer HTTP/1.1\r\nHost: bench\r\nContent-Type: \
             application/octet-stream\r\nInference-Header-Content-Length: {header_length}\r\n\
             Content-Length: {}\r\n\r\n",
            self.name,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        request
    }
}

fn mintctl(dir: &Path, args: &[&str]) {
    let out = Command::new(mintctl_exe())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("mintctl");
    assert!(
        out.status.success(),
        "mintctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A signed bundle of the fixture, with limits that never throttle the benchmark.
fn bundle(dir: &Path, b: &Bench) -> PathBuf {
    let out = dir.join(format!("{}.mint", b.name));
    let model = fixture(b.file);
    mintctl(
        dir,
        &[
            "bundle",
            "create",
            "--model",
            model.to_str().unwrap(),
            "--name",
            b.name,
            "--version",
            "1",
            "--sequence",
            "1",
            "--key",
            "op.key",
            "--golden",
            "auto:4",
            "--rate-limit",
            "1000000",
            "--timeout-ms",
            "10000",
            "--latency-budget-ms",
            "10000",
            "--trial-requests",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    out
}

/// The bundle's verified manifest and the engine, as the registry would load them.
fn load_in_process(dir: &Path, bundle: &Path, b: &Bench) -> LoadedModel {
    let trust = TrustStore::load(&[dir.join("op.pub")], 1).expect("trust");
    let policy = Policy {
        trust: &trust,
        now: mintd::ctl::time_arg::now(),
        trusted_time: None,
        device_targets: None,
        min_sequence: None,
        limits: mintd::service::limits(&mint_config::Config::default()),
    };
    let header = read_header(&mut fs::File::open(bundle).unwrap(), &policy).expect("verify");
    let manifest = header.manifest;
    let file = manifest.model_file().expect("model file").clone();
    let bytes = fs::read(fixture(b.file)).unwrap();
    let engine = Engine::load_verified(&bytes, &file.sha256).expect("engine");
    LoadedModel {
        installed: InstalledModel {
            name: b.name.into(),
            rev: Revision {
                digest: hex::encode(header.manifest_sha256),
                version: manifest.version.clone(),
                sequence: manifest.sequence,
                created: manifest.created,
                model_sha256: file.sha256,
            },
            dir: dir.to_owned(),
            manifest,
        },
        engine,
    }
}

/// An f32 output of tract as the binary tensor extension carries it.
fn f32_le_bytes(t: &Tensor) -> Vec<u8> {
    t.to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Raw tract: the model optimised and made runnable as the engine does
/// (`mintd::engine::optimize`: tract's optimisation with mintd's kernels), and the input.
struct Raw {
    plan: Arc<TypedRunnableModel>,
    input: Tensor,
}

impl Raw {
    fn run(&self) {
        let out = self
            .plan
            .run(tvec![self.input.clone().into_tvalue()])
            .unwrap();
        std::hint::black_box(out);
    }
}

/// Part A's figures for one model, µs per inference (medians over rounds of the mean).
struct InProcess {
    /// tract's one-call API, `plan.run`: a new run state each time.
    raw: f64,
    /// The same with tract's stock plan (`into_optimized` without mintd's kernels).
    stock: f64,
    /// tract with one run state reused from run to run (`SimpleState::run`), its fastest path.
    raw_reused: f64,
    /// The guard alone (`infer::guarded_run`): tensors in, tensors out, like raw tract.
    tensors: f64,
    /// The whole request: decoded from the binary tensor extension, guarded, encoded.
    binary: f64,
    /// The guarded path, v2 JSON.
    json: f64,
    /// The largest difference between the outputs of mintd's plan and tract's stock plan,
    /// relative to the largest output (0: the same values).
    stock_difference: f32,
}

/// Part A for one model, and raw tract for part B.
fn in_process(dir: &Path, bundle: &Path, b: &Bench, rounds: usize) -> (InProcess, Raw) {
    let model = load_in_process(dir, bundle, b);
    let (tx, _rx) = tokio::sync::mpsc::channel(1024);
    let drift = DriftMonitor::new(mint_config::Config::default().monitor, tx);
    let bytes = fs::read(fixture(b.file)).unwrap();
    // The plan the engine runs, so that the guard's overhead is measured against it.
    let plan = mintd::engine::optimize(&bytes)
        .expect("mintd's typed model")
        .into_runnable()
        .expect("raw tract");
    let stock_plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .expect("stock tract");
    let input = Tensor::from_shape(&b.shape, &b.values()).unwrap();
    let (binary, header_length) = b.binary_body();
    let binary = Bytes::from(binary);
    let header_length = header_length.to_string();
    let json = Bytes::from(b.json_body());
    let started = AtomicBool::new(false);
    let budget = Duration::from_secs(3600);

    let raw = || {
        let out = plan.run(tvec![input.clone().into_tvalue()]).unwrap();
        std::hint::black_box(out);
    };
    let stock = || {
        let out = stock_plan.run(tvec![input.clone().into_tvalue()]).unwrap();
        std::hint::black_box(out);
    };
    let state = std::cell::RefCell::new(plan.spawn().expect("run state"));
    let raw_reused = || {
        let out = state
            .borrow_mut()
            .run(tvec![input.clone().into_tvalue()])
            .unwrap();
        std::hint::black_box(out);
    };
    // What a client hands over in process: name, datatype, shape and the values' bytes.
    let sent = vec![infer::RequestInput {
        name: b.input.into(),
        datatype: "FP32".into(),
        shape: b.shape.iter().map(|&d| d as i64).collect(),
        data: infer::InputData::Binary(Bytes::from(
            b.values()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<u8>>(),
        )),
    }];
    let guarded_tensors = || {
        let deadline = Instant::now() + budget;
        let outputs = infer::guarded_run(&model, b.name, &sent, deadline, budget, &started, &drift)
            .unwrap_or_else(|r| panic!("guarded inference refused: {}", r.message));
        std::hint::black_box(outputs);
    };
    let guarded = |body: &Bytes, header: Option<&str>| {
        let request = infer::parse_request(body.clone(), header, infer::MAX_JSON_BYTES).unwrap();
        let deadline = Instant::now() + budget;
        let answer = infer::run(&model, b.name, request, deadline, budget, &started, &drift)
            .unwrap_or_else(|r| panic!("guarded inference refused: {}", r.message));
        std::hint::black_box(answer);
    };

    // The guarded answer carries tract's output, bit for bit.
    let request =
        infer::parse_request(binary.clone(), Some(header_length.as_str()), usize::MAX).unwrap();
    let answer = infer::run(
        &model,
        b.name,
        request,
        Instant::now() + budget,
        budget,
        &started,
        &drift,
    )
    .unwrap();
    let n = answer.header_length.expect("binary answer");
    let expected = f32_le_bytes(&plan.run(tvec![input.clone().into_tvalue()]).unwrap()[0]);
    assert_eq!(
        &answer.body[n..],
        &expected[..],
        "{}: guarded != raw",
        b.name
    );

    let tensors_answer = infer::guarded_run(
        &model,
        b.name,
        &sent,
        Instant::now() + budget,
        budget,
        &started,
        &drift,
    )
    .unwrap();
    assert_eq!(
        tensors_answer[0].values().unwrap().to_le_bytes(),
        expected,
        "{}: guarded (tensors) != raw",
        b.name
    );
    // mintd's direct convolutions add a convolution's products in another order than tract's
    // im2col: the values may move by rounding, never more.
    let stock_output = stock_plan.run(tvec![input.clone().into_tvalue()]).unwrap();
    let mintd_output = plan.run(tvec![input.clone().into_tvalue()]).unwrap();
    let values = |t: &Tensor| {
        t.to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<f32>>()
    };
    let (stock_values, mintd_values) = (values(&stock_output[0]), values(&mintd_output[0]));
    let scale = stock_values.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = stock_values
        .iter()
        .zip(&mintd_values)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let stock_difference = if scale > 0. { worst / scale } else { worst };
    assert!(
        stock_difference <= 1e-5,
        "{}: mintd's plan is {stock_difference:e} (relative) from stock tract",
        b.name
    );

    let guarded_binary = || guarded(&binary, Some(header_length.as_str()));
    let guarded_json = || guarded(&json, None);
    let paths: [&dyn Fn(); 6] = [
        &raw,
        &raw_reused,
        &guarded_tensors,
        &guarded_binary,
        &guarded_json,
        &stock,
    ];
    for _ in 0..b.iterations / 5 {
        for f in paths {
            f();
        }
    }
    // The six take turns in short blocks (100 MLP runs, one convnet run), so that a change
    // of the machine's speed during a round touches all of them alike. Each block starts
    // with one untimed run of its path: raw and reused tract share one plan, the three
    // guarded paths mintd's engine, stock tract a plan of its own, and a convnet's weights
    // and buffers do not stay in the cache from one plan's run to another's. Without it, a
    // path whose predecessor ran another plan was timed cold and one whose predecessor ran
    // the same plan warm, so the fixed order of the turns, not the path, decided part of the
    // time.
    let block = (b.iterations / 200).max(1);
    let mut per_round: [Vec<f64>; 6] = Default::default();
    for _ in 0..rounds {
        let mut totals = [Duration::ZERO; 6];
        for _ in 0..b.iterations / block {
            for (total, f) in totals.iter_mut().zip(paths) {
                f();
                let t = Instant::now();
                for _ in 0..block {
                    f();
                }
                *total += t.elapsed();
            }
        }
        let runs = (b.iterations / block * block) as f64;
        for (series, total) in per_round.iter_mut().zip(totals) {
            series.push(us(total) / runs);
        }
    }
    let [r, s, t, g, j, k] = per_round;
    let figures = InProcess {
        raw: median(r),
        stock: median(k),
        raw_reused: median(s),
        tensors: median(t),
        binary: median(g),
        json: median(j),
        stock_difference,
    };
    (figures, Raw { plan, input })
}

/// Steal time of `cpu` so far (/proc/stat, in ms): time the hypervisor ran something else
/// while this virtual CPU had work.
fn steal_ms(cpu: usize) -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let line = stat
        .lines()
        .find(|l| l.starts_with(&format!("cpu{cpu} ")))?;
    let ticks: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks * 10)
}

/// Minor page faults of process `pid` so far (`/proc/PID/stat`, all its threads): each one
/// is a page of memory touched for the first time since the allocator took it from the
/// kernel.
fn minor_faults(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // The fields after the command name (which may hold spaces) start with the state; the
    // minor fault count is the tenth field of the line, the eighth after the name.
    let after_name = &stat[stat.rfind(')').expect("(comm)") + 2..];
    after_name
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .expect("minflt")
}

/// `mintd_inference_runs_total` from `/metrics`: (inline, in place, blocking pool) so far.
fn runs_by_thread(socket: &Path) -> (u64, u64, u64) {
    let mut stream = UnixStream::connect(socket).expect("metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let count = |thread: &str| {
        let key = format!("mintd_inference_runs_total{{thread=\"{thread}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (count("inline"), count("in_place"), count("blocking"))
}

/// A keep-alive HTTP/1.1 connection, Unix or TCP.
trait Stream: Read + Write + Send {}
impl Stream for UnixStream {}
impl Stream for TcpStream {}

#[derive(Clone, Debug)]
enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl Target {
    fn connect(&self) -> Connection {
        let stream: Box<dyn Stream> = match self {
            Target::Unix(p) => Box::new(UnixStream::connect(p).expect("connect")),
            Target::Tcp(a) => {
                let s = TcpStream::connect(a).expect("connect");
                s.set_nodelay(true).unwrap();
                Box::new(s)
            }
        };
        Connection {
            reader: BufReader::with_capacity(64 * 1024, stream),
            line: String::new(),
            body: Vec::new(),
        }
    }
}

struct Connection {
    reader: BufReader<Box<dyn Stream>>,
    line: String,
    body: Vec<u8>,
}

impl Connection {
    /// Sends `request`, reads the whole answer; its status.
    fn call(&mut self, request: &[u8]) -> u16 {
        self.reader.get_mut().write_all(request).expect("send");
        self.line.clear();
        self.reader.read_line(&mut self.line).expect("status line");
        let status = self
            .line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {:?}", self.line));
        let mut length = 0usize;
        loop {
            self.line.clear();
            self.reader.read_line(&mut self.line).expect("header");
            let l = self.line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("content-length");
                }
            }
        }
        self.body.resize(length, 0);
        self.reader.read_exact(&mut self.body).expect("body");
        status
    }
}

/// Closed loop: `connections` clients, each sending as soon as it has its answer, for
/// `secs`; requests per second and the share that were not 200.
fn saturate(target: &Target, request: &[u8], connections: usize, secs: f64) -> (f64, f64) {
    let barrier = Arc::new(Barrier::new(connections + 1));
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (target, request) = (target.clone(), request.to_vec());
            let (barrier, stop) = (barrier.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut conn = target.connect();
                conn.call(&request);
                barrier.wait();
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    if conn.call(&request) == 200 {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    let elapsed = start.elapsed().as_secs_f64();
    (
        ok as f64 / elapsed,
        failed as f64 / (ok + failed).max(1) as f64,
    )
}

/// What one open-loop run measured.
struct OpenLoop {
    /// Latencies in µs, sorted.
    latencies: Vec<f64>,
    /// Answers other than 200.
    failed: usize,
    /// Seconds from the first scheduled send to the last answer, over the scheduled span:
    /// 1.0 when the server kept up, more when a backlog built.
    overrun: f64,
}

/// Open loop at `rate` requests per second for `secs`, spread over `connections` (each sends
/// its share on a fixed schedule).
///
/// A request's latency counts from its scheduled time when its connection was still busy
/// then (the server's delay pushed it back: no coordinated omission), and from its actual
/// send otherwise (a sleeping thread that wakes a little late is the generator's delay, not
/// the server's).
fn open_loop(
    target: &Target,
    request: &[u8],
    rate: f64,
    connections: usize,
    secs: f64,
) -> OpenLoop {
    let total = (rate * secs) as usize;
    let interval = 1.0 / rate;
    let barrier = Arc::new(Barrier::new(connections + 1));
    let start_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let workers: Vec<_> = (0..connections)
        .map(|i| {
            let (target, request) = (target.clone(), request.to_vec());
            let (barrier, start_at) = (barrier.clone(), start_at.clone());
            std::thread::spawn(move || {
                let mut conn = target.connect();
                conn.call(&request);
                barrier.wait();
                let t0 = *start_at.wait();
                let mut latencies = Vec::with_capacity(total / connections + 1);
                let mut failed = 0;
                let mut last = t0;
                for k in (i..total).step_by(connections) {
                    let scheduled = t0 + Duration::from_secs_f64(k as f64 * interval);
                    let free = Instant::now();
                    if scheduled > free {
                        std::thread::sleep(scheduled - free);
                    }
                    let sent = Instant::now();
                    let from = if free > scheduled { scheduled } else { sent };
                    if conn.call(&request) != 200 {
                        failed += 1;
                    }
                    last = Instant::now();
                    latencies.push((us(scheduled - t0), us(last - from)));
                }
                (latencies, failed, last)
            })
        })
        .collect();
    barrier.wait();
    let t0 = Instant::now() + Duration::from_millis(20);
    start_at.set(t0).unwrap();
    let mut all = Vec::with_capacity(total);
    let (mut failed, mut end) = (0, t0);
    for w in workers {
        let (l, f, last) = w.join().unwrap();
        all.extend(l);
        failed += f;
        end = end.max(last);
    }
    if let Ok(path) = std::env::var("BENCH_TRACE") {
        // Every request of the run: scheduled time from the start (µs), latency (µs).
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let lines: String = all
            .iter()
            .map(|(at, latency)| format!("{at:.0} {latency:.1}\n"))
            .collect();
        fs::write(format!("{path}.{rate:.0}"), lines).expect("BENCH_TRACE");
    }
    let mut all: Vec<f64> = all.into_iter().map(|(_, latency)| latency).collect();
    all.sort_by(f64::total_cmp);
    OpenLoop {
        latencies: all,
        failed,
        overrun: (end - t0).as_secs_f64() / secs,
    }
}

/// The highest open-loop rate the server sustains with this generator (on the same cores):
/// a bisection between a tenth of `closed` and `closed` (the closed-loop saturation, which an
/// open loop cannot reach: each request also costs the generator a timed wake-up) over runs
/// of 2 s, a rate being sustained when the run ends within 1 % (20 ms) of its schedule.
fn sustainable(target: &Target, request: &[u8], closed: f64, connections: usize) -> f64 {
    let (mut low, mut high) = (0.1 * closed, closed);
    for _ in 0..6 {
        let rate = (low + high) / 2.0;
        if open_loop(target, request, rate, connections, 2.0).overrun <= 1.01 {
            low = rate;
        } else {
            high = rate;
        }
    }
    low
}

/// One connection to each target, one request at a time: each turn runs raw tract once in
/// this process, then one request to every target, in an order that rotates from turn to
/// turn (so that all see the same machine and none is always first). With `server_cpus`, each
/// turn also runs raw tract on the servers' CPUs first (a thread of this process pinned
/// there, handed the turn over a channel; only its run is timed), so that a server's latency
/// is compared with tract's run on the CPU it ran on. Raw tract's latencies here, then each
/// target's, then (with `server_cpus`) raw tract's on the servers' CPUs, in µs, sorted.
fn paired(
    targets: &[&Target],
    request: &[u8],
    count: usize,
    raw: &Raw,
    server_cpus: Option<&str>,
) -> Vec<Vec<f64>> {
    std::thread::scope(|scope| {
        let (turn_tx, turn_rx) = std::sync::mpsc::channel::<()>();
        let (took_tx, took_rx) = std::sync::mpsc::channel::<f64>();
        if let Some(cpus) = server_cpus {
            scope.spawn(move || {
                pin(current_tid(), cpus, false);
                for () in turn_rx {
                    let t = Instant::now();
                    raw.run();
                    if took_tx.send(us(t.elapsed())).is_err() {
                        return;
                    }
                }
            });
        }
        let remote = || -> Option<f64> {
            server_cpus?;
            turn_tx.send(()).expect("raw tract's thread");
            Some(took_rx.recv().expect("raw tract's thread"))
        };
        let mut conns: Vec<Connection> = targets.iter().map(|t| t.connect()).collect();
        for _ in 0..count / 10 {
            remote();
            raw.run();
            for conn in &mut conns {
                conn.call(request);
            }
        }
        let mut lat = vec![Vec::with_capacity(count); conns.len() + 2];
        for turn in 0..count {
            if let Some(took) = remote() {
                lat[conns.len() + 1].push(took);
            }
            let t = Instant::now();
            raw.run();
            lat[0].push(us(t.elapsed()));
            for k in 0..conns.len() {
                let i = (turn + k) % conns.len();
                let t = Instant::now();
                assert_eq!(conns[i].call(request), 200);
                lat[i + 1].push(us(t.elapsed()));
            }
        }
        drop(turn_tx);
        if server_cpus.is_none() {
            lat.pop();
        }
        for l in &mut lat {
            l.sort_by(f64::total_cmp);
        }
        lat
    })
}

/// The calling thread's id (`/proc/thread-self` links to `PID/task/TID`).
fn current_tid() -> u32 {
    let link = fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .expect("a thread id")
}

/// Sets the CPU affinity of process `pid` with util-linux's `taskset`: of every thread when
/// `all_threads`, else of its main thread only (threads it starts later inherit it).
fn pin(pid: u32, cpus: &str, all_threads: bool) {
    let mut cmd = Command::new("taskset");
    if all_threads {
        cmd.arg("-a");
    }
    let out = cmd
        .args(["-p", "-c", cpus, &pid.to_string()])
        .output()
        .expect("taskset (util-linux)");
    assert!(
        out.status.success(),
        "taskset -c {cpus} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The machine's own stalls on one CPU, the way jHiccup measures them: a thread that only
/// reads the clock for `secs`, pinned to `cpu` (the bench re-executed under `taskset` with
/// `MINT_BENCH_HICCUP`), reports every gap of 0.5 ms or more between two readings. On a VM
/// these are the host's preemptions and interrupts: no server on that CPU can answer faster
/// than them.
fn hiccups(cpu: usize, secs: f64) -> String {
    let exe = std::env::current_exe().expect("bench binary");
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string()])
        .arg(exe)
        .env("MINT_BENCH_HICCUP", secs.to_string())
        .output()
        .expect("taskset (util-linux)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The child side of [`hiccups`].
fn spin_for_hiccups(secs: f64) {
    let start = Instant::now();
    let (mut last, mut gaps) = (start, Vec::new());
    while last - start < Duration::from_secs_f64(secs) {
        let now = Instant::now();
        if now - last >= Duration::from_micros(500) {
            gaps.push(us(now - last) / 1000.0);
        }
        last = now;
    }
    gaps.sort_by(f64::total_cmp);
    let total: f64 = gaps.iter().sum::<f64>().max(0.0);
    println!(
        "{} stalls of 0.5 ms or more in {secs} s, {total:.1} ms in all ({:.2} % of the time), \
         longest {:.1} ms",
        gaps.len(),
        total / (secs * 10.0),
        gaps.last().copied().unwrap_or(0.0)
    );
}

/// A child process killed on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The release mintd with a socket and a loopback TCP listener, limits out of the way.
fn start_mintd(dir: &Path) -> (Reaped, PathBuf, SocketAddr) {
    let socket = dir.join("mintd.sock");
    let log = dir.join("mintd.log");
    let config = dir.join("mintd.toml");
    fs::write(
        &config,
        format!(
            "[paths]\nstate_dir = {:?}\nsocket = {socket:?}\n[trust]\nkeys_dir = {:?}\n\
             [api]\ntcp = \"127.0.0.1:0\"\nrate_limit_per_sec = 100000000\nqueue_depth = 256\n\
             request_timeout_ms = 10000\n{}\n",
            dir.join("state"),
            dir.join("trust"),
            std::env::var("BENCH_MINTD_API").unwrap_or_default(),
        ),
    )
    .unwrap();
    let child = Command::new(mintd())
        .arg("--config")
        .arg(&config)
        .env("MINT_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn mintd");
    let child = Reaped(child);
    let client = Client::new(&socket);
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get("/v2/health/ready").is_err() {
        assert!(Instant::now() < deadline, "mintd not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("inference on loopback TCP"))
        .expect("TCP listener in the log");
    let at = line.find("address=").unwrap() + "address=".len();
    let addr = line[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (child, socket, addr)
}

/// Part B's floor server for `b`'s model (the bench itself again, [`floor::serve`]), pinned
/// to `cpus` when given, ready to connect.
fn start_floor(dir: &Path, b: &Bench, cpus: Option<String>) -> (Reaped, Target) {
    let socket = dir.join(format!("floor-{}.sock", b.name));
    let child = Command::new(std::env::current_exe().expect("bench binary"))
        .env("MINT_BENCH_FLOOR", &socket)
        .env("MINT_BENCH_FLOOR_MODEL", fixture(b.file))
        .spawn()
        .expect("spawn the floor server");
    let child = Reaped(child);
    if let Some(cpus) = cpus {
        pin(child.0.id(), &cpus, true);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the floor server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, Target::Unix(socket))
}

fn start_ort(python: &str, benches: &[Bench]) -> (Reaped, SocketAddr) {
    let script = file(
        "ort_server.py",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ort_server.py"),
    );
    let mut cmd = Command::new(python);
    cmd.arg(script);
    for b in benches {
        cmd.arg("--model")
            .arg(format!("{}={}", b.name, fixture(b.file).display()));
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ort_server.py");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("ort_server.py says where it listens");
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("ort_server.py: {line:?}"))
        .parse()
        .unwrap();
    (Reaped(child), addr)
}

/// The first answer of `target` to `request`: the output values of a binary answer.
fn output_values(target: &Target, request: &[u8]) -> Vec<f32> {
    let mut conn = target.connect();
    assert_eq!(
        conn.call(request),
        200,
        "{}",
        String::from_utf8_lossy(&conn.body)
    );
    let json: serde_json::Value = serde_json::Deserializer::from_slice(&conn.body)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let size = json["outputs"][0]["parameters"]["binary_data_size"]
        .as_u64()
        .expect("binary output") as usize;
    conn.body[conn.body.len() - size..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn main() {
    if let Ok(secs) = std::env::var("MINT_BENCH_HICCUP") {
        spin_for_hiccups(secs.parse().expect("MINT_BENCH_HICCUP seconds"));
        return;
    }
    if let Ok(socket) = std::env::var("MINT_BENCH_FLOOR") {
        let model = std::env::var("MINT_BENCH_FLOOR_MODEL").expect("MINT_BENCH_FLOOR_MODEL");
        floor::serve(Path::new(&socket), Path::new(&model));
        return;
    }
    let secs: f64 = env_or("BENCH_SECS", 5.0);
    let rounds: usize = env_or("BENCH_ROUNDS", 5);
    let connections: usize = env_or("BENCH_CONNECTIONS", 8);
    let python = std::env::var("BENCH_PYTHON").ok();
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "ABC".into());
    let dir = tempfile::Builder::new()
        .prefix("mint-ibench")
        .tempdir()
        .unwrap();
    let dir = dir.path();
    mintctl(dir, &["key", "gen", "--out", "op"]);
    fs::create_dir(dir.join("trust")).unwrap();
    fs::copy(dir.join("op.pub"), dir.join("trust/op.pub")).unwrap();
    let mut benches = vec![
        Bench {
            name: "mlp",
            file: "mlp.onnx",
            input: "input",
            shape: vec![1, 16],
            iterations: 20_000,
        },
        Bench {
            name: "convnet",
            file: "convnet.onnx",
            input: "image",
            shape: vec![1, 3, 64, 64],
            iterations: 100,
        },
    ];
    if let Ok(models) = std::env::var("BENCH_MODELS") {
        benches.retain(|b| models.split(',').any(|m| m.trim() == b.name));
        assert!(
            !benches.is_empty(),
            "BENCH_MODELS={models}: no such model (mlp, convnet)"
        );
    }
    let bundles: Vec<PathBuf> = benches.iter().map(|b| bundle(dir, b)).collect();
    println!(
        "inference bench: {} cores, BENCH_SECS={secs} BENCH_ROUNDS={rounds} \
         BENCH_CONNECTIONS={connections}, load before: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    println!("\nA. in process, one thread (median of {rounds} rounds, µs per inference)");
    println!(
        "(raw = tract's plan.run on the plan mintd runs, tract's optimisation with mintd's \
         kernels; reused = tract with one run state kept from run to run; \
         guarded = the guard alone, tensors in and out (infer::guarded_run); request = the \
         same plus decoding the request and encoding the answer, binary extension or JSON; \
         ratios to raw and to reused)"
    );
    println!(
        "{:<8} {:>9} {:>9} {:>9} {:>15} {:>9} {:>15} {:>9} {:>15}",
        "model",
        "raw",
        "reused",
        "guarded",
        "/ raw, reused",
        "req bin",
        "/ raw, reused",
        "req json",
        "/ raw, reused"
    );
    let mut raws = Vec::new();
    for (b, bundle) in benches.iter().zip(&bundles) {
        let (f, runner) = in_process(dir, bundle, b, rounds);
        let ratios = |x: f64| format!("{:.3}x {:.3}x", x / f.raw, x / f.raw_reused);
        println!(
            "{:<8} {:>9.2} {:>9.2} {:>9.2} {:>15} {:>9.2} {:>15} {:>9.2} {:>15}",
            b.name,
            f.raw,
            f.raw_reused,
            f.tensors,
            ratios(f.tensors),
            f.binary,
            ratios(f.binary),
            f.json,
            ratios(f.json),
        );
        println!(
            "{:<8} stock tract (without mintd's kernels) {:.2} µs per run, mintd's plan / stock \
             {:.3}x, outputs {:.1e} apart (relative)",
            "",
            f.stock,
            f.raw / f.stock,
            f.stock_difference
        );
        raws.push(runner);
    }

    if !parts.contains('B') && !parts.contains('C') {
        return;
    }
    let (mintd, socket, tcp) = start_mintd(dir);
    let client = Client::new(&socket);
    for bundle in &bundles {
        let reply = client
            .post_json(
                "/v1/install",
                &serde_json::json!({"path": bundle.to_str().unwrap()}),
            )
            .expect("install");
        // Served either way; the trial ends after its one request.
        assert!(
            reply["outcome"] == "committed" || reply["outcome"] == "on_trial",
            "{reply}"
        );
    }
    // Measure the steady state: every model committed, nothing on trial.
    let unix = Target::Unix(socket.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for b in &benches {
            unix.connect().call(&b.http_request());
        }
        let models = client.get("/v1/models").expect("models");
        let records = models["models"].as_array().expect("records");
        if records.len() == benches.len()
            && records
                .iter()
                .all(|r| r["candidate"].is_null() && !r["committed"].is_null())
        {
            break;
        }
        assert!(Instant::now() < deadline, "trials did not end: {models}");
        std::thread::sleep(Duration::from_millis(200));
    }

    println!(
        "\nB. end to end over the Unix socket, binary tensors (µs; added = mintd minus raw tract \
         at the same percentile, raw tract run right before each request on the servers' CPU \
         by a thread of this process pinned there, or in this process when not pinned)"
    );
    println!(
        "{:<8} {:>8} {:>8} | {:>8} {:>8} {:>9} {:>9} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>9} {:>7}",
        "model",
        "raw p50",
        "raw p99",
        "one p50",
        "one p99",
        "added50",
        "added99",
        "closed/s",
        "open/s",
        "80%/s",
        "p50",
        "p99",
        "added50",
        "p99/p50"
    );
    let open_connections: usize = env_or("BENCH_OPEN_CONNECTIONS", 4);
    // The load generator and the server on cores of their own: the generator's wake-ups
    // (one timed sleep per request in the open loop) must not take the server's CPU.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all_cores = format!("0-{}", cores - 1);
    let isolate = parts.contains('B') && cores >= 2 && env_or("BENCH_PIN", 1) == 1;
    if isolate {
        pin(mintd.0.id(), &format!("1-{}", cores - 1), true);
        pin(std::process::id(), "0", false);
        println!(
            "(mintd pinned to CPUs 1-{}, the load generator to CPU 0)",
            cores - 1
        );
        println!(
            "host noise on CPU 1 before, nothing else running there: {}",
            hiccups(1, secs)
        );
    }
    for (b, raw) in benches.iter().zip(&raws).filter(|_| parts.contains('B')) {
        let request = b.http_request();
        let (floor_server, floor) =
            start_floor(dir, b, isolate.then(|| format!("1-{}", cores - 1)));
        // The floor runs the very plan mintd runs: the same answer, bit for bit.
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(
            bits(output_values(&floor, &request)),
            bits(output_values(&unix, &request)),
            "{}: the floor's answer is not mintd's",
            b.name
        );
        let count = env_or("BENCH_PAIRS", if b.iterations > 1000 { 5000 } else { 300 });
        let faults = |pids: [u32; 2]| pids.map(minor_faults);
        // Warm both servers at the load of the phases to come: a model's first runs and the
        // first burst of concurrent requests start threads (mintd's runtime hands a worker's
        // place to a new thread while a large model runs on the request's own thread) and
        // fault in their stacks and malloc arenas once. Counted in the phases, that start-up
        // came out as 1 to 5 page faults per convnet request (sessions 11 and 12) where the
        // steady state takes none; it is printed here, apart.
        let pids = [mintd.0.id(), floor_server.0.id()];
        let cold = faults(pids);
        for target in [&unix, &floor] {
            saturate(target, &request, connections, 1.0);
        }
        let before = faults(pids);
        let warm_up = [before[0] - cold[0], before[1] - cold[1]];
        let server_cpus = isolate.then(|| format!("1-{}", cores - 1));
        let targets = [&unix, &floor];
        // Raw tract here, then mintd's and the floor's latencies, then raw tract on the
        // servers' CPU when pinned.
        let on_server_cpu = targets.len() + 1;
        let lat = paired(&targets, &request, count, raw, server_cpus.as_deref());
        let after = faults(pids);
        let per_request = |i: usize| (after[i] - before[i]) as f64 / count as f64;
        // The reference: raw tract on the servers' CPUs when they are apart, else here.
        let reference = lat.get(on_server_cpu).unwrap_or(&lat[0]);
        let (raw50, raw99) = (percentile(reference, 0.5), percentile(reference, 0.99));
        for (who, target, one, is_mintd) in [
            (b.name, &unix, &lat[1], true),
            ("  floor", &floor, &lat[2], false),
        ] {
            let (one50, one99) = (percentile(one, 0.5), percentile(one, 0.99));
            let (closed, failed) = saturate(target, &request, connections, secs);
            assert!(failed == 0.0, "{who} refused at saturation: {failed}");
            let open = sustainable(target, &request, closed, open_connections);
            let rate = 0.8 * open;
            // Where mintd ran the models in this phase (its metrics; the floor has none).
            let runs_before = is_mintd.then(|| runs_by_thread(&socket));
            let stolen = steal_ms(1);
            let run = open_loop(target, &request, rate, open_connections, secs);
            let stolen = steal_ms(1).zip(stolen).map(|(b, a)| b - a);
            let runs = runs_before.map(|(inline, in_place, pool)| {
                let (inline_after, in_place_after, pool_after) = runs_by_thread(&socket);
                (
                    inline_after - inline,
                    in_place_after - in_place,
                    pool_after - pool,
                )
            });
            let (p50, p99) = (
                percentile(&run.latencies, 0.5),
                percentile(&run.latencies, 0.99),
            );
            println!(
                "{who:<8} {raw50:>8.1} {raw99:>8.1} | {one50:>8.1} {one99:>8.1} {:>9.1} {:>9.1} | \
                 {closed:>8.0} {open:>8.0} {rate:>8.0} | {p50:>8.1} {p99:>8.1} {:>9.1} {:>7.2}{}",
                one50 - raw50,
                one99 - raw99,
                p50 - raw50,
                p99 / p50,
                if run.failed > 0 {
                    format!("  ({} refused)", run.failed)
                } else if run.overrun > 1.01 {
                    format!(
                        "  (did not keep up: the last answer came {:.0} ms after the schedule's end)",
                        (run.overrun - 1.0) * secs * 1000.0
                    )
                } else {
                    String::new()
                }
            );
            if let Some((inline, in_place, pool)) = runs {
                println!(
                    "         80 % run: {inline} runs inline on the async worker, {in_place} on \
                     the request's own thread, {pool} on the blocking pool; time the hypervisor \
                     took from CPU 1 (steal): {}",
                    stolen.map_or("unknown".into(), |ms| format!("{ms} ms"))
                );
            } else {
                println!(
                    "         80 % run: steal {}; one at a time, mintd minus the floor: p50 \
                     {:.1}, p99 {:.1}; page faults per request: mintd {:.2}, the floor {:.2} \
                     (in the warm-up before: mintd {}, the floor {})",
                    stolen.map_or("unknown".into(), |ms| format!("{ms} ms")),
                    percentile(&lat[1], 0.5) - percentile(&lat[2], 0.5),
                    percentile(&lat[1], 0.99) - percentile(&lat[2], 0.99),
                    per_request(0),
                    per_request(1),
                    warm_up[0],
                    warm_up[1],
                );
            }
        }
        if lat.len() > on_server_cpu {
            println!(
                "         raw tract in the generator's process on CPU 0 (the reference of runs 1 \
                 to 15): p50 {:.1}, p99 {:.1}; on the servers' CPU: p50 {raw50:.1}, p99 {raw99:.1}",
                percentile(&lat[0], 0.5),
                percentile(&lat[0], 0.99),
            );
        }
    }

    if isolate {
        println!("host noise on CPU 1 after: {}", hiccups(1, secs));
        pin(mintd.0.id(), &all_cores, true);
        pin(std::process::id(), &all_cores, false);
    }
    let Some(python) = python.filter(|_| parts.contains('C')) else {
        println!("\nC. skipped: BENCH_PYTHON (a python with onnxruntime) is not set");
        return;
    };
    let (_ort, ort_addr) = start_ort(&python, &benches);
    let mintd_tcp = Target::Tcp(tcp);
    let ort = Target::Tcp(ort_addr);
    println!(
        "\nC. throughput over loopback TCP, {connections} connections, closed loop, binary \
         tensors (median of {rounds} interleaved rounds of {secs} s, requests per second)"
    );
    println!(
        "{:<8} {:>12} {:>16} {:>8} {:>16}",
        "model", "mintd", "onnxruntime+http", "ratio", "max |difference|"
    );
    for b in &benches {
        let request = b.http_request();
        let ours = output_values(&mintd_tcp, &request);
        let theirs = output_values(&ort, &request);
        assert_eq!(ours.len(), theirs.len());
        let diff = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let (mut m, mut o) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let (x, failed) = saturate(&mintd_tcp, &request, connections, secs);
            assert!(failed == 0.0, "mintd refused {failed}");
            m.push(x);
            let (y, failed) = saturate(&ort, &request, connections, secs);
            assert!(failed == 0.0, "ort_server refused {failed}");
            o.push(y);
        }
        let (m, o) = (median(m), median(o));
        println!(
            "{:<8} {m:>12.0} {o:>16.0} {:>7.2}x {diff:>16.2e}",
            b.name,
            m / o
        );
    }
}
