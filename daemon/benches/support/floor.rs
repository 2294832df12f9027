//! Part B's floor: the least any server of this model over the same socket has to do, to
//! tell what the machine costs from what mintd costs.
//!
//! The bench runs itself again with `MINT_BENCH_FLOOR=SOCKET` and
//! `MINT_BENCH_FLOOR_MODEL=FILE.onnx`, pinned to mintd's CPUs. That process serves
//! `POST .../infer` in the binary tensor extension on a Unix socket, one blocking thread per
//! connection: it reads the request, takes the shape from its JSON header and the values from
//! its binary part, runs raw tract (`plan.run` on the plan mintd runs) and writes the first
//! output back in the binary extension. No guard, no async runtime, no thread hand-over: a
//! request crosses the client's thread and one server thread, the fewest a separate server
//! can have.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

/// Serves the model at `model` on `socket` until the process is killed.
pub fn serve(socket: &Path, model: &Path) {
    let bytes = std::fs::read(model).expect("floor: model file");
    let plan = mintd::engine::optimize(&bytes)
        .expect("floor: optimise")
        .into_runnable()
        .expect("floor: plan");
    let listener = UnixListener::bind(socket).expect("floor: bind");
    for stream in listener.incoming() {
        let stream = stream.expect("floor: accept");
        let plan = plan.clone();
        std::thread::spawn(move || connection(stream, &plan));
    }
}

/// Answers the requests of one keep-alive connection until the client closes it.
fn connection(stream: UnixStream, plan: &Arc<TypedRunnableModel>) {
    let mut writer = stream.try_clone().expect("floor: clone stream");
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let (mut line, mut body, mut answer) = (String::new(), Vec::new(), Vec::new());
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut length, mut header_length) = (0usize, 0usize);
        loop {
            line.clear();
            reader.read_line(&mut line).expect("floor: header");
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("floor: content-length");
                } else if k.eq_ignore_ascii_case("inference-header-content-length") {
                    header_length = v.trim().parse().expect("floor: header length");
                }
            }
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).expect("floor: body");
        answer.clear();
        infer(plan, &body, header_length, &mut answer);
        writer.write_all(&answer).expect("floor: answer");
    }
}

/// One request's body (JSON header of `header_length` bytes, then the input's f32 values)
/// to a whole HTTP answer in `answer`.
fn infer(plan: &Arc<TypedRunnableModel>, body: &[u8], header_length: usize, answer: &mut Vec<u8>) {
    let (header, data) = body.split_at(header_length);
    let header: serde_json::Value = serde_json::from_slice(header).expect("floor: JSON header");
    let shape: Vec<usize> = header["inputs"][0]["shape"]
        .as_array()
        .expect("floor: shape")
        .iter()
        .map(|d| d.as_u64().expect("floor: dimension") as usize)
        .collect();
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let input = Tensor::from_shape(&shape, &values).expect("floor: input");
    let outputs = plan.run(tvec![input.into_tvalue()]).expect("floor: run");
    let output = outputs[0]
        .to_plain_array_view::<f32>()
        .expect("floor: f32 output");
    let json = format!(
        "{{\"outputs\":[{{\"name\":\"output\",\"datatype\":\"FP32\",\"shape\":{:?},\
         \"parameters\":{{\"binary_data_size\":{}}}}}]}}",
        outputs[0].shape(),
        output.len() * 4
    );
    write!(
        answer,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Inference-Header-Content-Length: {}\r\nContent-Length: {}\r\n\r\n{json}",
        json.len(),
        json.len() + output.len() * 4
    )
    .expect("write to a Vec");
    answer.extend(output.iter().flat_map(|x| x.to_le_bytes()));
}
