//! Raw HTTP/1.1 exchanges written by hand, for what `mintd::client::Client` does not send:
//! binary bodies, lying headers, chunked uploads, other transports (a TCP connection from a
//! chosen source address). One request per connection (`Connection: close`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// One HTTP answer, whatever its body.
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    /// The body as received.
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The JSON part and the binary part of a binary-extension answer.
    pub fn split(&self) -> (Value, &[u8]) {
        let n: usize = self
            .header("inference-header-content-length")
            .expect("Inference-Header-Content-Length")
            .parse()
            .unwrap();
        (
            serde_json::from_slice(&self.body[..n]).unwrap(),
            &self.body[n..],
        )
    }

    /// Asserts a 200 answer (the body, as text, in the failure message).
    pub fn assert_ok(&self) {
        assert_eq!(self.status, 200, "{}", String::from_utf8_lossy(&self.body));
    }

    /// The error message of a refusal with `status`.
    pub fn error(&self, status: u16) -> String {
        let body = self.json();
        assert_eq!(self.status, status, "{body}");
        body["error"].as_str().expect("error message").to_owned()
    }

    /// Asserts an error answer: status, `reason` and a message containing `part`.
    pub fn refused(&self, status: u16, reason: &str, part: &str) -> String {
        let message = self.error(status);
        assert_eq!(self.json()["reason"], reason, "{}", self.json());
        assert!(message.contains(part), "{part:?} not in {message:?}");
        message
    }
}

/// Sends `method path` with `headers` and `body` on `stream` and reads the answer. Adds
/// `Content-Length` unless `headers` set `Transfer-Encoding`. A daemon that answers (404,
/// 413) and closes before reading the whole body is fine: its answer is read anyway.
pub fn exchange<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: mintd\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body));
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&raw)));
    let text = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[end + 4..].to_vec(),
    }
}

/// [`exchange`] on a new connection to the Unix socket `socket` (30 s timeouts).
pub fn unix(
    socket: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Reply {
    let stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    exchange(stream, method, path, headers, body)
}
