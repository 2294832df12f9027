//! The signed header: a tagged COSE_Sign (tag 98) whose payload is the CBOR manifest, one
//! signature per signer, each with a protected `alg` (EdDSA, -8) and `kid` (SHA-256 of the
//! signer's raw public key).

use std::collections::BTreeSet;

use coset::iana::EnumI64;
use coset::{
    iana, Algorithm, CoseSign, CoseSignBuilder, CoseSignature, CoseSignatureBuilder, HeaderBuilder,
    TaggedCborSerializable,
};

use crate::error::{BundleError, Result};
use crate::keys::{verify_strict, KeyId, OperatorKey, TrustStore};

/// Content type of the COSE payload, in the body's protected header.
pub const CONTENT_TYPE: &str = "application/vnd.mint.manifest+cbor";

/// More signatures than this is not a threshold scheme, it is a denial-of-service attempt.
pub const MAX_SIGNATURES: usize = 16;

/// Builds a COSE_Sign header over `manifest_cbor` with one signature per key.
pub fn sign_manifest(manifest_cbor: &[u8], keys: &[&OperatorKey]) -> Result<Vec<u8>> {
    if keys.is_empty() {
        return Err(BundleError::Build {
            reason: "at least one signing key is needed".into(),
        });
    }
    let mut builder = CoseSignBuilder::new()
        .protected(
            HeaderBuilder::new()
                .content_type(CONTENT_TYPE.into())
                .build(),
        )
        .payload(manifest_cbor.to_vec());
    let mut seen = BTreeSet::new();
    for key in keys {
        if !seen.insert(key.kid()) {
            return Err(BundleError::Build {
                reason: format!("key {} given twice", key.kid()),
            });
        }
        builder = builder.add_created_signature(signature_template(key), b"", |tbs| {
            key.sign(tbs).to_bytes().to_vec()
        });
    }
    encode(builder.build())
}

/// Adds one signature to an existing header, keeping every byte of what was signed before.
pub fn add_signature(header: &[u8], key: &OperatorKey) -> Result<Vec<u8>> {
    let mut sign = decode(header)?;
    let kid = key.kid();
    if signatures(&sign).any(|(k, _)| k == Some(kid)) {
        return Err(BundleError::Build {
            reason: format!("bundle is already signed by key {kid}"),
        });
    }
    if sign.signatures.len() >= MAX_SIGNATURES {
        return Err(BundleError::Build {
            reason: format!("bundle already has {MAX_SIGNATURES} signatures"),
        });
    }
    let mut signature = signature_template(key);
    // Sig_structure of COSE_Sign: the protected headers as originally encoded, so earlier
    // signatures stay valid (coset keeps `original_data` of decoded protected headers).
    let tbs = sign.tbs_data(b"", &signature);
    signature.signature = key.sign(&tbs).to_bytes().to_vec();
    sign.signatures.push(signature);
    encode(sign)
}

/// Decodes a tagged COSE_Sign header.
pub fn decode(header: &[u8]) -> Result<CoseSign> {
    let sign = CoseSign::from_tagged_slice(header).map_err(|e| BundleError::MalformedHeader {
        reason: e.to_string(),
    })?;
    if sign.payload.is_none() {
        return Err(BundleError::MalformedHeader {
            reason: "detached payload: the manifest must be embedded".into(),
        });
    }
    if sign.signatures.is_empty() {
        return Err(BundleError::MalformedHeader {
            reason: "no signatures".into(),
        });
    }
    if sign.signatures.len() > MAX_SIGNATURES {
        return Err(BundleError::MalformedHeader {
            reason: format!(
                "{} signatures, at most {MAX_SIGNATURES} allowed",
                sign.signatures.len()
            ),
        });
    }
    Ok(sign)
}

/// What signature verification established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signers {
    /// Distinct trusted keys whose signature verified, in header order.
    pub trusted: Vec<KeyId>,
    /// Key ids (hex) of signatures by keys that are not trusted; they count for nothing.
    pub untrusted: Vec<String>,
}

/// Checks every signature against the trust store and the threshold; returns the manifest
/// bytes, which are authenticated only if this returns `Ok`.
///
/// A signature that names a trusted key but does not verify is an error even if enough other
/// keys signed: it proves the header was altered. A key counts once however often it signs.
pub fn verify<'a>(sign: &'a CoseSign, trust: &TrustStore) -> Result<(&'a [u8], Signers)> {
    let mut trusted = Vec::new();
    let mut untrusted = Vec::new();
    for (index, signature) in sign.signatures.iter().enumerate() {
        let kid = signature_kid(signature);
        let Some(key) = kid.and_then(|k| trust.get(&k)) else {
            untrusted.push(raw_kid_hex(signature));
            continue;
        };
        let kid = kid.expect("trusted key implies a key id");
        let alg = signature.protected.header.alg.as_ref();
        if !is_eddsa(alg) {
            return Err(BundleError::UnsupportedAlgorithm {
                kid: kid.to_hex(),
                alg: alg.map_or("none (protected `alg` missing)".into(), |a| {
                    format!("{a:?}")
                }),
            });
        }
        let ok = sign.verify_signature(index, b"", |sig, data| {
            if verify_strict(key, data, sig) {
                Ok(())
            } else {
                Err(())
            }
        });
        if ok.is_err() {
            return Err(BundleError::BadSignature { kid: kid.to_hex() });
        }
        if !trusted.contains(&kid) {
            trusted.push(kid);
        }
    }
    if trusted.len() < trust.threshold() {
        return Err(BundleError::ThresholdNotMet {
            valid: trusted.len(),
            required: trust.threshold(),
            untrusted,
        });
    }
    let payload = sign
        .payload
        .as_deref()
        .expect("decode() refuses detached payloads");
    Ok((payload, Signers { trusted, untrusted }))
}

/// Key ids and algorithm names of every signature, for display; nothing is verified.
pub fn describe_signatures(sign: &CoseSign) -> Vec<(String, String)> {
    sign.signatures
        .iter()
        .map(|s| {
            let alg = match s.protected.header.alg.as_ref() {
                Some(Algorithm::Assigned(a)) => format!("{a:?} ({})", a.to_i64()),
                Some(other) => format!("{other:?}"),
                None => "none".into(),
            };
            (raw_kid_hex(s), alg)
        })
        .collect()
}

fn signatures(sign: &CoseSign) -> impl Iterator<Item = (Option<KeyId>, &CoseSignature)> {
    sign.signatures.iter().map(|s| (signature_kid(s), s))
}

fn signature_template(key: &OperatorKey) -> CoseSignature {
    CoseSignatureBuilder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::EdDSA)
                .key_id(key.kid().0.to_vec())
                .build(),
        )
        .build()
}

/// The kid from the protected header, or else the unprotected one (it only selects the key).
fn signature_kid(signature: &CoseSignature) -> Option<KeyId> {
    let raw = if signature.protected.header.key_id.is_empty() {
        &signature.unprotected.key_id
    } else {
        &signature.protected.header.key_id
    };
    <[u8; 32]>::try_from(raw.as_slice()).ok().map(KeyId)
}

fn raw_kid_hex(signature: &CoseSignature) -> String {
    let raw = if signature.protected.header.key_id.is_empty() {
        &signature.unprotected.key_id
    } else {
        &signature.protected.header.key_id
    };
    if raw.is_empty() {
        "(no kid)".into()
    } else {
        hex::encode(raw)
    }
}

/// EdDSA (-8) is what we emit; Ed25519 (-19, RFC 9864) names the same thing.
fn is_eddsa(alg: Option<&Algorithm>) -> bool {
    matches!(
        alg,
        Some(Algorithm::Assigned(iana::Algorithm::EdDSA))
            | Some(Algorithm::Assigned(iana::Algorithm::Ed25519))
    )
}

fn encode(sign: CoseSign) -> Result<Vec<u8>> {
    sign.to_tagged_vec().map_err(|e| BundleError::Build {
        reason: format!("cannot encode COSE_Sign: {e}"),
    })
}
