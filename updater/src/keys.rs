//! Ed25519 operator keys: PKCS#8 / SPKI PEM files (exactly what openssl produces), key ids,
//! and the trust store a verifier checks signatures against.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{BundleError, Result};

/// A key id: SHA-256 of the raw 32-byte Ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; 32]);

impl KeyId {
    /// The key id of a public key.
    pub fn of(key: &VerifyingKey) -> Self {
        KeyId(Sha256::digest(key.as_bytes()).into())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// An operator's private signing key.
pub struct OperatorKey {
    key: SigningKey,
}

impl OperatorKey {
    /// Generates a fresh key from the OS random source.
    pub fn generate() -> Result<Self> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(|e| BundleError::Build {
            reason: format!("no randomness from the OS: {e}"),
        })?;
        Ok(OperatorKey {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Loads a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`).
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_small(path)?;
        let key = SigningKey::from_pkcs8_pem(&text).map_err(|e| BundleError::Key {
            path: path.to_owned(),
            reason: format!("not an Ed25519 PKCS#8 PEM private key ({e})"),
        })?;
        Ok(OperatorKey { key })
    }

    /// The public half.
    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The key id of the public half.
    pub fn kid(&self) -> KeyId {
        KeyId::of(&self.public())
    }

    /// Signs `message` (deterministic Ed25519).
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// Writes `NAME.key` (PKCS#8 PEM, mode 0600, refusing to overwrite) and `NAME.pub` (SPKI PEM).
    pub fn write_pair(&self, stem: &Path) -> Result<(PathBuf, PathBuf)> {
        let key_path = with_suffix(stem, "key");
        let pub_path = with_suffix(stem, "pub");
        // PKCS#8 v1 (private key only), exactly what `openssl genpkey -algorithm ed25519`
        // writes: OpenSSL 3.0 does not read the v2 form (with the public key) that
        // `SigningKey::to_pkcs8_pem` produces.
        let pem = KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| BundleError::Build {
            reason: format!("cannot encode private key: {e}"),
        })?;
        let public = self
            .public()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| BundleError::Build {
                reason: format!("cannot encode public key: {e}"),
            })?;
        write_new(&key_path, pem.as_bytes(), 0o600)?;
        write_new(&pub_path, public.as_bytes(), 0o644)?;
        Ok((key_path, pub_path))
    }
}

/// Loads an SPKI PEM Ed25519 public key (`openssl pkey -pubout`).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey> {
    let text = read_small(path)?;
    VerifyingKey::from_public_key_pem(&text).map_err(|e| BundleError::Key {
        path: path.to_owned(),
        reason: format!("not an Ed25519 SPKI PEM public key ({e})"),
    })
}

/// Strict Ed25519 verification (RFC 8032 with canonical S and no small-order keys or R).
pub fn verify_strict(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    let Ok(signature) = Signature::from_slice(signature) else {
        return false;
    };
    key.verify_strict(message, &signature).is_ok()
}

/// The keys a verifier trusts and how many of them must sign.
#[derive(Debug, Clone)]
pub struct TrustStore {
    keys: BTreeMap<KeyId, VerifyingKey>,
    threshold: usize,
}

impl TrustStore {
    /// A trust store over `keys`; `threshold` distinct keys must sign.
    pub fn new(keys: impl IntoIterator<Item = VerifyingKey>, threshold: usize) -> Result<Self> {
        let keys: BTreeMap<_, _> = keys.into_iter().map(|k| (KeyId::of(&k), k)).collect();
        if threshold == 0 {
            return Err(BundleError::Build {
                reason: "trust threshold must be at least 1".into(),
            });
        }
        if threshold > keys.len() {
            return Err(BundleError::Build {
                reason: format!(
                    "trust threshold is {threshold} but only {} distinct key(s) are trusted",
                    keys.len()
                ),
            });
        }
        Ok(TrustStore { keys, threshold })
    }

    /// Loads keys from files and directories: every `*.pub` in a directory is trusted.
    pub fn load(paths: &[PathBuf], threshold: usize) -> Result<Self> {
        let mut keys = Vec::new();
        for path in paths {
            if path.is_dir() {
                let mut entries: Vec<_> = fs::read_dir(path)
                    .map_err(|e| BundleError::io(format!("reading {}", path.display()), e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                    .collect();
                entries.sort();
                for entry in entries {
                    keys.push(load_public_key(&entry)?);
                }
            } else {
                keys.push(load_public_key(path)?);
            }
        }
        Self::new(keys, threshold)
    }

    /// A store that trusts nothing: every bundle is refused with "threshold not met". A device
    /// with no keys configured runs (status, health) but installs nothing.
    pub fn empty(threshold: usize) -> Self {
        TrustStore {
            keys: BTreeMap::new(),
            threshold: threshold.max(1),
        }
    }

    /// The trusted keys.
    pub fn keys(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.values()
    }

    /// The trusted key with this id.
    pub fn get(&self, kid: &KeyId) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    /// How many distinct keys must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Key files are tiny; refuse anything large before reading it.
fn read_small(path: &Path) -> Result<String> {
    const MAX_KEY_FILE: u64 = 16 * 1024;
    let meta = fs::metadata(path)
        .map_err(|e| BundleError::io(format!("reading {}", path.display()), e))?;
    if meta.len() > MAX_KEY_FILE {
        return Err(BundleError::Key {
            path: path.to_owned(),
            reason: format!("{} bytes is too large for a key file", meta.len()),
        });
    }
    let bytes =
        fs::read(path).map_err(|e| BundleError::io(format!("reading {}", path.display()), e))?;
    String::from_utf8(bytes).map_err(|_| BundleError::Key {
        path: path.to_owned(),
        reason: "not PEM text (invalid UTF-8)".into(),
    })
}

fn with_suffix(stem: &Path, ext: &str) -> PathBuf {
    let mut s = stem.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| BundleError::io(format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| BundleError::io(format!("writing {}", path.display()), e))
}
