//! PCR arithmetic for the SHA-256 bank.
//!
//! A PCR can only be *extended*: `new = H(old || measurement)`. Its value after a sequence of
//! extends therefore commits to every measurement and to their order, which is what lets a
//! verifier trust a log that replays to the quoted value.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest: a PCR value of the sha256 bank, or a measurement extended into one.
pub type Digest = [u8; 32];

/// The value of a resettable PCR after reset (and of PCRs 0–15 at power-on): all zeros.
pub const PCR_RESET: Digest = [0; 32];

/// The highest PCR index of a PC Client platform TPM (PCRs 0–23).
pub const PCR_MAX: u8 = 23;

/// Extends `old` with `measurement` exactly as `TPM2_PCR_Extend` does for the sha256 bank:
/// `SHA-256(old || measurement)`.
pub fn extend(old: &Digest, measurement: &Digest) -> Digest {
    Sha256::new()
        .chain_update(old)
        .chain_update(measurement)
        .finalize()
        .into()
}

/// Parses a digest written as exactly 64 **lowercase** hex digits, the one form the log uses
/// (a single spelling per value keeps logs byte-comparable). `None` for anything else.
pub fn digest_from_hex(text: &str) -> Option<Digest> {
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut digest = PCR_RESET;
    hex::decode_to_slice(text, &mut digest).ok()?;
    Some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers computed outside Rust with coreutils:
    //   printf '%064d' 0 | xxd -r -p > z; printf '01%.0s' $(seq 32) | xxd -r -p > o
    //   cat z o | sha256sum
    //   => 5c85955f709283ecce2b74f1b1552918819f390911816e7bb466805a38ab87f3
    // and the second step, that value || 32 bytes of 0x02:
    //   => a7f2fad943905535b10ccf63c832802ed84eaffb15e4fb6bee86a817c35eb833
    const AFTER_ONES: &str = "5c85955f709283ecce2b74f1b1552918819f390911816e7bb466805a38ab87f3";
    const AFTER_TWOS: &str = "a7f2fad943905535b10ccf63c832802ed84eaffb15e4fb6bee86a817c35eb833";

    #[test]
    fn extend_matches_sha256sum() {
        let one = extend(&PCR_RESET, &[0x01; 32]);
        assert_eq!(hex::encode(one), AFTER_ONES);
        assert_eq!(hex::encode(extend(&one, &[0x02; 32])), AFTER_TWOS);
    }

    #[test]
    fn extend_matches_sha256sum_binary_when_present() {
        // Cross-check against the real binary too; skipped where coreutils is absent.
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let Ok(mut child) = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        else {
            return;
        };
        let mut input = [0u8; 64];
        input[32..].fill(0x01);
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(&text[..64], hex::encode(extend(&PCR_RESET, &[0x01; 32])));
    }

    #[test]
    fn digest_hex_is_strict() {
        assert_eq!(
            digest_from_hex(AFTER_ONES).map(hex::encode).as_deref(),
            Some(AFTER_ONES)
        );
        assert_eq!(digest_from_hex(&AFTER_ONES.to_uppercase()), None);
        assert_eq!(digest_from_hex(&AFTER_ONES[..63]), None);
        assert_eq!(digest_from_hex(&format!("{AFTER_ONES}0")), None);
        assert_eq!(digest_from_hex(&format!("{}g", &AFTER_ONES[..63])), None);
        // Multi-byte UTF-8 must not confuse the length check.
        assert_eq!(digest_from_hex(&format!("{}é", &AFTER_ONES[..62])), None);
    }
}
