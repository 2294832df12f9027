//! Fuzzes the measurement log parser: the fleet verifier feeds it bytes received from devices
//! it does not trust, so it must never panic, and whatever it accepts must be self-consistent.
//!
//! Run: `cargo +nightly fuzz run measurement_log` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mint_attest::{encode_log, parse_log, replay, verify_against};

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = parse_log(data) else {
        return;
    };
    // The input splits into the entries' prefix and a torn tail, nothing else.
    assert_eq!(parsed.valid_len + parsed.torn_bytes, data.len());

    // That prefix alone is a clean log with the same entries.
    let prefix = parse_log(&data[..parsed.valid_len]).expect("accepted prefix must parse");
    assert_eq!(prefix.entries, parsed.entries);
    assert_eq!(prefix.torn_bytes, 0);

    // Re-encoding what was accepted gives a log that reads back identically.
    let encoded = encode_log(&parsed.entries).expect("accepted entries must encode");
    let again = parse_log(&encoded).expect("re-encoded log must parse");
    assert_eq!(again.entries, parsed.entries);
    assert_eq!(again.torn_bytes, 0);

    // Replay is total over accepted entries and agrees with verification.
    for entry in parsed.entries.iter().take(4) {
        let value = replay(&parsed.entries, entry.pcr);
        assert!(verify_against(&parsed.entries, entry.pcr, &value).is_ok());
    }
});
