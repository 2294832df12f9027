//! `mintctl fleet push`: signs a command with a fleet key and publishes it to one device, a
//! list of devices (one command each, on each device's `cmd` topic) or the fleet (one command
//! on the broadcast topic `mint/v1/fleet/cmd`, target `*` or a selector), then waits for the
//! results on `mint/v1/+/cmd/result` and prints them.
//!
//! ```text
//! mintctl fleet push --key fleet.key --broker mqtt.example:8883 --ca ca.pem \
//!     --device cam-17 --device cam-18 install https://models.example/m-2.mint --bundle m-2.mint
//! mintctl fleet push --key fleet.key --all rollback m
//! mintctl fleet push --key fleet.key --target class:cam --expect 40 report
//! ```
//!
//! Exit status 0 only if every addressed device answered with `succeeded` within
//! `--timeout`; an `install` answers `accepted` first, then its outcome.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use mint_updater::OperatorKey;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS, TlsConfiguration, Transport};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::ctl::time_arg;
use crate::fleet::command::{self, Payload, Selector, TargetField};
use crate::fleet::topics;

/// `mintctl fleet push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Fleet signing key (PKCS#8 PEM); its public half must be in the devices'
    /// `trust.fleet_keys`.
    #[arg(long)]
    pub key: PathBuf,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// A device to command (repeat, or separate with commas); each gets its own command on
    /// its own `cmd` topic.
    #[arg(long = "device", value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Every device: one command on the broadcast topic, target `*`.
    #[arg(long, conflicts_with_all = ["devices", "target"])]
    pub all: bool,
    /// One command on the broadcast topic for the devices this selector names
    /// (`class:NAME`, `arch:NAME`, `device:ID`).
    #[arg(long, conflicts_with = "devices")]
    pub target: Option<String>,
    /// When the command expires: `+10m`, RFC 3339 or unix seconds.
    #[arg(long, default_value = "+10m")]
    pub expires: String,
    /// Seconds to wait for the results (0: publish and leave).
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    /// With `--all` or `--target`: stop waiting once this many devices gave a final result.
    #[arg(long)]
    pub expect: Option<usize>,
    /// The command.
    #[command(subcommand)]
    pub command: PushCommand,
}

/// Connection to the broker. Like the other `fleet` commands' options, except that the TLS
/// client certificate is `--tls-cert`/`--tls-key` (`--key` is the signing key here).
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Broker address, HOST:PORT (port 1883, or 8883 with --ca, when left out).
    #[arg(long, default_value = "127.0.0.1")]
    pub broker: String,
    /// PEM CA certificate(s) of the broker: connect with TLS.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate for TLS (needs --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM PKCS#8 private key of the client certificate (needs --tls-cert).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// MQTT client id (default: `mintctl-push-` and random hex).
    #[arg(long)]
    pub client_id: Option<String>,
}

impl BrokerArgs {
    /// MQTT options for this broker (TLS when `--ca` is given).
    pub fn options(&self) -> anyhow::Result<MqttOptions> {
        let (host, port) = super::BrokerArgs {
            broker: self.broker.clone(),
            ca: self.ca.clone(),
            cert: None,
            key: None,
            client_id: None,
        }
        .host_port()?;
        let id = match &self.client_id {
            Some(id) => id.clone(),
            None => format!("mintctl-push-{}", &random_hex(6)?),
        };
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(true);
        options.set_max_packet_size(1024 * 1024, 1024 * 1024);
        if let Some(ca) = &self.ca {
            let connector = crate::fleet::link::tls_connector(
                ca,
                self.tls_cert.as_deref().zip(self.tls_key.as_deref()),
            )?;
            options.set_transport(Transport::tls_with_config(
                TlsConfiguration::NativeConnector(connector),
            ));
        }
        Ok(options)
    }
}

/// What to command.
#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Download a bundle from URL and install it.
    Install {
        /// `http://` or `https://` URL the devices download the bundle from.
        url: String,
        /// The bundle file: its SHA-256 and size are signed into the command.
        #[arg(long, conflicts_with_all = ["sha256", "size"])]
        bundle: Option<PathBuf>,
        /// SHA-256 of the bundle file (without `--bundle`).
        #[arg(long, requires = "size")]
        sha256: Option<String>,
        /// Size of the bundle file in bytes (without `--bundle`).
        #[arg(long, requires = "sha256")]
        size: Option<u64>,
    },
    /// Roll model NAME back.
    Rollback {
        /// Model name.
        name: String,
    },
    /// Republish status and inventory now.
    Report,
}

/// One command sent.
#[derive(Debug, Clone)]
struct Sent {
    topic: String,
    nonce: String,
    /// The device it was addressed to, for per-device commands.
    device: Option<String>,
}

/// Runs `mintctl fleet push`.
pub fn run(args: &PushArgs, json_out: bool) -> anyhow::Result<()> {
    let key = OperatorKey::load(&args.key).context("cannot load the fleet signing key")?;
    let (name, cmd_args) = command_of(&args.command)?;
    let now = time_arg::now();
    let expires_at =
        time_arg::parse(&args.expires, now).map_err(|e| anyhow::anyhow!("--expires {e}"))?;
    if expires_at <= now {
        bail!("--expires {} is in the past", args.expires);
    }
    if expires_at - now > command::MAX_LIFETIME_SECS {
        bail!(
            "--expires {}: a command may live at most {} days",
            args.expires,
            command::MAX_LIFETIME_SECS / 86_400
        );
    }
    let mut plan: Vec<(String, Option<String>, TargetField)> = Vec::new();
    if args.all {
        plan.push((
            topics::FLEET_CMD.to_owned(),
            None,
            TargetField::One("*".into()),
        ));
    } else if let Some(t) = &args.target {
        Selector::parse(t).map_err(|e| anyhow::anyhow!("--target: {e}"))?;
        plan.push((
            topics::FLEET_CMD.to_owned(),
            None,
            TargetField::One(t.clone()),
        ));
    } else if args.devices.is_empty() {
        bail!("say who to command: --device ID (repeatable), --target SELECTOR or --all");
    } else {
        let unique: BTreeSet<&String> = args.devices.iter().collect();
        for d in unique {
            match Selector::parse(d) {
                Ok(Selector::Device(id)) if id == *d => {}
                _ => bail!("--device {d:?} is not a device id ([A-Za-z0-9._-], 1 to 64)"),
            }
            plan.push((
                topics::Topics::new(d).cmd(),
                Some(d.clone()),
                TargetField::One(d.clone()),
            ));
        }
    }
    let mut messages = Vec::new();
    let mut sent = Vec::new();
    for (topic, device, target) in plan {
        let payload = Payload {
            v: command::PAYLOAD_VERSION,
            command: name.to_owned(),
            args: cmd_args.clone(),
            nonce: random_hex(16)?,
            issued_at: now,
            expires_at,
            target,
        };
        let bytes = command::sign(&payload, &key).context("cannot sign the command")?;
        sent.push(Sent {
            topic: topic.clone(),
            nonce: payload.nonce.clone(),
            device,
        });
        messages.push((topic, bytes));
    }
    let options = args.broker.options()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let broadcast = args.all || args.target.is_some();
    let results = runtime.block_on(exchange(
        options,
        messages,
        &sent,
        Duration::from_secs(args.timeout),
        if broadcast {
            args.expect
        } else {
            Some(sent.len())
        },
        json_out,
    ))?;
    finish(args, &sent, &results, json_out)
}

fn command_of(c: &PushCommand) -> anyhow::Result<(&'static str, Value)> {
    Ok(match c {
        PushCommand::Install {
            url,
            bundle,
            sha256,
            size,
        } => {
            command::check_url(url).map_err(|e| anyhow::anyhow!("{e}"))?;
            let (sha, size) = match (bundle, sha256, size) {
                (Some(path), _, _) => {
                    let mut f = std::fs::File::open(path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    let mut hasher = Sha256::new();
                    let mut buf = vec![0u8; 1 << 16];
                    let mut total = 0u64;
                    loop {
                        let n = f
                            .read(&mut buf)
                            .with_context(|| format!("cannot read {}", path.display()))?;
                        if n == 0 {
                            break;
                        }
                        hasher.update(&buf[..n]);
                        total += n as u64;
                    }
                    (hex::encode(hasher.finalize()), total)
                }
                (None, Some(s), Some(n)) => (s.to_ascii_lowercase(), *n),
                _ => bail!("install needs --bundle FILE, or --sha256 and --size"),
            };
            ("install", json!({"url": url, "sha256": sha, "size": size}))
        }
        PushCommand::Rollback { name } => ("rollback", json!({"name": name})),
        PushCommand::Report => ("report", json!({})),
    })
}

/// Final statuses (an install's `accepted` is not final).
fn is_final(result: &Value) -> bool {
    matches!(
        result["status"].as_str(),
        Some("succeeded" | "failed" | "refused")
    )
}

/// Subscribes to the results, publishes, and collects results until every expected device
/// gave a final one or the timeout passed. Returns every result of our nonces.
async fn exchange(
    options: MqttOptions,
    messages: Vec<(String, Vec<u8>)>,
    sent: &[Sent],
    timeout: Duration,
    expect: Option<usize>,
    json_out: bool,
) -> anyhow::Result<Vec<Value>> {
    let (client, mut events) = AsyncClient::new(options, 64);
    let nonces: BTreeSet<&str> = sent.iter().map(|s| s.nonce.as_str()).collect();
    let result_filter = format!("{}/+/cmd/result", topics::ROOT);
    let mut results = Vec::new();
    let mut finals: BTreeSet<String> = BTreeSet::new();
    let mut published = false;
    let mut acked = 0usize;
    let connect_deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut deadline = None;
    loop {
        let until = deadline.unwrap_or(connect_deadline);
        let event = match tokio::time::timeout_at(until, events.poll()).await {
            Err(_) if deadline.is_none() => bail!("no answer from the broker within 15 s"),
            Err(_) => break,
            Ok(Err(e)) => {
                if published {
                    bail!("lost the broker connection while waiting for results: {e}");
                }
                bail!("cannot connect to the broker: {e}");
            }
            Ok(Ok(event)) => event,
        };
        match event {
            Event::Incoming(Incoming::ConnAck(_)) => {
                client
                    .subscribe(&result_filter, QoS::AtLeastOnce)
                    .await
                    .context("cannot subscribe to the results")?;
            }
            Event::Incoming(Incoming::SubAck(_)) if !published => {
                for (topic, bytes) in &messages {
                    client
                        .publish(topic, QoS::AtLeastOnce, false, bytes.clone())
                        .await
                        .context("cannot publish the command")?;
                }
                published = true;
            }
            Event::Incoming(Incoming::PubAck(_)) => {
                acked += 1;
                if acked == messages.len() {
                    if !json_out {
                        eprintln!(
                            "published {} command(s); waiting up to {} s for results",
                            messages.len(),
                            timeout.as_secs()
                        );
                    }
                    if timeout.is_zero() {
                        break;
                    }
                    deadline = Some(tokio::time::Instant::now() + timeout);
                }
            }
            Event::Incoming(Incoming::Publish(p)) => {
                let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                    continue;
                };
                let Some(nonce) = v["nonce"].as_str() else {
                    continue;
                };
                if !nonces.contains(nonce) {
                    continue;
                }
                if !json_out {
                    println!("{}", human(&v));
                }
                if is_final(&v) {
                    finals.insert(format!("{}/{}", v["device"].as_str().unwrap_or("?"), nonce));
                }
                results.push(v);
                if expect.is_some_and(|n| finals.len() >= n) {
                    break;
                }
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    Ok(results)
}

fn human(v: &Value) -> String {
    let mut line = format!(
        "{}: {} {}",
        v["device"].as_str().unwrap_or("?"),
        v["command"].as_str().unwrap_or("?"),
        v["status"].as_str().unwrap_or("?"),
    );
    if let Some(reason) = v["reason"].as_str() {
        line.push_str(&format!(" ({reason})"));
    }
    if let Some(error) = v["error"].as_str() {
        line.push_str(&format!(": {error}"));
    }
    let d = &v["details"];
    if let Some(outcome) = d["outcome"].as_str() {
        let m = &d["model"];
        line.push_str(&format!(
            ": {outcome} {} {} (sequence {})",
            m["name"].as_str().unwrap_or("?"),
            m["version"].as_str().unwrap_or("?"),
            m["sequence"]
        ));
    }
    line
}

/// Prints the summary and decides the exit status.
fn finish(args: &PushArgs, sent: &[Sent], results: &[Value], json_out: bool) -> anyhow::Result<()> {
    // The last final result per (device, nonce).
    let mut last: BTreeMap<(String, String), &Value> = BTreeMap::new();
    for r in results.iter().filter(|r| is_final(r)) {
        let device = r["device"].as_str().unwrap_or("?").to_owned();
        let nonce = r["nonce"].as_str().unwrap_or("").to_owned();
        last.insert((device, nonce), r);
    }
    let missing: Vec<String> = sent
        .iter()
        .filter_map(|s| s.device.clone().map(|d| (d, s.nonce.clone())))
        .filter(|k| !last.contains_key(k))
        .map(|(d, _)| d)
        .collect();
    let failed: Vec<String> = last
        .iter()
        .filter(|(_, r)| r["status"] != "succeeded")
        .map(|((d, _), r)| format!("{d}: {}", r["reason"].as_str().unwrap_or("failed")))
        .collect();
    let expected_more =
        args.expect.is_some_and(|n| last.len() < n) && (args.all || args.target.is_some());
    let ok = args.timeout == 0 || (missing.is_empty() && failed.is_empty() && !expected_more);
    if json_out {
        let doc = json!({
            "ok": ok,
            "commands": sent.iter().map(|s| json!({"topic": s.topic, "nonce": s.nonce, "device": s.device})).collect::<Vec<_>>(),
            "results": results,
            "missing": missing,
        });
        println!("{doc}");
        if !ok {
            // The document above is the output; the exit status says it failed.
            std::process::exit(crate::exit::Exit::Failure as i32);
        }
        return Ok(());
    }
    if !ok {
        let mut parts = Vec::new();
        if !failed.is_empty() {
            parts.push(format!("not succeeded: {}", failed.join(", ")));
        }
        if !missing.is_empty() {
            parts.push(format!(
                "no final result within {} s from: {}",
                args.timeout,
                missing.join(", ")
            ));
        }
        if expected_more {
            parts.push(format!(
                "{} of the {} expected devices answered",
                last.len(),
                args.expect.unwrap_or(0)
            ));
        }
        bail!("fleet push: {}", parts.join("; "));
    }
    Ok(())
}

/// `n` random bytes as hex, from the OS.
fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("cannot read /dev/urandom")?;
    Ok(hex::encode(buf))
}
