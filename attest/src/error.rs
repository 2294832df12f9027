//! The one error type of this crate.

use std::path::PathBuf;

use crate::log::MAX_LINE_LEN;
use crate::pcr::{Digest, PCR_MAX};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while keeping or checking a measurement log.
///
/// Line-level variants (`LineTooLong`, `Json`, `IndexGap`, `PcrOutOfRange`, `BadDigest`) come
/// straight from [`parse_log`](crate::parse_log); [`MeasurementLog`](crate::MeasurementLog)
/// wraps them in [`Error::Corrupt`] (when opening) or [`Error::Rejected`] (when appending) to
/// name the file. Lines are numbered from 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation on the log or its directory failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done ("open", "fsync", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// Another handle (in this or another process) holds the log open for appending.
    #[error("measurement log {} is locked by another writer", path.display())]
    Locked {
        /// The log file.
        path: PathBuf,
    },

    /// The log on disk is damaged somewhere other than a torn last line.
    #[error("measurement log {} is corrupt", path.display())]
    Corrupt {
        /// The log file.
        path: PathBuf,
        /// The line-level problem.
        #[source]
        source: Box<Error>,
    },

    /// An entry was refused before anything was written, because the log could not read it back.
    #[error("refusing to append to measurement log {}", path.display())]
    Rejected {
        /// The log file.
        path: PathBuf,
        /// Why the line the entry would have become is invalid.
        #[source]
        source: Box<Error>,
    },

    /// An earlier append failed half-way; the handle refuses more appends so that it cannot
    /// write after a partial line. Reopen the log to learn what the disk holds.
    #[error(
        "measurement log {} refuses appends after an earlier append failed; reopen it",
        path.display()
    )]
    Poisoned {
        /// The log file.
        path: PathBuf,
    },

    /// A line is longer than [`MAX_LINE_LEN`] bytes (newline not counted).
    #[error("line {line}: {len} bytes is longer than the {MAX_LINE_LEN}-byte limit")]
    LineTooLong {
        /// 1-based line number.
        line: u64,
        /// Length of the line without its newline.
        len: usize,
    },

    /// A line is not a JSON measurement entry (bad JSON, missing or unknown field, wrong type).
    #[error("line {line}: not a measurement entry")]
    Json {
        /// 1-based line number.
        line: u64,
        /// What serde_json found (its own line/column are within this one line).
        #[source]
        source: serde_json::Error,
    },

    /// An entry's index is not the next one: entries were lost, duplicated or reordered.
    #[error(
        "line {line}: index {found} where {expected} was expected (indices are 0-based and consecutive)"
    )]
    IndexGap {
        /// 1-based line number.
        line: u64,
        /// The index this line must carry.
        expected: u64,
        /// The index it carries.
        found: u64,
    },

    /// An entry names a PCR that does not exist on a PC Client TPM.
    #[error("line {line}: PCR {pcr} is out of range 0..={PCR_MAX}")]
    PcrOutOfRange {
        /// 1-based line number.
        line: u64,
        /// The PCR index found.
        pcr: u64,
    },

    /// An entry's digest is not a SHA-256 written as 64 lowercase hex digits.
    #[error("line {line}: digest {digest:?} is not 64 lowercase hex digits")]
    BadDigest {
        /// 1-based line number.
        line: u64,
        /// The digest string found.
        digest: String,
    },

    /// Replaying the log does not give the PCR value the device quoted.
    #[error(
        "PCR {pcr}: quoted value {} does not match {} replayed from the measurement log",
        hex::encode(expected),
        hex::encode(replayed)
    )]
    PcrMismatch {
        /// The PCR index.
        pcr: u8,
        /// The value the quote holds.
        expected: Digest,
        /// The value the log replays to.
        replayed: Digest,
    },
}

impl Error {
    /// The 1-based log line an error is about, looking through [`Error::Corrupt`] and
    /// [`Error::Rejected`]; `None` for errors that are not about one line.
    pub fn line(&self) -> Option<u64> {
        match self {
            Error::Corrupt { source, .. } | Error::Rejected { source, .. } => source.line(),
            Error::LineTooLong { line, .. }
            | Error::Json { line, .. }
            | Error::IndexGap { line, .. }
            | Error::PcrOutOfRange { line, .. }
            | Error::BadDigest { line, .. } => Some(*line),
            Error::Io { .. }
            | Error::Locked { .. }
            | Error::Poisoned { .. }
            | Error::PcrMismatch { .. } => None,
        }
    }
}
