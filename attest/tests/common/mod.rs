//! Fixtures shared by the threat-named test files.
#![allow(dead_code)]

use mint_attest::{Digest, MeasurementKind, NewMeasurement};

/// A distinct, recognisable digest per `n`.
pub fn digest(n: u8) -> Digest {
    [n; 32]
}

/// The `n`-th measurement of a test log, alternating manifest and model on PCR 23.
pub fn measurement(n: u8) -> NewMeasurement {
    NewMeasurement {
        pcr: 23,
        kind: if n.is_multiple_of(2) {
            MeasurementKind::Manifest
        } else {
            MeasurementKind::Model
        },
        name: format!("kws-{n}"),
        version: format!("1.{n}.0"),
        sequence: u64::from(n) + 100,
        digest: digest(n),
        unix_time: 1_700_000_000 + u64::from(n),
    }
}

/// One log line as `append` writes it, with every field under the test's control.
pub fn line(index: u64, pcr: u64, digest: &str) -> String {
    format!(
        r#"{{"index":{index},"pcr":{pcr},"kind":"model","name":"kws","version":"1.0.0","sequence":1,"digest":"{digest}","unix_time":1700000000}}"#
    ) + "\n"
}

/// A valid hex digest for `line`.
pub fn hex_digest(n: u8) -> String {
    hex::encode(digest(n))
}
