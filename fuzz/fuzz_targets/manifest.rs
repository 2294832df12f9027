//! Fuzzes the manifest decoder (`Manifest::from_cbor`): the bytes are authenticated on a
//! device, but a co-signer's tools and `mintctl bundle inspect` decode them before any
//! signature is checked. Any bytes must give a manifest or an error, never a panic; a manifest
//! that decodes must re-encode to bytes that decode to the same encoding (a fixed point).
//!
//! Run: `cargo fuzz run manifest` (seeds: fuzz/seeds.sh).

#![no_main]

use libfuzzer_sys::fuzz_target;
use mint_updater::Manifest;

fuzz_target!(|data: &[u8]| {
    match Manifest::from_cbor(data) {
        Ok(manifest) => {
            manifest.validate().expect("a decoded manifest is valid");
            let encoded = manifest.to_cbor().expect("a decoded manifest encodes");
            let again = Manifest::from_cbor(&encoded).expect("a re-encoded manifest decodes");
            // Compare encodings, not values: NaN statistics are allowed and NaN != NaN.
            assert_eq!(
                again.to_cbor().expect("encodes"),
                encoded,
                "not a fixed point"
            );
        }
        Err(err) => {
            std::hint::black_box((err.check(), err.to_string()));
        }
    }
});
