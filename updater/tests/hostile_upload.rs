//! Hostile or broken uploads: each is refused with the check that caught it, the previous
//! model keeps serving, nothing is left in staging or added to the store, and an
//! `install_refused` event names the check.

mod common;

use std::fs;
use std::io::Read;

use common::*;
use mint_updater::updater::{InstalledModel, UpdateError, Updater};
use mint_updater::{Check, Limits, OperatorKey};

struct Setup {
    fx: Fixture,
    updater: Updater,
    v1: InstalledModel,
}

fn setup(limits: Limits) -> Setup {
    let mut fx = Fixture::new();
    fx.limits = limits;
    let updater = fx.open();
    let v1 = install_committed(&updater, &fx.bundle(&Spec::new("mlp", 1)));
    Setup { fx, updater, v1 }
}

/// Installs `bytes` and checks everything a refusal must leave as it was.
fn refused(s: &Setup, bytes: Vec<u8>, check: &str) -> UpdateError {
    refused_by(s, bytes, &[check])
}

/// [`refused`] when more than one check may catch the damage first.
fn refused_by(s: &Setup, bytes: Vec<u8>, checks: &[&str]) -> UpdateError {
    let store_before = s.fx.store_entries();
    let mut input = std::io::Cursor::new(bytes);
    let err = s.updater.install(&mut input, &mut |_| {}).unwrap_err();
    assert!(checks.contains(&err.refusal()), "{err} ({})", err.refusal());
    assert_eq!(s.updater.serving("mlp").as_ref(), Some(&s.v1));
    assert_eq!(s.fx.last_served("mlp"), Some(Some(s.v1.rev.digest.clone())));
    assert!(s.fx.staging_entries().is_empty(), "staging leftovers");
    assert_eq!(s.fx.store_entries(), store_before);
    let event = s.updater.events_since(0, 1000).pop().unwrap();
    assert_eq!(event.kind, "install_refused");
    assert_eq!(event.details["check"], err.refusal());
    assert_eq!(event.details["reason"], err.to_string());
    err
}

fn bytes_of(path: &std::path::Path) -> Vec<u8> {
    let mut v = Vec::new();
    fs::File::open(path).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn a_corrupt_payload_is_refused_after_streaming() {
    let s = setup(Limits::default());
    let mut bytes = bytes_of(&s.fx.bundle(&Spec::new("mlp", 2)));
    let n = bytes.len();
    bytes[n - 20] ^= 0x55;
    // zstd notices the damage (size check) or the bytes decode to something else (digest).
    let err = refused_by(&s, bytes, &["size", "digest"]);
    assert!(err.to_string().contains("model.onnx"), "{err}");
    // The record did not move: the floor is where the committed revision put it.
    assert_eq!(record(&s.updater, "mlp").highest_sequence, 1);
}

#[test]
fn a_truncated_upload_is_refused() {
    let s = setup(Limits::default());
    let mut bytes = bytes_of(&s.fx.bundle(&Spec::new("mlp", 2)));
    bytes.truncate(bytes.len() - 100);
    let err = refused(&s, bytes, "framing");
    assert!(err.to_string().contains("truncated"), "{err}");
}

#[test]
fn a_payload_whose_file_differs_from_the_manifest_is_refused_by_digest() {
    let s = setup(Limits::default());
    // Swap the payload for another bundle's payload of the same size: every frame decodes,
    // only the digests differ.
    let good = bytes_of(&s.fx.bundle(&Spec::new("mlp", 2)));
    let other = bytes_of(&s.fx.bundle(&Spec::new("mlp", 2).behaving("EVIL")));
    let header_end = |b: &[u8]| 12 + u32::from_be_bytes(b[8..12].try_into().unwrap()) as usize;
    let (gh, oh) = (header_end(&good), header_end(&other));
    assert_eq!(
        good.len() - gh,
        other.len() - oh,
        "same-size frames expected"
    );
    let mut forged = good[..gh].to_vec();
    forged.extend_from_slice(&other[oh..]);
    let err = refused(&s, forged, "digest");
    assert_eq!(err.check(), Some(Check::Digest));
}

#[test]
fn an_oversized_file_is_refused_before_its_payload() {
    let s = setup(Limits {
        max_file_bytes: 150_000,
        ..Limits::default()
    });
    let mut spec = Spec::new("mlp", 2);
    spec.extra_files = vec![("weights.bin".into(), vec![7u8; 200_000])];
    let bytes = bytes_of(&s.fx.bundle(&spec));
    let err = refused(&s, bytes, "size");
    assert!(
        err.to_string()
            .contains("weights.bin is 200000 bytes, above the limit of 150000 bytes"),
        "{err}"
    );
}

#[test]
fn garbage_is_refused_by_framing() {
    let s = setup(Limits::default());
    refused(&s, b"GET / HTTP/1.1\r\n\r\n".to_vec(), "framing");
}

#[test]
fn an_untrusted_signer_is_refused() {
    let s = setup(Limits::default());
    let stranger = OperatorKey::generate().unwrap();
    let bytes = bytes_of(&s.fx.bundle_signed(&Spec::new("mlp", 2), &[&stranger]));
    refused(&s, bytes, "signature");
}

#[test]
fn a_file_named_like_store_metadata_is_refused() {
    let s = setup(Limits::default());
    let mut spec = Spec::new("mlp", 2);
    spec.extra_files = vec![("manifest.cbor".into(), b"not the manifest".to_vec())];
    let bytes = bytes_of(&s.fx.bundle(&spec));
    let err = refused(&s, bytes, "manifest");
    assert!(err.to_string().contains("reserved"), "{err}");
}

#[test]
fn a_failing_reader_is_an_io_refusal() {
    let s = setup(Limits::default());
    let bytes = bytes_of(&s.fx.bundle(&Spec::new("mlp", 2)));
    struct Broken(std::io::Cursor<Vec<u8>>, usize);
    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.position() as usize >= self.1 {
                return Err(std::io::Error::other(
                    "upload interrupted: connection reset",
                ));
            }
            let n = buf.len().min(self.1 - self.0.position() as usize);
            self.0.read(&mut buf[..n])
        }
    }
    let cut = bytes.len() - 10;
    let mut input = Broken(std::io::Cursor::new(bytes), cut);
    let err = s.updater.install(&mut input, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert!(s.fx.staging_entries().is_empty());
    assert_eq!(s.updater.serving("mlp").as_ref(), Some(&s.v1));
}
