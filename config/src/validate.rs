//! Validation rules. Each rule adds a [`Problem`] instead of stopping, so that an operator
//! fixing a file sees everything that is wrong with it at once.

use std::path::{Path, PathBuf};

use crate::error::Problem;
use crate::model::{Api, Attest, Config, Device, Limits, Log, Monitor, Mqtt, Paths, Trust, Update};

/// Longest `device.id` / `device.class` / `device.arch`.
pub(crate) const MAX_NAME_CHARS: usize = 64;
/// Largest `limits.max_header_bytes`: a signed header bigger than this is not a manifest.
pub(crate) const MAX_HEADER_BYTES_CEILING: u64 = 16 * 1024 * 1024;
/// Accepted range of `limits.max_zstd_window_log`: zstd's minimum window, and 128 MiB.
pub(crate) const ZSTD_WINDOW_LOG_RANGE: std::ops::RangeInclusive<u32> = 10..=27;
/// `sun_path` holds 108 bytes including the terminating NUL.
pub(crate) const MAX_SOCKET_PATH_BYTES: usize = 107;
/// One TiB: more than any edge device stores, small enough that sums of sizes cannot overflow.
const TIB: u64 = 1 << 40;
/// Longest value quoted back in a problem; the rest is cut, so a hostile value cannot make a
/// log line arbitrarily long.
const MAX_SHOWN_CHARS: usize = 64;
/// Log levels `log.level` accepts.
pub(crate) const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

pub(crate) fn problems(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    device(&config.device, &mut out);
    paths(&config.paths, &mut out);
    trust(&config.trust, &mut out);
    limits(&config.limits, &mut out);
    update(&config.update, &mut out);
    api(&config.api, &mut out);
    monitor(&config.monitor, &mut out);
    mqtt(&config.mqtt, &mut out);
    attest(&config.attest, &mut out);
    log(&config.log, &mut out);
    out
}

fn device(device: &Device, out: &mut Vec<Problem>) {
    topic_safe_name("device.id", &device.id, out);
    if device.id == "fleet" {
        out.push(Problem::new(
            "device.id",
            "= \"fleet\" is reserved: mint/v1/fleet/cmd is the fleet broadcast topic",
        ));
    }
    topic_safe_name("device.class", &device.class, out);
    topic_safe_name("device.arch", &device.arch, out);
}

/// Names that become an MQTT topic level (or a bundle target): 1 to 64 of `[A-Za-z0-9._-]`,
/// which keeps out `/`, `+`, `#`, `$`, whitespace and control characters.
fn topic_safe_name(key: &str, value: &str, out: &mut Vec<Problem>) {
    if value.is_empty() {
        out.push(Problem::new(key, "must not be empty"));
        return;
    }
    let chars = value.chars().count();
    if chars > MAX_NAME_CHARS {
        out.push(Problem::new(
            key,
            format!("is {chars} characters long; at most {MAX_NAME_CHARS} are allowed"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        out.push(Problem::new(
            key,
            format!(
                "= {} contains {bad:?}; only A-Z, a-z, 0-9, '.', '_' and '-' are allowed \
                 (it becomes an MQTT topic level)",
                shown(value)
            ),
        ));
    } else if value == "." || value == ".." {
        out.push(Problem::new(
            key,
            format!("= {} is not a usable name", shown(value)),
        ));
    }
}

fn paths(paths: &Paths, out: &mut Vec<Problem>) {
    absolute("paths.state_dir", &paths.state_dir, out);
    absolute("paths.socket", &paths.socket, out);
    let socket_len = paths.socket.as_os_str().len();
    if socket_len > MAX_SOCKET_PATH_BYTES {
        out.push(Problem::new(
            "paths.socket",
            format!(
                "is {socket_len} bytes long; a Unix socket path must be at most \
                 {MAX_SOCKET_PATH_BYTES} bytes"
            ),
        ));
    }
}

fn trust(trust: &Trust, out: &mut Vec<Problem>) {
    for (i, key) in trust.keys.iter().enumerate() {
        let name = format!("trust.keys[{i}]");
        absolute(&name, key, out);
        if let Some(first) = trust.keys[..i].iter().position(|k| k == key) {
            out.push(Problem::new(
                name,
                format!(
                    "= {} repeats trust.keys[{first}]; a key counts once toward the threshold",
                    shown(&key.display().to_string())
                ),
            ));
        }
    }
    if let Some(dir) = &trust.keys_dir {
        absolute("trust.keys_dir", dir, out);
    }
    for (i, key) in trust.fleet_keys.iter().enumerate() {
        absolute(&format!("trust.fleet_keys[{i}]"), key, out);
    }

    if trust.threshold == 0 {
        out.push(Problem::new(
            "trust.threshold",
            "= 0 but at least 1 signature must be required",
        ));
    }
    let distinct = count_distinct(&trust.keys);
    if !trust.keys.is_empty() && trust.keys_dir.is_none() && trust.threshold as usize > distinct {
        let listed = match distinct {
            1 => "1 key is listed".to_owned(),
            n => format!("{n} keys are listed"),
        };
        out.push(Problem::new(
            "trust.threshold",
            format!("= {} but only {listed}", trust.threshold),
        ));
    }

    const ONE_DAY: u64 = 86_400;
    if trust.clock_skew_secs > ONE_DAY {
        out.push(Problem::new(
            "trust.clock_skew_secs",
            format!(
                "= {} is more than one day ({ONE_DAY}); a skew that large defeats expiry checks",
                trust.clock_skew_secs
            ),
        ));
    }
}

fn count_distinct(paths: &[PathBuf]) -> usize {
    paths
        .iter()
        .enumerate()
        .filter(|(i, p)| !paths[..*i].contains(p))
        .count()
}

fn limits(limits: &Limits, out: &mut Vec<Problem>) {
    positive("limits.max_header_bytes", limits.max_header_bytes, out);
    positive("limits.max_file_bytes", limits.max_file_bytes, out);
    positive("limits.max_files", limits.max_files.into(), out);
    positive("limits.max_bundle_bytes", limits.max_bundle_bytes, out);
    at_most(
        "limits.max_header_bytes",
        limits.max_header_bytes,
        MAX_HEADER_BYTES_CEILING,
        "16 MiB",
        out,
    );
    at_most("limits.max_files", limits.max_files.into(), 65_536, "", out);
    at_most(
        "limits.max_bundle_bytes",
        limits.max_bundle_bytes,
        TIB,
        "1 TiB",
        out,
    );
    if limits.max_file_bytes > limits.max_bundle_bytes {
        out.push(Problem::new(
            "limits.max_file_bytes",
            format!(
                "= {} exceeds limits.max_bundle_bytes = {}",
                limits.max_file_bytes, limits.max_bundle_bytes
            ),
        ));
    }
    if limits.max_header_bytes > limits.max_bundle_bytes {
        out.push(Problem::new(
            "limits.max_header_bytes",
            format!(
                "= {} exceeds limits.max_bundle_bytes = {}",
                limits.max_header_bytes, limits.max_bundle_bytes
            ),
        ));
    }
    in_range(
        "limits.max_zstd_window_log",
        limits.max_zstd_window_log.into(),
        *ZSTD_WINDOW_LOG_RANGE.start() as u64,
        *ZSTD_WINDOW_LOG_RANGE.end() as u64,
        out,
    );
}

// Durations are capped so that `Instant::now() + duration` in the daemon cannot overflow.
fn update(update: &Update, out: &mut Vec<Problem>) {
    if update.retain == 0 {
        out.push(Problem::new(
            "update.retain",
            "= 0 but at least 1 model must be kept so that a rollback has a target",
        ));
    }
    positive("update.health_timeout_ms", update.health_timeout_ms, out);
    at_most(
        "update.health_timeout_ms",
        update.health_timeout_ms,
        3_600_000,
        "1 hour",
        out,
    );
    positive("update.trial_requests", update.trial_requests, out);
    positive("update.trial_seconds", update.trial_seconds, out);
    at_most(
        "update.trial_seconds",
        update.trial_seconds,
        30 * 86_400,
        "30 days",
        out,
    );
}

fn api(api: &Api, out: &mut Vec<Problem>) {
    let mode = api.socket_mode;
    if mode & !0o777 != 0 {
        out.push(Problem::new(
            "api.socket_mode",
            format!(
                "= {mode:#o} has bits outside 0o777 (decimal {mode} in TOML? write 0o660 or \
                 \"0660\")"
            ),
        ));
    } else if mode & 0o007 != 0 {
        out.push(Problem::new(
            "api.socket_mode",
            format!("= {mode:#o} gives every user on the device access; use 0o660 or stricter"),
        ));
    }
    if let Some(group) = &api.admin_group {
        not_empty("api.admin_group", group, "leave it out for none", out);
    }
    if let Some(addr) = &api.tcp {
        if !addr.ip().is_loopback() {
            out.push(Problem::new(
                "api.tcp",
                format!(
                    "= {addr} but the TCP listener must be on a loopback address (127.0.0.0/8 \
                     or ::1): it has no authentication, only processes on this device may \
                     reach it"
                ),
            ));
        }
    }
    positive("api.max_body_bytes", api.max_body_bytes, out);
    at_most(
        "api.max_body_bytes",
        api.max_body_bytes,
        1024 * 1024 * 1024,
        "1 GiB",
        out,
    );
    positive("api.max_concurrency", api.max_concurrency.into(), out);
    at_most(
        "api.max_concurrency",
        api.max_concurrency.into(),
        1024,
        "",
        out,
    );
    positive("api.queue_depth", api.queue_depth.into(), out);
    at_most("api.queue_depth", api.queue_depth.into(), 65_536, "", out);
    positive("api.rate_limit_per_sec", api.rate_limit_per_sec.into(), out);
    positive("api.request_timeout_ms", api.request_timeout_ms, out);
    at_most(
        "api.request_timeout_ms",
        api.request_timeout_ms,
        600_000,
        "10 minutes",
        out,
    );
    // An inline run holds one of the few async workers: a millisecond at most.
    at_most("api.inline_max_us", api.inline_max_us, 1_000, "1 ms", out);
    at_most(
        "api.in_place_runs",
        u64::from(api.in_place_runs),
        1_000,
        "",
        out,
    );
}

fn mqtt(mqtt: &Mqtt, out: &mut Vec<Problem>) {
    not_empty("mqtt.host", &mqtt.host, "", out);
    positive("mqtt.port", mqtt.port.into(), out);
    if let Some(id) = &mqtt.client_id {
        not_empty("mqtt.client_id", id, "leave it out to use device.id", out);
    }
    // rumqttc refuses keep-alives shorter than 5 s; MQTT carries it in 16 bits.
    in_range(
        "mqtt.keepalive_secs",
        mqtt.keepalive_secs.into(),
        5,
        65_535,
        out,
    );
    if let Some(tls) = &mqtt.tls {
        absolute("mqtt.tls.ca", &tls.ca, out);
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                absolute("mqtt.tls.cert", cert, out);
                absolute("mqtt.tls.key", key, out);
            }
            (Some(_), None) => out.push(Problem::new(
                "mqtt.tls.cert",
                "is set but mqtt.tls.key is not; a client certificate needs its key",
            )),
            (None, Some(_)) => out.push(Problem::new(
                "mqtt.tls.key",
                "is set but mqtt.tls.cert is not; a client key needs its certificate",
            )),
            (None, None) => {}
        }
    }
    positive(
        "mqtt.telemetry_interval_secs",
        mqtt.telemetry_interval_secs,
        out,
    );
    at_most(
        "mqtt.telemetry_interval_secs",
        mqtt.telemetry_interval_secs,
        86_400,
        "1 day",
        out,
    );
    positive("mqtt.outbox_max_messages", mqtt.outbox_max_messages, out);
    positive("mqtt.outbox_max_bytes", mqtt.outbox_max_bytes, out);
    at_most(
        "mqtt.outbox_max_bytes",
        mqtt.outbox_max_bytes,
        TIB,
        "1 TiB",
        out,
    );
}

fn attest(attest: &Attest, out: &mut Vec<Problem>) {
    not_empty("attest.tcti", &attest.tcti, "", out);
    in_range("attest.pcr", attest.pcr.into(), 0, 23, out);
}

fn log(log: &Log, out: &mut Vec<Problem>) {
    if !LOG_LEVELS.contains(&log.level.as_str()) {
        out.push(Problem::new(
            "log.level",
            format!(
                "= {} is not one of {}",
                shown(&log.level),
                LOG_LEVELS.join(", ")
            ),
        ));
    }
}

fn absolute(key: &str, path: &Path, out: &mut Vec<Problem>) {
    if !path.is_absolute() {
        out.push(Problem::new(
            key,
            format!(
                "= {} must be an absolute path",
                shown(&path.display().to_string())
            ),
        ));
    }
}

fn monitor(monitor: &Monitor, out: &mut Vec<Problem>) {
    finite_at_least("monitor.drift_threshold", monitor.drift_threshold, 0.1, out);
    finite_at_least(
        "monitor.rate_spike_factor",
        monitor.rate_spike_factor,
        1.5,
        out,
    );
    positive(
        "monitor.drift_min_requests",
        monitor.drift_min_requests,
        out,
    );
    positive(
        "monitor.rate_spike_min_requests",
        monitor.rate_spike_min_requests,
        out,
    );
    at_most(
        "monitor.rehash_interval_secs",
        monitor.rehash_interval_secs,
        30 * 86_400,
        "30 days",
        out,
    );
    if monitor.rehash_interval_secs > 0 && monitor.rehash_bytes_per_sec < 64 * 1024 {
        out.push(Problem::new(
            "monitor.rehash_bytes_per_sec",
            format!(
                "= {} but a re-verification slower than 64 KiB/s would never finish on a \
                 large store",
                monitor.rehash_bytes_per_sec
            ),
        ));
    }
}

fn finite_at_least(key: &str, value: f64, min: f64, out: &mut Vec<Problem>) {
    if !value.is_finite() || value < min {
        out.push(Problem::new(
            key,
            format!("= {value} but must be a finite number of at least {min}"),
        ));
    }
}

fn positive(key: &str, value: u64, out: &mut Vec<Problem>) {
    if value == 0 {
        out.push(Problem::new(key, "= 0 but must be greater than 0"));
    }
}

fn at_most(key: &str, value: u64, max: u64, max_words: &str, out: &mut Vec<Problem>) {
    if value > max {
        let max = match max_words {
            "" => max.to_string(),
            words => format!("{max} ({words})"),
        };
        out.push(Problem::new(key, format!("= {value} exceeds {max}")));
    }
}

fn in_range(key: &str, value: u64, min: u64, max: u64, out: &mut Vec<Problem>) {
    if value < min || value > max {
        out.push(Problem::new(
            key,
            format!("= {value} is outside {min}..={max}"),
        ));
    }
}

fn not_empty(key: &str, value: &str, hint: &str, out: &mut Vec<Problem>) {
    if value.is_empty() {
        let reason = match hint {
            "" => "must not be empty".to_owned(),
            hint => format!("must not be empty ({hint})"),
        };
        out.push(Problem::new(key, reason));
    }
}

/// `value` quoted and escaped like a TOML string (control characters cannot reach a terminal
/// or log), cut to [`MAX_SHOWN_CHARS`].
fn shown(value: &str) -> String {
    let cut = crate::parse::truncate(value, MAX_SHOWN_CHARS);
    format!("{cut:?}")
}
