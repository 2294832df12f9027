//! What the fuzz targets and the seed generator share: a fixed, fuzzing-only operator key (so
//! that a seed bundle signed by it verifies, and libFuzzer's mutations of its payload reach
//! the decompressor and the digest check), and the policy the bundle reader checks against.

use ed25519_dalek::SigningKey;
use mint_updater::{Limits, Policy, TrustStore};

/// Seed of the fuzzing key. NOT a secret: anyone can sign for it, which is the point.
pub const FUZZ_KEY_SEED: [u8; 32] = *b"mintd fuzzing key, not a secret!";

/// The verifier's clock for fuzzing (the seeds are created a little before).
pub const NOW: i64 = 1_700_000_100;

/// The fuzzing key.
pub fn fuzz_signing_key() -> SigningKey {
    SigningKey::from_bytes(&FUZZ_KEY_SEED)
}

/// A trust store of the fuzzing key alone, threshold 1.
pub fn trust_store() -> TrustStore {
    TrustStore::new([fuzz_signing_key().verifying_key()], 1).expect("one key, threshold 1")
}

/// Small limits, so that no input can make one execution slow or large: 64 KiB header,
/// 1 MiB per file, 2 MiB in all, 8 files, 1 MiB zstd window.
pub fn limits() -> Limits {
    Limits {
        max_header_bytes: 64 * 1024,
        max_file_bytes: 1 << 20,
        max_files: 8,
        max_bundle_bytes: 2 << 20,
        max_window_log: 20,
    }
}

/// Every check switched on: expiry with a trusted time, target, anti-rollback.
pub fn policy(trust: &TrustStore) -> Policy<'_> {
    Policy {
        trust,
        now: NOW,
        trusted_time: Some(NOW - 50),
        device_targets: Some(vec!["fuzzbox".into(), "x86_64".into()]),
        min_sequence: Some(2),
        limits: limits(),
    }
}
