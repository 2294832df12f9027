//! Every validation rule, each with the exact problem it reports. A configuration that parses
//! but cannot run safely (a threshold no set of keys can meet, a world-accessible socket, an
//! inference port open to the network, limits a hostile bundle could exploit) is refused, and
//! all of its problems are reported together.

use std::path::PathBuf;

use mint_config::{Config, ConfigError, Problem, Tls};

/// The problems `text` is refused with, as displayed.
fn problems(text: &str) -> Vec<String> {
    match Config::from_toml_str(text, "test.toml") {
        Err(ConfigError::Invalid { origin, problems }) => {
            assert_eq!(origin, "test.toml");
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("expected validation problems, got: {other}"),
        Ok(_) => panic!("expected validation problems, but it validated:\n{text}"),
    }
}

/// The single problem `text` is refused with.
fn problem(text: &str) -> String {
    let mut all = problems(text);
    assert_eq!(all.len(), 1, "expected one problem, got {all:?}");
    all.remove(0)
}

fn valid(text: &str) -> Config {
    Config::from_toml_str(text, "test.toml").unwrap_or_else(|e| panic!("{e}\nfor:\n{text}"))
}

// ---- trust ----

#[test]
fn threshold_above_listed_keys_without_a_keys_dir() {
    assert_eq!(
        problem("[trust]\nkeys = [\"/k/a.pub\", \"/k/b.pub\"]\nkeys_dir = \"\"\nthreshold = 3\n"),
        "trust.threshold = 3 but only 2 keys are listed"
    );
    assert_eq!(
        problem("[trust]\nkeys = [\"/k/a.pub\"]\nkeys_dir = \"\"\nthreshold = 2\n"),
        "trust.threshold = 2 but only 1 key is listed"
    );
}

#[test]
fn threshold_equal_to_listed_keys_is_fine() {
    valid("[trust]\nkeys = [\"/k/a.pub\", \"/k/b.pub\"]\nkeys_dir = \"\"\nthreshold = 2\n");
}

#[test]
fn threshold_above_listed_keys_is_fine_when_a_keys_dir_may_add_more() {
    valid("[trust]\nkeys = [\"/k/a.pub\"]\nthreshold = 3\n");
}

#[test]
fn a_key_listed_twice_counts_once() {
    assert_eq!(
        problems("[trust]\nkeys = [\"/k/a.pub\", \"/k/a.pub\"]\nkeys_dir = \"\"\nthreshold = 2\n"),
        vec![
            "trust.keys[1] = \"/k/a.pub\" repeats trust.keys[0]; a key counts once toward the \
             threshold",
            "trust.threshold = 2 but only 1 key is listed",
        ]
    );
}

#[test]
fn threshold_zero() {
    assert_eq!(
        problem("[trust]\nthreshold = 0\n"),
        "trust.threshold = 0 but at least 1 signature must be required"
    );
}

#[test]
fn trust_paths_must_be_absolute() {
    assert_eq!(
        problems(
            "[trust]\nkeys = [\"ops.pub\"]\nkeys_dir = \"trust.d\"\nfleet_keys = [\"/f.pub\", \
             \"fleet.pub\"]\n"
        ),
        vec![
            "trust.keys[0] = \"ops.pub\" must be an absolute path",
            "trust.keys_dir = \"trust.d\" must be an absolute path",
            "trust.fleet_keys[1] = \"fleet.pub\" must be an absolute path",
        ]
    );
}

#[test]
fn clock_skew_of_more_than_a_day() {
    assert_eq!(
        problem("[trust]\nclock_skew_secs = 86401\n"),
        "trust.clock_skew_secs = 86401 is more than one day (86400); a skew that large defeats \
         expiry checks"
    );
    valid("[trust]\nclock_skew_secs = 0\n");
    valid("[trust]\nclock_skew_secs = 86400\n");
}

// ---- device ----

#[test]
fn device_id_must_not_be_empty() {
    assert_eq!(
        problem("[device]\nid = \"\"\n"),
        "device.id must not be empty"
    );
}

#[test]
fn device_id_of_more_than_64_characters() {
    let id = "a".repeat(65);
    assert_eq!(
        problem(&format!("[device]\nid = \"{id}\"\n")),
        "device.id is 65 characters long; at most 64 are allowed"
    );
    valid(&format!("[device]\nid = \"{}\"\n", "a".repeat(64)));
}

#[test]
fn device_id_with_mqtt_topic_characters() {
    for bad in ['/', '+', '#', ' ', '$', 'é'] {
        assert_eq!(
            problem(&format!("[device]\nid = \"a{bad}b\"\n")),
            format!(
                "device.id = \"a{bad}b\" contains {bad:?}; only A-Z, a-z, 0-9, '.', '_' and '-' \
                 are allowed (it becomes an MQTT topic level)"
            )
        );
    }
    valid("[device]\nid = \"Board_01.eu-west\"\n");
}

#[test]
fn device_id_with_control_characters_is_quoted_escaped() {
    assert_eq!(
        problem("[device]\nid = \"a\\u001b[31mb\"\n"),
        "device.id = \"a\\u{1b}[31mb\" contains '\\u{1b}'; only A-Z, a-z, 0-9, '.', '_' and '-' \
         are allowed (it becomes an MQTT topic level)"
    );
}

#[test]
fn device_id_fleet_is_reserved() {
    assert_eq!(
        problem("[device]\nid = \"fleet\"\n"),
        "device.id = \"fleet\" is reserved: mint/v1/fleet/cmd is the fleet broadcast topic"
    );
}

#[test]
fn device_id_dot_and_dot_dot() {
    assert_eq!(
        problem("[device]\nid = \"..\"\n"),
        "device.id = \"..\" is not a usable name"
    );
    assert_eq!(
        problem("[device]\nid = \".\"\n"),
        "device.id = \".\" is not a usable name"
    );
}

#[test]
fn device_class_and_arch_follow_the_same_rules() {
    assert_eq!(
        problems("[device]\nclass = \"edge/cam\"\narch = \"\"\n"),
        vec![
            "device.class = \"edge/cam\" contains '/'; only A-Z, a-z, 0-9, '.', '_' and '-' are \
             allowed (it becomes an MQTT topic level)",
            "device.arch must not be empty",
        ]
    );
}

#[test]
fn a_long_hostile_value_is_cut_in_the_message() {
    let id = format!("/{}", "x".repeat(10_000));
    let shown = format!("/{}", "x".repeat(63));
    assert_eq!(
        problems(&format!("[device]\nid = \"{id}\"\n")),
        vec![
            "device.id is 10001 characters long; at most 64 are allowed".to_owned(),
            format!(
                "device.id = \"{shown}…\" contains '/'; only A-Z, a-z, 0-9, '.', '_' and '-' are \
                 allowed (it becomes an MQTT topic level)"
            ),
        ]
    );
}

// ---- paths ----

#[test]
fn paths_must_be_absolute() {
    assert_eq!(
        problems("[paths]\nstate_dir = \"var/lib/mintd\"\nsocket = \"\"\n"),
        vec![
            "paths.state_dir = \"var/lib/mintd\" must be an absolute path",
            "paths.socket = \"\" must be an absolute path",
        ]
    );
}

#[test]
fn socket_path_longer_than_sun_path() {
    let socket = format!("/{}", "s".repeat(107));
    assert_eq!(
        problem(&format!("[paths]\nsocket = \"{socket}\"\n")),
        "paths.socket is 108 bytes long; a Unix socket path must be at most 107 bytes"
    );
    valid(&format!("[paths]\nsocket = \"/{}\"\n", "s".repeat(106)));
}

// ---- limits ----

#[test]
fn limits_must_be_positive() {
    assert_eq!(
        problems(
            "[limits]\nmax_header_bytes = 0\nmax_file_bytes = 0\nmax_files = 0\n\
             max_bundle_bytes = 0\n"
        ),
        vec![
            "limits.max_header_bytes = 0 but must be greater than 0",
            "limits.max_file_bytes = 0 but must be greater than 0",
            "limits.max_files = 0 but must be greater than 0",
            "limits.max_bundle_bytes = 0 but must be greater than 0",
        ]
    );
}

#[test]
fn header_limit_above_16_mib() {
    assert_eq!(
        problem("[limits]\nmax_header_bytes = 16777217\n"),
        "limits.max_header_bytes = 16777217 exceeds 16777216 (16 MiB)"
    );
    valid("[limits]\nmax_header_bytes = 16777216\n");
}

#[test]
fn file_and_header_limits_above_the_bundle_limit() {
    assert_eq!(
        problems(
            "[limits]\nmax_bundle_bytes = 1000\nmax_file_bytes = 1001\nmax_header_bytes = 1001\n"
        ),
        vec![
            "limits.max_file_bytes = 1001 exceeds limits.max_bundle_bytes = 1000",
            "limits.max_header_bytes = 1001 exceeds limits.max_bundle_bytes = 1000",
        ]
    );
    valid("[limits]\nmax_bundle_bytes = 1000\nmax_file_bytes = 1000\nmax_header_bytes = 1000\n");
}

#[test]
fn bundle_limit_above_1_tib() {
    assert_eq!(
        problem("[limits]\nmax_bundle_bytes = 1099511627777\n"),
        "limits.max_bundle_bytes = 1099511627777 exceeds 1099511627776 (1 TiB)"
    );
}

#[test]
fn too_many_files() {
    assert_eq!(
        problem("[limits]\nmax_files = 65537\n"),
        "limits.max_files = 65537 exceeds 65536"
    );
}

#[test]
fn zstd_window_log_outside_10_to_27() {
    assert_eq!(
        problem("[limits]\nmax_zstd_window_log = 9\n"),
        "limits.max_zstd_window_log = 9 is outside 10..=27"
    );
    assert_eq!(
        problem("[limits]\nmax_zstd_window_log = 28\n"),
        "limits.max_zstd_window_log = 28 is outside 10..=27"
    );
    valid("[limits]\nmax_zstd_window_log = 10\n");
    valid("[limits]\nmax_zstd_window_log = 27\n");
}

// ---- update ----

#[test]
fn update_rules() {
    assert_eq!(
        problems(
            "[update]\nretain = 0\nhealth_timeout_ms = 0\ntrial_requests = 0\n\
             trial_seconds = 0\ntrial_max_restarts = 0\n"
        ),
        vec![
            "update.retain = 0 but at least 1 model must be kept so that a rollback has a target",
            "update.health_timeout_ms = 0 but must be greater than 0",
            "update.trial_requests = 0 but must be greater than 0",
            "update.trial_seconds = 0 but must be greater than 0",
        ]
    );
}

#[test]
fn update_durations_are_bounded() {
    assert_eq!(
        problems("[update]\nhealth_timeout_ms = 3600001\ntrial_seconds = 2592001\n"),
        vec![
            "update.health_timeout_ms = 3600001 exceeds 3600000 (1 hour)",
            "update.trial_seconds = 2592001 exceeds 2592000 (30 days)",
        ]
    );
    valid("[update]\nhealth_timeout_ms = 3600000\ntrial_seconds = 2592000\n");
}

// ---- monitor ----

#[test]
fn monitor_rules() {
    assert_eq!(
        problems(
            "[monitor]\ndrift_threshold = nan\nrate_spike_factor = 1.0\n\
             drift_min_requests = 0\nrate_spike_min_requests = 0\n\
             rehash_interval_secs = 2592001\nrehash_bytes_per_sec = 1024\n"
        ),
        vec![
            "monitor.drift_threshold = NaN but must be a finite number of at least 0.1",
            "monitor.rate_spike_factor = 1 but must be a finite number of at least 1.5",
            "monitor.drift_min_requests = 0 but must be greater than 0",
            "monitor.rate_spike_min_requests = 0 but must be greater than 0",
            "monitor.rehash_interval_secs = 2592001 exceeds 2592000 (30 days)",
            "monitor.rehash_bytes_per_sec = 1024 but a re-verification slower than 64 KiB/s \
             would never finish on a large store",
        ]
    );
    assert_eq!(
        problem("[monitor]\ndrift_threshold = -inf\n"),
        "monitor.drift_threshold = -inf but must be a finite number of at least 0.1"
    );
    // Re-verification off: its rate does not matter.
    let c = valid("[monitor]\nrehash_interval_secs = 0\nrehash_bytes_per_sec = 1\n");
    assert_eq!(c.monitor.rehash_interval_secs, 0);
    let typo = Config::from_toml_str("[monitor]\ndrift_treshold = 2.0\n", "test.toml")
        .expect_err("a misspelt key is refused")
        .to_string();
    assert!(typo.contains("key `monitor.drift_treshold`"), "{typo}");
}

// ---- api ----

#[test]
fn socket_mode_with_world_access() {
    for (mode, shown) in [
        ("0o666", "0o666"),
        ("0o662", "0o662"),
        ("0o664", "0o664"),
        ("\"0661\"", "0o661"),
        ("\"0777\"", "0o777"),
    ] {
        assert_eq!(
            problem(&format!("[api]\nsocket_mode = {mode}\n")),
            format!(
                "api.socket_mode = {shown} gives every user on the device access; use 0o660 or \
                 stricter"
            )
        );
    }
    valid("[api]\nsocket_mode = 0o600\n");
    valid("[api]\nsocket_mode = \"0770\"\n");
}

#[test]
fn socket_mode_written_in_decimal_by_mistake() {
    assert_eq!(
        problem("[api]\nsocket_mode = 660\n"),
        "api.socket_mode = 0o1224 has bits outside 0o777 (decimal 660 in TOML? write 0o660 or \
         \"0660\")"
    );
    assert_eq!(
        problem("[api]\nsocket_mode = \"4660\"\n"),
        "api.socket_mode = 0o4660 has bits outside 0o777 (decimal 2480 in TOML? write 0o660 or \
         \"0660\")"
    );
}

#[test]
fn tcp_only_on_loopback() {
    for addr in [
        "0.0.0.0:8080",
        "192.168.1.10:8080",
        "[::]:8080",
        "[2001:db8::1]:80",
        // An IPv4-mapped loopback is an IPv6 socket that may be dual-stack: refused too.
        "[::ffff:127.0.0.1]:80",
    ] {
        let shown: std::net::SocketAddr = addr.parse().expect("address");
        assert_eq!(
            problem(&format!("[api]\ntcp = \"{addr}\"\n")),
            format!(
                "api.tcp = {shown} but the TCP listener must be on a loopback address \
                 (127.0.0.0/8 or ::1): it has no authentication, only processes on this device \
                 may reach it"
            )
        );
    }
    for addr in ["127.0.0.1:8080", "127.0.0.2:0", "[::1]:8080"] {
        valid(&format!("[api]\ntcp = \"{addr}\"\n"));
    }
}

#[test]
fn api_limits() {
    assert_eq!(
        problems(
            "[api]\nadmin_group = \"\"\nmax_body_bytes = 0\nmax_concurrency = 0\nqueue_depth = 0\n\
             rate_limit_per_sec = 0\nrequest_timeout_ms = 0\n"
        ),
        vec![
            "api.admin_group must not be empty (leave it out for none)",
            "api.max_body_bytes = 0 but must be greater than 0",
            "api.max_concurrency = 0 but must be greater than 0",
            "api.queue_depth = 0 but must be greater than 0",
            "api.rate_limit_per_sec = 0 but must be greater than 0",
            "api.request_timeout_ms = 0 but must be greater than 0",
        ]
    );
    assert_eq!(
        problems(
            "[api]\nmax_body_bytes = 1073741825\nmax_concurrency = 1025\nqueue_depth = 65537\n\
             request_timeout_ms = 600001\ninline_max_us = 1001\nin_place_runs = 1001\n"
        ),
        vec![
            "api.max_body_bytes = 1073741825 exceeds 1073741824 (1 GiB)",
            "api.max_concurrency = 1025 exceeds 1024",
            "api.queue_depth = 65537 exceeds 65536",
            "api.request_timeout_ms = 600001 exceeds 600000 (10 minutes)",
            "api.inline_max_us = 1001 exceeds 1000 (1 ms)",
            "api.in_place_runs = 1001 exceeds 1000",
        ]
    );
}

// ---- mqtt ----

#[test]
fn mqtt_rules() {
    assert_eq!(
        problems(
            "[mqtt]\nhost = \"\"\nport = 0\nclient_id = \"\"\nkeepalive_secs = 4\n\
             telemetry_interval_secs = 0\noutbox_max_messages = 0\noutbox_max_bytes = 0\n"
        ),
        vec![
            "mqtt.host must not be empty",
            "mqtt.port = 0 but must be greater than 0",
            "mqtt.client_id must not be empty (leave it out to use device.id)",
            "mqtt.keepalive_secs = 4 is outside 5..=65535",
            "mqtt.telemetry_interval_secs = 0 but must be greater than 0",
            "mqtt.outbox_max_messages = 0 but must be greater than 0",
            "mqtt.outbox_max_bytes = 0 but must be greater than 0",
        ]
    );
    assert_eq!(
        problems(
            "[mqtt]\nkeepalive_secs = 65536\ntelemetry_interval_secs = 86401\n\
             outbox_max_bytes = 1099511627777\n"
        ),
        vec![
            "mqtt.keepalive_secs = 65536 is outside 5..=65535",
            "mqtt.telemetry_interval_secs = 86401 exceeds 86400 (1 day)",
            "mqtt.outbox_max_bytes = 1099511627777 exceeds 1099511627776 (1 TiB)",
        ]
    );
}

#[test]
fn tls_cert_and_key_come_together() {
    assert_eq!(
        problem("[mqtt.tls]\nca = \"/ca.pem\"\ncert = \"/c.pem\"\n"),
        "mqtt.tls.cert is set but mqtt.tls.key is not; a client certificate needs its key"
    );
    assert_eq!(
        problem("[mqtt.tls]\nca = \"/ca.pem\"\nkey = \"/c.key\"\n"),
        "mqtt.tls.key is set but mqtt.tls.cert is not; a client key needs its certificate"
    );
    valid("[mqtt.tls]\nca = \"/ca.pem\"\n");
    valid("[mqtt.tls]\nca = \"/ca.pem\"\ncert = \"/c.pem\"\nkey = \"/c.key\"\n");
}

#[test]
fn tls_paths_must_be_absolute() {
    assert_eq!(
        problems("[mqtt.tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n"),
        vec![
            "mqtt.tls.ca = \"ca.pem\" must be an absolute path",
            "mqtt.tls.cert = \"c.pem\" must be an absolute path",
            "mqtt.tls.key = \"c.key\" must be an absolute path",
        ]
    );
}

// ---- attest, log ----

#[test]
fn pcr_outside_0_to_23() {
    assert_eq!(
        problem("[attest]\npcr = 24\n"),
        "attest.pcr = 24 is outside 0..=23"
    );
    valid("[attest]\npcr = 0\n");
    valid("[attest]\npcr = 23\n");
}

#[test]
fn tcti_must_not_be_empty() {
    assert_eq!(
        problem("[attest]\ntcti = \"\"\n"),
        "attest.tcti must not be empty"
    );
}

#[test]
fn log_level_must_be_known() {
    assert_eq!(
        problem("[log]\nlevel = \"verbose\"\n"),
        "log.level = \"verbose\" is not one of error, warn, info, debug, trace"
    );
    assert_eq!(
        problem("[log]\nlevel = \"INFO\"\n"),
        "log.level = \"INFO\" is not one of error, warn, info, debug, trace"
    );
    for level in ["error", "warn", "info", "debug", "trace"] {
        valid(&format!("[log]\nlevel = \"{level}\"\n"));
    }
}

// ---- reporting ----

#[test]
fn every_problem_is_reported_at_once_in_section_order() {
    let err = Config::from_toml_str(
        "[log]\nlevel = \"loud\"\n[attest]\npcr = 99\n[device]\nid = \"\"\n",
        "/etc/mintd/mintd.toml",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/mintd/mintd.toml: invalid configuration, 3 problems: device.id must not be empty; \
         attest.pcr = 99 is outside 0..=23; log.level = \"loud\" is not one of error, warn, \
         info, debug, trace"
    );
}

#[test]
fn validate_on_a_built_config() {
    let mut config = Config::default();
    config.trust.keys = vec![PathBuf::from("/k/a.pub")];
    config.trust.keys_dir = None;
    config.trust.threshold = 3;
    config.mqtt.tls = Some(Tls {
        ca: PathBuf::from("/ca.pem"),
        cert: None,
        key: Some(PathBuf::from("/c.key")),
    });
    let expected = vec![
        Problem::new("trust.threshold", "= 3 but only 1 key is listed"),
        Problem::new(
            "mqtt.tls.key",
            "is set but mqtt.tls.cert is not; a client key needs its certificate",
        ),
    ];
    assert_eq!(config.problems(), expected);
    match config.validate() {
        Err(ConfigError::Invalid { origin, problems }) => {
            assert_eq!(origin, "configuration");
            assert_eq!(problems, expected);
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}
