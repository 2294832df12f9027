//! Resumable HTTP(S) download of a bundle named by a signed `install` command, written to a
//! partial file in the state directory and streamed to a reader (the dispatcher's header
//! check, `Updater::check_header`) as it arrives.
//!
//! The partial file is the resume point: after a network cut the download asks for the rest
//! with `Range: bytes=N-`; after a daemon restart the dispatcher runs it again, which first
//! feeds the bytes already on disk to the (new) reader, then asks the server for the rest.
//! A server that ignores `Range` (answers 200) is fine: the first N bytes of its answer are
//! skipped. Never more than the signed size is read or written, and the SHA-256 of the whole
//! file must equal the signed value: otherwise the stream ends with an error and nothing is
//! installed.
//!
//! The client is hyper's HTTP/1.1 connection over a tokio `TcpStream`, with
//! `tokio-native-tls` (OpenSSL, the system's trust store; `SSL_CERT_FILE` is honoured) for
//! `https://`. Redirects are followed (at most [`MAX_REDIRECTS`]); the digest binds the
//! content, not the server.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{header, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 5;
/// Size of the chunks the partial file is re-read in.
const CHUNK: usize = 64 * 1024;

/// What to download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Expected SHA-256 of the whole file (lowercase hex). Always given by a signed command;
    /// an administrator's local `mintctl install URL` may leave it out (the bundle's own
    /// signature and file digests are checked by the verifier in any case).
    pub sha256: Option<String>,
    /// Exact size of the file; more is refused. When left out (local installs only) the
    /// server's `Content-Length` is used, which must then be at most `max_size`.
    pub size: Option<u64>,
    /// Upper bound when `size` is not given (`limits.max_bundle_bytes`).
    pub max_size: u64,
    /// The partial file (kept across restarts until the command finished).
    pub part: PathBuf,
}

impl Job {
    /// A download bound by a signed digest and size.
    pub fn signed(url: &str, sha256: &str, size: u64, part: PathBuf) -> Job {
        Job {
            url: url.to_owned(),
            sha256: Some(sha256.to_owned()),
            size: Some(size),
            max_size: size,
            part,
        }
    }
}

/// Timeouts and retries.
#[derive(Debug, Clone)]
pub struct Options {
    /// TCP (and TLS) connection set-up.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer.
    pub read_timeout: Duration,
    /// First wait before a retry; doubled per failure without progress, capped at 60 s.
    pub retry_base: Duration,
    /// Consecutive failed attempts without a byte of progress before giving up.
    pub max_failures: u32,
    /// Extra trusted CA certificate (PEM) for `https://`, besides the system's.
    pub ca_pem: Option<Vec<u8>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            max_failures: 8,
            ca_pem: None,
        }
    }
}

/// Something a download reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Bytes already in the partial file, fed to the verifier before asking the server.
    Resumed {
        /// Bytes on disk.
        offset: u64,
    },
    /// Bytes received so far (after every chunk; the caller decides what to publish).
    Progress {
        /// Bytes of the file received, partial file included.
        bytes: u64,
    },
    /// A request failed; the download retries from `bytes` after `retry_in`.
    Interrupted {
        /// Bytes of the file received.
        bytes: u64,
        /// What failed.
        error: String,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL cannot be used.
    #[error("url {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The server offers a file of another size than the signed one (or more than the
    /// bound when no size was given).
    #[error(
        "the server offers {offered} bytes, not the expected {signed} (signed size, or the bound)"
    )]
    SizeMismatch {
        /// What the server said.
        offered: u64,
        /// The signed size.
        signed: u64,
    },
    /// The server sent more bytes than the signed size.
    #[error("the server sent more than the expected {signed} bytes")]
    TooLarge {
        /// The signed size.
        signed: u64,
    },
    /// The whole file's SHA-256 is not the signed one.
    #[error("sha256 of the downloaded file is {actual}, not the expected (signed) {expected}")]
    Digest {
        /// Signed digest.
        expected: String,
        /// Digest of what was received.
        actual: String,
    },
    /// The partial file could not be used.
    #[error("partial download {}: {source}", path.display())]
    File {
        /// The partial file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Attempts kept failing without progress.
    #[error("download gave up after {attempts} failed attempts without progress; last: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The server's TLS certificate does not verify (unknown CA, wrong host name, expired):
    /// another attempt would not change that, so the download ends at once.
    #[error(
        "TLS with {host}: the server's certificate is not trusted ({reason}); add its CA to \
         the system store or point SSL_CERT_FILE at it"
    )]
    Certificate {
        /// `host:port`.
        host: String,
        /// What the TLS library said.
        reason: String,
    },
    /// Without a given size, the server did not say how large the file is.
    #[error("the server sent no Content-Length; give the bundle's size")]
    UnknownSize,
    /// The verifier stopped reading (it refused the bundle or the install ended).
    #[error("the verifier stopped reading")]
    Abandoned,
}

impl DownloadError {
    /// Whether deleting the partial file is right (its content is wrong, or cannot match).
    pub fn content_is_wrong(&self) -> bool {
        matches!(
            self,
            DownloadError::SizeMismatch { .. }
                | DownloadError::TooLarge { .. }
                | DownloadError::Digest { .. }
        )
    }
}

/// One attempt's failure: retried unless `permanent`.
struct AttemptError {
    error: DownloadError,
    permanent: bool,
}

impl AttemptError {
    fn retry(reason: impl Into<String>) -> Self {
        AttemptError {
            error: DownloadError::GaveUp {
                attempts: 0,
                last: reason.into(),
            },
            permanent: false,
        }
    }

    fn fatal(error: DownloadError) -> Self {
        AttemptError {
            error,
            permanent: true,
        }
    }
}

/// The state of a running download: file, digest so far, where the verifier is.
struct Transfer<'a> {
    job: &'a Job,
    /// The size: given, or learned from the server.
    size: Option<u64>,
    file: tokio::fs::File,
    hasher: Sha256,
    received: u64,
    sink: &'a mpsc::Sender<io::Result<Bytes>>,
}

impl Transfer<'_> {
    /// Appends bytes of the file at `received`: to disk, to the digest, to the verifier.
    async fn accept(&mut self, data: Bytes) -> Result<(), AttemptError> {
        let bound = self.bound();
        if data.len() as u64 > bound - self.received {
            return Err(AttemptError::fatal(DownloadError::TooLarge {
                signed: bound,
            }));
        }
        self.file
            .write_all(&data)
            .await
            .map_err(|e| AttemptError::fatal(self.file_error(e)))?;
        self.hasher.update(&data);
        self.received += data.len() as u64;
        self.sink
            .send(Ok(data))
            .await
            .map_err(|_| AttemptError::fatal(DownloadError::Abandoned))
    }

    /// The most bytes the file may have.
    fn bound(&self) -> u64 {
        self.size.unwrap_or(self.job.max_size)
    }

    fn complete(&self) -> bool {
        self.size.is_some_and(|s| self.received == s)
    }

    /// Checks a size the server announced against the given one (or the bound), and learns
    /// it when none was given.
    fn announced(&mut self, offered: u64) -> Result<(), AttemptError> {
        match self.size {
            Some(signed) if offered != signed => {
                Err(AttemptError::fatal(DownloadError::SizeMismatch {
                    offered,
                    signed,
                }))
            }
            Some(_) => Ok(()),
            None if offered > self.job.max_size || offered < self.received => {
                Err(AttemptError::fatal(DownloadError::SizeMismatch {
                    offered,
                    signed: self.job.max_size,
                }))
            }
            None => {
                self.size = Some(offered);
                Ok(())
            }
        }
    }

    fn file_error(&self, source: io::Error) -> DownloadError {
        DownloadError::File {
            path: self.job.part.clone(),
            source,
        }
    }
}

/// Downloads `job` into its partial file and `sink`, reporting to `report`. On success the
/// whole file is on disk (fsynced), its digest matched, and every byte went to `sink`; the
/// caller then drops `sink` (end of stream). On failure an error has been sent to `sink` (so
/// the verifier stops) unless the verifier had stopped already.
pub async fn run(
    job: &Job,
    options: &Options,
    sink: &mpsc::Sender<io::Result<Bytes>>,
    report: &mut (dyn FnMut(Report) + Send),
) -> Result<(), DownloadError> {
    let result = run_inner(job, options, sink, report).await;
    if let Err(e) = &result {
        if !matches!(e, DownloadError::Abandoned) {
            let _ = sink.send(Err(io::Error::other(e.to_string()))).await;
        }
    }
    result
}

async fn run_inner(
    job: &Job,
    options: &Options,
    sink: &mpsc::Sender<io::Result<Bytes>>,
    report: &mut (dyn FnMut(Report) + Send),
) -> Result<(), DownloadError> {
    let tls = tls_connector(options)?;
    let mut transfer = open_part(job, sink).await?;
    if transfer.received > 0 {
        report(Report::Resumed {
            offset: transfer.received,
        });
    }
    let mut failures = 0u32;
    while !transfer.complete() {
        let before = transfer.received;
        let outcome = fetch(&mut transfer, options, &tls, report).await;
        match outcome {
            Ok(()) if transfer.complete() => break,
            Ok(()) => {
                let e = AttemptError::retry(format!(
                    "connection closed after {} of {} bytes",
                    transfer.received,
                    transfer.size.map_or("?".to_owned(), |s| s.to_string())
                ));
                failures = next_failure(failures, before, &transfer, e, options, report).await?;
            }
            Err(e) if e.permanent => return Err(e.error),
            Err(e) => {
                failures = next_failure(failures, before, &transfer, e, options, report).await?;
            }
        }
    }
    transfer
        .file
        .sync_all()
        .await
        .map_err(|e| transfer.file_error(e))?;
    let actual = hex::encode(transfer.hasher.finalize());
    match &job.sha256 {
        Some(expected) if *expected != actual => Err(DownloadError::Digest {
            expected: expected.clone(),
            actual,
        }),
        _ => Ok(()),
    }
}

/// Counts a failed attempt (reset by progress), waits, or gives up.
async fn next_failure(
    failures: u32,
    before: u64,
    transfer: &Transfer<'_>,
    e: AttemptError,
    options: &Options,
    report: &mut (dyn FnMut(Report) + Send),
) -> Result<u32, DownloadError> {
    let failures = if transfer.received > before {
        1
    } else {
        failures + 1
    };
    let last = match &e.error {
        DownloadError::GaveUp { last, .. } => last.clone(),
        other => other.to_string(),
    };
    if failures >= options.max_failures {
        return Err(DownloadError::GaveUp {
            attempts: failures,
            last,
        });
    }
    let wait = options
        .retry_base
        .saturating_mul(1 << (failures - 1).min(6))
        .min(Duration::from_secs(60));
    report(Report::Interrupted {
        bytes: transfer.received,
        error: last,
        retry_in: wait,
    });
    tokio::time::sleep(wait).await;
    Ok(failures)
}

/// Opens (or creates) the partial file and feeds what it holds to the digest and the sink.
async fn open_part<'a>(
    job: &'a Job,
    sink: &'a mpsc::Sender<io::Result<Bytes>>,
) -> Result<Transfer<'a>, DownloadError> {
    let file_error = |source| DownloadError::File {
        path: job.part.clone(),
        source,
    };
    if let Some(dir) = job.part.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(file_error)?;
    }
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&job.part)
        .await
        .map_err(file_error)?;
    let on_disk = file.metadata().await.map_err(file_error)?.len();
    if on_disk > job.size.unwrap_or(job.max_size) {
        // Not a prefix of this file: start again.
        file.set_len(0).await.map_err(file_error)?;
    }
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let mut reader = tokio::fs::File::open(&job.part).await.map_err(file_error)?;
    loop {
        let n = reader.read(&mut buf).await.map_err(file_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        received += n as u64;
        if sink
            .send(Ok(Bytes::copy_from_slice(&buf[..n])))
            .await
            .is_err()
        {
            return Err(DownloadError::Abandoned);
        }
    }
    Ok(Transfer {
        job,
        size: job.size,
        file,
        hasher,
        received,
        sink,
    })
}

/// One request (with its redirects): appends what the server sends from `received` on.
async fn fetch(
    transfer: &mut Transfer<'_>,
    options: &Options,
    tls: &tokio_native_tls::TlsConnector,
    report: &mut (dyn FnMut(Report) + Send),
) -> Result<(), AttemptError> {
    let mut url = transfer.job.url.clone();
    for _ in 0..=MAX_REDIRECTS {
        let uri: Uri = url.parse().map_err(|e| {
            AttemptError::fatal(DownloadError::Url {
                url: url.clone(),
                reason: format!("{e}"),
            })
        })?;
        let response = request(&uri, transfer.received, options, tls).await?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| AttemptError::retry(format!("{status} without a Location")))?;
            url = resolve(&uri, location).map_err(|reason| {
                AttemptError::fatal(DownloadError::Url {
                    url: location.to_owned(),
                    reason,
                })
            })?;
            continue;
        }
        let skip = match status {
            StatusCode::OK => {
                match content_length(&response) {
                    Some(len) => transfer.announced(len)?,
                    None if transfer.size.is_none() => {
                        return Err(AttemptError::fatal(DownloadError::UnknownSize))
                    }
                    None => {}
                }
                transfer.received
            }
            StatusCode::PARTIAL_CONTENT => {
                let (start, total) = content_range(&response).ok_or_else(|| {
                    AttemptError::retry("206 without a usable Content-Range".to_owned())
                })?;
                match total {
                    Some(total) => transfer.announced(total)?,
                    None if transfer.size.is_none() => {
                        return Err(AttemptError::fatal(DownloadError::UnknownSize))
                    }
                    None => {}
                }
                if start != transfer.received {
                    return Err(AttemptError::retry(format!(
                        "asked for bytes from {} but the server sent from {start}",
                        transfer.received
                    )));
                }
                0
            }
            other => {
                return Err(AttemptError::retry(format!(
                    "HTTP {other} from {}",
                    redact(&url)
                )))
            }
        };
        return body(transfer, response, skip, options, report).await;
    }
    Err(AttemptError::fatal(DownloadError::Url {
        url: transfer.job.url.clone(),
        reason: format!("more than {MAX_REDIRECTS} redirects"),
    }))
}

async fn body(
    transfer: &mut Transfer<'_>,
    response: hyper::Response<hyper::body::Incoming>,
    mut skip: u64,
    options: &Options,
    report: &mut (dyn FnMut(Report) + Send),
) -> Result<(), AttemptError> {
    let mut body = response.into_body();
    loop {
        let frame = match tokio::time::timeout(options.read_timeout, body.frame()).await {
            Err(_) => {
                return Err(AttemptError::retry(format!(
                    "no data for {} s",
                    options.read_timeout.as_secs()
                )))
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(AttemptError::retry(format!("transfer broken: {e}"))),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if skip > 0 {
            let drop = skip.min(data.len() as u64) as usize;
            let _ = data.split_to(drop);
            skip -= drop as u64;
        }
        if data.is_empty() {
            continue;
        }
        transfer.accept(data).await?;
        report(Report::Progress {
            bytes: transfer.received,
        });
    }
}

type Response = hyper::Response<hyper::body::Incoming>;

async fn request(
    uri: &Uri,
    offset: u64,
    options: &Options,
    tls: &tokio_native_tls::TlsConnector,
) -> Result<Response, AttemptError> {
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(AttemptError::fatal(DownloadError::Url {
                url: uri.to_string(),
                reason: "only http:// and https:// are supported".into(),
            }))
        }
    };
    let host = uri.host().ok_or_else(|| {
        AttemptError::fatal(DownloadError::Url {
            url: uri.to_string(),
            reason: "no host".into(),
        })
    })?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.to_owned());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req = Request::get(path).header(header::HOST, authority).header(
        header::USER_AGENT,
        concat!("mintd/", env!("CARGO_PKG_VERSION")),
    );
    if offset > 0 {
        req = req.header(header::RANGE, format!("bytes={offset}-"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| AttemptError::retry(format!("cannot build the request: {e}")))?;
    let connect = async {
        let tcp = TcpStream::connect((bare_host, port)).await.map_err(|e| {
            AttemptError::retry(format!("cannot connect to {bare_host}:{port}: {e}"))
        })?;
        let _ = tcp.set_nodelay(true);
        if https {
            let stream = tls
                .connect(bare_host, tcp)
                .await
                .map_err(|e| tls_failure(&format!("{bare_host}:{port}"), &e.to_string()))?;
            send(stream, req).await.map_err(AttemptError::retry)
        } else {
            send(tcp, req).await.map_err(AttemptError::retry)
        }
    };
    match tokio::time::timeout(options.connect_timeout + options.read_timeout, connect).await {
        Err(_) => Err(AttemptError::retry(format!(
            "no answer from {bare_host}:{port} within {} s",
            (options.connect_timeout + options.read_timeout).as_secs()
        ))),
        Ok(result) => result,
    }
}

/// A failed TLS handshake: final when the certificate does not verify, retried otherwise (a
/// connection cut during the handshake). native-tls uses OpenSSL on Linux, whose reason for
/// every verification failure (unknown CA, host name, dates) is "certificate verify failed".
fn tls_failure(host: &str, message: &str) -> AttemptError {
    if message.contains("certificate verify failed") {
        AttemptError::fatal(DownloadError::Certificate {
            host: host.to_owned(),
            reason: message.to_owned(),
        })
    } else {
        AttemptError::retry(format!("TLS with {host}: {message}"))
    }
}

async fn send<S>(stream: S, req: Request<Empty<Bytes>>) -> Result<Response, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "download connection ended");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP request: {e}"))
}

fn tls_connector(options: &Options) -> Result<tokio_native_tls::TlsConnector, DownloadError> {
    let mut builder = native_tls::TlsConnector::builder();
    if let Some(pem) = &options.ca_pem {
        let cert = native_tls::Certificate::from_pem(pem).map_err(|e| DownloadError::Url {
            url: String::new(),
            reason: format!("extra CA certificate: {e}"),
        })?;
        builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map(tokio_native_tls::TlsConnector::from)
        .map_err(|e| DownloadError::Url {
            url: String::new(),
            reason: format!("TLS set-up: {e}"),
        })
}

fn content_length(response: &Response) -> Option<u64> {
    response
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`).
fn content_range(response: &Response) -> Option<(u64, Option<u64>)> {
    let text = response
        .headers()
        .get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    parse_content_range(text)
}

fn parse_content_range(text: &str) -> Option<(u64, Option<u64>)> {
    let rest = text.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

/// A redirect target: an absolute `http(s)://` URL or an absolute path on the same server.
fn resolve(base: &Uri, location: &str) -> Result<String, String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        crate::fleet::command::check_url(location)?;
        return Ok(location.to_owned());
    }
    if location.starts_with('/') && !location.starts_with("//") {
        let scheme = base.scheme_str().unwrap_or("http");
        let authority = base.authority().map_or("", |a| a.as_str());
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    Err(format!(
        "redirect to {location:?}: only absolute URLs and absolute paths are followed"
    ))
}

/// The URL without its query (which may hold a token) for logs and events.
pub fn redact(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_owned(),
    }
}

/// The partial file of a download with this digest, under `dir`.
pub fn part_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.part"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_untrusted_certificate_ends_the_download_other_tls_failures_are_retried() {
        let verify = "error:0A000086:SSL routines:tls_post_process_server_certificate:\
                      certificate verify failed:../ssl/statem/statem_clnt.c:1889: \
                      (unable to get local issuer certificate)";
        let e = tls_failure("h:443", verify);
        assert!(e.permanent);
        assert!(matches!(e.error, DownloadError::Certificate { .. }));
        assert!(e.error.to_string().starts_with(
            "TLS with h:443: the server's certificate is not trusted (error:0A000086"
        ));
        let reset = tls_failure("h:443", "connection reset by peer");
        assert!(!reset.permanent);
        assert_eq!(
            reset.error.to_string(),
            "download gave up after 0 failed attempts without progress; last: TLS with \
             h:443: connection reset by peer"
        );
    }

    #[test]
    fn content_range_and_redirects() {
        assert_eq!(parse_content_range("bytes 10-19/20"), Some((10, Some(20))));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, None)));
        for bad in [
            "bytes 19-10/20",
            "items 1-2/3",
            "bytes 1-/3",
            "bytes x-2/3",
            "bytes 1-2/x",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
        let base: Uri = "https://h:8443/a/b.mint?t=1".parse().unwrap();
        assert_eq!(resolve(&base, "/c.mint").unwrap(), "https://h:8443/c.mint");
        assert_eq!(resolve(&base, "http://o/x").unwrap(), "http://o/x");
        assert!(resolve(&base, "c.mint").is_err());
        assert!(resolve(&base, "//evil/x").is_err());
        assert!(resolve(&base, "ftp://o/x").is_err());
        assert_eq!(redact("http://h/x?token=s"), "http://h/x?…");
    }
}
