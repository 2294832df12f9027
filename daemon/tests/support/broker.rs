//! A real mosquitto for tests (Debian package `mosquitto`, installed by `scripts/deps.sh`):
//! started on a free loopback port with a generated configuration, killed with SIGKILL and
//! restarted on the same port when a test wants an outage, stopped on drop. Also: TLS
//! material made by the `openssl` command line, and [`Watcher`], a subscriber (rumqttc) that
//! collects every message of the fleet topics across broker restarts.
//!
//! Use: `mod support;` then `support::broker::Broker::start()`; `broker.port`, `broker.kill()`,
//! `broker.restart()`, `Broker::start_tls(&certs)`; `Watcher::new(&broker, "mint/v1/#")`.

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use serde_json::Value;

/// A free TCP port on 127.0.0.1 (bound and released; mosquitto binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// TLS files made with `openssl`: a CA, a server certificate for `localhost`/127.0.0.1 and a
/// client certificate (keys in PKCS#8 PEM), all signed by the CA; plus a second, untrusted CA
/// with its own client certificate.
pub struct Certs {
    /// The directory holding them.
    pub dir: PathBuf,
}

impl Certs {
    /// Generates everything in `dir`.
    pub fn generate(dir: &Path) -> Certs {
        fs::create_dir_all(dir).expect("cert dir");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("spawn openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "rogue-ca"] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=mintd test {ca}"),
            ]);
        }
        fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, ca, ext) in [
            ("server", "ca", "server.ext"),
            ("client", "ca", "client.ext"),
            ("rogue", "rogue-ca", "client.ext"),
        ] {
            run(&[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &format!("{name}.key"),
            ]);
            run(&[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={}", if name == "server" { "localhost" } else { name }),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                ext,
            ]);
        }
        Certs {
            dir: dir.to_owned(),
        }
    }

    /// A file of the set (`ca.pem`, `client.pem`, `client.key`, `rogue.pem`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// A running mosquitto.
pub struct Broker {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    /// Whether the listener is TLS (client certificates required).
    pub tls: bool,
}

impl Broker {
    /// A plain broker, anonymous access, persistence on (saved after every change, so a
    /// persistent subscriber's session survives a SIGKILL).
    pub fn start() -> Broker {
        Self::launch(None)
    }

    /// A TLS broker requiring a client certificate signed by `certs`' CA.
    pub fn start_tls(certs: &Certs) -> Broker {
        Self::launch(Some(certs))
    }

    fn launch(certs: Option<&Certs>) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("mosq")
            .tempdir_in("/tmp")
            .expect("broker dir");
        let port = free_port();
        let mut conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
             persistence_location {}/\nautosave_interval 1\nautosave_on_changes true\n\
             max_queued_messages 100000\nmax_inflight_messages 0\nlog_dest file {}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            dir.path().display(),
            dir.path().display()
        );
        if nix::unistd::geteuid().is_root() {
            conf.push_str("user root\n");
        }
        if let Some(c) = certs {
            conf.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                c.path("ca.pem").display(),
                c.path("server.pem").display(),
                c.path("server.key").display()
            ));
        }
        fs::write(dir.path().join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut broker = Broker {
            child: None,
            port,
            dir,
            tls: certs.is_some(),
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto (apt-get install mosquitto, or scripts/deps.sh)");
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mosquitto exited ({status}) at start; log:\n{}", self.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "mosquitto not listening on {} after 10 s; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// SIGKILL: the broker vanishes without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the broker stays connected and reads nothing. What clients send waits in its
    /// sockets' receive queues (see [`Broker::unread_bytes`]), unacknowledged; a
    /// [`Broker::kill`] then loses it.
    pub fn pause(&self) {
        let child = self.child.as_ref().expect("the broker runs");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP mosquitto");
    }

    /// Bytes that clients sent and the broker has not read yet: the receive queues of its
    /// established connections (`/proc/net/tcp`, IPv4 loopback).
    pub fn unread_bytes(&self) -> u64 {
        let table = fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        let port = format!(":{:04X}", self.port);
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // local address, remote address, state (01: established), tx:rx queues.
                let (local, state, queues) = (fields.get(1)?, fields.get(3)?, fields.get(4)?);
                (local.ends_with(&port) && *state == "01").then_some(*queues)
            })
            .filter_map(|queues| u64::from_str_radix(queues.split(':').nth(1)?, 16).ok())
            .sum()
    }

    /// Starts it again on the same port (after [`Broker::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Whether it runs.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One message seen by a [`Watcher`].
#[derive(Debug, Clone)]
pub struct Seen {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// Delivered as a retained message (a subscriber that came later).
    pub retain: bool,
}

impl Seen {
    /// The payload as JSON (panics naming the topic if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "{} carries no JSON ({e}): {}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// A subscriber on a thread: a persistent session (clean session off, QoS 1), so a broker
/// with persistence queues for it while it reconnects after a restart.
pub struct Watcher {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connected, with the subscription in place (its session's or made again).
    connected: Arc<AtomicBool>,
    client: Client,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Subscribes to `filter` on `broker` and waits for the subscription to be acknowledged.
    pub fn new(broker: &Broker, filter: &str) -> Watcher {
        Self::with_tls(broker, filter, None)
    }

    /// As [`Watcher::new`], over TLS with the client certificate of `certs`.
    pub fn with_tls(broker: &Broker, filter: &str, certs: Option<&Certs>) -> Watcher {
        let id = format!("watcher-{}-{}", std::process::id(), free_port());
        let mut options = MqttOptions::new(id, "localhost", broker.port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some(c) = certs {
            let mut b = native_tls::TlsConnector::builder();
            b.disable_built_in_roots(true);
            b.add_root_certificate(
                native_tls::Certificate::from_pem(&fs::read(c.path("ca.pem")).unwrap()).unwrap(),
            );
            b.identity(
                native_tls::Identity::from_pkcs8(
                    &fs::read(c.path("client.pem")).unwrap(),
                    &fs::read(c.path("client.key")).unwrap(),
                )
                .unwrap(),
            );
            options.set_transport(Transport::tls_with_config(
                TlsConfiguration::NativeConnector(b.build().unwrap()),
            ));
        }
        let (client, mut connection) = Client::new(options, 64);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .expect("subscribe");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let seen = seen.clone();
            let connected = connected.clone();
            let client = client.clone();
            let filter = filter.to_owned();
            std::thread::spawn(move || {
                let mut ready = Some(ready_tx);
                for ev in connection.iter() {
                    match ev {
                        Ok(Event::Incoming(Incoming::Publish(p))) => {
                            seen.lock().unwrap().push(Seen {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            });
                        }
                        Ok(Event::Incoming(Incoming::SubAck(_))) => {
                            connected.store(true, Ordering::Release);
                            if let Some(r) = ready.take() {
                                let _ = r.send(());
                            }
                        }
                        Ok(Event::Incoming(Incoming::ConnAck(c))) => {
                            if c.session_present {
                                connected.store(true, Ordering::Release);
                            } else if ready.is_none() {
                                // A broker that lost our session needs the subscription again
                                // (its SubAck marks the watcher connected).
                                let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
                            }
                        }
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(_) => {
                            connected.store(false, Ordering::Release);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("watcher subscribed within 10 s");
        Watcher {
            seen,
            connected,
            client,
            thread: Some(thread),
        }
    }

    /// Waits until the watcher is connected with its subscription in place. A broker acks a
    /// QoS 1 message before it saves it: killed in between while this subscriber is away, it
    /// loses what it had queued for it, which no publisher can prevent.
    pub fn wait_connected(&self, timeout: Duration) {
        let start = Instant::now();
        while !self.connected.load(Ordering::Acquire) {
            assert!(
                start.elapsed() < timeout,
                "watcher not connected again within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Messages seen on topics ending with `/{leaf}`.
    pub fn on(&self, leaf: &str) -> Vec<Seen> {
        let suffix = format!("/{leaf}");
        self.seen()
            .into_iter()
            .filter(|s| s.topic.ends_with(&suffix))
            .collect()
    }

    /// Waits until `pred` holds for what was seen (panics after `timeout`, naming `what`).
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&[Seen]) -> bool) {
        let start = Instant::now();
        loop {
            if pred(&self.seen.lock().unwrap()) {
                return;
            }
            if start.elapsed() > timeout {
                let seen = self.seen();
                let tail: Vec<String> = seen
                    .iter()
                    .rev()
                    .take(10)
                    .map(|s| format!("{} {}", s.topic, String::from_utf8_lossy(&s.payload)))
                    .collect();
                panic!(
                    "waited {timeout:?} for {what}; {} messages seen, the last: {tail:#?}",
                    seen.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The newest message on `leaf` whose JSON satisfies `pred`.
    pub fn last_json(&self, leaf: &str) -> Option<Value> {
        self.on(leaf).last().map(Seen::json)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
        if let Some(t) = self.thread.take() {
            // The thread ends with the connection; do not hang a test on a dead broker.
            let start = Instant::now();
            while !t.is_finished() && start.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Writes `[mqtt]` settings for `broker` into a daemon configuration (plus TLS with the
/// client certificate of `certs` when given).
pub fn mqtt_config(config: &mut super::Config, broker: &Broker, certs: Option<&Certs>) {
    config.set("mqtt", "enabled", "true");
    config.set(
        "mqtt",
        "host",
        if certs.is_some() {
            "\"localhost\""
        } else {
            "\"127.0.0.1\""
        },
    );
    config.set("mqtt", "port", &broker.port.to_string());
    config.set("mqtt", "keepalive_secs", "5");
    config.set("mqtt", "telemetry_interval_secs", "1");
    if let Some(c) = certs {
        config.set("mqtt.tls", "ca", &super::toml_str(&c.path("ca.pem")));
        config.set("mqtt.tls", "cert", &super::toml_str(&c.path("client.pem")));
        config.set("mqtt.tls", "key", &super::toml_str(&c.path("client.key")));
    }
}

/// Appends `line` to a file (test logs).
pub fn append(path: &Path, line: &str) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}
