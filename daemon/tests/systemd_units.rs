//! The systemd integration in `systemd/`, checked with systemd's own tools (package
//! `systemd`, installed by scripts/deps.sh; no running systemd is needed):
//!
//! - `systemd-analyze verify` accepts the unit without a single warning. verify insists that
//!   ExecStart= names an existing executable, so it runs on a copy of the unit whose
//!   `/usr/bin/mintd` is replaced by the mintd binary cargo built for this test.
//! - `systemd-analyze security --offline=yes --threshold=20` passes and the overall exposure
//!   is at most 2.0 (`--threshold` is on a 0–100 scale).
//! - sysusers.d and tmpfiles.d are applied for real by `systemd-sysusers --root` and
//!   `systemd-tmpfiles --root --create` to a scratch root, and the accounts, owners and
//!   modes that come out are checked (owners only when the test runs as root).
//! - The unit, tmpfiles.d and the built-in configuration defaults name the same paths.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MINTD: &str = env!("CARGO_BIN_EXE_mintd");

/// The `ExecStart=` line as shipped.
const EXEC_START: &str = "ExecStart=/usr/bin/mintd --config /etc/mintd/mintd.toml";

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

fn unit_path() -> PathBuf {
    systemd_dir().join("mintd.service")
}

fn unit_text() -> String {
    fs::read_to_string(unit_path()).expect("read systemd/mintd.service")
}

/// The full path of a systemd tool, or a failure that says how to get it.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: run scripts/deps.sh (it installs the Debian \
                 package `systemd`; no running systemd is needed)"
            )
        })
}

fn run(tool_name: &str, args: &[&std::ffi::OsStr]) -> Output {
    Command::new(tool(tool_name))
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .env("SYSTEMD_PAGER", "")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool_name}: {e}"))
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The values of `key=` in the unit, in order (comments and continuation-free lines only,
/// which is all the unit uses).
fn directive(unit: &str, key: &str) -> Vec<String> {
    let prefix = format!("{key}=");
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn unit_verifies_without_warnings() {
    let unit = unit_text();
    assert_eq!(
        unit.lines().filter(|l| l.starts_with("ExecStart=")).count(),
        1,
        "one ExecStart= line"
    );
    assert!(
        unit.lines().any(|l| l == EXEC_START),
        "the unit must run `{EXEC_START}`"
    );
    assert!(
        !MINTD.contains(char::is_whitespace) && !MINTD.contains(['"', '\'', '\\', '%', '$']),
        "the built mintd path {MINTD:?} cannot be written into ExecStart= as is"
    );
    // verify checks that ExecStart= is an executable: point it at the binary cargo built.
    let copy = unit.replace("ExecStart=/usr/bin/mintd ", &format!("ExecStart={MINTD} "));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mintd.service");
    fs::write(&path, copy).unwrap();

    let out = run(
        "systemd-analyze",
        &["verify".as_ref(), "--man=no".as_ref(), path.as_os_str()],
    );
    // Unknown keys and unparsable values are only warnings (exit 0): treat any output as a
    // failure too.
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "{}",
        describe("systemd-analyze verify", &out)
    );
}

#[test]
fn verify_catches_a_broken_unit() {
    // The check above is only worth something if verify speaks up: a typo and a missing
    // binary must both be reported.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mintd.service");
    let typo = unit_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes");
    fs::write(&path, typo).unwrap();
    let out = run(
        "systemd-analyze",
        &["verify".as_ref(), "--man=no".as_ref(), path.as_os_str()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NoNewPrivilege"),
        "{}",
        describe("typo", &out)
    );
    // The shipped unit, with /usr/bin/mintd absent here, fails on ExecStart=.
    if !Path::new("/usr/bin/mintd").exists() {
        let out = run(
            "systemd-analyze",
            &[
                "verify".as_ref(),
                "--man=no".as_ref(),
                unit_path().as_os_str(),
            ],
        );
        assert!(
            !out.status.success(),
            "{}",
            describe("missing binary", &out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("/usr/bin/mintd"),
            "{}",
            describe("missing binary", &out)
        );
    }
}

#[test]
fn security_exposure_is_at_most_2_0() {
    let out = run(
        "systemd-analyze",
        &[
            "security".as_ref(),
            "--offline=yes".as_ref(),
            "--threshold=20".as_ref(),
            "--no-pager".as_ref(),
            unit_path().as_os_str(),
        ],
    );
    let report = describe(
        "systemd-analyze security --offline=yes --threshold=20",
        &out,
    );
    assert!(out.status.success(), "{report}");
    assert!(out.stderr.is_empty(), "warnings: {report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let level: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for mintd.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no \"Overall exposure level\" line: {report}"));
    assert!(level <= 2.0, "exposure {level} > 2.0: {report}");
}

/// `name:x:...` lines of an /etc/passwd or /etc/group file, by name.
fn colon_file(path: &Path) -> HashMap<String, Vec<String>> {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
        .map(|fields| (fields[0].clone(), fields))
        .collect()
}

#[test]
fn sysusers_and_tmpfiles_apply_to_a_scratch_root() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    fs::create_dir(r.join("etc")).unwrap();
    let root_arg = format!("--root={}", r.display());
    let sysusers = systemd_dir().join("sysusers.d/mintd.conf");
    let tmpfiles = systemd_dir().join("tmpfiles.d/mintd.conf");

    let out = run(
        "systemd-sysusers",
        &[root_arg.as_ref(), sysusers.as_os_str()],
    );
    assert!(
        out.status.success(),
        "{}",
        describe("systemd-sysusers", &out)
    );
    let passwd = colon_file(&r.join("etc/passwd"));
    let group = colon_file(&r.join("etc/group"));
    let user = passwd.get("mintd").expect("user mintd");
    let gid = |name: &str| -> u32 {
        group.get(name).unwrap_or_else(|| panic!("group {name}"))[2]
            .parse()
            .unwrap()
    };
    let uid: u32 = user[2].parse().unwrap();
    assert_eq!(
        user[3].parse::<u32>().unwrap(),
        gid("mintd"),
        "primary group mintd"
    );
    assert_eq!(user[5], "/var/lib/mintd", "home");
    assert_eq!(user[6], "/usr/sbin/nologin", "shell");
    assert!(uid < 1000, "a system user, got uid {uid}");
    assert_eq!(group["tss"][3], "mintd", "mintd is a member of tss");
    assert!(
        group["mintd-clients"][3].is_empty(),
        "mintd-clients starts empty"
    );

    let out = run(
        "systemd-tmpfiles",
        &[root_arg.as_ref(), "--create".as_ref(), tmpfiles.as_os_str()],
    );
    // Who runs the test: a file we create is owned by our effective uid.
    let probe = r.join("probe");
    fs::write(&probe, b"").unwrap();
    let as_root = fs::metadata(&probe).unwrap().uid() == 0;
    let expected = [
        ("etc/mintd", 0o755, 0, gid("mintd")),
        ("etc/mintd/trust.d", 0o755, 0, gid("mintd")),
        ("run/mintd", 0o2750, uid, gid("mintd-clients")),
    ];
    if as_root {
        assert!(
            out.status.success(),
            "{}",
            describe("systemd-tmpfiles", &out)
        );
        for (path, mode, owner, group) in expected {
            let meta = fs::metadata(r.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(meta.is_dir(), "{path} is a directory");
            assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path} mode");
            assert_eq!((meta.uid(), meta.gid()), (owner, group), "{path} owner");
        }
    } else {
        // Unprivileged, the lines still parse and resolve against the scratch accounts
        // (a syntax error or an unknown name exits 65 before anything is made); only the
        // chown fails (exit 73).
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(73)
                && stderr
                    .lines()
                    .all(|l| l.contains("fchownat") && l.contains("Operation not permitted")),
            "{}",
            describe("systemd-tmpfiles (not root)", &out)
        );
        for (path, ..) in expected {
            assert!(r.join(path).is_dir(), "{path} was created");
        }
        eprintln!("note: not root, so tmpfiles owners and modes were not checked");
    }
}

#[test]
fn unit_tmpfiles_and_config_defaults_agree() {
    let unit = unit_text();
    let config = mint_config::Config::default();
    assert_eq!(mint_config::DEFAULT_CONFIG_PATH, "/etc/mintd/mintd.toml");
    assert!(unit.contains(&format!("--config {}", mint_config::DEFAULT_CONFIG_PATH)));

    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30s"),
        ("Restart", "on-failure"),
        ("User", "mintd"),
        ("Group", "mintd"),
        ("StateDirectory", "mintd"),
        ("ConfigurationDirectory", "mintd"),
    ] {
        assert_eq!(directive(&unit, key), [value], "{key}=");
    }

    // The state directory is StateDirectory=mintd.
    assert_eq!(config.paths.state_dir, Path::new("/var/lib/mintd"));
    // The socket's directory is the one writable run directory, made by tmpfiles.d.
    let socket_dir = config.paths.socket.parent().unwrap().to_owned();
    assert_eq!(socket_dir, Path::new("/run/mintd"));
    assert_eq!(directive(&unit, "ReadWritePaths"), ["/run/mintd"]);
    assert!(directive(&unit, "RuntimeDirectory").is_empty());
    let tmpfiles = fs::read_to_string(systemd_dir().join("tmpfiles.d/mintd.conf")).unwrap();
    let tmpfiles_paths: Vec<&str> = tmpfiles
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        tmpfiles_paths,
        ["/etc/mintd", "/etc/mintd/trust.d", "/run/mintd"]
    );
    // Trusted keys live in /etc/mintd/trust.d, made by tmpfiles.d.
    assert_eq!(
        config.trust.keys_dir.as_deref(),
        Some(Path::new("/etc/mintd/trust.d"))
    );
    // The default TPM is the one device the unit lets through.
    assert_eq!(config.attest.tcti, "device:/dev/tpmrm0");
    assert_eq!(directive(&unit, "DevicePolicy"), ["closed"]);
    assert_eq!(directive(&unit, "DeviceAllow"), ["/dev/tpmrm0 rw"]);
    // The socket is for the owner and the group (mintd-clients), never for everyone.
    assert_eq!(config.api.socket_mode, 0o660);
}
