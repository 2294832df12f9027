//! The measurement log: one JSON object per line, append-only, durable.
//!
//! ```text
//! {"index":0,"pcr":23,"kind":"manifest","name":"kws","version":"1.2.0","sequence":7,"digest":"5c85…f3","unix_time":1700000000}
//! {"index":1,"pcr":23,"kind":"model","name":"kws","version":"1.2.0","sequence":7,"digest":"a7f2…33","unix_time":1700000000}
//! ```
//!
//! Format rules, enforced by [`parse_log`] on every reader (device, fuzzer, fleet verifier):
//!
//! - each line is at most [`MAX_LINE_LEN`] bytes and ends with `\n`;
//! - fields are exactly those of [`Measurement`] (unknown fields are refused: a verifier must
//!   not vouch for data it did not check);
//! - `index` starts at 0 and increases by one per line;
//! - `pcr` is at most [`PCR_MAX`]; `digest` is 64 lowercase hex digits;
//! - `kind` is `"manifest"`, `"model"` or another string kept as [`MeasurementKind::Other`].
//!
//! The only damage tolerated is a torn **last** line, which is what a crash during an append
//! leaves: a line without its newline, or a newline-terminated last line that is not even
//! well-formed JSON (blocks of a write that never reached the disk read back as zeros on some
//! filesystems). It is reported in [`ParsedLog::torn_bytes`], never parsed as an entry.
//! A last line that *is* well-formed JSON but breaks a rule above is corruption, not a tear.
//!
//! Writing is single-writer: [`MeasurementLog::open`] takes an exclusive advisory lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read as _, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::error::Category;

use crate::error::{Error, Result};
use crate::pcr::{digest_from_hex, Digest, PCR_MAX};

/// The longest line the log holds, in bytes, not counting the newline (64 KiB).
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// What a measurement is of. Serialized as a lowercase string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum MeasurementKind {
    /// The signed manifest of a bundle (`"manifest"`).
    Manifest,
    /// The model file of a bundle (`"model"`).
    Model,
    /// Anything else, kept verbatim so that an older verifier can still replay a newer log.
    /// `Other("model")` reads back as [`MeasurementKind::Model`].
    Other(String),
}

impl MeasurementKind {
    /// The string written to the log.
    pub fn as_str(&self) -> &str {
        match self {
            MeasurementKind::Manifest => "manifest",
            MeasurementKind::Model => "model",
            MeasurementKind::Other(other) => other,
        }
    }
}

impl From<String> for MeasurementKind {
    fn from(text: String) -> Self {
        match text.as_str() {
            "manifest" => MeasurementKind::Manifest,
            "model" => MeasurementKind::Model,
            _ => MeasurementKind::Other(text),
        }
    }
}

impl From<MeasurementKind> for String {
    fn from(kind: MeasurementKind) -> Self {
        match kind {
            MeasurementKind::Other(other) => other,
            known => known.as_str().to_owned(),
        }
    }
}

/// One entry of the log: a digest that was extended into a PCR, and what it was the digest of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Measurement {
    /// Position in the log, from 0, consecutive.
    pub index: u64,
    /// The PCR the digest was extended into (0..=[`PCR_MAX`]).
    pub pcr: u8,
    /// What was measured.
    pub kind: MeasurementKind,
    /// The model name.
    pub name: String,
    /// The model's display version.
    pub version: String,
    /// The bundle's anti-rollback sequence.
    pub sequence: u64,
    /// The SHA-256 that was extended; lowercase hex in the log.
    #[serde(serialize_with = "serialize_digest")]
    pub digest: Digest,
    /// When the measurement was taken, seconds since the Unix epoch (informational: not
    /// covered by the PCR).
    pub unix_time: u64,
}

/// A measurement to append: a [`Measurement`] before the log assigns its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMeasurement {
    /// The PCR the digest was (or is about to be) extended into (0..=[`PCR_MAX`]).
    pub pcr: u8,
    /// What was measured.
    pub kind: MeasurementKind,
    /// The model name.
    pub name: String,
    /// The model's display version.
    pub version: String,
    /// The bundle's anti-rollback sequence.
    pub sequence: u64,
    /// The SHA-256 extended into the PCR.
    pub digest: Digest,
    /// Seconds since the Unix epoch.
    pub unix_time: u64,
}

impl NewMeasurement {
    fn with_index(self, index: u64) -> Measurement {
        Measurement {
            index,
            pcr: self.pcr,
            kind: self.kind,
            name: self.name,
            version: self.version,
            sequence: self.sequence,
            digest: self.digest,
            unix_time: self.unix_time,
        }
    }
}

fn serialize_digest<S: Serializer>(digest: &Digest, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(digest))
}

/// A line as JSON gives it, before the checks that turn it into a [`Measurement`]. Wide types
/// (`pcr: u64`, `digest: String`) so that a bad value gets its own precise error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    index: u64,
    pcr: u64,
    kind: MeasurementKind,
    name: String,
    version: String,
    sequence: u64,
    digest: String,
    unix_time: u64,
}

/// What [`parse_log`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLog {
    /// The complete entries, in order.
    pub entries: Vec<Measurement>,
    /// Length of the prefix of the input that holds exactly `entries`.
    pub valid_len: usize,
    /// Bytes after `valid_len`: a torn last line, or 0 for a clean log.
    pub torn_bytes: usize,
}

/// Parses a whole log, checking every rule of the [module documentation](self).
///
/// A torn last line is not an error: it is left out of `entries` and counted in
/// [`ParsedLog::torn_bytes`]. Any other damage is an error naming the 1-based line. Never
/// panics, whatever the input.
pub fn parse_log(bytes: &[u8]) -> Result<ParsedLog> {
    let mut entries = Vec::new();
    let mut offset = 0;
    let mut line_no = 0u64;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            // No newline: an append was cut short. A line we wrote is never this long, though.
            if rest.len() > MAX_LINE_LEN {
                return Err(Error::LineTooLong {
                    line: line_no,
                    len: rest.len(),
                });
            }
            return Ok(ParsedLog {
                entries,
                valid_len: offset,
                torn_bytes: rest.len(),
            });
        };
        let is_last = offset + end + 1 == bytes.len();
        match parse_line(line_no, &rest[..end], entries.len() as u64) {
            Ok(entry) => entries.push(entry),
            Err(Error::Json { source, .. })
                if is_last && matches!(source.classify(), Category::Syntax | Category::Eof) =>
            {
                return Ok(ParsedLog {
                    entries,
                    valid_len: offset,
                    torn_bytes: end + 1,
                });
            }
            Err(error) => return Err(error),
        }
        offset += end + 1;
    }
    Ok(ParsedLog {
        entries,
        valid_len: offset,
        torn_bytes: 0,
    })
}

/// Parses and checks one line (without its newline) that must carry `expected_index`.
fn parse_line(line_no: u64, line: &[u8], expected_index: u64) -> Result<Measurement> {
    if line.len() > MAX_LINE_LEN {
        return Err(Error::LineTooLong {
            line: line_no,
            len: line.len(),
        });
    }
    let raw: RawEntry = serde_json::from_slice(line).map_err(|source| Error::Json {
        line: line_no,
        source,
    })?;
    if raw.index != expected_index {
        return Err(Error::IndexGap {
            line: line_no,
            expected: expected_index,
            found: raw.index,
        });
    }
    let pcr = u8::try_from(raw.pcr)
        .ok()
        .filter(|pcr| *pcr <= PCR_MAX)
        .ok_or(Error::PcrOutOfRange {
            line: line_no,
            pcr: raw.pcr,
        })?;
    let Some(digest) = digest_from_hex(&raw.digest) else {
        return Err(Error::BadDigest {
            line: line_no,
            digest: raw.digest,
        });
    };
    Ok(Measurement {
        index: raw.index,
        pcr,
        kind: raw.kind,
        name: raw.name,
        version: raw.version,
        sequence: raw.sequence,
        digest,
        unix_time: raw.unix_time,
    })
}

/// Serializes entries in the log format, e.g. to send a device's log to a verifier.
/// `parse_log(&encode_log(entries)?)` gives back `entries` when they are a valid log.
pub fn encode_log(entries: &[Measurement]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for (position, entry) in entries.iter().enumerate() {
        out.extend(encode_line(position as u64 + 1, entry)?);
    }
    Ok(out)
}

fn encode_line(line_no: u64, entry: &Measurement) -> Result<Vec<u8>> {
    let mut line = serde_json::to_vec(entry).map_err(|source| Error::Json {
        line: line_no,
        source,
    })?;
    line.push(b'\n');
    Ok(line)
}

/// The measurement log file, open for appending.
///
/// Holds an exclusive advisory lock on the file for its lifetime, so two daemons cannot
/// interleave entries. Readers that only need the entries (a CLI, a test) can read the file and
/// call [`parse_log`] without taking the lock.
#[derive(Debug)]
pub struct MeasurementLog {
    path: PathBuf,
    file: File,
    entries: Vec<Measurement>,
    /// Length of the file as far as this handle knows: the end of the last complete entry.
    len: u64,
    recovered_bytes: u64,
    poisoned: bool,
}

impl MeasurementLog {
    /// Opens the log at `path`, creating it (and missing parent directories) if needed.
    ///
    /// A torn last line left by a crash is cut off (the file is truncated back to the last
    /// complete line and fsynced) and its size reported by
    /// [`recovered_bytes`](Self::recovered_bytes). Any other damage is [`Error::Corrupt`] and
    /// the file is left untouched.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        create_dir_durably(&dir)?;

        let io = |op: &'static str| {
            let path = path.clone();
            move |source| Error::Io { op, path, source }
        };
        let mut options = OpenOptions::new();
        options.read(true).append(true);
        let file = match options.clone().create_new(true).open(&path) {
            Err(error) if error.kind() == ErrorKind::AlreadyExists => options.open(&path),
            other => other,
        }
        .map_err(io("open"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(Error::Locked { path }),
            Err(TryLockError::Error(source)) => return Err(io("lock")(source)),
        }
        // Always, not only when we created the file: a previous run may have created it and
        // died before making its directory entry durable.
        sync_dir(&dir)?;

        let mut bytes = Vec::new();
        (&file).read_to_end(&mut bytes).map_err(io("read"))?;
        let parsed = parse_log(&bytes).map_err(|source| Error::Corrupt {
            path: path.clone(),
            source: Box::new(source),
        })?;
        let len = parsed.valid_len as u64;
        if parsed.torn_bytes > 0 {
            file.set_len(len).map_err(io("truncate the torn tail of"))?;
            file.sync_data().map_err(io("fsync"))?;
        }
        Ok(MeasurementLog {
            path,
            file,
            entries: parsed.entries,
            len,
            recovered_bytes: parsed.torn_bytes as u64,
            poisoned: false,
        })
    }

    /// Appends `new` with the next index and returns the entry as written. The line is on disk
    /// (file fsynced) when this returns `Ok`.
    ///
    /// An entry the log could not read back (PCR > [`PCR_MAX`], line over [`MAX_LINE_LEN`]) is
    /// [`Error::Rejected`] and nothing is written. If writing or syncing fails, the handle
    /// tries to cut the partial line off and refuses further appends ([`Error::Poisoned`]):
    /// reopen the log to see whether the entry made it.
    pub fn append(&mut self, new: NewMeasurement) -> Result<Measurement> {
        if self.poisoned {
            return Err(Error::Poisoned {
                path: self.path.clone(),
            });
        }
        let index = self.entries.len() as u64;
        let line_no = index + 1;
        let rejected = |source| Error::Rejected {
            path: self.path.clone(),
            source: Box::new(source),
        };
        let line = encode_line(line_no, &new.with_index(index)).map_err(rejected)?;
        // Check the very bytes we are about to write with the reader's rules: a log this
        // handle writes is a log `open` accepts. The parsed entry (not the input) is what we
        // keep, so memory and disk cannot disagree.
        let entry = parse_line(line_no, &line[..line.len() - 1], index).map_err(rejected)?;

        if let Err((op, source)) = self.write_durably(&line) {
            self.poisoned = true;
            // Best effort: do not leave a partial line for a later writer to append after.
            let _ = self.file.set_len(self.len);
            return Err(Error::Io {
                op,
                path: self.path.clone(),
                source,
            });
        }
        self.len += line.len() as u64;
        self.entries.push(entry.clone());
        Ok(entry)
    }

    fn write_durably(&mut self, line: &[u8]) -> Result<(), (&'static str, std::io::Error)> {
        self.file.write_all(line).map_err(|e| ("append to", e))?;
        // fdatasync is enough: it also flushes the size change that makes the line readable.
        self.file.sync_data().map_err(|e| ("fsync", e))
    }

    /// The complete entries, in order.
    pub fn entries(&self) -> &[Measurement] {
        &self.entries
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many bytes of a torn last line [`open`](Self::open) cut off (0 for a clean log).
    pub fn recovered_bytes(&self) -> u64 {
        self.recovered_bytes
    }
}

/// Creates `dir` and any missing ancestors, fsyncing the parent of each one created so the new
/// entries survive a power cut.
fn create_dir_durably(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        op: "create directory",
        path: dir.to_path_buf(),
        source,
    })?;
    // Shallowest first, so each directory is durable before its children are linked into it.
    for created in missing.iter().rev() {
        match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
            _ => sync_dir(Path::new("."))?,
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    let io = |op| {
        move |source| Error::Io {
            op,
            path: dir.to_path_buf(),
            source,
        }
    };
    File::open(dir)
        .map_err(io("open directory"))?
        .sync_all()
        .map_err(io("fsync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The properties the fuzz target (`fuzz/fuzz_targets/measurement_log.rs`) checks, run
    /// here on cheap deterministic mutations so that `cargo test` covers them without nightly.
    fn check_parse_properties(data: &[u8]) {
        let Ok(parsed) = parse_log(data) else {
            return;
        };
        assert_eq!(parsed.valid_len + parsed.torn_bytes, data.len());
        let prefix = parse_log(&data[..parsed.valid_len]).unwrap();
        assert_eq!(prefix.entries, parsed.entries);
        assert_eq!(prefix.torn_bytes, 0);
        let again = parse_log(&encode_log(&parsed.entries).unwrap()).unwrap();
        assert_eq!(again.entries, parsed.entries);
        assert_eq!(again.torn_bytes, 0);
    }

    fn sample_log() -> Vec<u8> {
        let entries: Vec<Measurement> = (0..3u8)
            .map(|n| Measurement {
                index: u64::from(n),
                pcr: 23,
                kind: MeasurementKind::from(
                    ["manifest", "model", "other"][usize::from(n)].to_owned(),
                ),
                name: "kws".into(),
                version: "1.0.0".into(),
                sequence: 9,
                digest: [n; 32],
                unix_time: 1_700_000_000,
            })
            .collect();
        encode_log(&entries).unwrap()
    }

    #[test]
    fn mutated_logs_never_panic_and_stay_consistent() {
        let base = sample_log();
        let interesting = b"\n\0\\\"{}:,0123456789abcdefABCDEF -\xff\xc3\r\t\x7fu";
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            // xorshift64: reproducible, dependency-free.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut data = base.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % (data.len() + 1);
                let byte = interesting[(next() as usize) % interesting.len()];
                match next() % 4 {
                    0 if at < data.len() => data[at] = byte,
                    1 => data.insert(at, byte),
                    2 if at < data.len() => {
                        data.remove(at);
                    }
                    _ => data.truncate(at),
                }
            }
            check_parse_properties(&data);
        }
    }

    #[test]
    fn odd_inputs_never_panic() {
        for data in [
            &b""[..],
            b"\n",
            b"\n\n",
            b"\r\n",
            b"{}",
            b"{}\n",
            b"[]\n{}",
            b"\xff\xfe\n",
            b"{\"index\":0,\"index\":0}\n",
            b"{\"index\":-1}\n",
            b"{\"index\":18446744073709551616}\n",
        ] {
            check_parse_properties(data);
        }
        let deep = [b"[".repeat(100_000), b"]\n".to_vec()].concat();
        check_parse_properties(&deep);
        check_parse_properties(&b"x".repeat(MAX_LINE_LEN + 10));
    }
}
