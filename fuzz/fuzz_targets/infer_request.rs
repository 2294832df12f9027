//! Fuzz the inference request path of `POST /v2/models/{name}/infer`: any body, with or
//! without an `Inference-Header-Content-Length` (the binary tensor extension, whose length
//! may lie), must parse into a request or be refused with a reason, never panic or allocate
//! without bound; a parsed request then goes through the manifest's input checks, which must
//! also answer with checked tensors or a refusal. Checked tensors must hold exactly as many
//! values as their shape says (what the engine is handed).
//!
//! Input layout: if the first byte is `H`, the bytes up to the first `\n` are the header's
//! value (any bytes, lossily text) and the rest is the body; otherwise it is all body.
//!
//! Run: `scripts/fuzz.sh infer_request` (seeds: fuzz/seeds.sh).

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mint_updater::manifest::{DataType, GuardSettings, TensorSpec};
use mintd::service::{guard, infer};

/// The JSON part's limit in the daemon's default configuration is larger; a smaller one makes
/// the limit itself reachable.
const JSON_LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.first() {
        Some(b'H') => match data.iter().position(|&b| b == b'\n') {
            Some(end) => (
                Some(String::from_utf8_lossy(&data[1..end]).into_owned()),
                &data[end + 1..],
            ),
            None => (None, data),
        },
        _ => (None, data),
    };
    let request =
        match infer::parse_request(Bytes::copy_from_slice(body), header.as_deref(), JSON_LIMIT) {
            Ok(request) => request,
            Err(refusal) => {
                assert!(!refusal.message.is_empty(), "a refusal must say why");
                return;
            }
        };
    let specs = [
        TensorSpec {
            name: "input".into(),
            datatype: DataType::FP32,
            shape: vec![-1, 16],
            range: Some([-1.0, 1.0]),
        },
        TensorSpec {
            name: "mask".into(),
            datatype: DataType::INT64,
            shape: vec![-1, 4],
            range: None,
        },
    ];
    let outputs = [TensorSpec {
        name: "output".into(),
        datatype: DataType::FP32,
        shape: vec![-1, 4],
        range: None,
    }];
    if let Some(wanted) = &request.outputs {
        let _ = guard::check_requested_outputs(&outputs, wanted);
    }
    let checked = guard::check_inputs(&specs, &GuardSettings::default(), &request.inputs);
    match checked {
        Ok(checked) => {
            for c in &checked {
                let count: usize = c.tensor.shape().iter().product();
                let values = c.values();
                assert_eq!(
                    values.len(),
                    count,
                    "{} holds the wrong number of values",
                    c.name
                );
                assert_eq!(
                    c.moments,
                    values.moments(),
                    "{}: moments of other values",
                    c.name
                );
                assert!(
                    values.first_non_finite().is_none(),
                    "{} passed with a non-finite value",
                    c.name
                );
            }
        }
        Err(refusal) => assert!(!refusal.message.is_empty(), "a refusal must say why"),
    }
});
