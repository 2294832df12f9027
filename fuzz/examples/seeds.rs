//! Writes seed corpora for the fuzz targets: bundles signed by the fuzzing key (so that the
//! bundle reader's mutations start from inputs that pass the signature and policy checks) and
//! their manifests. Usage (what fuzz/seeds.sh runs):
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seeds -- fuzz/corpus

use std::path::PathBuf;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use mint_updater::bundle::verify::verify_file;
use mint_updater::bundle::write::{build_bundle, BuildOptions, FileSource, Source};
use mint_updater::manifest::{
    DataType, FileRole, GuardSettings, HealthCheck, TensorSpec, FORMAT_VERSION,
};
use mint_updater::{Manifest, OperatorKey, Sink};

fn manifest(name: &str, targets: &[&str]) -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        name: name.into(),
        version: "1.0.0".into(),
        sequence: 7,
        created: mint_fuzz::NOW - 100,
        expires: Some(mint_fuzz::NOW + 1_000_000),
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        files: vec![],
        inputs: vec![TensorSpec {
            name: "input".into(),
            datatype: DataType::FP32,
            shape: vec![-1, 4],
            range: Some([-1.0, 1.0]),
        }],
        outputs: vec![TensorSpec {
            name: "output".into(),
            datatype: DataType::FP32,
            shape: vec![-1, 2],
            range: None,
        }],
        health: HealthCheck::default(),
        guard: GuardSettings::default(),
        reference: None,
    }
}

fn source(path: &str, role: FileRole, bytes: Vec<u8>) -> FileSource {
    FileSource {
        path: path.into(),
        role,
        data: Source::Bytes(bytes),
    }
}

fn main() {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let bundles = out.join("bundle_reader");
    let manifests = out.join("manifest");
    std::fs::create_dir_all(&bundles).unwrap();
    std::fs::create_dir_all(&manifests).unwrap();

    // The fuzzing key as an operator key file (loaded the way mintctl loads keys).
    let pem_path = std::env::temp_dir().join(format!("mint-fuzz-key-{}.pem", std::process::id()));
    let pem = mint_fuzz::fuzz_signing_key()
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
    std::fs::write(&pem_path, pem.as_bytes()).unwrap();
    let key = OperatorKey::load(&pem_path).unwrap();
    std::fs::remove_file(&pem_path).unwrap();

    let model: Vec<u8> = (0..3000u32).map(|i| (i * 31 % 251) as u8).collect();
    let golden_health = HealthCheck {
        golden: Some("golden.json".into()),
        ..HealthCheck::default()
    };
    let seeds: Vec<(&str, Manifest, Vec<FileSource>)> = vec![
        (
            "two-files",
            manifest("mlp", &[]),
            vec![
                source("model.onnx", FileRole::Model, model.clone()),
                source("assets/labels.txt", FileRole::Other, b"yes\nno\n".to_vec()),
            ],
        ),
        (
            "targeted-golden",
            Manifest {
                health: golden_health,
                ..manifest("kws", &["fuzzbox"])
            },
            vec![
                source("model.onnx", FileRole::Model, model[..500].to_vec()),
                source(
                    "golden.json",
                    FileRole::Golden,
                    br#"{"cases":[{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":[0,0,0,0]}]}]}"#.to_vec(),
                ),
                source("empty.bin", FileRole::Other, Vec::new()),
            ],
        ),
        (
            "one-byte",
            manifest("tiny", &["x86_64"]),
            vec![source("m", FileRole::Model, vec![0])],
        ),
    ];

    let trust = mint_fuzz::trust_store();
    let policy = mint_fuzz::policy(&trust);
    let options = BuildOptions {
        threads: 0,
        level: 3,
        window_log: 17,
    };
    for (name, manifest, sources) in seeds {
        let path = bundles.join(format!("{name}.mint"));
        let _ = std::fs::remove_file(&path);
        let signed = build_bundle(manifest, &sources, &[&key], &path, options, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // Each seed passes every check of the fuzz target's policy.
        verify_file(&path, &policy, Sink::Discard, &mut |_| {})
            .unwrap_or_else(|e| panic!("{name} does not verify under the fuzz policy: {e}"));
        std::fs::write(
            manifests.join(format!("{name}.cbor")),
            signed.to_cbor().unwrap(),
        )
        .unwrap();
        println!("{}", path.display());
    }
    println!("{}", manifests.display());
}
