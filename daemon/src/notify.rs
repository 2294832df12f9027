//! The systemd readiness and watchdog protocol (`sd_notify`), without libsystemd.
//!
//! The unit `systemd/mintd.service` is `Type=notify` with `WatchdogSec=30s`: systemd waits
//! for `READY=1` before it considers mintd started, and restarts mintd when no `WATCHDOG=1`
//! arrives within 30 s. The protocol is one datagram per notification, `KEY=VALUE` lines,
//! sent to the `AF_UNIX` datagram socket named by `NOTIFY_SOCKET`: a filesystem path
//! (`/run/systemd/notify`) or, when it starts with `@`, a name in the abstract namespace.
//!
//! [`Notifier::from_env`] reads the environment once:
//!
//! - `NOTIFY_SOCKET` unset: every method is a no-op that succeeds (mintd run by hand, in
//!   tests, or by another supervisor).
//! - `WATCHDOG_USEC`: the watchdog period systemd expects; [`Notifier::watchdog_interval`]
//!   is half of it, the ping period `sd_watchdog_enabled(3)` recommends.
//! - `WATCHDOG_PID`: when set, only that process pings. Another process that inherited the
//!   environment (a child, a test harness) sees no watchdog and never sends `WATCHDOG=1`.
//!
//! How mintd uses it: [`Notifier::ready`] once the socket is bound and the store is
//! verified; [`Notifier::watchdog`] every [`Notifier::watchdog_interval`] from a task on the
//! same runtime that serves requests (so a wedged runtime stops the pings and systemd
//! restarts it); [`Notifier::status`] for the one-line state `systemctl status` shows;
//! [`Notifier::extend_timeout`] during a long start (re-verifying a large store);
//! [`Notifier::stopping`] when SIGTERM arrives.
//!
//! The unit sets `NotifyAccess=main`, so only the main process is listened to; children that
//! inherit `NOTIFY_SOCKET` cannot change the service state.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// How long one notification may wait for room in the service manager's receive queue.
/// systemd drains its queue quickly; this bound only keeps a stuck manager from blocking a
/// caller for ever.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a notification could not be prepared or delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` (or the socket given to [`Notifier::with_socket`]) is neither an
    /// absolute path nor an abstract name (`@name`), or is too long for a socket address.
    #[error("notify socket {socket:?} is not usable: {reason}")]
    BadSocket {
        /// The socket as given.
        socket: OsString,
        /// What is wrong with it.
        reason: String,
    },
    /// `WATCHDOG_USEC` is not a positive whole number of microseconds.
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds")]
    BadWatchdogUsec(OsString),
    /// `WATCHDOG_PID` is not a process id.
    #[error("WATCHDOG_PID={0:?} is not a process id")]
    BadWatchdogPid(OsString),
    /// The notification holds a NUL byte, which systemd refuses.
    #[error("notification {0:?} contains a NUL byte")]
    Nul(String),
    /// The datagram could not be sent to the service manager.
    #[error("cannot send {state:?} to the service manager at {socket}")]
    Send {
        /// The notification (its first line).
        state: String,
        /// The socket it was sent to (`@name` for an abstract one).
        socket: String,
        /// The error from the socket.
        #[source]
        source: io::Error,
    },
    /// The socket accepted only part of the datagram.
    #[error("the service manager at {socket} took {sent} of {len} bytes of {state:?}")]
    Short {
        /// The notification (its first line).
        state: String,
        /// The socket it was sent to.
        socket: String,
        /// Bytes sent.
        sent: usize,
        /// Bytes in the notification.
        len: usize,
    },
}

/// Where notifications go.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    /// For messages: the socket as written in `NOTIFY_SOCKET`.
    display: String,
}

/// Sends readiness, status and watchdog notifications to systemd.
///
/// Cheap to clone; every notification opens a fresh unbound datagram socket, so a clone can
/// live in any thread or task. Without a socket (`NOTIFY_SOCKET` unset) every method
/// succeeds without doing anything.
#[derive(Debug, Clone)]
pub struct Notifier {
    target: Option<Target>,
    /// The watchdog period systemd expects from this process (`WATCHDOG_USEC`), or `None`
    /// when there is no watchdog or it belongs to another process (`WATCHDOG_PID`).
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier that never sends anything.
    pub fn disabled() -> Self {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// The notifier systemd configured for this process through `NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC` and `WATCHDOG_PID`. The environment is only read, never changed.
    ///
    /// With `NOTIFY_SOCKET` unset this is [`Notifier::disabled`], whatever the watchdog
    /// variables say. A malformed variable is an error rather than a silently missing
    /// watchdog: the service manager would otherwise restart the daemon for a silence it
    /// cannot explain.
    pub fn from_env() -> Result<Self, NotifyError> {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            std::env::var_os("WATCHDOG_USEC").as_deref(),
            std::env::var_os("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// A notifier for an explicit socket, in `NOTIFY_SOCKET` syntax (an absolute path, or
    /// `@name` for the abstract namespace), with an optional watchdog period (the
    /// `WATCHDOG_USEC` value, not the ping interval). For tests and for supervisors that
    /// pass the socket some other way.
    pub fn with_socket(
        socket: impl AsRef<OsStr>,
        watchdog: Option<Duration>,
    ) -> Result<Self, NotifyError> {
        Ok(Notifier {
            target: Some(parse_socket(socket.as_ref())?),
            watchdog: watchdog.filter(|d| !d.is_zero()),
        })
    }

    /// The environment parser behind [`Notifier::from_env`], with the variables and the
    /// process id passed in so that tests never touch the process environment.
    fn from_vars(
        socket: Option<&OsStr>,
        watchdog_usec: Option<&OsStr>,
        watchdog_pid: Option<&OsStr>,
        own_pid: u32,
    ) -> Result<Self, NotifyError> {
        let Some(socket) = socket.filter(|s| !s.is_empty()) else {
            return Ok(Self::disabled());
        };
        let target = parse_socket(socket)?;
        let mut watchdog = match watchdog_usec {
            None => None,
            Some(raw) => {
                let usec = raw
                    .to_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .filter(|&usec| usec > 0)
                    .ok_or_else(|| NotifyError::BadWatchdogUsec(raw.to_owned()))?;
                Some(Duration::from_micros(usec))
            }
        };
        if let Some(raw) = watchdog_pid {
            let pid = raw
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
                .filter(|&pid| pid > 0)
                .ok_or_else(|| NotifyError::BadWatchdogPid(raw.to_owned()))?;
            if pid != own_pid {
                watchdog = None;
            }
        }
        Ok(Notifier {
            target: Some(target),
            watchdog,
        })
    }

    /// Whether notifications go anywhere (`NOTIFY_SOCKET` was set).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// How often to call [`Notifier::watchdog`]: half the period systemd enforces, or
    /// `None` when this process has no watchdog to feed.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|period| period / 2)
    }

    /// Sends `READY=1`: start-up is complete and the service is serving.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.notify("READY=1")
    }

    /// Sends `STATUS=...`, the one line `systemctl status` shows. Newlines and other
    /// control characters become spaces, so a status built from untrusted text (a model
    /// name) cannot smuggle in another assignment such as `READY=1`.
    pub fn status(&self, status: &str) -> Result<(), NotifyError> {
        let line: String = status
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        self.notify(&format!("STATUS={line}"))
    }

    /// Sends `STOPPING=1`: the service is shutting down on request.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.notify("STOPPING=1")
    }

    /// Sends `WATCHDOG=1`, the keep-alive ping. Does nothing when this process has no
    /// watchdog (no `WATCHDOG_USEC`, or `WATCHDOG_PID` names another process).
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        if self.watchdog.is_none() {
            return Ok(());
        }
        self.notify("WATCHDOG=1")
    }

    /// Sends `EXTEND_TIMEOUT_USEC=...`: asks for `extra` more time for the current start-up
    /// or shutdown, counted from now. Send it again before it runs out.
    pub fn extend_timeout(&self, extra: Duration) -> Result<(), NotifyError> {
        self.notify(&format!("EXTEND_TIMEOUT_USEC={}", extra.as_micros()))
    }

    /// Sends `state` as it is: one or more `KEY=VALUE` lines separated by `\n` (see
    /// `sd_notify(3)`). A no-op without a socket.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        let first_line = || state.lines().next().unwrap_or_default().to_owned();
        if state.contains('\0') {
            return Err(NotifyError::Nul(first_line()));
        }
        let send_error = |source| NotifyError::Send {
            state: first_line(),
            socket: target.display.clone(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(send_error)?;
        socket
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(send_error)?;
        let sent = socket
            .send_to_addr(state.as_bytes(), &target.addr)
            .map_err(send_error)?;
        if sent != state.len() {
            return Err(NotifyError::Short {
                state: first_line(),
                socket: target.display.clone(),
                sent,
                len: state.len(),
            });
        }
        Ok(())
    }
}

/// Parses a socket in `NOTIFY_SOCKET` syntax.
fn parse_socket(socket: &OsStr) -> Result<Target, NotifyError> {
    let bad = |reason: &str| NotifyError::BadSocket {
        socket: socket.to_owned(),
        reason: reason.to_owned(),
    };
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(socket),
        Some(b'@') if bytes.len() > 1 => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'@') => return Err(bad("the abstract name after '@' is empty")),
        _ => {
            return Err(bad(
                "expected an absolute path or '@' and an abstract socket name",
            ))
        }
    }
    .map_err(|e| bad(&e.to_string()))?;
    Ok(Target {
        addr,
        display: socket.to_string_lossy().into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A bound datagram socket standing in for systemd's notify socket.
    struct Manager {
        socket: UnixDatagram,
        /// `NOTIFY_SOCKET` syntax.
        name: OsString,
        _dir: Option<tempfile::TempDir>,
    }

    impl Manager {
        fn path() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("notify");
            let socket = UnixDatagram::bind(&path).expect("bind path socket");
            Manager::finish(socket, path.into_os_string(), Some(dir))
        }

        fn abstract_() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "mintd-notify-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            );
            let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract addr");
            let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract socket");
            Manager::finish(socket, format!("@{name}").into(), None)
        }

        fn finish(socket: UnixDatagram, name: OsString, dir: Option<tempfile::TempDir>) -> Self {
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("read timeout");
            Manager {
                socket,
                name,
                _dir: dir,
            }
        }

        /// The next datagram, exactly as received.
        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).expect("a notification");
            String::from_utf8(buf[..n].to_vec()).expect("utf-8")
        }

        /// Asserts that nothing (more) was sent.
        fn assert_empty(&self) {
            self.socket.set_nonblocking(true).expect("nonblocking");
            let mut buf = [0u8; 4096];
            match self.socket.recv(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(n) => panic!(
                    "unexpected notification {:?}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) => panic!("recv: {e}"),
            }
            self.socket.set_nonblocking(false).expect("blocking");
        }
    }

    fn exchange(manager: &Manager) {
        let n = Notifier::with_socket(&manager.name, Some(Duration::from_secs(30))).unwrap();
        assert!(n.is_enabled());
        n.ready().unwrap();
        assert_eq!(manager.recv(), "READY=1");
        n.status("serving detector 2.1.0 (sequence 42)").unwrap();
        assert_eq!(
            manager.recv(),
            "STATUS=serving detector 2.1.0 (sequence 42)"
        );
        n.watchdog().unwrap();
        assert_eq!(manager.recv(), "WATCHDOG=1");
        n.extend_timeout(Duration::from_millis(1500)).unwrap();
        assert_eq!(manager.recv(), "EXTEND_TIMEOUT_USEC=1500000");
        n.stopping().unwrap();
        assert_eq!(manager.recv(), "STOPPING=1");
        n.notify("RELOADING=1\nMONOTONIC_USEC=1").unwrap();
        assert_eq!(manager.recv(), "RELOADING=1\nMONOTONIC_USEC=1");
        manager.assert_empty();
    }

    #[test]
    fn path_socket_receives_exact_datagrams() {
        exchange(&Manager::path());
    }

    #[test]
    fn abstract_socket_receives_exact_datagrams() {
        exchange(&Manager::abstract_());
    }

    #[test]
    fn from_env_variables_reach_a_path_socket() {
        let manager = Manager::path();
        let n = Notifier::from_vars(
            Some(&manager.name),
            Some(OsStr::new("30000000")),
            Some(OsStr::new("4242")),
            4242,
        )
        .unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        n.watchdog().unwrap();
        assert_eq!(manager.recv(), "WATCHDOG=1");
        n.ready().unwrap();
        assert_eq!(manager.recv(), "READY=1");
    }

    #[test]
    fn from_env_variables_reach_an_abstract_socket() {
        let manager = Manager::abstract_();
        let n = Notifier::from_vars(Some(&manager.name), None, None, 1).unwrap();
        assert_eq!(n.watchdog_interval(), None);
        n.status("starting").unwrap();
        assert_eq!(manager.recv(), "STATUS=starting");
    }

    #[test]
    fn status_cannot_inject_other_assignments() {
        let manager = Manager::path();
        let n = Notifier::with_socket(&manager.name, None).unwrap();
        n.status("model evil\nREADY=1\r\tSTOPPING=1").unwrap();
        assert_eq!(manager.recv(), "STATUS=model evil READY=1  STOPPING=1");
        manager.assert_empty();
    }

    #[test]
    fn watchdog_belongs_to_the_named_pid_only() {
        let manager = Manager::path();
        let n = Notifier::from_vars(
            Some(&manager.name),
            Some(OsStr::new("30000000")),
            Some(OsStr::new("4242")),
            4343,
        )
        .unwrap();
        assert_eq!(n.watchdog_interval(), None);
        n.watchdog().unwrap();
        manager.assert_empty();
        // Other notifications still go out: only the watchdog belongs to WATCHDOG_PID.
        n.ready().unwrap();
        assert_eq!(manager.recv(), "READY=1");
    }

    #[test]
    fn no_watchdog_means_no_ping() {
        let manager = Manager::path();
        let n = Notifier::with_socket(&manager.name, None).unwrap();
        assert_eq!(n.watchdog_interval(), None);
        n.watchdog().unwrap();
        manager.assert_empty();
    }

    #[test]
    fn unset_socket_is_a_silent_no_op() {
        for socket in [None, Some(OsStr::new(""))] {
            let n = Notifier::from_vars(socket, Some(OsStr::new("30000000")), None, 1).unwrap();
            assert!(!n.is_enabled());
            assert_eq!(n.watchdog_interval(), None);
            n.ready().unwrap();
            n.status("x").unwrap();
            n.watchdog().unwrap();
            n.stopping().unwrap();
            n.notify("READY=1").unwrap();
        }
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        n.ready().unwrap();
    }

    #[test]
    fn malformed_variables_are_errors() {
        let s = Some(OsStr::new("/run/systemd/notify"));
        for bad in ["", "0", "-1", "30s", "1.5"] {
            let err = Notifier::from_vars(s, Some(OsStr::new(bad)), None, 1).unwrap_err();
            assert!(
                matches!(err, NotifyError::BadWatchdogUsec(_)),
                "{bad}: {err}"
            );
        }
        for bad in ["", "0", "abc", "-5"] {
            let err = Notifier::from_vars(s, None, Some(OsStr::new(bad)), 1).unwrap_err();
            assert!(
                matches!(err, NotifyError::BadWatchdogPid(_)),
                "{bad}: {err}"
            );
        }
        let long = format!("/{}", "x".repeat(200));
        for bad in ["relative/notify", "@", "vsock:2:1234", long.as_str()] {
            let err = Notifier::with_socket(bad, None).unwrap_err();
            assert!(matches!(err, NotifyError::BadSocket { .. }), "{bad}: {err}");
            let err = Notifier::from_vars(Some(OsStr::new(bad)), None, None, 1).unwrap_err();
            assert!(matches!(err, NotifyError::BadSocket { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn nul_bytes_are_refused_before_sending() {
        let manager = Manager::path();
        let n = Notifier::with_socket(&manager.name, None).unwrap();
        let err = n.notify("STATUS=a\0b").unwrap_err();
        assert!(matches!(err, NotifyError::Nul(_)), "{err}");
        // status() turns a NUL (a control character) into a space instead.
        n.status("a\0b").unwrap();
        assert_eq!(manager.recv(), "STATUS=a b");
        manager.assert_empty();
    }

    #[test]
    fn a_missing_manager_is_a_send_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone");
        let n = Notifier::with_socket(&path, None).unwrap();
        let err = n.ready().unwrap_err();
        assert!(matches!(err, NotifyError::Send { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("READY=1") && text.contains("gone"), "{text}");
    }
}
