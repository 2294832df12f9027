//! The systemd notification protocol as the real `mintd` speaks it: a datagram socket bound by
//! the test stands in for systemd's `NOTIFY_SOCKET`; the test reads `READY=1`, `STATUS=...`,
//! `WATCHDOG=1` and, after SIGTERM, `STOPPING=1`.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Config, Daemon, Workspace, MINTD};

/// systemd's side: a bound datagram socket in the workspace.
struct Manager {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl Manager {
    fn bind(ws: &Workspace) -> Manager {
        let path = ws.path("notify");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Manager { socket, path }
    }

    /// Every datagram received until `until` is true of the ones so far, or `timeout`.
    fn collect(&self, timeout: Duration, until: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline && !until(&got) {
            if let Ok(n) = self.socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    }
}

fn config(ws: &Workspace, manager: &Manager) -> Config {
    let mut config = ws.config();
    config.env("NOTIFY_SOCKET", manager.path.to_str().unwrap());
    config
}

fn count(got: &[String], message: &str) -> usize {
    got.iter().filter(|m| m.as_str() == message).count()
}

fn stop(d: &mut Daemon, manager: &Manager) -> Vec<String> {
    let status = d
        .terminate(Duration::from_secs(5))
        .expect("mintd stops on SIGTERM");
    assert!(status.success(), "mintd exited with {status}");
    manager.collect(Duration::from_secs(2), |got| {
        got.iter().any(|m| m == "STOPPING=1")
    })
}

#[test]
fn ready_status_watchdog_and_stopping() {
    let ws = Workspace::new();
    let bundle = ws.bundle("m", "1.0", 1).create();
    let manager = Manager::bind(&ws);
    let mut config = config(&ws, &manager);
    // No WATCHDOG_PID: the watchdog is this process's (sd_watchdog_enabled(3)).
    config.env("WATCHDOG_USEC", "200000");
    let mut d = config.start();

    // Readiness is announced once the socket answers (start() waited for that already).
    let start = Instant::now();
    let got = manager.collect(Duration::from_secs(3), |got| {
        count(got, "WATCHDOG=1") >= 2 && got.iter().any(|m| m == "READY=1")
    });
    assert_eq!(count(&got, "READY=1"), 1, "{got:?}");
    let statuses: Vec<&String> = got.iter().filter(|m| m.starts_with("STATUS=")).collect();
    assert!(
        statuses.contains(&&"STATUS=recovering update state".to_owned()),
        "{got:?}"
    );
    assert!(
        statuses.contains(&&"STATUS=serving no model".to_owned()),
        "{got:?}"
    );
    let ready_at = got.iter().position(|m| m == "READY=1").unwrap();
    let recovering_at = got
        .iter()
        .position(|m| m == "STATUS=recovering update state")
        .unwrap();
    assert!(recovering_at < ready_at, "{got:?}");
    // Pings every WATCHDOG_USEC / 2 = 100 ms: at least two within about a second.
    assert!(count(&got, "WATCHDOG=1") >= 2, "{got:?}");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "two pings took {:?}",
        start.elapsed()
    );
    // STATUS= follows what is served; the pings go on meanwhile.
    let reply = d.install(&bundle).expect("install");
    assert_eq!(reply["outcome"], "committed", "{reply}");
    let later = manager.collect(Duration::from_secs(3), |got| {
        count(got, "WATCHDOG=1") >= 3 && got.iter().any(|m| m == "STATUS=serving m 1.0")
    });
    assert!(
        later.iter().any(|m| m == "STATUS=serving m 1.0"),
        "{later:?}"
    );
    assert!(count(&later, "WATCHDOG=1") >= 3, "{later:?}");

    let after = stop(&mut d, &manager);
    assert!(after.iter().any(|m| m == "STOPPING=1"), "{after:?}");
    assert!(!ws.path("s.sock").exists(), "socket removed at stop");
}

/// `WATCHDOG_PID` names the daemon (as systemd sets it): set by a shell that then `exec`s
/// mintd, so the pid is the daemon's.
#[test]
fn watchdog_pid_of_the_daemon_itself_pings() {
    let ws = Workspace::new();
    let manager = Manager::bind(&ws);
    let mut config = config(&ws, &manager);
    config.env("WATCHDOG_USEC", "200000");
    let d = config.start_with(|cmd| {
        // Same program, arguments and environment, behind `sh -c 'WATCHDOG_PID=$$ exec ...'`.
        let mut wrapped = Command::new("sh");
        wrapped
            .arg("-c")
            .arg("WATCHDOG_PID=$$; export WATCHDOG_PID; exec \"$@\"")
            .arg("sh")
            .arg(MINTD)
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        *cmd = wrapped;
        cmd
    });
    let got = manager.collect(Duration::from_secs(3), |got| count(got, "WATCHDOG=1") >= 2);
    assert!(got.iter().any(|m| m == "READY=1"), "{got:?}");
    assert!(count(&got, "WATCHDOG=1") >= 2, "{got:?}");
    // The daemon is the process systemd would have started (the shell exec'd it).
    let environ = std::fs::read(format!("/proc/{}/environ", d.pid())).unwrap();
    let pid_var = format!("WATCHDOG_PID={}", d.pid());
    assert!(
        environ.split(|b| *b == 0).any(|v| v == pid_var.as_bytes()),
        "the daemon's environment holds {pid_var}"
    );
}

/// A `WATCHDOG_PID` of another process (a supervisor's child inheriting the environment):
/// ready and status still go out, but no `WATCHDOG=1`.
#[test]
fn watchdog_of_another_process_is_not_fed() {
    let ws = Workspace::new();
    let manager = Manager::bind(&ws);
    let mut config = config(&ws, &manager);
    config.env("WATCHDOG_USEC", "200000");
    config.env("WATCHDOG_PID", "1");
    let mut d = config.start();
    let got = manager.collect(Duration::from_millis(800), |_| false);
    assert_eq!(count(&got, "READY=1"), 1, "{got:?}");
    assert_eq!(count(&got, "WATCHDOG=1"), 0, "{got:?}");
    let after = stop(&mut d, &manager);
    assert!(after.iter().any(|m| m == "STOPPING=1"), "{after:?}");
}

/// A malformed `WATCHDOG_USEC` stops mintd at start with a message naming it, instead of a
/// silent watchdog that systemd would kill the service for.
#[test]
fn malformed_watchdog_usec_is_refused_at_start() {
    let ws = Workspace::new();
    let manager = Manager::bind(&ws);
    let mut config = config(&ws, &manager);
    config.env("WATCHDOG_USEC", "soon");
    let (status, stderr) = config.run_to_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        stderr.contains("NOTIFY_SOCKET is unusable")
            && stderr.contains("WATCHDOG_USEC=\"soon\" is not a positive number"),
        "{stderr}"
    );
    let got = manager.collect(Duration::from_millis(200), |_| false);
    assert!(!got.iter().any(|m| m == "READY=1"), "{got:?}");
}
