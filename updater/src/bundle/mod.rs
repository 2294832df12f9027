//! The `NAME-VERSION.mint` bundle: framing, signed header, payload.
//!
//! ```text
//! magic    8 bytes   "MINTBNDL"
//! u32 BE   length of the signed header
//! header   COSE_Sign (tag 98) over the CBOR manifest
//! payload  the files, in manifest order, each one zstd frame
//! ```

pub mod header;
pub mod verify;
pub mod write;

use std::io::Read;

use verify::{Limits, Sink, UnpackedFile};

use crate::error::Result;
use crate::manifest::Manifest;

/// The 8 bytes every bundle starts with.
pub const MAGIC: &[u8; 8] = b"MINTBNDL";

/// Header size accepted by operator-side tools that have no configured limit.
pub const MAX_HEADER_BYTES_HARD: u64 = 16 * 1024 * 1024;

/// The standard file name of a bundle: `NAME-VERSION.mint`.
pub fn file_name(manifest: &Manifest) -> String {
    format!("{}-{}.mint", manifest.name, manifest.version)
}

/// What an operator sees of a bundle without checking its signatures.
#[derive(Debug, Clone)]
pub struct UnverifiedHeader {
    /// The decoded manifest — NOT authenticated.
    pub manifest: Manifest,
    /// (key id hex, algorithm) of each signature.
    pub signatures: Vec<(String, String)>,
    /// Size of the signed header.
    pub header_len: u64,
}

/// Decodes the header of a bundle WITHOUT verifying signatures, for `mintctl bundle inspect`
/// on an operator's workstation. The device never calls this: it uses [`verify::read_header`],
/// which parses the manifest only after its signatures verified.
pub fn read_unverified<R: Read>(input: &mut R) -> Result<UnverifiedHeader> {
    let bytes = verify::read_framing(input, MAX_HEADER_BYTES_HARD)?;
    let sign = header::decode(&bytes)?;
    let manifest = Manifest::from_cbor(sign.payload.as_deref().unwrap_or_default())?;
    Ok(UnverifiedHeader {
        manifest,
        signatures: header::describe_signatures(&sign),
        header_len: bytes.len() as u64,
    })
}

/// Reads a bundle WITHOUT verifying signatures and checks that its payload matches its own
/// manifest (sizes, digests, framing): what a co-signer checks before endorsing a bundle with
/// `mintctl bundle sign`. Not a substitute for verification on a device.
pub fn check_unverified<R: Read + Send>(
    input: &mut R,
    progress: &mut dyn FnMut(u64),
) -> Result<(UnverifiedHeader, Vec<UnpackedFile>)> {
    let header = read_unverified(input)?;
    // Generous but finite: an operator's workstation, not a device; work stays bounded by
    // what the (unverified) manifest declares and the user saw before signing.
    let limits = Limits {
        max_header_bytes: MAX_HEADER_BYTES_HARD,
        max_file_bytes: 64 << 30,
        max_files: 4096,
        max_bundle_bytes: 256 << 30,
        max_window_log: 27,
    };
    verify::check_declared_sizes(&header.manifest, &limits)?;
    let files = verify::unpack_files(
        input,
        &header.manifest.files,
        &limits,
        Sink::Discard,
        progress,
    )?;
    Ok((header, files))
}
