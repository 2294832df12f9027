//! Threat: a signature verifier that accepts what it should not — malleable (non-canonical)
//! signatures, bad encodings, small-order points — or rejects what it should accept. Checked
//! against Project Wycheproof's Ed25519 vectors (tests/data/wycheproof, see its README):
//! `keys::verify_strict`, the function that checks every bundle header signature, must accept
//! exactly the `valid` vectors.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use mint_updater::keys::verify_strict;
use serde_json::Value;

#[test]
fn every_wycheproof_ed25519_vector_gets_its_expected_result() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/wycheproof/wycheproof_ed25519_test.json"
    );
    let text = std::fs::read_to_string(path).expect("wycheproof vectors");
    let doc: Value = serde_json::from_str(&text).expect("wycheproof JSON");
    assert_eq!(doc["algorithm"], "EDDSA");

    let mut total = 0usize;
    let mut by_result = BTreeMap::<String, usize>::new();
    let mut undecodable_keys = 0usize;
    let mut wrong = Vec::new();
    for group in doc["testGroups"].as_array().expect("testGroups") {
        let pk =
            hex::decode(group["publicKey"]["pk"].as_str().expect("publicKey.pk")).expect("pk hex");
        let key = <[u8; 32]>::try_from(pk.as_slice())
            .ok()
            .and_then(|raw| VerifyingKey::from_bytes(&raw).ok());
        if key.is_none() {
            undecodable_keys += 1;
        }
        for test in group["tests"].as_array().expect("tests") {
            total += 1;
            let id = test["tcId"].as_u64().expect("tcId");
            let result = test["result"].as_str().expect("result");
            *by_result.entry(result.to_owned()).or_default() += 1;
            let msg = hex::decode(test["msg"].as_str().unwrap()).unwrap();
            let sig = hex::decode(test["sig"].as_str().unwrap()).unwrap();
            // A key that does not decode can only be part of an invalid vector.
            let accepted = key.as_ref().is_some_and(|k| verify_strict(k, &msg, &sig));
            if accepted != (result == "valid") {
                wrong.push(format!(
                    "tcId {id} ({result}, flags {}, comment {:?}): verify_strict said {}",
                    test["flags"],
                    test["comment"],
                    if accepted { "valid" } else { "invalid" }
                ));
            }
        }
    }
    println!(
        "wycheproof ed25519: {total} vectors {by_result:?}, {} disagreements, {undecodable_keys} undecodable keys",
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "{} vectors disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(total, 151, "the vector file is not the expected one");
    assert_eq!(doc["numberOfTests"], 151);
}
