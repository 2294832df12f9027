//! Replaying a measurement log against a PCR value.

use crate::error::{Error, Result};
use crate::log::Measurement;
use crate::pcr::{extend, Digest, PCR_RESET};

/// The value `pcr` holds after reset and the extension of every entry of `entries` that names
/// it, in log order. Entries for other PCRs are ignored.
pub fn replay(entries: &[Measurement], pcr: u8) -> Digest {
    entries
        .iter()
        .filter(|entry| entry.pcr == pcr)
        .fold(PCR_RESET, |value, entry| extend(&value, &entry.digest))
}

/// Checks that `entries` replay to `quoted`, the value the device (its TPM) reports for `pcr`.
///
/// Fails with [`Error::PcrMismatch`] naming both values; a mismatch means the log is not the
/// whole, ordered story of what was measured into that PCR.
pub fn verify_against(entries: &[Measurement], pcr: u8, quoted: &Digest) -> Result<()> {
    let replayed = replay(entries, pcr);
    if replayed == *quoted {
        Ok(())
    } else {
        Err(Error::PcrMismatch {
            pcr,
            expected: *quoted,
            replayed,
        })
    }
}
