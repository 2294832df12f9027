//! Build → verify → unpack on real files: the happy path every threat test departs from.

use mint_updater::bundle::verify::{verify_file, Limits, Policy, Sink};
use mint_updater::bundle::write::{
    add_signature_to_file, build_bundle, BuildOptions, FileSource, Source,
};
use mint_updater::manifest::{
    DataType, FileRole, GuardSettings, HealthCheck, TensorSpec, FORMAT_VERSION,
};
use mint_updater::{BundleError, Manifest, OperatorKey, TrustStore};

fn manifest() -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        name: "mlp".into(),
        version: "1.0.0".into(),
        sequence: 7,
        created: 1_700_000_000,
        expires: None,
        targets: vec![],
        files: vec![],
        inputs: vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::FP32,
            shape: vec![-1, 16],
            range: None,
        }],
        outputs: vec![TensorSpec {
            name: "output".into(),
            datatype: DataType::FP32,
            shape: vec![-1, 4],
            range: None,
        }],
        health: HealthCheck::default(),
        guard: GuardSettings::default(),
        reference: None,
    }
}

#[test]
fn build_verify_unpack_and_cosign() {
    let dir = tempfile::tempdir().unwrap();
    let a = OperatorKey::generate().unwrap();
    let b = OperatorKey::generate().unwrap();
    let model: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let out = dir.path().join("mlp-1.0.0.mint");
    let sources = [
        FileSource {
            path: "model.onnx".into(),
            role: FileRole::Model,
            data: Source::Bytes(model.clone()),
        },
        FileSource {
            path: "assets/labels.txt".into(),
            role: FileRole::Other,
            data: Source::Bytes(b"a\nb\n".to_vec()),
        },
    ];
    build_bundle(
        manifest(),
        &sources,
        &[&a],
        &out,
        BuildOptions::default(),
        &mut |_, _| {},
    )
    .unwrap();

    let trust_ab = TrustStore::new([a.public(), b.public()], 2).unwrap();
    let policy = Policy {
        trust: &trust_ab,
        now: 1_700_000_100,
        trusted_time: None,
        device_targets: None,
        min_sequence: None,
        limits: Limits::default(),
    };
    let err = verify_file(&out, &policy, Sink::Discard, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            err,
            BundleError::ThresholdNotMet {
                valid: 1,
                required: 2,
                ..
            }
        ),
        "{err}"
    );

    add_signature_to_file(&out, &b, &out).unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let (header, files) =
        verify_file(&out, &policy, Sink::Directory(&staging), &mut |_| {}).unwrap();
    assert_eq!(header.signers.len(), 2);
    assert_eq!(files.len(), 2);
    assert_eq!(std::fs::read(staging.join("model.onnx")).unwrap(), model);
    assert_eq!(
        std::fs::read(staging.join("assets/labels.txt")).unwrap(),
        b"a\nb\n"
    );
}
