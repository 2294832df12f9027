//! The one error type of the updater crate: each variant names the check that failed.

use std::io;
use std::path::PathBuf;

/// The checks a verifier performs, in the order it performs them (DESIGN.md).
///
/// Every [`BundleError`] maps to exactly one of these; the CLI prints it and scripts match on
/// its stable lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Check {
    /// The 8-byte magic and the header length prefix.
    Framing,
    /// The signed header is not larger than the configured limit.
    HeaderSize,
    /// The COSE structure decodes.
    Header,
    /// Every signature from a trusted key verifies, and enough distinct keys signed.
    Signature,
    /// The manifest decodes, has a supported format version and is well formed.
    Manifest,
    /// The bundle has not expired.
    Expiry,
    /// The bundle targets this device.
    Target,
    /// The sequence is not lower than the anti-rollback minimum.
    Rollback,
    /// Each file's size stays within its declared and configured bounds.
    Size,
    /// Each file's SHA-256 matches the manifest.
    Digest,
    /// Reading or writing failed for a reason that is not the bundle's fault.
    Io,
}

impl Check {
    /// Stable lowercase name, used in JSON output and events.
    pub fn name(self) -> &'static str {
        match self {
            Check::Framing => "framing",
            Check::HeaderSize => "header-size",
            Check::Header => "header",
            Check::Signature => "signature",
            Check::Manifest => "manifest",
            Check::Expiry => "expiry",
            Check::Target => "target",
            Check::Rollback => "rollback",
            Check::Size => "size",
            Check::Digest => "digest",
            Check::Io => "io",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where in a bundle a read ran out of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Region {
    /// The 8-byte magic.
    Magic,
    /// The 4-byte header length.
    HeaderLength,
    /// The signed header.
    Header,
    /// The compressed frame of the named file.
    File(String),
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Region::Magic => f.write_str("magic"),
            Region::HeaderLength => f.write_str("header length"),
            Region::Header => f.write_str("signed header"),
            Region::File(path) => write!(f, "payload of {path}"),
        }
    }
}

/// Everything that can go wrong while building, reading, verifying or unpacking a bundle.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file does not start with `MINTBNDL`.
    #[error("not a mint bundle: magic is {found:?}, expected \"MINTBNDL\"")]
    BadMagic {
        /// The first 8 bytes, lossily decoded.
        found: String,
    },
    /// The bundle ended before a region was complete.
    #[error("bundle truncated in the {region}: expected {expected} more bytes")]
    Truncated {
        /// The region that was cut.
        region: Region,
        /// How many bytes were still expected when the input ended.
        expected: u64,
    },
    /// The header length prefix exceeds the configured limit; nothing of it was read.
    #[error("signed header is {len} bytes, above the limit of {limit} bytes")]
    HeaderTooLarge {
        /// Declared header length.
        len: u64,
        /// Configured limit (`limits.max_header_bytes`).
        limit: u64,
    },
    /// The header is not a well-formed tagged COSE_Sign structure.
    #[error("signed header is not a valid COSE_Sign (tag 98): {reason}")]
    MalformedHeader {
        /// What the decoder said.
        reason: String,
    },
    /// A signature made by a trusted key does not verify: the header was altered.
    #[error("signature by trusted key {kid} does not verify: the signed header was altered")]
    BadSignature {
        /// Hex key id (SHA-256 of the raw public key).
        kid: String,
    },
    /// A signature uses an algorithm other than EdDSA (-8) or Ed25519 (-19).
    #[error("signature by key {kid} uses algorithm {alg}, only EdDSA (-8) and Ed25519 (-19) are accepted")]
    UnsupportedAlgorithm {
        /// Hex key id.
        kid: String,
        /// The algorithm as found.
        alg: String,
    },
    /// Not enough distinct trusted keys produced a valid signature.
    #[error("signature threshold not met: {valid} distinct trusted key(s) signed, {required} required{}",
        if untrusted.is_empty() { String::new() } else { format!(" (also signed by untrusted key(s) {})", untrusted.join(", ")) })]
    ThresholdNotMet {
        /// Distinct trusted keys with a valid signature.
        valid: usize,
        /// The threshold in force.
        required: usize,
        /// Key ids of signatures by keys that are not trusted.
        untrusted: Vec<String>,
    },
    /// The manifest cannot be decoded or breaks a structural rule.
    #[error("manifest is invalid: {reason}")]
    MalformedManifest {
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The manifest's format version is not one this verifier understands.
    #[error("manifest format version {found} is not supported (this verifier reads version {supported})")]
    UnsupportedFormat {
        /// Version found in the manifest.
        found: u64,
        /// Version this build supports.
        supported: u32,
    },
    /// A file path in the manifest could escape the staging area or is not portable.
    #[error("manifest file path {path:?} is refused: {reason}")]
    BadPath {
        /// The path as written in the manifest.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Two files in the manifest have the same path (or one is a directory of the other).
    #[error("manifest lists {path:?} twice (or as both file and directory)")]
    DuplicatePath {
        /// The repeated path.
        path: String,
    },
    /// The bundle expired before the effective time.
    #[error("bundle expired at {expires} (unix seconds); effective time is {now} (the later of the clock and the last trusted time)")]
    Expired {
        /// Expiry, unix seconds.
        expires: i64,
        /// Effective time, unix seconds.
        now: i64,
    },
    /// The bundle does not list any of this device's targets.
    #[error("bundle targets [{}] but this device is [{}]", targets.join(", "), device.join(", "))]
    WrongTarget {
        /// Targets listed in the manifest.
        targets: Vec<String>,
        /// Target names of this device (class, architecture).
        device: Vec<String>,
    },
    /// The bundle's sequence is lower than the anti-rollback minimum.
    #[error(
        "sequence {sequence} of model {name:?} is below the minimum {minimum} (anti-rollback)"
    )]
    Rollback {
        /// Model name.
        name: String,
        /// Sequence in the bundle.
        sequence: u64,
        /// Lowest sequence accepted.
        minimum: u64,
    },
    /// A declared size exceeds a configured limit (checked before any payload byte is read).
    #[error("{what} is {declared} bytes, above the limit of {limit} bytes")]
    TooLarge {
        /// What is too large (a file path, or the whole bundle).
        what: String,
        /// Declared size.
        declared: u64,
        /// Configured limit.
        limit: u64,
    },
    /// A file decompressed to more or fewer bytes than declared (a decompression bomb stops here).
    #[error("{path} decompresses to {actual} bytes, but the manifest declares {declared}")]
    SizeMismatch {
        /// File path.
        path: String,
        /// Declared plain size.
        declared: u64,
        /// Actual size (for an oversized file: the first count above the declared size).
        actual: String,
    },
    /// The compressed frame of a file is corrupt or does not fill its declared compressed size.
    #[error("{path}: compressed frame is corrupt: {reason}")]
    Decompress {
        /// File path.
        path: String,
        /// What the decoder said.
        reason: String,
    },
    /// A file's SHA-256 differs from the manifest.
    #[error("{path}: SHA-256 is {actual}, manifest says {expected}")]
    Digest {
        /// File path.
        path: String,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the bytes received.
        actual: String,
    },
    /// Bytes follow the last declared file.
    #[error("unexpected data after the last file of the bundle")]
    TrailingData,
    /// A key file could not be used.
    #[error("key {path}: {reason}")]
    Key {
        /// Key file.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// The builder was given something it cannot put in a bundle.
    #[error("cannot build bundle: {reason}")]
    Build {
        /// What is wrong.
        reason: String,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl BundleError {
    /// The check this error belongs to.
    pub fn check(&self) -> Check {
        use BundleError::*;
        match self {
            BadMagic { .. } | Truncated { .. } | TrailingData => Check::Framing,
            HeaderTooLarge { .. } => Check::HeaderSize,
            MalformedHeader { .. } => Check::Header,
            BadSignature { .. } | UnsupportedAlgorithm { .. } | ThresholdNotMet { .. } => {
                Check::Signature
            }
            MalformedManifest { .. }
            | UnsupportedFormat { .. }
            | BadPath { .. }
            | DuplicatePath { .. } => Check::Manifest,
            Expired { .. } => Check::Expiry,
            WrongTarget { .. } => Check::Target,
            Rollback { .. } => Check::Rollback,
            TooLarge { .. } | SizeMismatch { .. } | Decompress { .. } => Check::Size,
            Digest { .. } => Check::Digest,
            Key { .. } | Build { .. } | Io { .. } => Check::Io,
        }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        BundleError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = BundleError> = std::result::Result<T, E>;
