//! Built-in defaults, the documented example file, loading, and the TOML round trip.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use mint_config::{AttestMode, Config, ConfigError, ConfigSource, Tls, DEFAULT_CONFIG_PATH};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mintd.toml")
}

fn example_text() -> String {
    std::fs::read_to_string(example_path()).expect("config/mintd.toml is part of the crate")
}

#[test]
fn defaults_validate() {
    let config = Config::default();
    assert_eq!(config.problems(), vec![]);
    config.validate().expect("defaults must validate");
}

#[test]
fn defaults_are_the_documented_values() {
    let c = Config::default();
    assert_eq!(c.device.id, "mintd-device");
    assert_eq!(c.device.class, "generic");
    assert_eq!(c.device.arch, std::env::consts::ARCH);
    assert_eq!(c.paths.state_dir, Path::new("/var/lib/mintd"));
    assert_eq!(c.paths.socket, Path::new("/run/mintd/mintd.sock"));
    assert_eq!(c.trust.keys, Vec::<PathBuf>::new());
    assert_eq!(c.trust.keys_dir, Some(PathBuf::from("/etc/mintd/trust.d")));
    assert_eq!(c.trust.threshold, 1);
    assert_eq!(c.trust.fleet_keys, Vec::<PathBuf>::new());
    assert_eq!(c.trust.clock_skew_secs, 300);
    assert_eq!(c.limits.max_header_bytes, 256 * 1024);
    assert_eq!(c.limits.max_file_bytes, 2 * 1024 * 1024 * 1024);
    assert_eq!(c.limits.max_files, 64);
    assert_eq!(c.limits.max_bundle_bytes, 4 * 1024 * 1024 * 1024);
    assert_eq!(c.limits.max_zstd_window_log, 23);
    assert_eq!(c.update.retain, 2);
    assert_eq!(c.update.health_timeout_ms, 10_000);
    assert_eq!(c.update.trial_requests, 100);
    assert_eq!(c.update.trial_seconds, 300);
    assert_eq!(c.update.trial_max_restarts, 3);
    assert_eq!(c.api.socket_mode, 0o660);
    assert_eq!(c.api.admin_group, None);
    assert_eq!(c.api.tcp, None);
    assert_eq!(c.api.max_body_bytes, 8 * 1024 * 1024);
    assert_eq!(c.api.max_concurrency, 4);
    assert_eq!(c.api.queue_depth, 16);
    assert_eq!(c.api.rate_limit_per_sec, 200);
    assert_eq!(c.api.request_timeout_ms, 2000);
    assert_eq!(c.api.inline_max_us, 200);
    assert_eq!(c.api.in_place_runs, 8);
    assert!(!c.mqtt.enabled);
    assert_eq!(c.mqtt.host, "127.0.0.1");
    assert_eq!(c.mqtt.port, 1883);
    assert_eq!(c.mqtt.client_id, None);
    assert_eq!(c.mqtt.keepalive_secs, 30);
    assert_eq!(c.mqtt.tls, None);
    assert_eq!(c.mqtt.telemetry_interval_secs, 60);
    assert_eq!(c.mqtt.outbox_max_messages, 10_000);
    assert_eq!(c.mqtt.outbox_max_bytes, 16 * 1024 * 1024);
    assert!(!c.mqtt.home_assistant_discovery);
    assert_eq!(c.attest.mode, AttestMode::Auto);
    assert_eq!(c.attest.tcti, "device:/dev/tpmrm0");
    assert_eq!(c.attest.pcr, 16);
    assert_eq!(c.log.level, "info");
    assert!(!c.log.json);
    assert_eq!(DEFAULT_CONFIG_PATH, "/etc/mintd/mintd.toml");
}

#[test]
fn empty_file_is_the_default() {
    for text in ["", "\n\n", "# only a comment\n", "[device]\n[trust]\n"] {
        let config = Config::from_toml_str(text, "empty.toml").expect("parses");
        assert_eq!(config, Config::default(), "for {text:?}");
    }
}

#[test]
fn example_file_is_the_default() {
    let config = Config::load_existing(example_path()).expect("the example must load");
    assert_eq!(config, Config::default());
}

/// Keys the example file sets or shows commented out, per `[section]`. Prose comments never
/// start with `# key =`, so both forms can be told from prose.
fn keys_in_example(text: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        let setting = line.strip_prefix("# ").unwrap_or(line);
        if let Some(header) = setting.strip_prefix('[') {
            section = header.trim_end_matches(']').to_owned();
            continue;
        }
        if let Some((key, _)) = setting.split_once(" = ") {
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                keys.insert(format!("{section}.{key}"));
            }
        }
    }
    keys
}

/// Every key of a configuration with every optional setting set, as `section.key`.
fn every_key() -> BTreeSet<String> {
    let text = full_config().to_toml_string().expect("renders");
    keys_in_example(&text)
}

fn full_config() -> Config {
    let mut c = Config::default();
    c.device.id = "board-0042".to_owned();
    c.trust.keys = vec![PathBuf::from("/etc/mintd/ops.pub")];
    c.trust.keys_dir = None;
    c.trust.fleet_keys = vec![PathBuf::from("/etc/mintd/fleet.pub")];
    c.api.admin_group = Some("mintd-admin".to_owned());
    c.api.tcp = Some("127.0.0.1:8080".parse().expect("address"));
    c.api.socket_mode = 0o600;
    c.mqtt.enabled = true;
    c.mqtt.client_id = Some("client-1".to_owned());
    c.mqtt.tls = Some(Tls {
        ca: PathBuf::from("/etc/mintd/mqtt/ca.pem"),
        cert: Some(PathBuf::from("/etc/mintd/mqtt/client.pem")),
        key: Some(PathBuf::from("/etc/mintd/mqtt/client.key")),
    });
    c.attest.mode = AttestMode::Software;
    c.log.json = true;
    c
}

#[test]
fn example_file_lists_every_key() {
    let documented = keys_in_example(&example_text());
    let all = every_key();
    assert_eq!(
        all.len(),
        53,
        "a new key? document it in mintd.toml: {all:?}"
    );
    let missing: Vec<_> = all.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "keys missing from mintd.toml: {missing:?}"
    );
    let unknown: Vec<_> = documented.difference(&all).collect();
    assert!(
        unknown.is_empty(),
        "mintd.toml documents unknown keys: {unknown:?}"
    );
}

#[test]
fn example_optional_settings_are_valid_when_enabled() {
    let enabled: String = example_text()
        .lines()
        .map(|line| {
            let setting = line.strip_prefix("# ").unwrap_or(line);
            let is_setting = setting.starts_with('[')
                || setting.split_once(" = ").is_some_and(|(key, _)| {
                    key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                });
            if is_setting {
                format!("{setting}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    let config = Config::from_toml_str(&enabled, "enabled.toml").expect("valid when enabled");
    assert_eq!(config.device.arch, "aarch64");
    assert_eq!(config.api.admin_group.as_deref(), Some("mintd-admin"));
    assert_eq!(
        config.api.tcp,
        Some(SocketAddr::from(([127, 0, 0, 1], 8080)))
    );
    assert_eq!(config.mqtt.client_id.as_deref(), Some("mintd-device"));
    assert_eq!(
        config.mqtt.tls,
        Some(Tls {
            ca: PathBuf::from("/etc/mintd/mqtt/ca.pem"),
            cert: Some(PathBuf::from("/etc/mintd/mqtt/client.pem")),
            key: Some(PathBuf::from("/etc/mintd/mqtt/client.key")),
        })
    );
}

#[test]
fn rendering_round_trips() {
    for config in [Config::default(), full_config()] {
        config.validate().expect("valid");
        let text = config.to_toml_string().expect("renders");
        let back = Config::from_toml_str(&text, "rendered.toml").expect("reads back");
        assert_eq!(back, config, "rendered:\n{text}");
    }
}

#[test]
fn rendering_shows_mode_in_octal_and_a_disabled_keys_dir_as_empty() {
    let text = full_config().to_toml_string().expect("renders");
    assert!(text.contains("socket_mode = \"0600\"\n"), "{text}");
    assert!(text.contains("keys_dir = \"\"\n"), "{text}");
    assert!(text.contains("[mqtt.tls]\n"), "{text}");
}

#[test]
fn rendering_a_path_that_is_not_utf8_is_an_error() {
    use std::os::unix::ffi::OsStrExt;
    let mut config = Config::default();
    config.paths.state_dir = PathBuf::from(std::ffi::OsStr::from_bytes(b"/var/\xff"));
    let err = config.to_toml_string().unwrap_err();
    assert!(matches!(err, ConfigError::Render { .. }), "{err:?}");
    assert_eq!(err.to_string(), "cannot render the configuration as TOML");
}

#[test]
fn missing_file_means_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.toml");
    assert_eq!(Config::load(&path).expect("defaults"), Config::default());
    let (config, source) = Config::load_with_source(&path).expect("defaults");
    assert_eq!(config, Config::default());
    assert_eq!(source, ConfigSource::BuiltInDefaults);
}

#[test]
fn missing_file_is_an_error_for_load_existing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.toml");
    let err = Config::load_existing(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("config file {} does not exist", path.display())
    );
}

#[test]
fn a_file_is_read_and_its_source_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mintd.toml");
    std::fs::write(&path, "[device]\nid = \"board-7\"\n").expect("write");
    let (config, source) = Config::load_with_source(&path).expect("loads");
    assert_eq!(config.device.id, "board-7");
    assert_eq!(source, ConfigSource::File(path.clone()));
    assert_eq!(Config::load(&path).expect("loads"), config);
}

#[test]
fn load_validates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mintd.toml");
    std::fs::write(&path, "[attest]\npcr = 24\n").expect("write");
    for err in [
        Config::load(&path).unwrap_err(),
        Config::load_existing(&path).unwrap_err(),
    ] {
        assert_eq!(
            err.to_string(),
            format!(
                "{}: invalid configuration: attest.pcr = 24 is outside 0..=23",
                path.display()
            )
        );
    }
}

#[test]
fn state_paths_derive_from_state_dir() {
    let mut config = Config::default();
    assert_eq!(config.paths.store_dir(), Path::new("/var/lib/mintd/store"));
    assert_eq!(
        config.paths.staging_dir(),
        Path::new("/var/lib/mintd/staging")
    );
    assert_eq!(
        config.paths.database(),
        Path::new("/var/lib/mintd/mintd.redb")
    );
    assert_eq!(
        config.paths.outbox_dir(),
        Path::new("/var/lib/mintd/outbox")
    );
    config.paths.state_dir = PathBuf::from("/tmp/x");
    assert_eq!(config.paths.store_dir(), Path::new("/tmp/x/store"));
}

#[test]
fn mqtt_client_id_falls_back_to_device_id() {
    let mut config = Config::default();
    assert_eq!(config.mqtt_client_id(), "mintd-device");
    config.mqtt.client_id = Some("custom".to_owned());
    assert_eq!(config.mqtt_client_id(), "custom");
}

#[test]
fn explicit_trust_keys_are_deduplicated_in_order() {
    let mut config = Config::default();
    config.trust.keys = ["/k/b.pub", "/k/a.pub", "/k/b.pub"]
        .map(PathBuf::from)
        .to_vec();
    assert_eq!(
        config.explicit_trust_keys(),
        vec![Path::new("/k/b.pub"), Path::new("/k/a.pub")]
    );
}

#[test]
fn socket_mode_reads_integers_and_octal_strings() {
    for (text, mode) in [
        ("socket_mode = 0o660", 0o660),
        ("socket_mode = 0o600", 0o600),
        ("socket_mode = 432", 0o660),
        ("socket_mode = \"0660\"", 0o660),
        ("socket_mode = \"660\"", 0o660),
        ("socket_mode = \"0o640\"", 0o640),
        ("socket_mode = \"0\"", 0),
    ] {
        let config = Config::from_toml_str(&format!("[api]\n{text}\n"), "m.toml")
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(config.api.socket_mode, mode, "{text}");
    }
}

#[test]
fn an_empty_keys_dir_means_none() {
    let config = Config::from_toml_str(
        "[trust]\nkeys = [\"/etc/mintd/a.pub\"]\nkeys_dir = \"\"\n",
        "t.toml",
    )
    .expect("valid");
    assert_eq!(config.trust.keys_dir, None);
}

#[test]
fn attest_modes_are_lowercase() {
    for (name, mode) in [
        ("auto", AttestMode::Auto),
        ("tpm", AttestMode::Tpm),
        ("software", AttestMode::Software),
    ] {
        let config = Config::from_toml_str(&format!("[attest]\nmode = \"{name}\"\n"), "a.toml")
            .expect("valid");
        assert_eq!(config.attest.mode, mode);
    }
}
