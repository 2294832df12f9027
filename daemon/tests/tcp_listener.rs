//! The opt-in loopback TCP listener (`api.tcp`) against the real `mintd`: the same inference
//! routes as the Unix socket with the same answers (JSON and the binary extension), never the
//! `/v1/` management API (403 naming why, even for a caller who is root), a rate limit per
//! remote address (a flood from 127.0.0.1 is refused while 127.0.0.2 and the Unix socket are
//! served), and a non-loopback address refused at start-up.

mod support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};
use support::http::Reply;
use support::{assert_close, digest, mlp_reference_cases, Daemon, Workspace};

/// A TCP connection to `to` from the source address `from` (port chosen by the kernel).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let SocketAddr::V4(to) = to else {
        panic!("the test listens on IPv4")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::from(SocketAddrV4::new(from, 0)),
    )
    .expect("bind the source address");
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).expect("connect");
    TcpStream::from(fd)
}

/// One request on a fresh connection from `from`.
fn request(
    from: Ipv4Addr,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Reply {
    let stream = connect_from(from, to);
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    support::http::exchange(stream, method, path, headers, body)
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

fn get(to: SocketAddr, path: &str) -> Reply {
    request(LOCAL, to, "GET", path, &[], b"")
}

fn infer_json(from: Ipv4Addr, to: SocketAddr, model: &str, body: &Value) -> Reply {
    request(
        from,
        to,
        "POST",
        &format!("/v2/models/{model}/infer"),
        &[("Content-Type", "application/json".into())],
        body.to_string().as_bytes(),
    )
}

fn one_row(row: &[f64]) -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": row}]})
}

fn start(ws: &Workspace, rate: u32) -> (Daemon, SocketAddr, String) {
    let bundle = ws.bundle("m", "1.0.0", 1).create();
    let mut config = ws.config();
    config.set("api", "tcp", "\"127.0.0.1:0\"");
    config.set("api", "rate_limit_per_sec", &rate.to_string());
    let d = config.start();
    let reply = d.install(&bundle).expect("install over the socket");
    assert_eq!(reply["outcome"], "committed", "{reply}");
    let addr = d.tcp_address();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    (d, addr, digest(&reply["model"]))
}

#[test]
fn inference_over_tcp_matches_the_reference_and_management_is_refused() {
    let ws = Workspace::new();
    let (d, addr, model_digest) = start(&ws, 1000);

    assert_eq!(get(addr, "/v2/health/live").json()["live"], true);
    assert_eq!(get(addr, "/v2/health/ready").json()["ready"], true);
    assert_eq!(get(addr, "/v2/models/m/ready").json()["ready"], true);
    let meta = get(addr, "/v2/models/m").json();
    assert_eq!(meta["inputs"][0]["name"], "input", "{meta}");
    assert_eq!(meta["digest"], model_digest.as_str(), "{meta}");

    // JSON: the reference outputs of the verified model.
    for (i, (input, expected)) in mlp_reference_cases().iter().enumerate() {
        let reply = infer_json(LOCAL, addr, "m", &one_row(input));
        reply.assert_ok();
        let out = &reply.json()["outputs"][0];
        let got: Vec<f64> = out["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_close(&got, expected, &format!("case {i} over TCP"));
    }

    // Binary extension, as tritonclient sends it by default.
    let (input, expected) = &mlp_reference_cases()[0];
    let header = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16],
                    "parameters": {"binary_data_size": 64}}],
        "parameters": {"binary_data_output": true}
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(input.iter().flat_map(|&x| (x as f32).to_le_bytes()));
    let reply = request(
        LOCAL,
        addr,
        "POST",
        "/v2/models/m/infer",
        &[
            ("Content-Type", "application/octet-stream".into()),
            ("Inference-Header-Content-Length", header.len().to_string()),
        ],
        &body,
    );
    reply.assert_ok();
    let n: usize = reply
        .header("inference-header-content-length")
        .expect("binary answer")
        .parse()
        .unwrap();
    let got: Vec<f64> = reply.body[n..]
        .chunks_exact(4)
        .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
        .collect();
    assert_close(&got, expected, "binary over TCP");

    // Errors are the same {"error", "reason"} bodies.
    let reply = infer_json(LOCAL, addr, "nope", &one_row(input));
    assert_eq!(reply.error(404), "model \"nope\" is not served");
    assert_eq!(reply.json()["reason"], "unknown_model");
    let mut wrong = one_row(input);
    wrong["inputs"][0]["shape"] = json!([2, 8]);
    let message = infer_json(LOCAL, addr, "m", &wrong).error(400);
    assert!(message.contains("shape"), "{message}");

    // Management is never served over TCP, whoever connects (this test may run as root, who
    // manages the daemon over the socket).
    for (method, path) in [
        ("GET", "/v1/status"),
        ("GET", "/v1/models"),
        ("GET", "/v1/events"),
        ("POST", "/v1/install"),
        ("POST", "/v1/rollback/m"),
    ] {
        let reply = request(
            LOCAL,
            addr,
            method,
            path,
            &[],
            b"{\"path\": \"/nonexistent\"}",
        );
        assert_eq!(
            reply.error(403),
            "the management API (/v1/) is only served on the Unix socket: a TCP connection \
             carries no peer credentials to check",
            "{method} {path}"
        );
    }
    // Nothing was rolled back: the socket still manages, and the model is still served.
    let status = d
        .client()
        .get("/v1/status")
        .expect("status over the socket");
    assert_eq!(digest(&status["serving"][0]), model_digest, "{status}");
    assert_eq!(infer_json(LOCAL, addr, "m", &one_row(input)).status, 200);
}

#[test]
fn tcp_rate_limit_is_per_address_and_apart_from_the_socket() {
    let ws = Workspace::new();
    let (d, addr, _) = start(&ws, 5);
    let row = one_row(&[0.25; 16]);
    // A burst of 5 from 127.0.0.1 passes, the rest of the flood is refused.
    let flood: Vec<Reply> = (0..15)
        .map(|_| infer_json(LOCAL, addr, "m", &row))
        .collect();
    let passed = flood.iter().filter(|r| r.status == 200).count();
    let refused: Vec<&Reply> = flood.iter().filter(|r| r.status == 429).collect();
    assert_eq!(passed + refused.len(), flood.len());
    assert!((5..=7).contains(&passed), "{passed} of the flood passed");
    let message = refused[0].error(429);
    assert!(
        message.starts_with(
            "rate limit: address 127.0.0.1 may send 5 requests per second \
             (api.rate_limit_per_sec); retry in "
        ),
        "{message}"
    );
    assert_eq!(refused[0].json()["reason"], "rate_limit");
    assert!(refused[0].header("retry-after").is_some());

    // Another loopback address has its own bucket; so has the socket's uid.
    assert_eq!(infer_json(OTHER, addr, "m", &row).status, 200);
    let over_socket = d.client().post_json("/v2/models/m/infer", &row);
    assert!(over_socket.is_ok(), "{over_socket:?}");
    // 127.0.0.1 is still refused.
    assert_eq!(infer_json(LOCAL, addr, "m", &row).status, 429);
}

#[test]
fn a_tcp_address_off_loopback_stops_the_daemon_before_it_serves() {
    let ws = Workspace::new();
    let mut config = ws.config();
    config.set("api", "tcp", "\"0.0.0.0:0\"");
    let (status, stderr) = config.run_to_exit(Duration::from_secs(20));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("api.tcp = 0.0.0.0:0 but the TCP listener must be on a loopback address"),
        "{stderr}"
    );
    assert!(!config.socket.exists(), "no socket was created");
}

#[test]
fn a_tcp_port_in_use_stops_the_daemon_before_the_socket_exists() {
    let ws = Workspace::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port to take");
    let addr = taken.local_addr().unwrap();
    let mut config = ws.config();
    config.set("api", "tcp", &format!("\"{addr}\""));
    let (status, stderr) = config.run_to_exit(Duration::from_secs(20));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on api.tcp = {addr}")),
        "{stderr}"
    );
    assert!(!config.socket.exists(), "no socket was created");
}
