//! `mintd demo`: a self-contained tour on built-in defaults, in a temporary directory.
//!
//! Every step runs the real `mintctl` code path (the command line is parsed by the same clap
//! definitions) and the tour fails if any step does not behave as it should, so it doubles
//! as a smoke test.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use crate::ctl::{self, Cli};
use crate::exit;

/// The example model (a 16→64→4 MLP), built into the binary so the tour needs no files.
pub const EXAMPLE_MODEL: &[u8] = include_bytes!("../../tests/fixtures/models/mlp.onnx");

struct Tour {
    dir: PathBuf,
    start: Instant,
    step: usize,
}

impl Tour {
    fn say(&mut self, title: &str) {
        self.step += 1;
        println!();
        println!(
            "[{:>6.2}s] {}. {title}",
            self.start.elapsed().as_secs_f64(),
            self.step
        );
    }

    fn mintctl(&self, args: &str) -> anyhow::Result<()> {
        println!("  $ mintctl {args}");
        let argv = std::iter::once("mintctl").chain(args.split_whitespace());
        let cli = Cli::try_parse_from(argv).context("demo command line")?;
        std::env::set_current_dir(&self.dir)?;
        ctl::run(&cli)
    }

    fn expect_ok(&self, args: &str) -> anyhow::Result<()> {
        self.mintctl(args)
            .with_context(|| format!("demo step `mintctl {args}` should have succeeded"))
    }

    fn expect_refused(&self, args: &str, check: &str) -> anyhow::Result<()> {
        self.expect_refused_by(args, &[check])
    }

    fn expect_refused_by(&self, args: &str, checks: &[&str]) -> anyhow::Result<()> {
        match self.mintctl(args) {
            Ok(()) => bail!("`mintctl {args}` succeeded but must be refused"),
            Err(e) => {
                let got = exit::refusal(&e);
                println!(
                    "  -> refused by check `{}` (exit {}): {}",
                    got.as_deref().unwrap_or("none"),
                    exit::code(&e) as i32,
                    e.chain()
                        .last()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                );
                if !got.as_deref().is_some_and(|g| checks.contains(&g)) {
                    bail!("expected one of {checks:?} to refuse, got {got:?}: {e:#}");
                }
                Ok(())
            }
        }
    }

    /// A command that must fail (not a bundle check: a refused request) with `part` in its
    /// innermost cause.
    fn expect_failed(&self, args: &str, part: &str) -> anyhow::Result<()> {
        match self.mintctl(args) {
            Ok(()) => bail!("`mintctl {args}` succeeded but must be refused"),
            Err(e) => {
                let cause = e
                    .chain()
                    .last()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                println!("  -> refused (exit {}): {cause}", exit::code(&e) as i32);
                if !cause.contains(part) {
                    bail!("expected {part:?} in the refusal, got: {e:#}");
                }
                Ok(())
            }
        }
    }

    fn flip(&self, from: &str, to: &str, offset: u64) -> anyhow::Result<()> {
        let mut bytes = fs::read(self.dir.join(from))?;
        let at = offset as usize;
        bytes[at] ^= 0x01;
        fs::write(self.dir.join(to), bytes)?;
        println!("  (copied {from} to {to} and flipped one bit at byte {at})");
        Ok(())
    }
}

/// Runs the tour in a fresh temporary directory (kept if `keep` names one). The device
/// reports to the MQTT broker `broker` (HOST:PORT), or, without one, to a mosquitto the tour
/// starts on a free loopback port (skipped, and said so, where mosquitto is not installed).
pub fn run(keep: Option<&Path>, broker: Option<&str>) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("mintd-demo-").tempdir()?;
    let dir = match keep {
        Some(d) => {
            fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        None => tmp.path().to_owned(),
    };
    let previous = std::env::current_dir().ok();
    let result = tour(&dir, broker);
    if let Some(p) = previous {
        let _ = std::env::set_current_dir(p);
    }
    match &result {
        Ok(()) => {
            println!("\nThe tour passed: every bundle was accepted or refused as it should be.")
        }
        Err(_) => println!("\nThe tour FAILED (files kept in {})", dir.display()),
    }
    if result.is_err() || keep.is_some() {
        let _ = tmp.keep();
    }
    result
}

fn tour(dir: &Path, broker: Option<&str>) -> anyhow::Result<()> {
    println!("mintd demo: the life of a signed model bundle");
    println!("working in {}", dir.display());
    fs::write(dir.join("mlp.onnx"), EXAMPLE_MODEL)?;
    let mut t = Tour {
        dir: dir.to_owned(),
        start: Instant::now(),
        step: 0,
    };
    t.say("The fleet operator makes a signing key (and someone else makes another)");
    t.expect_ok("key gen --out operator")?;
    t.expect_ok("key gen --out intruder")?;

    t.say("Build and sign a bundle of the example model; golden cases are run through tract");
    t.expect_ok(
        "bundle create --model mlp.onnx --name mlp --version 1.0.0 --sequence 1 \
         --key operator.key --expires +30d --target generic --range input=-1:1 \
         --golden auto:8 --trial-seconds 2 --out mlp-1.0.0.mint",
    )?;

    t.say("Inspect it, checking the signature against the operator's public key");
    t.expect_ok("bundle inspect mlp-1.0.0.mint --trust operator.pub")?;

    t.say("A device verifies it: every check passes");
    t.expect_ok(
        "bundle verify mlp-1.0.0.mint --trust operator.pub --target generic --min-sequence 1",
    )?;

    t.say("Tamper with the model bytes: the digest check refuses it");
    let header_len = {
        let bytes = fs::read(dir.join("mlp-1.0.0.mint"))?;
        u64::from(u32::from_be_bytes(bytes[8..12].try_into()?))
    };
    let payload = 12 + header_len;
    let size = fs::metadata(dir.join("mlp-1.0.0.mint"))?.len();
    // The model frame is first; its middle is a literal-heavy stretch of weights.
    t.flip(
        "mlp-1.0.0.mint",
        "tampered-model.mint",
        payload + (size - payload) / 4,
    )?;
    // A flipped bit in a zstd frame shows up as a digest mismatch, or earlier as a frame that
    // no longer decodes to its declared size: both refuse the bundle.
    t.expect_refused_by(
        "bundle verify tampered-model.mint --trust operator.pub",
        &["digest", "size"],
    )?;

    t.say("Tamper with the signed manifest: the signature check refuses it");
    t.flip(
        "mlp-1.0.0.mint",
        "tampered-header.mint",
        12 + header_len / 2,
    )?;
    t.expect_refused(
        "bundle verify tampered-header.mint --trust operator.pub",
        "signature",
    )?;

    t.say("A device that trusts only another key refuses the bundle");
    t.expect_refused(
        "bundle verify mlp-1.0.0.mint --trust intruder.pub",
        "signature",
    )?;

    t.say("A device that already runs sequence 2 refuses the older bundle (anti-rollback)");
    t.expect_refused(
        "bundle verify mlp-1.0.0.mint --trust operator.pub --min-sequence 2",
        "rollback",
    )?;

    t.say("Sixty days later the bundle has expired");
    let later = super::ctl::time_arg::now() + 60 * 86_400;
    t.expect_refused(
        &format!("bundle verify mlp-1.0.0.mint --trust operator.pub --now {later}"),
        "expiry",
    )?;

    t.say("A device of another class refuses it");
    t.expect_refused(
        "bundle verify mlp-1.0.0.mint --trust operator.pub --target jetson-nano",
        "target",
    )?;

    device_tour(&mut t, broker)
}

/// The device side: the real `mintd` service installs v1, then a v2 whose golden case fails
/// on the device, and rolls back to v1 by itself.
fn device_tour(t: &mut Tour, broker: Option<&str>) -> anyhow::Result<()> {
    let dir = t.dir.clone();
    t.say("Build v2 of the model, deliberately broken: one golden expectation is wrong");
    t.expect_ok("bundle verify mlp-1.0.0.mint --trust operator.pub --unpack v1-files")?;
    let mut golden: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("v1-files/golden.json"))?)?;
    let value = &mut golden["cases"][0]["outputs"][0]["data"][0];
    *value = serde_json::json!(value.as_f64().unwrap_or(0.0) + 1.0);
    fs::write(dir.join("broken-golden.json"), golden.to_string())?;
    println!("  (added 1.0 to the first expected output of golden case #0)");
    t.expect_ok(
        "bundle create --model mlp.onnx --name mlp --version 2.0.0 --sequence 2 \
         --key operator.key --expires +30d --target generic --golden broken-golden.json \
         --no-golden-check --out mlp-2.0.0.mint",
    )?;

    t.say("Start an MQTT broker for the fleet link");
    let local_broker = match broker {
        Some(addr) => {
            println!("  (using the broker at {addr})");
            None
        }
        None => match Broker::start(&dir)? {
            Some(b) => {
                println!(
                    "  mosquitto on 127.0.0.1:{} (a child process; the demo's embedded broker)",
                    b.port
                );
                Some(b)
            }
            None => {
                println!(
                    "  (mosquitto is not installed: the fleet part is skipped; scripts/deps.sh \
                     installs it)"
                );
                None
            }
        },
    };
    let broker_addr = broker.map(str::to_owned).or_else(|| {
        local_broker
            .as_ref()
            .map(|b| format!("127.0.0.1:{}", b.port))
    });

    t.say("Start the mintd service (a child process) trusting the operator's key");
    let daemon = Daemon::start(&dir, broker_addr.as_deref())?;
    println!(
        "  mintd pid {} ready on {} after {} ms",
        daemon.child.id(),
        daemon.socket.display(),
        daemon.ready_ms
    );
    let socket = format!("--socket {}", daemon.socket.display());

    t.say("Install v1: verified, stored, measured, activated, health-checked, on trial");
    t.expect_ok(&format!("{socket} install mlp-1.0.0.mint"))?;
    wait_committed(&daemon.socket, "mlp", Duration::from_secs(10))?;
    println!("  (the 2 s trial window passed: v1 is committed)");
    t.expect_ok(&format!("{socket} status"))?;

    t.say("Install v2: its golden case fails on the device, so mintd rolls back to v1");
    let before = Instant::now();
    t.expect_refused(&format!("{socket} install mlp-2.0.0.mint"), "health")?;
    println!(
        "  (install, health check and rollback took {} ms)",
        before.elapsed().as_millis()
    );
    t.expect_ok(&format!("{socket} status"))?;

    t.say("The failed v2 is quarantined: the same bundle is refused without a second try");
    t.expect_refused(&format!("{socket} install mlp-2.0.0.mint"), "quarantine")?;
    t.expect_ok(&format!("{socket} models"))?;

    t.say("Local inference through the daemon; the guard refuses a hostile request");
    let request = |first: f64| {
        let mut data = vec![0.1f64; 16];
        data[0] = first;
        serde_json::json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": data}]})
            .to_string()
    };
    fs::write(dir.join("request.json"), request(0.5))?;
    fs::write(dir.join("hostile.json"), request(1e39))?;
    t.expect_ok(&format!("{socket} infer mlp --input request.json"))?;
    println!("  (hostile.json: the first value is 1e39, infinity as FP32)");
    t.expect_failed(
        &format!("{socket} infer mlp --input hostile.json"),
        "NaN and infinite values are refused",
    )?;

    t.say("The timeline, as the daemon recorded it");
    t.expect_ok(&format!("{socket} events --limit 50"))?;

    if let Some(addr) = broker_addr {
        fleet_view(t, &addr)?;
    }
    drop(daemon);
    drop(local_broker);
    Ok(())
}

/// What the fleet sees of the device: one telemetry message, then `mintctl fleet watch`.
fn fleet_view(t: &mut Tour, addr: &str) -> anyhow::Result<()> {
    t.say("Telemetry: the device reports over MQTT (flat JSON every 2 s, through the outbox)");
    let args = ctl::fleet::BrokerArgs {
        broker: addr.to_owned(),
        ca: None,
        cert: None,
        key: None,
        client_id: None,
    };
    let (client, mut connection) = ctl::fleet::connect(&args, "demo")?;
    client.subscribe("mint/v1/demo-device/telemetry", rumqttc::QoS::AtLeastOnce)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let telemetry = loop {
        if Instant::now() > deadline {
            bail!("no telemetry from the device within 10 s");
        }
        if let Ok(Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p)))) =
            connection.recv_timeout(Duration::from_millis(500))
        {
            break serde_json::from_slice::<serde_json::Value>(&p.payload)?;
        }
    };
    let _ = client.disconnect();
    println!("  mint/v1/demo-device/telemetry:");
    println!("  {}", serde_json::to_string(&telemetry)?);

    t.say("The fleet view: what an operator's `mintctl fleet watch` shows");
    t.expect_ok(&format!("fleet watch --broker {addr} --duration 2"))?;
    Ok(())
}

/// The demo's broker: mosquitto as a child process on a free loopback port, stopped on drop.
struct Broker {
    child: std::process::Child,
    port: u16,
}

impl Broker {
    /// `None` when mosquitto is not installed.
    fn start(dir: &Path) -> anyhow::Result<Option<Broker>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.join("mosquitto.conf");
        fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest file {}\n",
                dir.join("mosquitto.log").display()
            ),
        )?;
        let child = match std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("cannot start mosquitto"),
        };
        let mut broker = Broker { child, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = broker.child.try_wait()? {
                bail!(
                    "mosquitto exited ({status}); see {}",
                    dir.join("mosquitto.log").display()
                );
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("mosquitto did not listen on {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Some(broker))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `mintd` child process on a temporary config, stopped on drop.
struct Daemon {
    child: std::process::Child,
    socket: PathBuf,
    ready_ms: u128,
}

impl Daemon {
    fn start(dir: &Path, broker: Option<&str>) -> anyhow::Result<Self> {
        let trust = dir.join("trust.d");
        fs::create_dir_all(&trust)?;
        fs::copy(dir.join("operator.pub"), trust.join("operator.pub"))?;
        let socket = dir.join("mintd.sock");
        let mut config = format!(
            "[device]\nid = \"demo-device\"\nclass = \"generic\"\n\n[paths]\nstate_dir = {:?}\nsocket = {:?}\n\n[trust]\nkeys_dir = {:?}\n",
            dir.join("state"),
            socket,
            trust
        );
        if let Some(addr) = broker {
            let (host, port) = ctl::fleet::BrokerArgs {
                broker: addr.to_owned(),
                ca: None,
                cert: None,
                key: None,
                client_id: None,
            }
            .host_port()?;
            config.push_str(&format!(
                "\n[mqtt]\nenabled = true\nhost = {host:?}\nport = {port}\nkeepalive_secs = 5\n\
                 telemetry_interval_secs = 2\n"
            ));
        }
        fs::write(dir.join("mintd.toml"), config)?;
        let log = fs::File::create(dir.join("mintd.log"))?;
        let start = Instant::now();
        let child = std::process::Command::new(std::env::current_exe()?)
            .arg("--config")
            .arg(dir.join("mintd.toml"))
            .env("MINT_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start mintd")?;
        let mut daemon = Daemon {
            child,
            socket,
            ready_ms: 0,
        };
        let client = crate::client::Client::new(&daemon.socket);
        loop {
            if client.get("/v2/health/ready").is_ok() {
                break;
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "mintd exited ({status}) before it was ready; see {}",
                    dir.join("mintd.log").display()
                );
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "mintd was not ready after 30 s; see {}",
                    dir.join("mintd.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        daemon.ready_ms = start.elapsed().as_millis();
        Ok(daemon)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_committed(socket: &Path, name: &str, timeout: Duration) -> anyhow::Result<()> {
    let client = crate::client::Client::new(socket);
    let start = Instant::now();
    loop {
        let models = client.get("/v1/models")?;
        let committed =
            models["models"].as_array().into_iter().flatten().any(|m| {
                m["name"] == name && m["committed"].is_object() && m["candidate"].is_null()
            });
        if committed {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "{name} was not committed within {} s: {models}",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
