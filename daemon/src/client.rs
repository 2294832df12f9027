//! `mintctl`'s side of the local API: HTTP/1.1 over the daemon's Unix socket, blocking, with
//! streamed uploads. Small on purpose: one request per connection, `Connection: close`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest response accepted (event lists, model lists).
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket cannot be reached.
    #[error("cannot connect to mintd at {path}: {source} (is the service running, and may you use its socket?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        #[source]
        source: io::Error,
    },
    /// The exchange failed midway.
    #[error("talking to mintd: {0}")]
    Io(#[from] io::Error),
    /// The answer is not HTTP we understand.
    #[error("mintd answered something that is not a valid HTTP response: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The `error` field of the body.
        message: String,
        /// The `check` field, when a bundle was refused.
        check: Option<String>,
        /// The whole body.
        body: serde_json::Value,
    },
}

/// A client bound to one socket path.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            timeout: Some(Duration::from_secs(600)),
        }
    }

    /// GET a JSON document.
    pub fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call("GET", path, None, &mut io::empty(), 0)
    }

    /// POST a JSON document.
    pub fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        let bytes = body.to_string().into_bytes();
        let len = bytes.len() as u64;
        self.call("POST", path, Some("application/json"), &mut &bytes[..], len)
    }

    /// POST a file as the body, streamed.
    pub fn post_file(&self, path: &str, file: &Path) -> Result<serde_json::Value, ClientError> {
        let mut f = std::fs::File::open(file)?;
        let len = f.metadata()?.len();
        self.call("POST", path, Some("application/octet-stream"), &mut f, len)
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &mut dyn Read,
        len: u64,
    ) -> Result<serde_json::Value, ClientError> {
        let mut stream =
            UnixStream::connect(&self.socket).map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        stream.set_read_timeout(self.timeout)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: mintd\r\nConnection: close\r\nContent-Length: {len}\r\n"
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        // The daemon may answer (and close) before the whole body is sent, e.g. to refuse a
        // bad header early: a broken pipe then is not the error to report, its answer is.
        let sent = io::copy(body, &mut stream);
        let response = read_response(&mut BufReader::new(&stream));
        match (sent, response) {
            (_, Ok(r)) => r,
            (Err(e), Err(_)) => Err(ClientError::Io(e)),
            (Ok(_), Err(e)) => Err(e),
        }
    }
}

fn read_response(
    reader: &mut BufReader<&UnixStream>,
) -> Result<Result<serde_json::Value, ClientError>, ClientError> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        reader.read_until(b'\n', &mut head)?;
        if head.len() == before {
            return Err(ClientError::Protocol(
                "connection closed before the headers ended".into(),
            ));
        }
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
        if head.len() > 64 * 1024 {
            return Err(ClientError::Protocol("headers longer than 64 KiB".into()));
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    parsed
        .parse(&head)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let status = parsed.code.unwrap_or(0);
    let length = parsed
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let mut body = Vec::new();
    match length {
        Some(n) if n > MAX_RESPONSE => {
            return Err(ClientError::Protocol(format!(
                "response of {n} bytes is too large"
            )))
        }
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        None => {
            reader
                .take(MAX_RESPONSE as u64 + 1)
                .read_to_end(&mut body)?;
        }
    }
    let value: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol(format!("body is not JSON: {e}")))?
    };
    if (200..300).contains(&status) {
        Ok(Ok(value))
    } else {
        Ok(Err(ClientError::Api {
            status,
            message: value["error"]
                .as_str()
                .map_or_else(|| format!("mintd answered HTTP {status}"), str::to_owned),
            check: value["check"].as_str().map(str::to_owned),
            body: value,
        }))
    }
}
