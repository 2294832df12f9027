//! Fuzzes the device-side bundle reader: arbitrary bytes through the streaming verifier
//! (`verify_stream`, with a fixed trust store and every policy check on) and through the
//! operator-side `read_unverified`. Neither may panic, hang or allocate without bound; what
//! verifies must be self-consistent; every error must name its check and display.
//!
//! Seed with `fuzz/seeds.sh` (a bundle signed by the fuzzing key, so that mutations of its
//! payload get past the signature), then: `cargo fuzz run bundle_reader` (see scripts/fuzz.sh).

#![no_main]

use std::io::Cursor;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mint_updater::bundle::read_unverified;
use mint_updater::bundle::verify::verify_stream;
use mint_updater::{BundleError, Sink, TrustStore};

fn show(err: &BundleError) {
    let mut shown = format!("{}: {err}", err.check());
    let mut cause = std::error::Error::source(err);
    while let Some(inner) = cause {
        shown.push_str(&inner.to_string());
        cause = inner.source();
    }
    std::hint::black_box(shown);
}

fuzz_target!(|data: &[u8]| {
    static TRUST: OnceLock<TrustStore> = OnceLock::new();
    let trust = TRUST.get_or_init(mint_fuzz::trust_store);
    let policy = mint_fuzz::policy(trust);

    let mut done = 0u64;
    match verify_stream(&mut Cursor::new(data), &policy, Sink::Discard, &mut |n| {
        done = n
    }) {
        Ok((header, files)) => {
            let manifest = &header.manifest;
            assert_eq!(files.len(), manifest.files.len());
            for (file, entry) in files.iter().zip(&manifest.files) {
                assert_eq!(file.path, entry.path);
                assert_eq!(file.size, entry.size, "{}: size", entry.path);
                assert_eq!(
                    hex_lower(&file.sha256),
                    entry.sha256,
                    "{}: digest",
                    entry.path
                );
            }
            assert_eq!(done, manifest.total_size());
            assert!(manifest.total_size() <= policy.limits.max_bundle_bytes);
            assert!(!header.signers.is_empty());
            assert!(header.payload_offset as usize <= data.len());
        }
        Err(err) => {
            assert!(
                done <= policy.limits.max_bundle_bytes,
                "{done} plain bytes streamed"
            );
            show(&err);
        }
    }

    match read_unverified(&mut Cursor::new(data)) {
        Ok(unverified) => {
            assert!(unverified.header_len as usize + 12 <= data.len());
            std::hint::black_box(unverified);
        }
        Err(err) => show(&err),
    }
});

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
