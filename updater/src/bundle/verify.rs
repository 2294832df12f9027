//! Streaming verification, in the order DESIGN.md fixes: magic and lengths → header size
//! limit → signatures and threshold → (manifest) → expiry → target → anti-rollback → each
//! file's size bound and digest while streaming.
//!
//! Memory is bounded whatever the input: the header by `max_header_bytes`, the decoder window
//! by `max_window_log`, the payload by a fixed number of fixed-size chunks in flight between
//! the decompressing thread and the hashing/writing thread.

use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use sha2::{Digest, Sha256};

use super::header;
use super::MAGIC;
use crate::error::{BundleError, Region, Result};
use crate::keys::{KeyId, TrustStore};
use crate::manifest::{FileEntry, Manifest};

/// The magic number of a standard zstd frame, little-endian 0xFD2FB528.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Size of one chunk of plain bytes passed between the two threads.
const CHUNK: usize = 256 * 1024;
/// Chunks queued between the threads (plus two being worked on).
const IN_FLIGHT: usize = 4;

/// Size bounds a verifier enforces before and while reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest signed header.
    pub max_header_bytes: u64,
    /// Largest plain file.
    pub max_file_bytes: u64,
    /// Most files in one bundle.
    pub max_files: usize,
    /// Largest sum of plain file sizes.
    pub max_bundle_bytes: u64,
    /// Largest zstd window (log2 bytes) a frame may ask the decoder for.
    pub max_window_log: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 256 * 1024,
            max_file_bytes: 2 << 30,
            max_files: 64,
            max_bundle_bytes: 4 << 30,
            max_window_log: 23,
        }
    }
}

/// What the verifier checks a bundle against.
#[derive(Debug, Clone)]
pub struct Policy<'a> {
    /// Trusted keys and threshold.
    pub trust: &'a TrustStore,
    /// The clock, unix seconds.
    pub now: i64,
    /// The last trusted time seen (e.g. the newest `created` of an installed bundle); expiry is
    /// judged against the later of this and `now`, so a clock set back revives nothing.
    pub trusted_time: Option<i64>,
    /// This device's target names (class, architecture); `None` skips the target check.
    pub device_targets: Option<Vec<String>>,
    /// Lowest sequence accepted for this model; `None` skips the anti-rollback check.
    pub min_sequence: Option<u64>,
    /// Size bounds.
    pub limits: Limits,
}

/// A header whose signatures verified and whose manifest passed every policy check.
#[derive(Debug, Clone)]
pub struct VerifiedHeader {
    /// The authenticated manifest.
    pub manifest: Manifest,
    /// SHA-256 of the manifest bytes (what is measured).
    pub manifest_sha256: [u8; 32],
    /// Trusted keys that signed.
    pub signers: Vec<KeyId>,
    /// Signatures by keys that are not trusted.
    pub untrusted_signers: Vec<String>,
    /// Length of the framing plus header: where the payload starts.
    pub payload_offset: u64,
    /// The signed header (COSE_Sign) as received, so that a store can be re-verified later.
    pub signed_header: Vec<u8>,
    /// The authenticated manifest bytes (the COSE payload; `manifest_sha256` is their digest).
    pub manifest_cbor: Vec<u8>,
}

/// Where verified files go.
#[derive(Debug, Clone, Copy)]
pub enum Sink<'a> {
    /// Hash only (`mintctl bundle verify`).
    Discard,
    /// Write into this empty staging directory, fsyncing files and directories.
    Directory(&'a Path),
}

/// One unpacked file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedFile {
    /// Path in the manifest.
    pub path: String,
    /// Plain size.
    pub size: u64,
    /// SHA-256 of the plain bytes.
    pub sha256: [u8; 32],
}

/// Reads the framing and header and runs every check that does not need the payload.
pub fn read_header<R: Read>(input: &mut R, policy: &Policy<'_>) -> Result<VerifiedHeader> {
    let header_bytes = read_framing(input, policy.limits.max_header_bytes)?;
    let sign = header::decode(&header_bytes)?;
    let (manifest_bytes, signers) = header::verify(&sign, policy.trust)?;
    // Only now, with the signatures checked, is the manifest parsed.
    let manifest = Manifest::from_cbor(manifest_bytes)?;
    check_policy(&manifest, policy)?;
    Ok(VerifiedHeader {
        manifest_sha256: Sha256::digest(manifest_bytes).into(),
        manifest,
        signers: signers.trusted,
        untrusted_signers: signers.untrusted,
        payload_offset: (MAGIC.len() + 4 + header_bytes.len()) as u64,
        manifest_cbor: manifest_bytes.to_vec(),
        signed_header: header_bytes,
    })
}

/// Reads magic, length and header bytes, refusing a header above `max_header_bytes` before
/// reading it.
pub fn read_framing<R: Read>(input: &mut R, max_header_bytes: u64) -> Result<Vec<u8>> {
    let mut magic = [0u8; 8];
    read_region(input, &mut magic, Region::Magic)?;
    if &magic != MAGIC {
        return Err(BundleError::BadMagic {
            found: String::from_utf8_lossy(&magic).into_owned(),
        });
    }
    let mut len = [0u8; 4];
    read_region(input, &mut len, Region::HeaderLength)?;
    let len = u64::from(u32::from_be_bytes(len));
    if len > max_header_bytes {
        return Err(BundleError::HeaderTooLarge {
            len,
            limit: max_header_bytes,
        });
    }
    let mut header = vec![0u8; len as usize];
    read_region(input, &mut header, Region::Header)?;
    Ok(header)
}

fn read_region<R: Read>(input: &mut R, buf: &mut [u8], region: Region) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(BundleError::Truncated {
                    region,
                    expected: (buf.len() - filled) as u64,
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BundleError::io(format!("reading the {region}"), e)),
        }
    }
    Ok(())
}

/// Expiry → target → anti-rollback → declared size bounds.
pub fn check_policy(manifest: &Manifest, policy: &Policy<'_>) -> Result<()> {
    if let Some(expires) = manifest.expires {
        let now = policy.now.max(policy.trusted_time.unwrap_or(i64::MIN));
        if expires <= now {
            return Err(BundleError::Expired { expires, now });
        }
    }
    if let Some(device) = &policy.device_targets {
        let ok = manifest.targets.is_empty() || manifest.targets.iter().any(|t| device.contains(t));
        if !ok {
            return Err(BundleError::WrongTarget {
                targets: manifest.targets.clone(),
                device: device.clone(),
            });
        }
    }
    if let Some(minimum) = policy.min_sequence {
        if manifest.sequence < minimum {
            return Err(BundleError::Rollback {
                name: manifest.name.clone(),
                sequence: manifest.sequence,
                minimum,
            });
        }
    }
    check_declared_sizes(manifest, &policy.limits)
}

/// The declared sizes against the limits and the compress bound, before any payload byte.
pub fn check_declared_sizes(manifest: &Manifest, limits: &Limits) -> Result<()> {
    if manifest.files.len() > limits.max_files {
        return Err(BundleError::TooLarge {
            what: "file count".into(),
            declared: manifest.files.len() as u64,
            limit: limits.max_files as u64,
        });
    }
    for file in &manifest.files {
        if file.size > limits.max_file_bytes {
            return Err(BundleError::TooLarge {
                what: file.path.clone(),
                declared: file.size,
                limit: limits.max_file_bytes,
            });
        }
        let bound = compress_bound(file.size);
        if file.compressed_size > bound {
            return Err(BundleError::TooLarge {
                what: format!("the compressed frame of {}", file.path),
                declared: file.compressed_size,
                limit: bound,
            });
        }
    }
    if manifest.total_size() > limits.max_bundle_bytes {
        return Err(BundleError::TooLarge {
            what: "the bundle's files together".into(),
            declared: manifest.total_size(),
            limit: limits.max_bundle_bytes,
        });
    }
    Ok(())
}

/// The largest zstd frame any compressor can produce for `size` plain bytes: libzstd's
/// `ZSTD_COMPRESSBOUND`, plus room for the frame header and per-block overheads of
/// streaming and multi-threaded compression. A declared compressed size above it can only be
/// padding that would be read for nothing.
pub fn compress_bound(size: u64) -> u64 {
    let small = if size < 128 << 10 {
        ((128 << 10) - size) >> 11
    } else {
        0
    };
    size.saturating_add(size >> 8)
        .saturating_add(small)
        .saturating_add(1024)
}

/// Streams the payload that follows a verified header: decompresses each file within its
/// declared bounds, hashes it, and writes it to `sink`; then checks nothing follows.
///
/// `progress` is called with the number of plain bytes done so far.
pub fn unpack<R: Read + Send>(
    input: &mut R,
    header: &VerifiedHeader,
    limits: &Limits,
    sink: Sink<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<UnpackedFile>> {
    unpack_files(input, &header.manifest.files, limits, sink, progress)
}

/// [`unpack`] over a list of file entries; callers outside this crate must go through a
/// verified header (device) or [`super::check_unverified`] (operator tools).
pub(crate) fn unpack_files<R: Read + Send>(
    input: &mut R,
    files: &[FileEntry],
    limits: &Limits,
    sink: Sink<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<UnpackedFile>> {
    let unpacked = std::thread::scope(|scope| {
        let (full_tx, full_rx) = sync_channel::<Msg>(IN_FLIGHT);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(IN_FLIGHT + 2);
        for _ in 0..IN_FLIGHT + 2 {
            free_tx.send(vec![0u8; CHUNK]).expect("receiver alive");
        }
        let consumer = scope.spawn(move || consume(full_rx, free_tx, files, sink));
        let produced = produce(input, files, limits, full_tx, free_rx, progress);
        let consumed = consumer.join().unwrap_or_else(|_| {
            Err(Stop::Bundle(BundleError::Build {
                reason: "the hashing thread panicked".into(),
            }))
        });
        match (produced, consumed) {
            // The consumer fails only on a file the producer had finished: its error is the
            // earlier one in stream order.
            (_, Err(Stop::Bundle(e))) => Err(e),
            (Err(Stop::Bundle(e)), _) => Err(e),
            (Ok(()), Ok(files)) => Ok(files),
            _ => Err(BundleError::Build {
                reason: "verification pipeline stopped without a cause".into(),
            }),
        }
    })?;
    let mut extra = [0u8; 1];
    loop {
        match input.read(&mut extra) {
            Ok(0) => break,
            Ok(_) => return Err(BundleError::TrailingData),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(BundleError::io("reading after the last file", e)),
        }
    }
    if let Sink::Directory(dir) = sink {
        sync_dirs(dir, files)?;
    }
    Ok(unpacked)
}

/// Reads and verifies a whole bundle from `input`.
pub fn verify_stream<R: Read + Send>(
    input: &mut R,
    policy: &Policy<'_>,
    sink: Sink<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<(VerifiedHeader, Vec<UnpackedFile>)> {
    let header = read_header(input, policy)?;
    let files = unpack(input, &header, &policy.limits, sink, progress)?;
    Ok((header, files))
}

/// Reads and verifies a bundle file.
pub fn verify_file(
    path: &Path,
    policy: &Policy<'_>,
    sink: Sink<'_>,
    progress: &mut dyn FnMut(u64),
) -> Result<(VerifiedHeader, Vec<UnpackedFile>)> {
    let file = fs::File::open(path)
        .map_err(|e| BundleError::io(format!("opening {}", path.display()), e))?;
    let mut input = BufReader::with_capacity(128 * 1024, file);
    verify_stream(&mut input, policy, sink, progress)
}

enum Msg {
    Data(Vec<u8>, usize),
    EndOfFile,
}

/// Why one side of the pipeline stopped.
enum Stop {
    /// The other side went away (it has the error to report).
    Aborted,
    /// This side found the problem.
    Bundle(BundleError),
}

impl From<BundleError> for Stop {
    fn from(e: BundleError) -> Self {
        Stop::Bundle(e)
    }
}

/// Decompresses each file in order, bounded by its declared sizes.
fn produce<R: Read>(
    input: &mut R,
    files: &[FileEntry],
    limits: &Limits,
    full: SyncSender<Msg>,
    free: Receiver<Vec<u8>>,
    progress: &mut dyn FnMut(u64),
) -> Result<(), Stop> {
    let mut done = 0u64;
    for file in files {
        let mut region = FrameRegion {
            inner: &mut *input,
            remaining: file.compressed_size,
        };
        let decompress_err = |e: io::Error| decode_error(file, e);
        // Each region is exactly one standard zstd frame: a skippable frame (whose bytes the
        // decoder ignores, so they would never be hashed) or anything else is refused.
        let mut magic = [0u8; 4];
        let got = read_full(&mut region, &mut magic).map_err(decompress_err)?;
        if got < magic.len() || magic != ZSTD_MAGIC {
            return Err(BundleError::Decompress {
                path: file.path.clone(),
                reason: format!(
                    "the payload region does not start with a zstd frame (magic {}), found {}",
                    hex::encode(ZSTD_MAGIC),
                    hex::encode(&magic[..got])
                ),
            }
            .into());
        }
        let framed = io::Cursor::new(magic).chain(region);
        let mut decoder =
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(64 * 1024, framed))
                .map_err(decompress_err)?
                .single_frame();
        decoder
            .window_log_max(limits.max_window_log)
            .map_err(decompress_err)?;
        let mut size = 0u64;
        loop {
            let mut buf = free.recv().map_err(|_| Stop::Aborted)?;
            let n = read_full(&mut decoder, &mut buf).map_err(decompress_err)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > file.size {
                return Err(BundleError::SizeMismatch {
                    path: file.path.clone(),
                    declared: file.size,
                    actual: format!("at least {size}"),
                }
                .into());
            }
            done += n as u64;
            full.send(Msg::Data(buf, n)).map_err(|_| Stop::Aborted)?;
            progress(done);
        }
        if size < file.size {
            return Err(BundleError::SizeMismatch {
                path: file.path.clone(),
                declared: file.size,
                actual: size.to_string(),
            }
            .into());
        }
        let mut rest = decoder.finish();
        let leftover = rest.buffer().len() as u64 + rest.get_ref().get_ref().1.remaining;
        if leftover > 0 {
            // Drain so that a cut file still reads as truncated, not as a bad frame.
            io::copy(&mut rest, &mut io::sink()).map_err(decompress_err)?;
            return Err(BundleError::Decompress {
                path: file.path.clone(),
                reason: format!(
                    "the frame ends {leftover} bytes before its declared compressed size {}",
                    file.compressed_size
                ),
            }
            .into());
        }
        full.send(Msg::EndOfFile).map_err(|_| Stop::Aborted)?;
    }
    Ok(())
}

/// Hashes each file and writes it to the sink, checking its digest at its end.
fn consume(
    full: Receiver<Msg>,
    free: SyncSender<Vec<u8>>,
    files: &[FileEntry],
    sink: Sink<'_>,
) -> Result<Vec<UnpackedFile>, Stop> {
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let mut writer = match sink {
            Sink::Discard => None,
            Sink::Directory(dir) => Some(create_staged(dir, &file.path)?),
        };
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        // Data chunks until the producer marks the end of this file (Msg::EndOfFile).
        while let Msg::Data(buf, n) = full.recv().map_err(|_| Stop::Aborted)? {
            hasher.update(&buf[..n]);
            if let Some((w, path)) = writer.as_mut() {
                w.write_all(&buf[..n])
                    .map_err(|e| BundleError::io(format!("writing {}", path.display()), e))?;
            }
            size += n as u64;
            // The producer may already be gone after an error; then so are we.
            let _ = free.send(buf);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        let actual = hex::encode(digest);
        if actual != file.sha256 {
            return Err(BundleError::Digest {
                path: file.path.clone(),
                expected: file.sha256.clone(),
                actual,
            }
            .into());
        }
        if let Some((w, path)) = writer {
            let f = w.into_inner().map_err(|e| {
                BundleError::io(format!("writing {}", path.display()), e.into_error())
            })?;
            f.sync_all()
                .map_err(|e| BundleError::io(format!("syncing {}", path.display()), e))?;
        }
        out.push(UnpackedFile {
            path: file.path.clone(),
            size,
            sha256: digest,
        });
    }
    Ok(out)
}

fn create_staged(dir: &Path, relative: &str) -> Result<(io::BufWriter<fs::File>, PathBuf)> {
    // The manifest's paths were validated (no '..', no absolute, no hidden components), and
    // the staging directory is fresh and ours, so this stays inside it.
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .map_err(|e| BundleError::io(format!("creating {}", parent.display()), e))?;
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| BundleError::io(format!("creating {}", path.display()), e))?;
    Ok((io::BufWriter::with_capacity(CHUNK, file), path))
}

/// fsync every directory that received a file, deepest first, then the staging root.
fn sync_dirs(root: &Path, files: &[FileEntry]) -> Result<()> {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| Path::new(&f.path).parent().map(|p| root.join(p)))
        .collect();
    dirs.push(root.to_owned());
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    dirs.dedup();
    for dir in dirs {
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| BundleError::io(format!("syncing {}", dir.display()), e))?;
    }
    Ok(())
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The compressed bytes of one file: at most `remaining`, and an error if the input ends
/// before that (a truncated bundle, told apart from a corrupt frame).
struct FrameRegion<'a, R> {
    inner: &'a mut R,
    remaining: u64,
}

#[derive(Debug)]
struct CutShort(u64);

impl std::fmt::Display for CutShort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "input ended {} bytes early", self.0)
    }
}

impl std::error::Error for CutShort {}

/// An error of the underlying input while reading a frame.
#[derive(Debug)]
struct InputFailed(io::Error);

impl std::fmt::Display for InputFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for InputFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl<R: Read> Read for FrameRegion<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        // An error of the input itself (a cut upload, a failing disk) is not the bundle's
        // fault: mark it so it is reported as I/O, not as a corrupt frame.
        let n = self
            .inner
            .read(&mut buf[..want])
            .map_err(|e| io::Error::new(e.kind(), InputFailed(e)))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                CutShort(self.remaining),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn decode_error(file: &FileEntry, e: io::Error) -> Stop {
    if let Some(cut) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<CutShort>())
    {
        return Stop::Bundle(BundleError::Truncated {
            region: Region::File(file.path.clone()),
            expected: cut.0,
        });
    }
    if let Some(InputFailed(inner)) = e.get_ref().and_then(|i| i.downcast_ref::<InputFailed>()) {
        return Stop::Bundle(BundleError::io(
            format!("reading the payload of {}", file.path),
            io::Error::new(inner.kind(), inner.to_string()),
        ));
    }
    Stop::Bundle(BundleError::Decompress {
        path: file.path.clone(),
        reason: e.to_string(),
    })
}
