//! Building bundles and adding signatures to them (the operator's side).

use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use super::{header, verify, MAGIC};
use crate::error::{BundleError, Result};
use crate::keys::OperatorKey;
use crate::manifest::{FileEntry, FileRole, Manifest};

/// One file to put in a bundle.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// Path inside the bundle.
    pub path: String,
    /// Role of the file.
    pub role: FileRole,
    /// Where its bytes come from.
    pub data: Source,
}

/// Bytes of a file to bundle.
#[derive(Debug, Clone)]
pub enum Source {
    /// Read from this file.
    File(PathBuf),
    /// These bytes.
    Bytes(Vec<u8>),
}

/// How to compress.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// zstd level (1..=19; 3 is a good default).
    pub level: i32,
    /// zstd worker threads (0 = compress on the calling thread).
    pub threads: u32,
    /// Largest window the encoder may use (log2); must not exceed what devices accept.
    pub window_log: u32,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            level: 3,
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            window_log: 22,
        }
    }
}

/// Builds `out` from `manifest` (whose `files` is replaced by the sources) signed by `keys`.
///
/// Each file is compressed to a temporary file next to `out` while its plain bytes are hashed;
/// the bundle is then written to a temporary file, fsynced and renamed over `out`.
/// `progress(done, total)` counts plain bytes.
pub fn build_bundle(
    mut manifest: Manifest,
    sources: &[FileSource],
    keys: &[&OperatorKey],
    out: &Path,
    options: BuildOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Manifest> {
    let dir = parent_dir(out);
    let total: u64 = sources
        .iter()
        .map(|s| match &s.data {
            Source::File(p) => fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            Source::Bytes(b) => b.len() as u64,
        })
        .sum();
    let mut done = 0u64;
    let mut frames = Vec::with_capacity(sources.len());
    manifest.files.clear();
    for source in sources {
        let (entry, frame) = compress(source, dir, options, &mut |n| {
            done += n;
            progress(done, total)
        })?;
        manifest.files.push(entry);
        frames.push(frame);
    }
    manifest.validate()?;
    let header = header::sign_manifest(&manifest.to_cbor()?, keys)?;
    let mut tmp = NamedTempFile::new_in(dir).map_err(|e| {
        BundleError::io(format!("creating a temporary file in {}", dir.display()), e)
    })?;
    {
        let mut w = BufWriter::with_capacity(256 * 1024, tmp.as_file_mut());
        write_prefix(&mut w, &header)?;
        for frame in &mut frames {
            frame
                .seek(SeekFrom::Start(0))
                .and_then(|_| io::copy(frame, &mut w))
                .map_err(|e| BundleError::io("copying a compressed frame", e))?;
        }
        w.flush()
            .map_err(|e| BundleError::io("writing the bundle", e))?;
    }
    persist(tmp, out)?;
    Ok(manifest)
}

/// Adds a signature by `key` to the bundle at `input`, writing the result to `output` (which
/// may be the same path). The payload is copied byte for byte.
pub fn add_signature_to_file(input: &Path, key: &OperatorKey, output: &Path) -> Result<()> {
    let file = fs::File::open(input)
        .map_err(|e| BundleError::io(format!("opening {}", input.display()), e))?;
    let mut reader = BufReader::new(file);
    let header = verify::read_framing(&mut reader, super::MAX_HEADER_BYTES_HARD)?;
    let header = header::add_signature(&header, key)?;
    let dir = parent_dir(output);
    let mut tmp = NamedTempFile::new_in(dir).map_err(|e| {
        BundleError::io(format!("creating a temporary file in {}", dir.display()), e)
    })?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        write_prefix(&mut w, &header)?;
        io::copy(&mut reader, &mut w).map_err(|e| BundleError::io("copying the payload", e))?;
        w.flush()
            .map_err(|e| BundleError::io("writing the bundle", e))?;
    }
    persist(tmp, output)
}

/// Writes magic, header length and header.
pub fn write_prefix<W: Write>(w: &mut W, header: &[u8]) -> Result<()> {
    let len = u32::try_from(header.len()).map_err(|_| BundleError::Build {
        reason: format!(
            "header of {} bytes does not fit the u32 length",
            header.len()
        ),
    })?;
    w.write_all(MAGIC)
        .and_then(|_| w.write_all(&len.to_be_bytes()))
        .and_then(|_| w.write_all(header))
        .map_err(|e| BundleError::io("writing the bundle header", e))
}

fn compress(
    source: &FileSource,
    dir: &Path,
    options: BuildOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<(FileEntry, fs::File)> {
    let mut input: Box<dyn Read> = match &source.data {
        Source::File(path) => Box::new(
            fs::File::open(path)
                .map_err(|e| BundleError::io(format!("opening {}", path.display()), e))?,
        ),
        Source::Bytes(bytes) => Box::new(io::Cursor::new(bytes.as_slice())),
    };
    let frame = tempfile::tempfile_in(dir).map_err(|e| {
        BundleError::io(format!("creating a temporary file in {}", dir.display()), e)
    })?;
    let zerr = |e: io::Error| BundleError::io(format!("compressing {}", source.path), e);
    let mut encoder =
        zstd::stream::write::Encoder::new(BufWriter::new(frame), options.level).map_err(zerr)?;
    encoder.include_checksum(false).map_err(zerr)?;
    encoder.window_log(options.window_log).map_err(zerr)?;
    if options.threads > 0 {
        encoder.multithread(options.threads).map_err(zerr)?;
    }
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BundleError::io(format!("reading {}", source.path), e)),
        };
        hasher.update(&buf[..n]);
        encoder.write_all(&buf[..n]).map_err(zerr)?;
        size += n as u64;
        progress(n as u64);
    }
    let mut frame = encoder
        .finish()
        .map_err(zerr)?
        .into_inner()
        .map_err(|e| zerr(e.into_error()))?;
    let compressed_size = frame
        .seek(SeekFrom::End(0))
        .map_err(|e| BundleError::io("sizing a compressed frame", e))?;
    Ok((
        FileEntry {
            path: source.path.clone(),
            role: source.role,
            size,
            compressed_size,
            sha256: hex::encode(hasher.finalize()),
        },
        frame,
    ))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn persist(tmp: NamedTempFile, out: &Path) -> Result<()> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| BundleError::io(format!("syncing {}", out.display()), e))?;
    tmp.persist(out)
        .map_err(|e| BundleError::io(format!("writing {}", out.display()), e.error))?;
    if let Ok(dir) = fs::File::open(parent_dir(out)) {
        // Best effort: the rename is what matters; a directory that cannot be opened for
        // syncing (odd filesystems) must not fail a build that has already landed.
        let _ = dir.sync_all();
    }
    Ok(())
}
