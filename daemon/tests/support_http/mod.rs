//! A real HTTP/1.1 file server on a free loopback port, started by a test, serving one file
//! with `Range` support and faults made for real: the connection closed after N bytes, a
//! stall, `Range` ignored, more bytes than the file, HTTPS with a certificate from `openssl`.
//!
//! Include with `mod support_http;`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server does to the connection number `n` (0-based).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Close connection 0 after this many body bytes.
    pub cut_first_at: Option<usize>,
    /// Stop sending on connection 0 (keep it open, silent) after this many body bytes, until
    /// `release` is notified.
    pub stall_first_at: Option<usize>,
    /// Answer 200 with the whole file even when asked for a range.
    pub ignore_range: bool,
    /// Append this many bytes beyond the file (a hostile or wrong server).
    pub extra: usize,
    /// Redirect `/redirect` to the file.
    pub redirect: bool,
    /// Send no `Content-Length` (the body ends when the connection closes).
    pub no_length: bool,
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Request path.
    pub path: String,
    /// `Range` header, if any.
    pub range: Option<String>,
}

/// The running server; stopped on drop.
pub struct FileServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    requests: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
    /// Set to let stalled connections go on.
    pub release: Arc<tokio::sync::Notify>,
    /// Bytes of body sent, all connections.
    pub sent: Arc<AtomicUsize>,
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FileServer {
    /// Serves `body` at `/file.mint` over plain HTTP.
    pub async fn start(body: Vec<u8>, faults: Faults) -> FileServer {
        Self::start_inner(body, faults, None).await
    }

    /// Serves over HTTPS with the PKCS#8 key and certificate given (PEM).
    pub async fn start_tls(body: Vec<u8>, faults: Faults, cert: &[u8], key: &[u8]) -> FileServer {
        let identity = native_tls::Identity::from_pkcs8(cert, key).expect("server identity");
        let acceptor = native_tls::TlsAcceptor::new(identity).expect("TLS acceptor");
        Self::start_inner(
            body,
            faults,
            Some(tokio_native_tls::TlsAcceptor::from(acceptor)),
        )
        .await
    }

    async fn start_inner(
        body: Vec<u8>,
        faults: Faults,
        tls: Option<tokio_native_tls::TlsAcceptor>,
    ) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Notify::new());
        let sent = Arc::new(AtomicUsize::new(0));
        let body = Arc::new(body);
        let task = {
            let requests = requests.clone();
            let release = release.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let connections = Arc::new(AtomicUsize::new(0));
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let n = connections.fetch_add(1, Ordering::SeqCst);
                    let (body, faults, requests, release, sent, tls) = (
                        body.clone(),
                        faults.clone(),
                        requests.clone(),
                        release.clone(),
                        sent.clone(),
                        tls.clone(),
                    );
                    tokio::spawn(async move {
                        let conn = Conn {
                            n,
                            body,
                            faults,
                            requests,
                            release,
                            sent,
                        };
                        match tls {
                            Some(acceptor) => {
                                if let Ok(s) = acceptor.accept(stream).await {
                                    conn.serve(s).await;
                                }
                            }
                            None => conn.serve(stream).await,
                        }
                    });
                }
            })
        };
        FileServer {
            addr,
            requests,
            task,
            release,
            sent,
        }
    }

    /// `http://ADDR/file.mint` (or `https://localhost:PORT/...` for a TLS server: the
    /// certificate names localhost).
    pub fn url(&self, https: bool) -> String {
        if https {
            let port = self.addr.rsplit(':').next().unwrap();
            format!("https://localhost:{port}/file.mint")
        } else {
            format!("http://{}/file.mint", self.addr)
        }
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.requests.lock().unwrap().clone()
    }
}

struct Conn {
    n: usize,
    body: Arc<Vec<u8>>,
    faults: Faults,
    requests: Arc<Mutex<Vec<Seen>>>,
    release: Arc<tokio::sync::Notify>,
    sent: Arc<AtomicUsize>,
}

impl Conn {
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, mut s: S) {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
            if head.len() > 16 * 1024 {
                return;
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
        let range = text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("range").then(|| v.trim().to_owned())
        });
        self.requests.lock().unwrap().push(Seen {
            path: path.clone(),
            range: range.clone(),
        });
        if self.faults.redirect && path == "/redirect" {
            let _ = s
                .write_all(
                    b"HTTP/1.1 302 Found\r\nLocation: /file.mint\r\nContent-Length: 0\r\n\r\n",
                )
                .await;
            return;
        }
        if path != "/file.mint" {
            let _ = s
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        }
        let mut full = self.body.as_ref().clone();
        full.extend(std::iter::repeat_n(0x55, self.faults.extra));
        let total = full.len();
        let start = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
            Some(r) if !self.faults.ignore_range => {
                r.trim_end_matches('-').parse::<usize>().unwrap_or(0)
            }
            _ => 0,
        };
        let head = if start > 0 {
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\nConnection: close\r\n\r\n",
                total - start,
                total - 1
            )
        } else {
            if self.faults.no_length {
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_owned()
            } else {
                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n")
            }
        };
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let mut limit = total - start;
        if self.n == 0 {
            if let Some(cut) = self.faults.cut_first_at {
                limit = limit.min(cut);
            }
        }
        let mut stall = self.faults.stall_first_at.filter(|_| self.n == 0);
        let mut pos = start;
        let mut written = 0usize;
        while written < limit {
            if let Some(at) = stall {
                if written >= at {
                    let _ = s.flush().await;
                    self.release.notified().await;
                    stall = None;
                }
            }
            let mut n = (limit - written).min(16 * 1024);
            if let Some(at) = stall {
                if written < at {
                    n = n.min(at - written);
                }
            }
            if s.write_all(&full[pos..pos + n]).await.is_err() {
                return;
            }
            pos += n;
            written += n;
            self.sent.fetch_add(n, Ordering::SeqCst);
            // Slow enough that progress is observable, fast enough for a test.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = s.flush().await;
        let _ = s.shutdown().await;
    }
}
