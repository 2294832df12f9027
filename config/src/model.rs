//! The configuration sections and their built-in defaults.
//!
//! Every section is `#[serde(deny_unknown_fields, default)]`: a key left out takes its default,
//! a key that is not known (a typo such as `trust.treshold`) is an error that names it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One KiB.
const KIB: u64 = 1024;
/// One MiB.
const MIB: u64 = 1024 * KIB;
/// One GiB.
const GIB: u64 = 1024 * MIB;

/// The whole mintd configuration, as read from `mintd.toml`.
///
/// `Config::default()` is exactly what an empty file gives, and it validates.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Who this device is: its identity in MQTT topics and the targets a bundle may name.
    pub device: Device,
    /// Where mintd keeps its state and its socket.
    pub paths: Paths,
    /// Which operator keys may sign bundles and fleet commands.
    pub trust: Trust,
    /// Size bounds applied while a bundle is verified, before anything is trusted.
    pub limits: Limits,
    /// The update lifecycle: store retention, health check, trial window.
    pub update: Update,
    /// The local inference and management API.
    pub api: Api,
    /// Watching what is served: drift, request-rate spikes, store re-verification.
    pub monitor: Monitor,
    /// Reporting to, and commands from, the fleet over MQTT.
    pub mqtt: Mqtt,
    /// TPM or software attestation of the models that were activated.
    pub attest: Attest,
    /// Logging.
    pub log: Log,
}

/// `[device]`: the identity of this device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Device {
    /// Device id, one MQTT topic level (`mint/v1/{id}/…`): 1 to 64 of `[A-Za-z0-9._-]`.
    pub id: String,
    /// Device class, matched against a bundle's `targets`.
    pub class: String,
    /// CPU architecture, matched against a bundle's `targets` (default: the build's
    /// `std::env::consts::ARCH`, e.g. `aarch64`, `arm`, `x86_64`).
    pub arch: String,
}

impl Default for Device {
    fn default() -> Self {
        Self {
            id: "mintd-device".to_owned(),
            class: "generic".to_owned(),
            arch: std::env::consts::ARCH.to_owned(),
        }
    }
}

/// `[paths]`: where mintd keeps its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// State directory: model store, staging area, database, outbox.
    pub state_dir: PathBuf,
    /// The Unix socket the inference and management API listens on.
    pub socket: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/mintd"),
            socket: PathBuf::from("/run/mintd/mintd.sock"),
        }
    }
}

impl Paths {
    /// The content-addressed model store: `state_dir/store`.
    pub fn store_dir(&self) -> PathBuf {
        self.state_dir.join("store")
    }

    /// Where bundles are downloaded and verified before anything is installed:
    /// `state_dir/staging`.
    pub fn staging_dir(&self) -> PathBuf {
        self.state_dir.join("staging")
    }

    /// The durable state database: `state_dir/mintd.redb`.
    pub fn database(&self) -> PathBuf {
        self.state_dir.join("mintd.redb")
    }

    /// The durable MQTT outbox: `state_dir/outbox`.
    pub fn outbox_dir(&self) -> PathBuf {
        self.state_dir.join("outbox")
    }
}

/// `[trust]`: the keys this device trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Trust {
    /// SPKI PEM Ed25519 public keys of the operators allowed to sign bundles.
    pub keys: Vec<PathBuf>,
    /// A directory whose every `*.pub` file is also a trusted bundle key. In TOML, `""` means
    /// no directory.
    #[serde(with = "optional_path")]
    pub keys_dir: Option<PathBuf>,
    /// How many distinct trusted keys must sign a bundle.
    pub threshold: u32,
    /// SPKI PEM Ed25519 public keys allowed to sign MQTT fleet commands.
    pub fleet_keys: Vec<PathBuf>,
    /// Tolerated clock difference, in seconds, when checking issue and expiry times.
    pub clock_skew_secs: u64,
}

impl Default for Trust {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            keys_dir: Some(PathBuf::from("/etc/mintd/trust.d")),
            threshold: 1,
            fleet_keys: Vec::new(),
            clock_skew_secs: 300,
        }
    }
}

/// `[limits]`: bounds enforced while a bundle streams in, so that a hostile bundle cannot make
/// the device read, write or allocate without end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest signed header (COSE_Sign over the manifest) accepted, in bytes.
    pub max_header_bytes: u64,
    /// Largest plain (decompressed) file in a bundle, in bytes.
    pub max_file_bytes: u64,
    /// Most files a bundle may hold.
    pub max_files: u32,
    /// Largest bundle, header and payload together, in bytes.
    pub max_bundle_bytes: u64,
    /// Largest zstd window (log2 bytes) a decoder accepts; frames wanting more are refused
    /// so that a hostile frame cannot make the device allocate. 10..=27.
    pub max_zstd_window_log: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 256 * KIB,
            max_file_bytes: 2 * GIB,
            max_files: 64,
            max_bundle_bytes: 4 * GIB,
            max_zstd_window_log: 23,
        }
    }
}

/// `[update]`: the update lifecycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Update {
    /// Models kept in the store besides the active one (rollback targets); at least 1.
    pub retain: u32,
    /// Time the health check (golden cases) may take, in milliseconds.
    pub health_timeout_ms: u64,
    /// Upper bound on the trial window's request count (the manifest asks, this caps).
    pub trial_requests: u64,
    /// Upper bound on the trial window's length in seconds (the manifest asks, this caps).
    pub trial_seconds: u64,
    /// Daemon restarts tolerated during a trial before the model is rolled back.
    pub trial_max_restarts: u32,
}

impl Default for Update {
    fn default() -> Self {
        Self {
            retain: 2,
            health_timeout_ms: 10_000,
            trial_requests: 100,
            trial_seconds: 300,
            trial_max_restarts: 3,
        }
    }
}

/// `[api]`: the local inference (Open Inference Protocol v2) and management API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    /// Permission bits of the Unix socket. In TOML an integer (`0o660`) or an octal string
    /// (`"0660"`); never accessible to every user.
    #[serde(with = "octal_mode")]
    pub socket_mode: u32,
    /// Group whose members may use the `/v1/` management endpoints (besides root).
    pub admin_group: Option<String>,
    /// Optional TCP listener for inference; loopback addresses only.
    pub tcp: Option<SocketAddr>,
    /// Largest request body, in bytes.
    pub max_body_bytes: u64,
    /// Inferences run at the same time. For throughput at least twice the cores: with one
    /// slot per core, a core waits at each hand-over between two requests.
    pub max_concurrency: u32,
    /// Requests waiting for a free inference slot before new ones are refused.
    pub queue_depth: u32,
    /// Requests per second allowed to one peer.
    pub rate_limit_per_sec: u32,
    /// Time one request may take, in milliseconds.
    pub request_timeout_ms: u64,
    /// Models whose typical run takes at most this many microseconds run on the thread that
    /// read the request, without the hand-off to a blocking thread and back (0 = never).
    /// Slower models leave the async workers: fixed-shape ones well within their deadline run
    /// on the request's own thread, others (and any model right after a slower run that brought
    /// it near its deadline) on the blocking pool.
    pub inline_max_us: u64,
    /// A model slower than `inline_max_us` whose inputs have fixed shapes, and whose typical
    /// run fits this many times in the request's deadline, runs on the request's own thread
    /// after it leaves the async workers: no hand-off to the blocking pool and back. On that
    /// thread a run that overran is answered 504 when it ends, where the pool answers at the
    /// deadline itself (0 = always the pool).
    pub in_place_runs: u32,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            socket_mode: 0o660,
            admin_group: None,
            tcp: None,
            max_body_bytes: 8 * MIB,
            max_concurrency: 4,
            queue_depth: 16,
            rate_limit_per_sec: 200,
            request_timeout_ms: 2_000,
            inline_max_us: 200,
            in_place_runs: 8,
        }
    }
}

/// `[monitor]`: what mintd watches while it serves: input and output drift against the
/// manifest's reference statistics, request-rate spikes, and the store's integrity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Monitor {
    /// Drift score above which a `drift_detected` event is recorded. The score is the largest
    /// shift of a tensor's recent mean from the reference mean, in reference standard
    /// deviations (or the log-ratio of the standard deviations, whichever is larger).
    pub drift_threshold: f64,
    /// Requests a model serves before its drift score is judged.
    pub drift_min_requests: u64,
    /// A model's request rate over the last 10 s this many times above its usual rate is a
    /// spike (`request_rate_spike` event).
    pub rate_spike_factor: f64,
    /// Requests in a 10 s window below which no spike is reported, however steep.
    pub rate_spike_min_requests: u64,
    /// Seconds between two re-verifications of the model store (0 = never).
    pub rehash_interval_secs: u64,
    /// Read rate of the re-verification, in bytes per second: it runs at low priority and
    /// must not starve inference of I/O.
    pub rehash_bytes_per_sec: u64,
}

impl Default for Monitor {
    fn default() -> Self {
        Self {
            drift_threshold: 3.0,
            drift_min_requests: 50,
            rate_spike_factor: 5.0,
            rate_spike_min_requests: 100,
            rehash_interval_secs: 3_600,
            rehash_bytes_per_sec: 32 * MIB,
        }
    }
}

/// `[mqtt]`: reporting to the fleet and receiving its signed commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mqtt {
    /// Whether mintd connects to a broker at all.
    pub enabled: bool,
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id; `device.id` when not set (see [`Config::mqtt_client_id`]).
    pub client_id: Option<String>,
    /// MQTT keep-alive, in seconds (5..=65535).
    pub keepalive_secs: u32,
    /// TLS to the broker, with an optional client certificate.
    pub tls: Option<Tls>,
    /// Interval between telemetry messages, in seconds.
    pub telemetry_interval_secs: u64,
    /// Messages the durable outbox holds while the broker is unreachable.
    pub outbox_max_messages: u64,
    /// Bytes the durable outbox holds while the broker is unreachable.
    pub outbox_max_bytes: u64,
    /// Publish Home Assistant MQTT discovery messages.
    pub home_assistant_discovery: bool,
}

impl Default for Mqtt {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".to_owned(),
            port: 1883,
            client_id: None,
            keepalive_secs: 30,
            tls: None,
            telemetry_interval_secs: 60,
            outbox_max_messages: 10_000,
            outbox_max_bytes: 16 * MIB,
            home_assistant_discovery: false,
        }
    }
}

/// `[mqtt.tls]`: TLS to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file of the certificate authorities that may sign the broker's certificate.
    pub ca: PathBuf,
    /// PEM client certificate; needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of the client certificate; needs `cert`.
    pub key: Option<PathBuf>,
}

/// `[attest]`: attestation of the activated models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Attest {
    /// Which attestor to use.
    pub mode: AttestMode,
    /// TPM Command Transmission Interface, e.g. `device:/dev/tpmrm0` or
    /// `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// The PCR every activated model is extended into (0..=23).
    pub pcr: u32,
}

impl Default for Attest {
    fn default() -> Self {
        Self {
            mode: AttestMode::Auto,
            tcti: "device:/dev/tpmrm0".to_owned(),
            pcr: 16,
        }
    }
}

/// Which attestor mintd uses; lowercase in TOML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttestMode {
    /// The TPM when one answers on `tcti`, otherwise the software attestor (reported as such).
    #[default]
    Auto,
    /// The TPM only; mintd fails to start without one.
    Tpm,
    /// The software attestor, which proves nothing against a local attacker and says so.
    Software,
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// One of `error`, `warn`, `info`, `debug`, `trace`.
    pub level: String,
    /// Log as JSON lines instead of human-readable text.
    pub json: bool,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            json: false,
        }
    }
}

impl Config {
    /// The MQTT client id: `mqtt.client_id` when set, otherwise `device.id`.
    pub fn mqtt_client_id(&self) -> &str {
        self.mqtt.client_id.as_deref().unwrap_or(&self.device.id)
    }

    /// Every bundle-signing key file named explicitly in `trust.keys`, without duplicates,
    /// in the order first listed. Keys found in `trust.keys_dir` are not included.
    pub fn explicit_trust_keys(&self) -> Vec<&Path> {
        let mut out: Vec<&Path> = Vec::with_capacity(self.trust.keys.len());
        for key in &self.trust.keys {
            if !out.contains(&key.as_path()) {
                out.push(key);
            }
        }
        out
    }
}

/// `trust.keys_dir`: an optional path where `""` in TOML means "none", so that the default
/// (`Some`) can be switched off and the value survives a round trip through TOML.
mod optional_path {
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<PathBuf>, ser: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(path) => match path.to_str() {
                Some(text) => ser.serialize_str(text),
                None => Err(serde::ser::Error::custom("path is not valid UTF-8")),
            },
            None => ser.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Option<PathBuf>, D::Error> {
        let text = String::deserialize(de)?;
        Ok(if text.is_empty() {
            None
        } else {
            Some(PathBuf::from(text))
        })
    }
}

/// `api.socket_mode`: permission bits written either as a TOML integer (`0o660`, or decimal)
/// or as an octal string like chmod takes (`"0660"`, `"660"`, `"0o660"`). Always written
/// back as an octal string so that the output reads like chmod.
mod octal_mode {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &u32, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&format!("{mode:04o}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<u32, D::Error> {
        de.deserialize_any(ModeVisitor)
    }

    struct ModeVisitor;

    impl Visitor<'_> for ModeVisitor {
        type Value = u32;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a file mode as an integer (0o660) or an octal string (\"0660\")")
        }

        fn visit_i64<E: de::Error>(self, value: i64) -> Result<u32, E> {
            u32::try_from(value).map_err(|_| {
                E::custom(format!(
                    "file mode {value} is out of range; write it like 0o660 or \"0660\""
                ))
            })
        }

        fn visit_u64<E: de::Error>(self, value: u64) -> Result<u32, E> {
            u32::try_from(value).map_err(|_| {
                E::custom(format!(
                    "file mode {value} is out of range; write it like 0o660 or \"0660\""
                ))
            })
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u32, E> {
            let digits = text.strip_prefix("0o").unwrap_or(text);
            let well_formed = !digits.is_empty()
                && digits.len() <= 6
                && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
            match well_formed {
                true => u32::from_str_radix(digits, 8).map_err(|_| bad_mode_string(text)),
                false => Err(bad_mode_string(text)),
            }
        }
    }

    fn bad_mode_string<E: de::Error>(text: &str) -> E {
        E::custom(format!(
            "file mode {text:?} is not an octal number like \"0660\""
        ))
    }
}
