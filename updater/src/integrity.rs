//! Re-verification of store entries: the bytes on disk must still be the bytes that were
//! verified at install.
//!
//! A store entry `store/<digest>/` is intact when `manifest.cbor` still hashes to `<digest>`
//! (the name the signed install recorded), the manifest parses, every file it lists is a
//! regular file of the listed size and SHA-256, and nothing else is in the directory besides
//! `header.cose`. Reads go through a [`Pacer`], so that a periodic check runs at a bounded
//! rate and does not starve inference of I/O.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::manifest::Manifest;
use crate::updater::{HEADER_FILE, MANIFEST_FILE};

/// Bytes read per step.
const CHUNK: usize = 256 * 1024;

/// Why a store entry is not what was installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct Tamper {
    /// The file concerned (relative to the entry), or `.` for the directory.
    pub file: String,
    /// What differs.
    pub reason: String,
}

/// Why a check could not be completed (not evidence of tampering by itself).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The entry differs from what was installed.
    #[error("tampered: {0}")]
    Tampered(Tamper),
    /// The check was stopped (daemon shutting down).
    #[error("stopped")]
    Stopped,
}

/// Limits the read rate of a check to `bytes_per_sec` (0 = unlimited) and lets it be stopped.
pub struct Pacer<'a> {
    bytes_per_sec: u64,
    started: Instant,
    read: u64,
    stop: &'a dyn Fn() -> bool,
}

impl<'a> Pacer<'a> {
    /// A pacer; `stop` is polled between chunks.
    pub fn new(bytes_per_sec: u64, stop: &'a dyn Fn() -> bool) -> Self {
        Self {
            bytes_per_sec,
            started: Instant::now(),
            read: 0,
            stop,
        }
    }

    /// Bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.read
    }

    /// Accounts for `n` bytes read, sleeping as long as needed to stay under the rate.
    fn account(&mut self, n: usize) -> Result<(), CheckError> {
        if (self.stop)() {
            return Err(CheckError::Stopped);
        }
        self.read += n as u64;
        if self.bytes_per_sec > 0 {
            let due = Duration::from_secs_f64(self.read as f64 / self.bytes_per_sec as f64);
            let elapsed = self.started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
        Ok(())
    }
}

/// Checks the store entry `dir` named `digest`; returns its manifest when intact.
pub fn verify_entry(
    dir: &Path,
    digest: &str,
    pacer: &mut Pacer<'_>,
) -> Result<Manifest, CheckError> {
    let tamper = |file: &str, reason: String| {
        CheckError::Tampered(Tamper {
            file: file.to_owned(),
            reason,
        })
    };
    let manifest_path = dir.join(MANIFEST_FILE);
    let (bytes, actual) =
        read_hashed(&manifest_path, None, pacer).map_err(|e| e.into_check(MANIFEST_FILE))?;
    if actual != digest {
        return Err(tamper(
            MANIFEST_FILE,
            format!("SHA-256 is {actual}, the installed manifest's is {digest}"),
        ));
    }
    let manifest = Manifest::from_cbor(&bytes.unwrap_or_default())
        .map_err(|e| tamper(MANIFEST_FILE, format!("does not parse: {e}")))?;
    let mut expected: BTreeSet<String> = [MANIFEST_FILE.to_owned(), HEADER_FILE.to_owned()].into();
    for file in &manifest.files {
        // Nested paths: their first component is what the directory listing shows.
        let top = file.path.split('/').next().unwrap_or(&file.path).to_owned();
        expected.insert(top);
        let path = dir.join(&file.path);
        let (_, actual) =
            read_hashed(&path, Some(file.size), pacer).map_err(|e| e.into_check(&file.path))?;
        if actual != file.sha256 {
            return Err(tamper(
                &file.path,
                format!(
                    "SHA-256 is {actual}, the signed manifest says {}",
                    file.sha256
                ),
            ));
        }
    }
    let listing = fs::read_dir(dir).map_err(|e| tamper(".", format!("cannot list: {e}")))?;
    for entry in listing {
        let entry = entry.map_err(|e| tamper(".", format!("cannot list: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !expected.contains(&name) {
            return Err(tamper(
                &name,
                "is not part of the installed bundle".to_owned(),
            ));
        }
    }
    Ok(manifest)
}

enum ReadError {
    Tampered(String),
    Stopped,
}

impl ReadError {
    fn into_check(self, file: &str) -> CheckError {
        match self {
            ReadError::Tampered(reason) => CheckError::Tampered(Tamper {
                file: file.to_owned(),
                reason,
            }),
            ReadError::Stopped => CheckError::Stopped,
        }
    }
}

/// Reads and hashes `path` (a regular file, never a symlink). With `size`, the file must have
/// exactly that many bytes and is not kept; without, its bytes are returned (the manifest).
fn read_hashed(
    path: &Path,
    size: Option<u64>,
    pacer: &mut Pacer<'_>,
) -> Result<(Option<Vec<u8>>, String), ReadError> {
    let meta = fs::symlink_metadata(path).map_err(|e| ReadError::Tampered(missing(&e)))?;
    if !meta.file_type().is_file() {
        return Err(ReadError::Tampered(
            "is not a regular file (a symlink or a directory was put in its place)".to_owned(),
        ));
    }
    if let Some(expected) = size {
        if meta.len() != expected {
            return Err(ReadError::Tampered(format!(
                "has {} bytes, the signed manifest says {expected}",
                meta.len()
            )));
        }
    }
    let mut file = fs::File::open(path).map_err(|e| ReadError::Tampered(missing(&e)))?;
    let mut hasher = Sha256::new();
    let mut kept = size.is_none().then(Vec::new);
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Tampered(format!("cannot be read: {e}"))),
        };
        hasher.update(&buf[..n]);
        if let Some(k) = kept.as_mut() {
            // manifest.cbor is bounded by limits.max_header_bytes at install; a file that
            // grew far beyond is not the one installed.
            if k.len() + n > 64 * 1024 * 1024 {
                return Err(ReadError::Tampered("grew beyond 64 MiB".to_owned()));
            }
            k.extend_from_slice(&buf[..n]);
        }
        pacer.account(n).map_err(|_| ReadError::Stopped)?;
    }
    Ok((kept, hex::encode(hasher.finalize())))
}

fn missing(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound {
        "is missing".to_owned()
    } else {
        format!("cannot be opened: {e}")
    }
}
