//! Service benchmark (not a test): start-up to READY, idle RSS, install-to-active and rollback
//! latency of the real `mintd` binary, each next to a reference measured in the same run.
//!
//! `cargo bench -p mintd --bench service` (env BENCH_RUNS, default 10). Prints a table; asserts
//! nothing. Figures go to docs/performance.md.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mintd::client::Client;

const MINTD: &str = env!("CARGO_BIN_EXE_mintd");
const MINTCTL: &str = env!("CARGO_BIN_EXE_mintctl");

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/mlp.onnx")
}

fn mintctl(dir: &Path, args: &[&str]) {
    let out = Command::new(MINTCTL)
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

struct Daemon {
    child: Child,
    notify: UnixDatagram,
    socket: PathBuf,
}

impl Daemon {
    /// Starts mintd on a fresh state dir and returns it with the time to READY=1.
    fn start(dir: &Path, tag: &str) -> (Daemon, Duration) {
        let state = dir.join(format!("state-{tag}"));
        let socket = dir.join(format!("s-{tag}.sock"));
        let notify_path = dir.join(format!("n-{tag}.sock"));
        let _ = fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let config = dir.join(format!("mintd-{tag}.toml"));
        fs::write(
            &config,
            format!(
                "[paths]\nstate_dir = {state:?}\nsocket = {socket:?}\n[trust]\nkeys_dir = {:?}\n[log]\nlevel = \"warn\"\n",
                dir.join("trust")
            ),
        )
        .unwrap();
        let start = Instant::now();
        let child = Command::new(MINTD)
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("MINT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            let n = notify.recv(&mut buf).expect("READY=1 within 30 s");
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break;
            }
        }
        let ready = start.elapsed();
        (
            Daemon {
                child,
                notify,
                socket,
            },
            ready,
        )
    }

    /// (RSS, PSS, anonymous) in MiB, from /proc/PID/smaps_rollup: RSS counts shared library
    /// pages and clean code pages of the binary in full, PSS shares them out, anonymous is
    /// the heap and stacks alone.
    fn memory_mib(&self) -> (f64, f64, f64) {
        let rollup = fs::read_to_string(format!("/proc/{}/smaps_rollup", self.child.id())).unwrap();
        let field = |name: &str| {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .unwrap()
                / 1024.0
        };
        (field("Rss:"), field("Pss:"), field("Anonymous:"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.notify;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let tmp = tempfile::Builder::new()
        .prefix("mb")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path();
    mintctl(dir, &["key", "gen", "--out", "op"]);
    fs::create_dir(dir.join("trust")).unwrap();
    fs::copy(dir.join("op.pub"), dir.join("trust/op.pub")).unwrap();
    let m = model();
    let m = m.to_str().unwrap();
    // Bundles: one good per run (fresh state each run), plus a broken v2 for rollbacks.
    mintctl(
        dir,
        &[
            "bundle",
            "create",
            "--model",
            m,
            "--name",
            "mlp",
            "--version",
            "1",
            "--sequence",
            "1",
            "--key",
            "op.key",
            "--golden",
            "auto:8",
            "--trial-seconds",
            "1",
            "--out",
            "v1.mint",
        ],
    );
    mintctl(
        dir,
        &[
            "bundle", "verify", "v1.mint", "--trust", "op.pub", "--unpack", "v1",
        ],
    );
    let mut golden: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("v1/golden.json")).unwrap()).unwrap();
    let x = golden["cases"][0]["outputs"][0]["data"][0]
        .as_f64()
        .unwrap();
    golden["cases"][0]["outputs"][0]["data"][0] = serde_json::json!(x + 1.0);
    fs::write(dir.join("broken.json"), golden.to_string()).unwrap();
    mintctl(
        dir,
        &[
            "bundle",
            "create",
            "--model",
            m,
            "--name",
            "mlp",
            "--version",
            "2",
            "--sequence",
            "2",
            "--key",
            "op.key",
            "--golden",
            "broken.json",
            "--no-golden-check",
            "--out",
            "v2.mint",
        ],
    );

    let (mut ready, mut spawn, mut idle, mut loaded) = (vec![], vec![], vec![], vec![]);
    let (mut install, mut verify, mut rollback_total, mut rollback_switch) =
        (vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        // Reference: spawning a process that does nothing.
        let t = Instant::now();
        Command::new("/bin/true").status().unwrap();
        spawn.push(ms(t.elapsed()));

        let (daemon, r) = Daemon::start(dir, &run.to_string());
        ready.push(ms(r));
        std::thread::sleep(Duration::from_millis(300));
        idle.push(daemon.memory_mib());

        // Reference: the same verification as a one-shot command.
        let t = Instant::now();
        mintctl(dir, &["bundle", "verify", "v1.mint", "--trust", "op.pub"]);
        verify.push(ms(t.elapsed()));

        let client = Client::new(&daemon.socket);
        let t = Instant::now();
        let reply = client
            .post_file("/v1/install", &dir.join("v1.mint"))
            .unwrap();
        install.push(ms(t.elapsed()));
        assert_eq!(reply["outcome"], "on_trial", "{reply}");
        std::thread::sleep(Duration::from_millis(300));
        loaded.push(daemon.memory_mib());

        // Wait for the 1 s trial to commit v1, then install the broken v2.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let models = client.get("/v1/models").unwrap();
            if models["models"][0]["candidate"].is_null()
                && models["models"][0]["committed"].is_object()
            {
                break;
            }
            assert!(Instant::now() < deadline, "v1 not committed: {models}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let t = Instant::now();
        let refused = client.post_file("/v1/install", &dir.join("v2.mint"));
        rollback_total.push(ms(t.elapsed()));
        assert!(refused.is_err(), "the broken v2 was accepted");
        let events = client.get("/v1/events?limit=1000").unwrap();
        let at = |kind: &str| {
            events["events"]
                .as_array()
                .unwrap()
                .iter()
                .rev()
                .find(|e| e["kind"] == kind)
                .and_then(|e| e["unix_ms"].as_f64())
                .unwrap()
        };
        rollback_switch.push(at("rolled_back") - at("health_failed"));
        assert_eq!(
            client.get("/v1/status").unwrap()["serving"][0]["version"],
            "1",
            "v1 is not served again after the rollback"
        );
        drop(daemon);
    }

    println!(
        "\nmintd service benchmark: {runs} runs, medians (release build: {})",
        cfg!(not(debug_assertions))
    );
    println!(
        "{:<44} {:>10} {:>12} {:>8}  goal",
        "measure", "mintd", "reference", "ratio"
    );
    let row = |name: &str, v: f64, r: Option<f64>, unit: &str, goal: &str| {
        let (rs, ratio) = r.map_or((String::from("-"), String::from("-")), |r| {
            (format!("{r:.2} {unit}"), format!("{:.1}x", v / r))
        });
        println!(
            "{name:<44} {:>10} {rs:>12} {ratio:>8}  {goal}",
            format!("{v:.2} {unit}")
        );
    };
    row(
        "start-up to READY=1 (ref: spawn /bin/true)",
        median(ready.clone()),
        Some(median(spawn)),
        "ms",
        "",
    );
    type Mem = (f64, f64, f64);
    let pick = |v: &[Mem], f: fn(&Mem) -> f64| median(v.iter().map(f).collect());
    row(
        "idle RSS, no model",
        pick(&idle, |m| m.0),
        None,
        "MiB",
        "<= 8 MiB",
    );
    row(
        "  idle PSS (ref: anonymous)",
        pick(&idle, |m| m.1),
        Some(pick(&idle, |m| m.2)),
        "MiB",
        "",
    );
    row(
        "RSS with the MLP on trial",
        pick(&loaded, |m| m.0),
        None,
        "MiB",
        "<= 16 MiB",
    );
    row(
        "  loaded PSS (ref: anonymous)",
        pick(&loaded, |m| m.1),
        Some(pick(&loaded, |m| m.2)),
        "MiB",
        "",
    );
    row(
        "install to active (ref: mintctl bundle verify)",
        median(install.clone()),
        Some(median(verify)),
        "ms",
        "",
    );
    row(
        "install of broken v2 until rolled back",
        median(rollback_total),
        None,
        "ms",
        "",
    );
    row(
        "rollback: health_failed -> rolled_back",
        median(rollback_switch.clone()),
        None,
        "ms",
        "<= 100 ms",
    );
    let worst = rollback_switch.iter().cloned().fold(0.0, f64::max);
    println!("worst rollback switch {worst:.0} ms; event timestamps have 1 ms resolution");
}
