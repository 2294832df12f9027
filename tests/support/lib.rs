//! Shared fixtures for the tests by threat (shared/STYLE.md, "Tests organised by threat").
//!
//! Two ways to make a bundle:
//!
//! * [`BundleFixture`] builds a valid one with the real operator-side builder
//!   ([`build_bundle`]), and knows where each region (magic, length, header, each file's frame)
//!   lies in its bytes, so tests can cut or flip bits at a chosen place.
//! * [`craft`] and friends write a raw bundle from ANY manifest — one the builder would refuse
//!   (a path with `..`, two model files, a lying size) — signed for real with
//!   [`header::sign_manifest`], so the verifier meets hostile-but-signed input. [`cose_sign`]
//!   goes one level lower and assembles the COSE_Sign itself (several signatures by one key,
//!   other algorithms, the kid in the unprotected header, no payload).
//!
//! Every verification goes through the streaming verifier ([`verify_stream`]) over a
//! [`Cursor`], exactly as a device reads a download.

use std::collections::BTreeSet;
use std::io::{self, Cursor, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ciborium::Value;
use coset::{iana, CoseSignBuilder, CoseSignatureBuilder, HeaderBuilder, TaggedCborSerializable};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub use mint_updater::bundle::header::{self, CONTENT_TYPE, MAX_SIGNATURES};
pub use mint_updater::bundle::verify::{
    read_header, unpack, verify_stream, Limits, Policy, Sink, UnpackedFile, VerifiedHeader,
};
pub use mint_updater::bundle::write::{
    build_bundle, write_prefix, BuildOptions, FileSource, Source,
};
pub use mint_updater::bundle::MAGIC;
pub use mint_updater::manifest::{
    DataType, FileEntry, FileRole, GuardSettings, HealthCheck, TensorSpec, FORMAT_VERSION,
};
pub use mint_updater::{BundleError, KeyId, Manifest, OperatorKey, Region, TrustStore};

/// The verifier's clock in every test unless a test sets its own (unix seconds).
pub const NOW: i64 = 1_700_000_100;
/// `created` of [`manifest`].
pub const CREATED: i64 = 1_700_000_000;
/// Bytes before the header: magic and the u32 length.
pub const PREFIX_LEN: usize = 12;

/// What a successful verification returns.
pub type Verified = (VerifiedHeader, Vec<UnpackedFile>);

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// A fresh random operator key.
pub fn key() -> OperatorKey {
    OperatorKey::generate().expect("key generation")
}

/// A trust store of `keys` with `threshold`.
pub fn trust(keys: &[&OperatorKey], threshold: usize) -> TrustStore {
    TrustStore::new(keys.iter().map(|k| k.public()), threshold).expect("trust store")
}

/// The default policy: clock at [`NOW`], no trusted time, target and anti-rollback checks
/// skipped, default limits. Tests change fields with `Policy { min_sequence: Some(5), ..policy(&t) }`.
pub fn policy(trust: &TrustStore) -> Policy<'_> {
    Policy {
        trust,
        now: NOW,
        trusted_time: None,
        device_targets: None,
        min_sequence: None,
        limits: Limits::default(),
    }
}

/// A well-formed manifest for model `mlp` (no files yet: the builder fills them in).
pub fn manifest() -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        name: "mlp".into(),
        version: "1.0.0".into(),
        sequence: 7,
        created: CREATED,
        expires: None,
        targets: vec![],
        files: vec![],
        inputs: vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::FP32,
            shape: vec![-1, 16],
            range: None,
        }],
        outputs: vec![TensorSpec {
            name: "output".into(),
            datatype: DataType::FP32,
            shape: vec![-1, 4],
            range: None,
        }],
        health: HealthCheck::default(),
        guard: GuardSettings::default(),
        reference: None,
    }
}

/// Deterministic, moderately compressible bytes (16 symbols from an xorshift stream), so that a
/// frame spans several zstd blocks with real literals and sequences.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b"abcdefghijklmnop"[(state & 15) as usize]
        })
        .collect()
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One zstd frame of `plain` (level 3, no checksum, single-threaded, like the builder).
pub fn zstd_frame(plain: &[u8]) -> Vec<u8> {
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    encoder.include_checksum(false).expect("checksum flag");
    encoder.write_all(plain).expect("compress");
    encoder.finish().expect("finish frame")
}

/// A valid bundle built by the real builder, with its parts kept for the tests.
pub struct BundleFixture {
    /// Holds the bundle file (and anything else the test puts there).
    pub dir: TempDir,
    /// The bundle file.
    pub path: PathBuf,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The manifest as signed (files filled in by the builder).
    pub manifest: Manifest,
    /// The signing key, trusted by [`Self::trust`].
    pub key: OperatorKey,
    /// A trust store of [`Self::key`], threshold 1.
    pub trust: TrustStore,
    /// The plain files, in payload order.
    pub files: Vec<(String, Vec<u8>)>,
}

impl BundleFixture {
    /// Builds a bundle of `manifest` with `files` (path, role, bytes), signed by a fresh key.
    pub fn new(manifest: Manifest, files: &[(&str, FileRole, Vec<u8>)]) -> Self {
        let key = key();
        Self::signed_by(manifest, files, key)
    }

    /// Like [`Self::new`] with a given key.
    pub fn signed_by(
        manifest: Manifest,
        files: &[(&str, FileRole, Vec<u8>)],
        key: OperatorKey,
    ) -> Self {
        let dir = tempdir();
        let path = dir.path().join("bundle.mint");
        let sources: Vec<FileSource> = files
            .iter()
            .map(|(p, role, data)| FileSource {
                path: (*p).to_owned(),
                role: *role,
                data: Source::Bytes(data.clone()),
            })
            .collect();
        let options = BuildOptions {
            threads: 0,
            ..BuildOptions::default()
        };
        let manifest = build_bundle(manifest, &sources, &[&key], &path, options, &mut |_, _| {})
            .expect("build_bundle");
        let bytes = std::fs::read(&path).expect("read bundle");
        let trust = trust(&[&key], 1);
        BundleFixture {
            dir,
            path,
            bytes,
            manifest,
            key,
            trust,
            files: files
                .iter()
                .map(|(p, _, d)| ((*p).to_owned(), d.clone()))
                .collect(),
        }
    }

    /// The standard two-file bundle: `model.onnx` (300 KiB, several zstd blocks) and
    /// `assets/labels.txt` (12 KiB).
    pub fn two_files() -> Self {
        Self::new(manifest(), &two_files())
    }

    /// Length of the signed header.
    pub fn header_len(&self) -> usize {
        u32::from_be_bytes(self.bytes[8..12].try_into().unwrap()) as usize
    }

    /// Where the signed header lies in [`Self::bytes`].
    pub fn header_range(&self) -> Range<usize> {
        PREFIX_LEN..PREFIX_LEN + self.header_len()
    }

    /// The signed header bytes.
    pub fn header(&self) -> &[u8] {
        &self.bytes[self.header_range()]
    }

    /// The manifest CBOR exactly as signed.
    pub fn manifest_cbor(&self) -> Vec<u8> {
        self.manifest.to_cbor().expect("manifest encodes")
    }

    /// Where the manifest bytes (the COSE payload) lie in [`Self::bytes`].
    pub fn manifest_range(&self) -> Range<usize> {
        let cbor = self.manifest_cbor();
        let start = find(self.header(), &cbor).expect("manifest is embedded in the header");
        let start = PREFIX_LEN + start;
        start..start + cbor.len()
    }

    /// Where the compressed frame of file `index` lies in [`Self::bytes`].
    pub fn file_range(&self, index: usize) -> Range<usize> {
        let mut start = self.header_range().end;
        for file in &self.manifest.files[..index] {
            start += file.compressed_size as usize;
        }
        start..start + self.manifest.files[index].compressed_size as usize
    }

    /// The payload: everything after the header.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[self.header_range().end..]
    }

    /// The default policy over this fixture's trust store.
    pub fn policy(&self) -> Policy<'_> {
        policy(&self.trust)
    }
}

/// The sources of [`BundleFixture::two_files`].
pub fn two_files() -> Vec<(&'static str, FileRole, Vec<u8>)> {
    let labels: Vec<u8> = (0..1200)
        .flat_map(|i| format!("label-{i:04}\n").into_bytes())
        .take(12 * 1024)
        .collect();
    vec![
        ("model.onnx", FileRole::Model, pseudo_random(300 * 1024, 1)),
        ("assets/labels.txt", FileRole::Other, labels),
    ]
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Verifies `bytes` with the streaming verifier, hashing only.
pub fn verify_bytes(bytes: &[u8], policy: &Policy<'_>) -> Result<Verified, BundleError> {
    verify_stream(&mut Cursor::new(bytes), policy, Sink::Discard, &mut |_| {})
}

/// Verifies `bytes` with the streaming verifier, unpacking into `staging`.
pub fn verify_into(
    bytes: &[u8],
    policy: &Policy<'_>,
    staging: &Path,
) -> Result<Verified, BundleError> {
    verify_stream(
        &mut Cursor::new(bytes),
        policy,
        Sink::Directory(staging),
        &mut |_| {},
    )
}

/// A bundle from raw parts: magic, length, `header` as given, then `payload` as given.
pub fn bundle_from_parts(header: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + header.len() + payload.len());
    write_prefix(&mut out, header).expect("write_prefix");
    out.extend_from_slice(payload);
    out
}

/// A bundle whose header is a real signature by `keys` over `manifest_cbor` — any bytes,
/// valid manifest or not — followed by `payload` as given.
pub fn craft(manifest_cbor: &[u8], keys: &[&OperatorKey], payload: &[u8]) -> Vec<u8> {
    let header = header::sign_manifest(manifest_cbor, keys).expect("sign_manifest");
    bundle_from_parts(&header, payload)
}

/// [`craft`] from a [`Manifest`] value, which need not pass [`Manifest::validate`].
pub fn craft_manifest(manifest: &Manifest, keys: &[&OperatorKey], payload: &[u8]) -> Vec<u8> {
    craft(
        &manifest.to_cbor().expect("manifest encodes"),
        keys,
        payload,
    )
}

/// A file for a crafted bundle: its honest manifest entry and its zstd frame.
pub fn crafted_file(path: &str, role: FileRole, plain: &[u8]) -> (FileEntry, Vec<u8>) {
    let frame = zstd_frame(plain);
    let entry = FileEntry {
        path: path.to_owned(),
        role,
        size: plain.len() as u64,
        compressed_size: frame.len() as u64,
        sha256: sha256_hex(plain),
    };
    (entry, frame)
}

/// [`manifest`] with these files (entries as given, however dishonest), and the payload made of
/// the frames in order.
pub fn manifest_with(files: Vec<(FileEntry, Vec<u8>)>) -> (Manifest, Vec<u8>) {
    let mut m = manifest();
    let mut payload = Vec::new();
    for (entry, frame) in files {
        m.files.push(entry);
        payload.extend_from_slice(&frame);
    }
    (m, payload)
}

/// A small valid crafted bundle: one model file `model.onnx` of `plain`.
pub fn crafted_single(plain: &[u8], key: &OperatorKey) -> (Manifest, Vec<u8>) {
    let (m, payload) = manifest_with(vec![crafted_file("model.onnx", FileRole::Model, plain)]);
    let bytes = craft_manifest(&m, &[key], &payload);
    (m, bytes)
}

/// The manifest as a raw CBOR map, for edits the `Manifest` type cannot express.
pub fn manifest_value(m: &Manifest) -> Value {
    let cbor = m.to_cbor().expect("manifest encodes");
    ciborium::from_reader(cbor.as_slice()).expect("manifest is CBOR")
}

/// Encodes a CBOR value.
pub fn cbor(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("CBOR encodes");
    out
}

/// Sets (or adds) text key `field` of a CBOR map.
pub fn set_field(value: &mut Value, field: &str, new: Value) {
    let map = value.as_map_mut().expect("a CBOR map");
    match map.iter_mut().find(|(k, _)| k.as_text() == Some(field)) {
        Some((_, v)) => *v = new,
        None => map.push((Value::Text(field.to_owned()), new)),
    }
}

/// Removes text key `field` of a CBOR map.
pub fn remove_field(value: &mut Value, field: &str) {
    let map = value.as_map_mut().expect("a CBOR map");
    map.retain(|(k, _)| k.as_text() != Some(field));
}

/// Where a signature's kid goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KidAt {
    /// The signature's protected header (what mintd emits).
    Protected,
    /// The signature's unprotected header.
    Unprotected,
    /// Nowhere.
    Absent,
}

/// One signature of a hand-assembled COSE_Sign.
pub struct SigSpec<'a> {
    /// The key that signs.
    pub key: &'a OperatorKey,
    /// Protected `alg` (None: no alg at all).
    pub alg: Option<iana::Algorithm>,
    /// Where the kid goes.
    pub kid: KidAt,
}

impl<'a> SigSpec<'a> {
    /// What mintd emits: protected alg EdDSA (-8) and kid.
    pub fn eddsa(key: &'a OperatorKey) -> Self {
        SigSpec {
            key,
            alg: Some(iana::Algorithm::EdDSA),
            kid: KidAt::Protected,
        }
    }

    /// Same, with another protected algorithm.
    pub fn with_alg(key: &'a OperatorKey, alg: iana::Algorithm) -> Self {
        SigSpec {
            key,
            alg: Some(alg),
            kid: KidAt::Protected,
        }
    }
}

/// Assembles a tagged COSE_Sign over `payload` with coset directly, bypassing every check of
/// [`header::sign_manifest`] (duplicate signers, algorithm, signature count). Each signature
/// is a real Ed25519 signature by its key over the Sig_structure, whatever `alg` says.
pub fn cose_sign(payload: &[u8], sigs: &[SigSpec<'_>]) -> coset::CoseSign {
    let mut builder = CoseSignBuilder::new()
        .protected(
            HeaderBuilder::new()
                .content_type(CONTENT_TYPE.into())
                .build(),
        )
        .payload(payload.to_vec());
    for spec in sigs {
        let kid = spec.key.kid().0.to_vec();
        let mut protected = HeaderBuilder::new();
        if let Some(alg) = spec.alg {
            protected = protected.algorithm(alg);
        }
        let mut unprotected = HeaderBuilder::new();
        match spec.kid {
            KidAt::Protected => protected = protected.key_id(kid),
            KidAt::Unprotected => unprotected = unprotected.key_id(kid),
            KidAt::Absent => {}
        }
        let signature = CoseSignatureBuilder::new()
            .protected(protected.build())
            .unprotected(unprotected.build())
            .build();
        builder = builder
            .add_created_signature(signature, b"", |tbs| spec.key.sign(tbs).to_bytes().to_vec());
    }
    builder.build()
}

/// Encodes a COSE_Sign as the tagged bytes that go in a bundle.
pub fn encode_sign(sign: coset::CoseSign) -> Vec<u8> {
    sign.to_tagged_vec().expect("COSE_Sign encodes")
}

/// Every path under `root` (files and directories), relative to it.
pub fn tree(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap().to_owned());
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// A reader that counts the bytes pulled through it and hands out at most `max_read` bytes per
/// call, as a socket delivering a download would.
pub struct CountingReader<R> {
    inner: R,
    /// Bytes read so far.
    pub count: u64,
    max_read: usize,
}

impl<R> CountingReader<R> {
    /// Wraps `inner`, giving at most `max_read` bytes per `read`.
    pub fn new(inner: R, max_read: usize) -> Self {
        CountingReader {
            inner,
            count: 0,
            max_read,
        }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf.len().min(self.max_read);
        let n = self.inner.read(&mut buf[..want])?;
        self.count += n as u64;
        Ok(n)
    }
}

/// A reader over `bytes` that fails any attempt to read past `limit` bytes, and remembers it.
pub struct FencedReader {
    bytes: Vec<u8>,
    pos: usize,
    limit: usize,
    /// Set when a read reached past the fence.
    pub crossed: bool,
}

impl FencedReader {
    /// Serves `bytes[..limit]`; asking for more is an error.
    pub fn new(bytes: Vec<u8>, limit: usize) -> Self {
        FencedReader {
            bytes,
            pos: 0,
            limit,
            crossed: false,
        }
    }
}

impl Read for FencedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.limit {
            self.crossed = true;
            return Err(io::Error::other(format!(
                "read past byte {} of the input (the verifier should have stopped)",
                self.limit
            )));
        }
        let end = self.bytes.len().min(self.limit).min(self.pos + buf.len());
        let n = end - self.pos;
        buf[..n].copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(n)
    }
}

/// Runs a command, panicking with its output if it cannot start or fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// `n` offsets spread evenly over `range`, always including its first, middle and last.
pub fn spread(range: Range<usize>, n: usize) -> Vec<usize> {
    let mut out = BTreeSet::new();
    if range.is_empty() {
        return vec![];
    }
    let len = range.end - range.start;
    out.insert(range.start);
    out.insert(range.start + len / 2);
    out.insert(range.end - 1);
    for i in 0..n {
        out.insert(range.start + i * len / n.max(1));
    }
    out.into_iter().collect()
}

/// A bundle of `m` signed by `key`, with one small model file `model.onnx` appended to
/// `m.files` (whatever else `m` says is kept as is, valid or not).
pub fn signed(mut m: Manifest, key: &OperatorKey) -> Vec<u8> {
    let (entry, frame) = crafted_file("model.onnx", FileRole::Model, &pseudo_random(2048, 9));
    m.files.push(entry);
    craft_manifest(&m, &[key], &frame)
}
