//! Who may call the management API: the daemon reads the peer's credentials (SO_PEERCRED,
//! plus the supplementary groups of the peer's process) on every connection. Root and the
//! daemon's own user always may, members of `api.admin_group` may; everybody else who can
//! reach the socket gets the inference and health endpoints only.
//!
//! The tests run as root and run clients as `nobody` (uid 65534) with `setpriv` (util-linux).
//!
//! How `nobody` reaches the socket: the configuration refuses a world-accessible
//! `api.socket_mode`, so access goes through the socket's group, as on a device (systemd's
//! `RuntimeDirectory=` with `Group=`). The workspace directory is made `root:users` with mode
//! 2710: group members may traverse it but not list it, and the setgid bit makes every file
//! created in it, the daemon's socket included, belong to `users`. With the default mode 0660
//! the socket is then `root:users rw-rw----`: a client in `users` may connect, anyone else
//! cannot. The admin group is a different group, `adm`, so being able to connect and being
//! allowed to manage are tested separately. (Both are standard Debian groups; if one is
//! missing it is created with `groupadd` and deleted when the test ends.)
//!
//! The raw HTTP calls as `nobody` (for `/v2/...`, which `mintctl` has no command for) are made
//! by this very test binary, re-run under `setpriv` with only the ignored `peer_helper` test
//! selected.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use support::{Daemon, Workspace, MINTCTL};

const NOBODY: u32 = 65534;

/// A group that exists for the test: an existing one is left alone, a missing one is created
/// and deleted on drop.
struct Group {
    name: &'static str,
    gid: u32,
    created: bool,
}

impl Group {
    fn ensure(name: &'static str) -> Group {
        if let Some(g) = nix::unistd::Group::from_name(name).expect("group lookup") {
            return Group {
                name,
                gid: g.gid.as_raw(),
                created: false,
            };
        }
        let status = Command::new("groupadd")
            .args(["--system", name])
            .status()
            .expect("run groupadd");
        assert!(status.success(), "groupadd {name} failed");
        let gid = nix::unistd::Group::from_name(name)
            .expect("group lookup")
            .expect("group just created")
            .gid
            .as_raw();
        Group {
            name,
            gid,
            created: true,
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.created {
            let _ = Command::new("groupdel").arg(self.name).status();
        }
    }
}

fn setpriv() -> Command {
    assert!(
        Path::new("/usr/bin/setpriv").exists() || which("setpriv"),
        "these tests need setpriv (util-linux) to run clients as another user"
    );
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run clients as another user and must run as root"
    );
    Command::new("setpriv")
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// `setpriv` as nobody with primary group `gid` and supplementary `groups` (none: cleared).
fn as_nobody(gid: u32, groups: &[u32]) -> Command {
    let mut cmd = setpriv();
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.current_dir("/");
    cmd
}

/// `mintctl --json --socket S ARGS` as nobody.
fn mintctl_as(d: &Daemon, gid: u32, groups: &[u32], args: &[&str]) -> (Option<i32>, Value) {
    let out: Output = as_nobody(gid, groups)
        .arg(MINTCTL)
        .arg("--json")
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .output()
        .expect("run mintctl as nobody");
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "mintctl {args:?} as nobody printed no JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), doc)
}

/// `GET path` as nobody (this binary's `peer_helper`): the HTTP status and body.
fn get_as(d: &Daemon, gid: u32, groups: &[u32], path: &str) -> (u16, Value) {
    let out = as_nobody(gid, groups)
        .arg(std::env::current_exe().expect("test binary"))
        .args(["peer_helper", "--exact", "--ignored", "--nocapture"])
        .env("MINTD_PEER_SOCKET", &d.socket)
        .env("MINTD_PEER_PATH", path)
        .output()
        .expect("run the peer helper as nobody");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PEER-RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "the peer helper gave no result:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let v: Value = serde_json::from_str(line).expect("helper JSON");
    (v["status"].as_u64().unwrap() as u16, v["body"].clone())
}

/// Run as another user by [`get_as`]; does nothing unless `MINTD_PEER_SOCKET` is set.
#[test]
#[ignore = "helper: run as another user by the other tests of this file"]
fn peer_helper() {
    let (Some(socket), Some(path)) = (
        std::env::var_os("MINTD_PEER_SOCKET"),
        std::env::var("MINTD_PEER_PATH").ok(),
    ) else {
        return;
    };
    let result = match mintd::client::Client::new(socket).get(&path) {
        Ok(body) => serde_json::json!({"status": 200, "body": body}),
        Err(mintd::client::ClientError::Api { status, body, .. }) => {
            serde_json::json!({"status": status, "body": body})
        }
        Err(e) => serde_json::json!({"status": 0, "body": {"error": e.to_string()}}),
    };
    println!("PEER-RESULT {result}");
}

/// The workspace made reachable by members of `group` only (see the module comment).
fn share_with_group(ws: &Workspace, group: &Group) {
    std::os::unix::fs::chown(ws.dir(), Some(0), Some(group.gid)).expect("chown workspace");
    std::fs::set_permissions(ws.dir(), std::fs::Permissions::from_mode(0o2710))
        .expect("chmod workspace");
}

#[test]
fn nobody_gets_inference_endpoints_only_and_admin_group_members_may_manage() {
    let users = Group::ensure("users");
    let adm = Group::ensure("adm");
    let ws = Workspace::new();
    share_with_group(&ws, &users);
    let v1 = ws.bundle("m", "1", 1).create();
    // mintctl streams the file itself: make it readable by the client.
    std::fs::set_permissions(&v1, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut config = ws.config();
    config.set("api", "admin_group", "\"adm\"");
    let d = config.start();

    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(&d.socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(
        meta.gid(),
        users.gid,
        "the socket inherits the directory's group"
    );

    // Not in the socket's group: cannot even connect.
    let (code, err) = mintctl_as(&d, NOBODY, &[], &["status"]);
    assert_eq!(code, Some(1), "{err}");
    let causes = err["causes"].to_string();
    assert!(
        causes.contains("cannot connect to mintd") && causes.contains("Permission denied"),
        "{err}"
    );

    // In the socket's group but not an admin: health and inference endpoints only.
    let (status, body) = get_as(&d, NOBODY, &[users.gid], "/v2/health/live");
    assert_eq!((status, &body["live"]), (200, &Value::Bool(true)), "{body}");
    let (status, _) = get_as(&d, NOBODY, &[users.gid], "/v2/health/ready");
    assert_eq!(status, 200);
    let (status, body) = get_as(&d, NOBODY, &[users.gid], "/v1/status");
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"],
        "uid 65534 may not use the management API (root, the daemon's user or api.admin_group only)"
    );
    for args in [
        vec!["status"],
        vec!["models"],
        vec!["events"],
        vec!["rollback", "m"],
        vec!["install", v1.to_str().unwrap()],
    ] {
        let (code, err) = mintctl_as(&d, NOBODY, &[users.gid], &args);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(
            err["causes"].to_string().contains("uid 65534 may not use"),
            "{args:?}: {err}"
        );
    }
    assert!(
        d.events().is_empty(),
        "a refused peer changed nothing: {:?}",
        d.events()
    );

    // A supplementary member of the admin group may manage.
    let (code, status) = mintctl_as(&d, NOBODY, &[users.gid, adm.gid], &["status"]);
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["ready"], true);
    let (code, reply) = mintctl_as(
        &d,
        NOBODY,
        &[users.gid, adm.gid],
        &["install", v1.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{reply}");
    assert_eq!(reply["outcome"], "committed");
    // So may a process whose primary group is the admin group.
    let (code, models) = mintctl_as(&d, adm.gid, &[users.gid], &["models"]);
    assert_eq!(code, Some(0), "{models}");
    assert_eq!(models["models"][0]["name"], "m");
    let (status, body) = get_as(&d, adm.gid, &[users.gid], "/v1/events");
    assert_eq!(status, 200, "{body}");
    // Served models' metadata is open to every peer that can connect.
    let (status, body) = get_as(&d, NOBODY, &[users.gid], "/v2/models/m");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "m");
}

#[test]
fn without_an_admin_group_only_root_may_manage() {
    let users = Group::ensure("users");
    let adm = Group::ensure("adm");
    let ws = Workspace::new();
    share_with_group(&ws, &users);
    let d = ws.config().start();
    let (status, body) = get_as(&d, adm.gid, &[users.gid, adm.gid], "/v1/status");
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("uid 65534 "),
        "{body}"
    );
    let (status, _) = get_as(&d, NOBODY, &[users.gid], "/v2/health/live");
    assert_eq!(status, 200);
    // Root (this test) may.
    assert_eq!(d.get("/v1/status")["ready"], true);
}

#[test]
fn an_admin_group_that_does_not_exist_stops_the_daemon() {
    let ws = Workspace::new();
    let mut config = ws.config();
    config.set("api", "admin_group", "\"no-such-group-mintd\"");
    let (status, stderr) = config.run_to_exit(std::time::Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        stderr.contains("api.admin_group \"no-such-group-mintd\" does not exist"),
        "{stderr}"
    );
}
