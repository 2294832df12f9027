//! `mintctl fleet ...`: the operator's side of the MQTT fleet link. Each subcommand is a
//! module; [`BrokerArgs`] and [`connect`] are shared by all of them.

pub mod events;
pub mod push;
pub mod view;
pub mod watch;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rumqttc::{Client, Connection, Event, Incoming, MqttOptions, TlsConfiguration, Transport};

/// `mintctl fleet` subcommands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Live table of the fleet: device, online, model, version, last seen, alerts
    /// (`--json`: one JSON line per change).
    Watch(watch::WatchArgs),
    /// Print the fleet's events as they arrive, de-duplicated by event id.
    Events(events::EventsArgs),
    /// Sign a command (install, rollback, report) with a fleet key, publish it to one
    /// device, a list or the fleet, and print the results.
    Push(Box<push::PushArgs>),
}

/// Runs a `mintctl fleet` subcommand.
pub fn run(cmd: &FleetCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Watch(args) => watch::run(args, json),
        FleetCommand::Events(args) => events::run(args, json),
        FleetCommand::Push(args) => push::run(args, json),
    }
}

/// How to reach the broker (shared by every `mintctl fleet` subcommand).
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    /// Broker address, HOST:PORT (port 1883, or 8883 with --ca, when left out).
    #[arg(long, default_value = "127.0.0.1")]
    pub broker: String,
    /// PEM CA certificate(s) of the broker: connect with TLS.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (needs --key).
    #[arg(long, requires = "key")]
    pub cert: Option<PathBuf>,
    /// PEM PKCS#8 private key of the client certificate (needs --cert).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// MQTT client id (default: mintctl-PID).
    #[arg(long)]
    pub client_id: Option<String>,
}

impl BrokerArgs {
    /// Host and port.
    pub fn host_port(&self) -> anyhow::Result<(String, u16)> {
        let default_port = if self.ca.is_some() { 8883 } else { 1883 };
        match self.broker.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && !host.ends_with(':') => {
                let port: u16 = port.parse().with_context(|| {
                    format!(
                        "--broker {}: the port {port:?} is not a number 1..65535",
                        self.broker
                    )
                })?;
                if port == 0 {
                    bail!("--broker {}: port 0 is not a broker port", self.broker);
                }
                Ok((host.trim_matches(|c| c == '[' || c == ']').to_owned(), port))
            }
            _ if self.broker.is_empty() => bail!("--broker is empty; give HOST or HOST:PORT"),
            _ => Ok((self.broker.clone(), default_port)),
        }
    }
}

/// Connects to the broker and waits for its CONNACK (at most 10 s), so that an unreachable
/// broker or a refused certificate is one clear error, not a silent wait.
pub fn connect(args: &BrokerArgs, what: &str) -> anyhow::Result<(Client, Connection)> {
    let (host, port) = args.host_port()?;
    let id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("mintctl-{what}-{}", std::process::id()));
    let mut options = MqttOptions::new(id, host.clone(), port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    if let Some(ca) = &args.ca {
        let connector =
            crate::fleet::link::tls_connector(ca, args.cert.as_deref().zip(args.key.as_deref()))?;
        options.set_transport(Transport::tls_with_config(
            TlsConfiguration::NativeConnector(connector),
        ));
    }
    let (client, mut connection) = Client::new(options, 64);
    loop {
        match connection.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => return Ok((client, connection)),
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => bail!("cannot connect to the MQTT broker {host}:{port}: {e}"),
            Err(_) => bail!("no answer from the MQTT broker {host}:{port} within 10 s"),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    crate::fleet::payload::now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(broker: &str, tls: bool) -> BrokerArgs {
        BrokerArgs {
            broker: broker.into(),
            ca: tls.then(|| PathBuf::from("/ca.pem")),
            cert: None,
            key: None,
            client_id: None,
        }
    }

    #[test]
    fn broker_addresses_parse_or_say_why_not() {
        assert_eq!(
            args("h:1884", false).host_port().unwrap(),
            ("h".into(), 1884)
        );
        assert_eq!(args("h", false).host_port().unwrap(), ("h".into(), 1883));
        assert_eq!(args("h", true).host_port().unwrap(), ("h".into(), 8883));
        assert_eq!(
            args("[::1]:1", false).host_port().unwrap(),
            ("::1".into(), 1)
        );
        let e = args("h:x", false).host_port().unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
        let e = args("h:0", false).host_port().unwrap_err().to_string();
        assert!(e.contains("port 0"), "{e}");
        assert!(args("", false).host_port().is_err());
    }
}
