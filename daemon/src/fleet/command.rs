//! Signed fleet commands: the COSE_Sign1 envelope, its payload, and the checks a device runs
//! before it obeys one.
//!
//! A command is a tagged COSE_Sign1 (tag 18; an untagged one is accepted too) whose protected
//! header carries `alg` EdDSA (-8; Ed25519, -19, is accepted), `kid` = SHA-256 of the
//! operator's raw Ed25519 public key, and the content type of the payload
//! (`application/json`, or `application/cbor`; CoAP content formats 50 and 60 are accepted).
//! The payload is one map:
//!
//! ```json
//! {"v": 1, "command": "install", "args": {"url": "https://…/m-2.mint", "sha256": "…", "size": 123},
//!  "nonce": "9f0c…", "issued_at": 1790000000, "expires_at": 1790000600, "target": "dev-17"}
//! ```
//!
//! `target` is one selector or a list of them: `*` (every device), `class:NAME`, `arch:NAME`,
//! `device:ID` or a bare device id.
//!
//! Order of the checks ([`verify`] then [`SignedCommand::check`]): size → envelope → algorithm
//! → key (the `kid` must name a key with the fleet role) → signature → payload → target →
//! validity window (issue time, expiry, lifetime, with the configured clock skew). Nothing of
//! the payload is parsed before its signature verified. The replay cache and the command's
//! arguments are checked by the dispatcher.
//!
//! This file is self-contained (no `crate::` paths): the fuzz crate compiles it as a module.

use coset::iana::{self, EnumI64};
use coset::{
    Algorithm, CborSerializable, ContentType, CoseSign1, CoseSign1Builder, HeaderBuilder,
    RegisteredLabel, TaggedCborSerializable,
};
use mint_updater::keys::{verify_strict, KeyId, OperatorKey, TrustStore};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest command envelope accepted, in bytes (checked before anything is decoded).
pub const MAX_COMMAND_BYTES: usize = 16 * 1024;
/// Longest validity window (`expires_at - issued_at`) a command may ask for: it bounds how
/// long the replay cache must remember a nonce.
pub const MAX_LIFETIME_SECS: i64 = 7 * 24 * 3600;
/// Payload format version.
pub const PAYLOAD_VERSION: u32 = 1;
/// Content type of a JSON payload (what `mintctl fleet push` emits).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type of a CBOR payload.
pub const CONTENT_TYPE_CBOR: &str = "application/cbor";
/// Most selectors in a `target` list.
pub const MAX_TARGETS: usize = 1024;
/// Nonce length bounds, in characters of `[A-Za-z0-9_-]`.
pub const NONCE_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// Why a command was refused. [`CommandError::reason`] is the stable name published in
/// results and events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The envelope is larger than [`MAX_COMMAND_BYTES`].
    #[error("command of {size} bytes is larger than the {max} bytes allowed")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// Not a COSE_Sign1 envelope at all, but a bare JSON or CBOR document.
    #[error("unsigned command: {reason}")]
    Unsigned {
        /// What was received instead of a signed envelope.
        reason: String,
    },
    /// The envelope cannot be decoded.
    #[error("malformed command envelope: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The protected `alg` is not EdDSA / Ed25519.
    #[error("command signed with algorithm {alg}; only EdDSA (-8) and Ed25519 (-19) are accepted")]
    Algorithm {
        /// The algorithm named, or why none.
        alg: String,
    },
    /// The `kid` names no key with the fleet role.
    #[error("command signed by key {kid}, which is not a trusted fleet key (trust.fleet_keys)")]
    UnknownKey {
        /// The key id (hex), or `(no kid)`.
        kid: String,
    },
    /// The signature does not verify with the key its `kid` names.
    #[error("bad signature by fleet key {kid}: the command was altered or not signed by that key")]
    BadSignature {
        /// The key id (hex).
        kid: String,
    },
    /// The authenticated payload is not a valid command.
    #[error("malformed command payload: {reason}")]
    Payload {
        /// What is wrong.
        reason: String,
    },
    /// The command is not addressed to this device.
    #[error("command addressed to {target}, not to this device ({device})")]
    Mistargeted {
        /// The target, as signed.
        target: String,
        /// This device's id, class and architecture.
        device: String,
    },
    /// Past `expires_at` (beyond the tolerated clock skew).
    #[error(
        "command expired at {expires_at} (unix), now is {now} (clock skew tolerated: {skew} s)"
    )]
    Expired {
        /// Signed expiry.
        expires_at: i64,
        /// The device's time.
        now: i64,
        /// Tolerance.
        skew: u64,
    },
    /// Before `issued_at` (beyond the tolerated clock skew).
    #[error(
        "command issued at {issued_at} (unix) is not valid yet, now is {now} (clock skew tolerated: {skew} s)"
    )]
    NotYetValid {
        /// Signed issue time.
        issued_at: i64,
        /// The device's time.
        now: i64,
        /// Tolerance.
        skew: u64,
    },
    /// The nonce was seen before.
    #[error("command nonce {nonce} was already used: replay refused")]
    Replayed {
        /// The nonce.
        nonce: String,
    },
    /// The replay cache holds its maximum of live nonces.
    #[error("replay cache is full ({entries} live nonces); command refused until some expire")]
    ReplayCacheFull {
        /// Live entries.
        entries: usize,
    },
    /// The command name is not one this device knows.
    #[error("unknown command {name:?} (known: {known})")]
    UnknownCommand {
        /// The name, as signed.
        name: String,
        /// The commands this device knows.
        known: String,
    },
    /// The arguments of a known command are wrong.
    #[error("bad arguments for command {command}: {reason}")]
    Arguments {
        /// The command.
        command: String,
        /// What is wrong.
        reason: String,
    },
}

impl CommandError {
    /// Stable name of the refusal, as published in `cmd/result` and events.
    pub fn reason(&self) -> &'static str {
        match self {
            CommandError::TooLarge { .. } => "too_large",
            CommandError::Unsigned { .. } => "unsigned",
            CommandError::Malformed { .. } => "malformed",
            CommandError::Algorithm { .. } => "algorithm",
            CommandError::UnknownKey { .. } => "unknown_key",
            CommandError::BadSignature { .. } => "bad_signature",
            CommandError::Payload { .. } => "payload",
            CommandError::Mistargeted { .. } => "mistargeted",
            CommandError::Expired { .. } => "expired",
            CommandError::NotYetValid { .. } => "not_yet_valid",
            CommandError::Replayed { .. } => "replayed",
            CommandError::ReplayCacheFull { .. } => "replay_cache_full",
            CommandError::UnknownCommand { .. } => "unknown_command",
            CommandError::Arguments { .. } => "arguments",
        }
    }

    /// Whether the refusal came after the signature verified with a fleet key (the sender is
    /// an operator, not anyone who can publish).
    pub fn authenticated(&self) -> bool {
        !matches!(
            self,
            CommandError::TooLarge { .. }
                | CommandError::Unsigned { .. }
                | CommandError::Malformed { .. }
                | CommandError::Algorithm { .. }
                | CommandError::UnknownKey { .. }
                | CommandError::BadSignature { .. }
        )
    }
}

/// One `target` selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `*`: every device.
    All,
    /// `device:ID` or a bare id.
    Device(String),
    /// `class:NAME`: every device of this class.
    Class(String),
    /// `arch:NAME`: every device of this architecture.
    Arch(String),
}

impl Selector {
    /// Parses one selector.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let check = |kind: &str, value: &str| -> Result<String, String> {
            if value.is_empty() || value.len() > 64 {
                return Err(format!(
                    "{kind} in target {text:?} must be 1 to 64 characters"
                ));
            }
            if !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(format!(
                    "{kind} in target {text:?} may only hold [A-Za-z0-9._-]"
                ));
            }
            Ok(value.to_owned())
        };
        if text == "*" {
            return Ok(Selector::All);
        }
        match text.split_once(':') {
            Some(("device", id)) => check("device id", id).map(Selector::Device),
            Some(("class", c)) => check("class", c).map(Selector::Class),
            Some(("arch", a)) => check("architecture", a).map(Selector::Arch),
            Some((kind, _)) => Err(format!(
                "target {text:?}: unknown selector {kind:?} (use *, device:ID, class:NAME or arch:NAME)"
            )),
            None => check("device id", text).map(Selector::Device),
        }
    }

    /// Whether this selector names `device`.
    pub fn matches(&self, device: &DeviceIdentity) -> bool {
        match self {
            Selector::All => true,
            Selector::Device(id) => *id == device.id,
            Selector::Class(c) => *c == device.class,
            Selector::Arch(a) => *a == device.arch,
        }
    }
}

/// Who this device is, for target matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// `device.id`.
    pub id: String,
    /// `device.class`.
    pub class: String,
    /// `device.arch`.
    pub arch: String,
}

impl std::fmt::Display for DeviceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "id {}, class {}, arch {}",
            self.id, self.class, self.arch
        )
    }
}

/// `target`: one selector or a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetField {
    /// One selector.
    One(String),
    /// Several selectors: the command is for a device that any of them names.
    Many(Vec<String>),
}

impl TargetField {
    /// The selectors as written.
    pub fn items(&self) -> Vec<&str> {
        match self {
            TargetField::One(s) => vec![s.as_str()],
            TargetField::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

impl std::fmt::Display for TargetField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.items().join(","))
    }
}

/// The signed payload, as written on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// Format version, [`PAYLOAD_VERSION`].
    pub v: u32,
    /// Command name: `install`, `rollback`, `report`.
    pub command: String,
    /// The command's arguments (an object; `{}` when it takes none).
    #[serde(default = "empty_object")]
    pub args: Value,
    /// Unique per command; a device obeys a nonce once.
    pub nonce: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; after it (plus the clock skew) the command is refused.
    pub expires_at: i64,
    /// Who must obey.
    pub target: TargetField,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A command whose signature verified: who signed it and what it says. Its target and
/// validity window are checked by [`SignedCommand::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct SignedCommand {
    /// The fleet key that signed.
    pub kid: KeyId,
    /// The payload.
    pub payload: Payload,
    /// The parsed selectors of `payload.target`.
    pub selectors: Vec<Selector>,
}

impl SignedCommand {
    /// Checks target and validity window at `now` (unix seconds) with `skew` seconds of
    /// tolerance on both ends.
    pub fn check(&self, device: &DeviceIdentity, now: i64, skew: u64) -> Result<(), CommandError> {
        if !self.selectors.iter().any(|s| s.matches(device)) {
            return Err(CommandError::Mistargeted {
                target: self.payload.target.to_string(),
                device: device.to_string(),
            });
        }
        let skew_i = i64::try_from(skew).unwrap_or(i64::MAX);
        if self.payload.issued_at > now.saturating_add(skew_i) {
            return Err(CommandError::NotYetValid {
                issued_at: self.payload.issued_at,
                now,
                skew,
            });
        }
        if now > self.retain_until(skew) {
            return Err(CommandError::Expired {
                expires_at: self.payload.expires_at,
                now,
                skew,
            });
        }
        Ok(())
    }

    /// Until when (unix seconds) the nonce must be remembered: after it the command is
    /// refused as expired anyway.
    pub fn retain_until(&self, skew: u64) -> i64 {
        self.payload
            .expires_at
            .saturating_add(i64::try_from(skew).unwrap_or(i64::MAX))
    }
}

/// Decodes the envelope, checks the algorithm and the signature against the fleet keys, then
/// parses the payload. Returns the command only if every one of these passed.
pub fn verify(bytes: &[u8], trust: &TrustStore) -> Result<SignedCommand, CommandError> {
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(CommandError::TooLarge {
            size: bytes.len(),
            max: MAX_COMMAND_BYTES,
        });
    }
    let sign1 = decode_envelope(bytes)?;
    let kid_raw = if sign1.protected.header.key_id.is_empty() {
        &sign1.unprotected.key_id
    } else {
        &sign1.protected.header.key_id
    };
    let kid_hex = if kid_raw.is_empty() {
        "(no kid)".to_owned()
    } else {
        hex::encode(kid_raw)
    };
    if sign1.signature.is_empty() {
        return Err(CommandError::Unsigned {
            reason: "the COSE_Sign1 signature is empty".into(),
        });
    }
    let alg = sign1.protected.header.alg.as_ref();
    if !matches!(
        alg,
        Some(Algorithm::Assigned(iana::Algorithm::EdDSA))
            | Some(Algorithm::Assigned(iana::Algorithm::Ed25519))
    ) {
        return Err(CommandError::Algorithm {
            alg: match alg {
                None => "none (protected `alg` missing)".into(),
                Some(Algorithm::Assigned(a)) => format!("{a:?} ({})", a.to_i64()),
                Some(other) => format!("{other:?}"),
            },
        });
    }
    let kid = <[u8; 32]>::try_from(kid_raw.as_slice()).ok().map(KeyId);
    let Some((kid, key)) = kid.and_then(|k| trust.get(&k).map(|key| (k, key))) else {
        return Err(CommandError::UnknownKey { kid: kid_hex });
    };
    sign1
        .verify_signature(b"", |sig, data| {
            if verify_strict(key, data, sig) {
                Ok(())
            } else {
                Err(())
            }
        })
        .map_err(|()| CommandError::BadSignature { kid: kid.to_hex() })?;
    let Some(payload_bytes) = sign1.payload.as_deref() else {
        return Err(CommandError::Malformed {
            reason: "detached payload".into(),
        });
    };
    let payload = parse_payload(payload_bytes, sign1.protected.header.content_type.as_ref())?;
    let selectors = selectors(&payload.target)?;
    Ok(SignedCommand {
        kid,
        payload,
        selectors,
    })
}

/// Signs `payload` with `key` as a tagged COSE_Sign1 with a JSON payload (`alg` EdDSA, `kid`
/// in the protected header).
pub fn sign(payload: &Payload, key: &OperatorKey) -> Result<Vec<u8>, CommandError> {
    let json = serde_json::to_vec(payload).map_err(|e| CommandError::Payload {
        reason: format!("cannot encode: {e}"),
    })?;
    sign_bytes(&json, CONTENT_TYPE_JSON, key)
}

/// Signs raw payload bytes with the given content type (tests and other encoders).
pub fn sign_bytes(
    payload: &[u8],
    content_type: &str,
    key: &OperatorKey,
) -> Result<Vec<u8>, CommandError> {
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .key_id(key.kid().0.to_vec())
        .content_type(content_type.to_owned())
        .build();
    CoseSign1Builder::new()
        .protected(protected)
        .payload(payload.to_vec())
        .create_signature(b"", |tbs| key.sign(tbs).to_bytes().to_vec())
        .build()
        .to_tagged_vec()
        .map_err(|e| CommandError::Malformed {
            reason: format!("cannot encode COSE_Sign1: {e}"),
        })
}

fn decode_envelope(bytes: &[u8]) -> Result<CoseSign1, CommandError> {
    let sign1 = decode_cose(bytes)?;
    if sign1.payload.is_none() {
        return Err(CommandError::Malformed {
            reason: "detached payload: the command must be embedded".into(),
        });
    }
    Ok(sign1)
}

fn decode_cose(bytes: &[u8]) -> Result<CoseSign1, CommandError> {
    match CoseSign1::from_tagged_slice(bytes) {
        Ok(s) => Ok(s),
        Err(tagged) => {
            if let Ok(s) = CoseSign1::from_slice(bytes) {
                return Ok(s);
            }
            // Something that is a command, just not a signed one, is "unsigned"; anything
            // else is "malformed".
            if looks_like_bare_command(bytes) {
                return Err(CommandError::Unsigned {
                    reason: "a bare command document, not a COSE_Sign1 envelope".into(),
                });
            }
            Err(CommandError::Malformed {
                reason: format!("not a COSE_Sign1 (tag 18) envelope: {tagged}"),
            })
        }
    }
}

fn looks_like_bare_command(bytes: &[u8]) -> bool {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) {
        return map.contains_key("command");
    }
    matches!(
        ciborium::from_reader::<ciborium::Value, _>(bytes),
        Ok(ciborium::Value::Map(m)) if m.iter().any(|(k, _)| k.as_text() == Some("command"))
    )
}

#[derive(Clone, Copy)]
enum Encoding {
    Json,
    Cbor,
}

fn parse_payload(
    bytes: &[u8],
    content_type: Option<&ContentType>,
) -> Result<Payload, CommandError> {
    let bad = |reason: String| CommandError::Payload { reason };
    let encoding = match content_type {
        Some(RegisteredLabel::Text(t)) if t == CONTENT_TYPE_JSON => Encoding::Json,
        Some(RegisteredLabel::Text(t)) if t == CONTENT_TYPE_CBOR => Encoding::Cbor,
        Some(RegisteredLabel::Assigned(iana::CoapContentFormat::Json)) => Encoding::Json,
        Some(RegisteredLabel::Assigned(iana::CoapContentFormat::Cbor)) => Encoding::Cbor,
        Some(other) => {
            return Err(bad(format!(
                "content type {other:?}; expected {CONTENT_TYPE_JSON} or {CONTENT_TYPE_CBOR}"
            )))
        }
        None if bytes.first() == Some(&b'{') => Encoding::Json,
        None => Encoding::Cbor,
    };
    let payload: Payload = match encoding {
        Encoding::Json => serde_json::from_slice(bytes).map_err(|e| bad(format!("JSON: {e}")))?,
        Encoding::Cbor => ciborium::from_reader(bytes).map_err(|e| bad(format!("CBOR: {e}")))?,
    };
    if payload.v != PAYLOAD_VERSION {
        return Err(bad(format!(
            "format version {} is not supported (this device reads version {PAYLOAD_VERSION})",
            payload.v
        )));
    }
    if payload.command.is_empty() || payload.command.len() > 64 {
        return Err(bad("command name must be 1 to 64 characters".into()));
    }
    if !payload.args.is_object() {
        return Err(bad("args must be an object".into()));
    }
    if !NONCE_LEN.contains(&payload.nonce.len())
        || !payload
            .nonce
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        return Err(bad(format!(
            "nonce must be {} to {} characters of [A-Za-z0-9_-]",
            NONCE_LEN.start(),
            NONCE_LEN.end()
        )));
    }
    let lifetime = payload.expires_at.checked_sub(payload.issued_at);
    match lifetime {
        Some(l) if l > 0 && l <= MAX_LIFETIME_SECS => {}
        _ => {
            return Err(bad(format!(
                "expires_at ({}) must be after issued_at ({}) by at most {MAX_LIFETIME_SECS} s",
                payload.expires_at, payload.issued_at
            )))
        }
    }
    Ok(payload)
}

fn selectors(target: &TargetField) -> Result<Vec<Selector>, CommandError> {
    let items = target.items();
    if items.is_empty() || items.len() > MAX_TARGETS {
        return Err(CommandError::Payload {
            reason: format!("target must name 1 to {MAX_TARGETS} selectors"),
        });
    }
    items
        .into_iter()
        .map(|s| Selector::parse(s).map_err(|reason| CommandError::Payload { reason }))
        .collect()
}

/// The commands this device knows, with their checked arguments. To add one: a variant here,
/// its arm in [`Command::parse`] and [`Command::NAMES`], and its arm in the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Download a bundle and install it.
    Install(InstallArgs),
    /// Roll model `name` back.
    Rollback {
        /// Model name.
        name: String,
    },
    /// Republish status and inventory now.
    Report,
}

/// Arguments of `install`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallArgs {
    /// `http://` or `https://` URL of the bundle.
    pub url: String,
    /// SHA-256 of the whole bundle file, lowercase hex.
    pub sha256: String,
    /// Size of the bundle file in bytes; more is refused.
    pub size: u64,
}

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

impl Command {
    /// Every command name this device knows.
    pub const NAMES: &'static [&'static str] = &["install", "rollback", "report"];

    /// The typed command of an authenticated payload; `max_size` bounds `install`'s `size`.
    pub fn parse(payload: &Payload, max_size: u64) -> Result<Command, CommandError> {
        let command = payload.command.as_str();
        let bad = |reason: String| CommandError::Arguments {
            command: command.to_owned(),
            reason,
        };
        match command {
            "install" => {
                let args: InstallArgs =
                    serde_json::from_value(payload.args.clone()).map_err(|e| bad(e.to_string()))?;
                check_url(&args.url).map_err(bad)?;
                if args.sha256.len() != 64
                    || !args
                        .sha256
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(bad("sha256 must be 64 lowercase hex digits".into()));
                }
                if args.size == 0 || args.size > max_size {
                    return Err(bad(format!(
                        "size {} must be between 1 and {max_size} bytes (limits.max_bundle_bytes)",
                        args.size
                    )));
                }
                Ok(Command::Install(args))
            }
            "rollback" => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Args {
                    name: String,
                }
                let args: Args =
                    serde_json::from_value(payload.args.clone()).map_err(|e| bad(e.to_string()))?;
                if args.name.is_empty() || args.name.len() > 128 {
                    return Err(bad("name must be 1 to 128 characters".into()));
                }
                Ok(Command::Rollback { name: args.name })
            }
            "report" => {
                if payload.args.as_object().is_some_and(|m| !m.is_empty()) {
                    return Err(bad("report takes no arguments".into()));
                }
                Ok(Command::Report)
            }
            other => Err(CommandError::UnknownCommand {
                name: other.to_owned(),
                known: Self::NAMES.join(", "),
            }),
        }
    }
}

/// An `http://` or `https://` URL with a host, no user info, no fragment, printable ASCII.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("url longer than {MAX_URL_LEN} characters"));
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("url must be printable ASCII without spaces".into());
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("url {url:?} must start with http:// or https://"))?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(format!("url {url:?} has no host"));
    }
    if authority.contains('@') {
        return Err(format!("url {url:?} must not carry user info"));
    }
    if url.contains('#') {
        return Err(format!("url {url:?} must not carry a fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> OperatorKey {
        OperatorKey::generate().unwrap()
    }

    fn device() -> DeviceIdentity {
        DeviceIdentity {
            id: "dev-1".into(),
            class: "cam".into(),
            arch: "aarch64".into(),
        }
    }

    fn payload(command: &str, args: Value, target: &str) -> Payload {
        Payload {
            v: 1,
            command: command.into(),
            args,
            nonce: "0123456789abcdef0123".into(),
            issued_at: 1_000,
            expires_at: 1_600,
            target: TargetField::One(target.into()),
        }
    }

    fn trust(k: &OperatorKey) -> TrustStore {
        TrustStore::new([k.public()], 1).unwrap()
    }

    #[test]
    fn a_signed_command_round_trips() {
        let k = key();
        let p = payload("report", serde_json::json!({}), "*");
        let cmd = verify(&sign(&p, &k).unwrap(), &trust(&k)).unwrap();
        assert_eq!(cmd.payload, p);
        assert_eq!(cmd.kid, k.kid());
        cmd.check(&device(), 1_100, 0).unwrap();
        assert_eq!(Command::parse(&cmd.payload, 10).unwrap(), Command::Report);
    }

    #[test]
    fn cbor_payloads_and_untagged_envelopes_are_accepted() {
        let k = key();
        let p = payload("rollback", serde_json::json!({"name": "m"}), "class:cam");
        let mut cbor = Vec::new();
        ciborium::into_writer(&p, &mut cbor).unwrap();
        let signed = sign_bytes(&cbor, CONTENT_TYPE_CBOR, &k).unwrap();
        let cmd = verify(&signed, &trust(&k)).unwrap();
        assert_eq!(cmd.payload, p);
        // Untagged: drop the tag byte 0xd2.
        assert_eq!(signed[0], 0xd2);
        assert_eq!(verify(&signed[1..], &trust(&k)).unwrap().payload, p);
    }

    #[test]
    fn ed25519_minus_19_is_accepted() {
        let k = key();
        let p = serde_json::to_vec(&payload("report", serde_json::json!({}), "*")).unwrap();
        let protected = HeaderBuilder::new()
            .algorithm(iana::Algorithm::Ed25519)
            .key_id(k.kid().0.to_vec())
            .build();
        let bytes = CoseSign1Builder::new()
            .protected(protected)
            .payload(p)
            .create_signature(b"", |tbs| k.sign(tbs).to_bytes().to_vec())
            .build()
            .to_tagged_vec()
            .unwrap();
        verify(&bytes, &trust(&k)).unwrap();
    }

    #[test]
    fn hostile_envelopes_are_refused_with_their_reason() {
        let k = key();
        let t = trust(&k);
        let p = payload("report", serde_json::json!({}), "*");
        let good = sign(&p, &k).unwrap();
        let reason = |bytes: &[u8]| verify(bytes, &t).unwrap_err().reason();

        assert_eq!(reason(&vec![0xd2; MAX_COMMAND_BYTES + 1]), "too_large");
        assert_eq!(reason(b""), "malformed");
        assert_eq!(reason(b"\xff\xff\xff"), "malformed");
        assert_eq!(reason(&good[..good.len() / 2]), "malformed");
        assert_eq!(reason(&[good.as_slice(), b"x"].concat()), "malformed");
        assert_eq!(reason(&serde_json::to_vec(&p).unwrap()), "unsigned");
        let mut cbor = Vec::new();
        ciborium::into_writer(&p, &mut cbor).unwrap();
        assert_eq!(reason(&cbor), "unsigned");

        // Wrong key, no kid, bad signature, flipped payload byte.
        let other = key();
        assert_eq!(reason(&sign(&p, &other).unwrap()), "unknown_key");
        let mut s = CoseSign1::from_tagged_slice(&good).unwrap();
        s.signature[0] ^= 1;
        assert_eq!(reason(&s.clone().to_tagged_vec().unwrap()), "bad_signature");
        s.signature.clear();
        assert_eq!(reason(&s.to_tagged_vec().unwrap()), "unsigned");
        let mut s = CoseSign1::from_tagged_slice(&good).unwrap();
        let last = s.payload.as_mut().unwrap().len() - 2;
        s.payload.as_mut().unwrap()[last] ^= 1;
        assert_eq!(reason(&s.to_tagged_vec().unwrap()), "bad_signature");
        let mut s = CoseSign1::from_tagged_slice(&good).unwrap();
        s.payload = None;
        assert_eq!(reason(&s.to_tagged_vec().unwrap()), "malformed");

        // Another algorithm, or none.
        for alg in [Some(iana::Algorithm::ES256), None] {
            let mut h = HeaderBuilder::new().key_id(k.kid().0.to_vec());
            if let Some(a) = alg {
                h = h.algorithm(a);
            }
            let bytes = CoseSign1Builder::new()
                .protected(h.build())
                .payload(serde_json::to_vec(&p).unwrap())
                .create_signature(b"", |tbs| k.sign(tbs).to_bytes().to_vec())
                .build()
                .to_tagged_vec()
                .unwrap();
            assert_eq!(reason(&bytes), "algorithm");
        }
        // A kid only in the unprotected header still selects the key; the signature covers
        // the payload, so it verifies.
        let bytes = CoseSign1Builder::new()
            .protected(
                HeaderBuilder::new()
                    .algorithm(iana::Algorithm::EdDSA)
                    .build(),
            )
            .unprotected(HeaderBuilder::new().key_id(k.kid().0.to_vec()).build())
            .payload(serde_json::to_vec(&p).unwrap())
            .create_signature(b"", |tbs| k.sign(tbs).to_bytes().to_vec())
            .build()
            .to_tagged_vec()
            .unwrap();
        verify(&bytes, &t).unwrap();
        // An empty trust store trusts nothing.
        assert_eq!(
            verify(&good, &TrustStore::empty(1)).unwrap_err().reason(),
            "unknown_key"
        );
    }

    #[test]
    fn hostile_payloads_are_refused_after_the_signature() {
        let k = key();
        let t = trust(&k);
        let check = |json: Value| {
            let bytes =
                sign_bytes(&serde_json::to_vec(&json).unwrap(), CONTENT_TYPE_JSON, &k).unwrap();
            verify(&bytes, &t).map(|c| c.payload)
        };
        let base = serde_json::to_value(payload("report", serde_json::json!({}), "*")).unwrap();
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        check(base.clone()).unwrap();
        for (bad, why) in [
            (with("v", 2.into()), "version"),
            (with("nonce", "short".into()), "nonce"),
            (with("nonce", "0123456789abcdef/../".into()), "nonce"),
            (with("expires_at", 1_000.into()), "expires_at"),
            (with("expires_at", 900.into()), "expires_at"),
            (
                with("expires_at", (1_000 + MAX_LIFETIME_SECS + 1).into()),
                "expires_at",
            ),
            (with("issued_at", i64::MIN.into()), "expires_at"),
            (with("args", serde_json::json!([1])), "args"),
            (with("command", "".into()), "command"),
            (with("target", serde_json::json!([])), "target"),
            (with("target", "class:".into()), "class"),
            (with("target", "group:x".into()), "unknown selector"),
            (with("target", "dev 1".into()), "device id"),
            (with("surprise", 1.into()), "unknown field"),
            (serde_json::json!([1, 2]), "JSON"),
            (serde_json::json!("x"), "JSON"),
        ] {
            let err = check(bad.clone()).unwrap_err();
            assert_eq!(err.reason(), "payload", "{bad}");
            assert!(err.to_string().contains(why), "{bad}: {err}");
            assert!(err.authenticated());
        }
        let mut missing = base.clone();
        missing.as_object_mut().unwrap().remove("nonce");
        assert!(check(missing).unwrap_err().to_string().contains("nonce"));
        // An unknown content type.
        let bytes = sign_bytes(&serde_json::to_vec(&base).unwrap(), "text/plain", &k).unwrap();
        assert_eq!(verify(&bytes, &t).unwrap_err().reason(), "payload");
        // CBOR byte strings where text is expected.
        let mut cbor = Vec::new();
        ciborium::into_writer(
            &ciborium::Value::Map(vec![(
                ciborium::Value::Text("command".into()),
                ciborium::Value::Bytes(vec![1, 2]),
            )]),
            &mut cbor,
        )
        .unwrap();
        let bytes = sign_bytes(&cbor, CONTENT_TYPE_CBOR, &k).unwrap();
        assert_eq!(verify(&bytes, &t).unwrap_err().reason(), "payload");
    }

    #[test]
    fn target_and_validity_window() {
        let k = key();
        let t = trust(&k);
        let d = device();
        let run = |target: TargetField, now: i64, skew: u64| {
            let mut p = payload("report", serde_json::json!({}), "*");
            p.target = target;
            verify(&sign(&p, &k).unwrap(), &t)
                .unwrap()
                .check(&d, now, skew)
        };
        let one = |s: &str| TargetField::One(s.into());
        for ok in ["*", "dev-1", "device:dev-1", "class:cam", "arch:aarch64"] {
            run(one(ok), 1_100, 0).unwrap();
        }
        for no in ["dev-2", "device:dev-10", "class:gw", "arch:x86_64"] {
            let e = run(one(no), 1_100, 0).unwrap_err();
            assert_eq!(e.reason(), "mistargeted", "{no}");
        }
        run(
            TargetField::Many(vec!["dev-9".into(), "dev-1".into()]),
            1_100,
            0,
        )
        .unwrap();
        let e = run(
            TargetField::Many(vec!["dev-9".into(), "dev-8".into()]),
            1_100,
            0,
        );
        assert!(e.unwrap_err().to_string().contains("dev-9,dev-8"));
        // issued 1000, expires 1600.
        assert_eq!(run(one("*"), 999, 0).unwrap_err().reason(), "not_yet_valid");
        run(one("*"), 999, 1).unwrap();
        run(one("*"), 1_600, 0).unwrap();
        assert_eq!(run(one("*"), 1_601, 0).unwrap_err().reason(), "expired");
        run(one("*"), 1_601, 1).unwrap();
        assert_eq!(run(one("*"), 1_700, 99).unwrap_err().reason(), "expired");
        assert_eq!(run(one("*"), i64::MAX, u64::MAX).map(|_| ()), Ok(()));
    }

    #[test]
    fn install_rollback_report_arguments() {
        let p = |command: &str, args: Value| payload(command, args, "*");
        let sha = "ab".repeat(32);
        let ok = Command::parse(
            &p(
                "install",
                serde_json::json!({"url": "https://h:8443/m.mint?x=1", "sha256": sha, "size": 10}),
            ),
            10,
        )
        .unwrap();
        assert!(matches!(ok, Command::Install(a) if a.size == 10));
        for (args, why) in [
            (
                serde_json::json!({"url": "ftp://h/m", "sha256": sha, "size": 1}),
                "http",
            ),
            (
                serde_json::json!({"url": "http://", "sha256": sha, "size": 1}),
                "host",
            ),
            (
                serde_json::json!({"url": "http://u:p@h/m", "sha256": sha, "size": 1}),
                "user info",
            ),
            (
                serde_json::json!({"url": "http://h/m n", "sha256": sha, "size": 1}),
                "printable",
            ),
            (
                serde_json::json!({"url": "http://h/m#f", "sha256": sha, "size": 1}),
                "fragment",
            ),
            (
                serde_json::json!({"url": "http://h/m", "sha256": "AB".repeat(32), "size": 1}),
                "sha256",
            ),
            (
                serde_json::json!({"url": "http://h/m", "sha256": "ab", "size": 1}),
                "sha256",
            ),
            (
                serde_json::json!({"url": "http://h/m", "sha256": sha, "size": 0}),
                "size",
            ),
            (
                serde_json::json!({"url": "http://h/m", "sha256": sha, "size": 11}),
                "max_bundle_bytes",
            ),
            (
                serde_json::json!({"url": "http://h/m", "sha256": sha, "size": -1}),
                "invalid value",
            ),
            (
                serde_json::json!({"url": "http://h/m", "sha256": sha}),
                "size",
            ),
            (
                serde_json::json!({"url": "http://h/m", "sha256": sha, "size": 1, "x": 1}),
                "unknown field",
            ),
        ] {
            let e = Command::parse(&p("install", args.clone()), 10).unwrap_err();
            assert_eq!(e.reason(), "arguments", "{args}");
            assert!(e.to_string().contains(why), "{args}: {e}");
        }
        assert_eq!(
            Command::parse(&p("rollback", serde_json::json!({"name": "m"})), 0).unwrap(),
            Command::Rollback { name: "m".into() }
        );
        assert_eq!(
            Command::parse(&p("rollback", serde_json::json!({})), 0)
                .unwrap_err()
                .reason(),
            "arguments"
        );
        assert_eq!(
            Command::parse(&p("report", serde_json::json!({"x": 1})), 0)
                .unwrap_err()
                .reason(),
            "arguments"
        );
        let e = Command::parse(&p("reboot", serde_json::json!({})), 0).unwrap_err();
        assert_eq!(e.reason(), "unknown_command");
        assert!(e.to_string().contains("install, rollback, report"));
    }
}
