//! The `mintd` service: the update core, the loaded models, the local API on the Unix socket
//! (and, opt-in, inference on a loopback TCP listener), systemd notifications. `run` is
//! everything `mintd [--config]` does.

pub mod api;
pub mod drift;
pub mod guard;
pub mod infer;
pub mod memory;
pub mod metrics;
pub mod peer;
pub mod probe;
pub mod registry;
pub mod tamper;

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mint_config::Config;
use mint_updater::updater::{Updater, UpdaterConfig};
use mint_updater::{Limits, TrustStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::fleet;
use crate::notify::Notifier;
use api::AppState;
use peer::{AdminPolicy, Caller, Peer};
use registry::Registry;

/// Runs the service until SIGTERM or SIGINT.
pub fn run(config: Config) -> anyhow::Result<()> {
    memory::limit_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .thread_name("mintd")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

/// The trusted keys of the configuration: `trust.keys` plus every `*.pub` in `trust.keys_dir`.
pub fn trust_store(config: &Config) -> anyhow::Result<TrustStore> {
    let mut paths: Vec<PathBuf> = config.trust.keys.clone();
    if let Some(dir) = &config.trust.keys_dir {
        if dir.is_dir() {
            paths.push(dir.clone());
        }
    }
    let keys = if paths.is_empty() {
        Vec::new()
    } else {
        let all = TrustStore::load(&paths, 1).context("cannot load trusted keys")?;
        all.keys().cloned().collect()
    };
    let threshold = config.trust.threshold as usize;
    if keys.is_empty() {
        tracing::warn!("no trusted keys configured (trust.keys, trust.keys_dir): every install will be refused");
        return Ok(TrustStore::empty(threshold));
    }
    TrustStore::new(keys, threshold).context("trust.threshold cannot be met by the trusted keys")
}

/// The limits a device enforces, from the configuration.
pub fn limits(config: &Config) -> Limits {
    Limits {
        max_header_bytes: config.limits.max_header_bytes,
        max_file_bytes: config.limits.max_file_bytes,
        max_files: config.limits.max_files as usize,
        max_bundle_bytes: config.limits.max_bundle_bytes,
        max_window_log: config.limits.max_zstd_window_log,
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let notifier = Notifier::from_env().context("NOTIFY_SOCKET is unusable")?;
    let config = Arc::new(config);
    fs::create_dir_all(&config.paths.state_dir).with_context(|| {
        format!(
            "cannot create state directory {}",
            config.paths.state_dir.display()
        )
    })?;
    let registry = Arc::new(Registry::default());
    let admin = AdminPolicy::new(config.api.admin_group.as_deref()).map_err(anyhow::Error::msg)?;
    let _ = notifier.status("recovering update state");
    let updater = {
        let config = config.clone();
        let registry = registry.clone();
        tokio::task::spawn_blocking(move || open_updater(&config, registry)).await??
    };
    let updater = Arc::new(updater);
    let (drift_tx, mut drift_rx) = tokio::sync::mpsc::channel(drift::EVENT_QUEUE);
    let store_watch = Arc::new(tamper::StoreWatch::default());
    let metrics = Arc::new(metrics::Metrics::default());
    let state = Arc::new(AppState {
        updater: updater.clone(),
        registry: registry.clone(),
        admin,
        config: config.clone(),
        started,
        ready: false.into(),
        guards: guard::Guards::new(&config.api),
        metrics: metrics.clone(),
        drift: Arc::new(drift::DriftMonitor::new(config.monitor.clone(), drift_tx)),
        store_watch: store_watch.clone(),
    });
    // Drift and rate events are recorded off the request path (a durable write each).
    let drift_events = {
        let updater = updater.clone();
        tokio::spawn(async move {
            while let Some(event) = drift_rx.recv().await {
                let u = updater.clone();
                let _ = tokio::task::spawn_blocking(move || u.record_event(event)).await;
            }
        })
    };
    let reverifier = tamper::Reverifier::start(
        updater.clone(),
        store_watch,
        Duration::from_secs(config.monitor.rehash_interval_secs),
        config.monitor.rehash_bytes_per_sec,
    )
    .context("cannot start the store re-verification thread")?;
    // TCP first: a port that is taken stops the start before the socket file exists.
    let tcp = match config.api.tcp {
        None => None,
        Some(addr) => {
            // Validation refused anything but loopback; checked again where it matters.
            if !addr.ip().is_loopback() {
                bail!("api.tcp = {addr} is not a loopback address");
            }
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on api.tcp = {addr}"))?;
            let local = listener.local_addr().context("api.tcp: no local address")?;
            tracing::info!(address = %local, "inference on loopback TCP (no /v1/ management there)");
            Some(listener)
        }
    };
    let link = if config.mqtt.enabled {
        Some(start_fleet_link(
            &config,
            &updater,
            &metrics,
            state.drift.clone(),
            started,
        )?)
    } else {
        None
    };
    let listener = bind(&config.paths.socket, config.api.socket_mode)?;
    state.ready.store(true, Ordering::Release);
    let serving = registry.all().len();
    tracing::info!(
        socket = %config.paths.socket.display(),
        models = serving,
        startup_ms = started.elapsed().as_millis() as u64,
        "mintd ready"
    );
    let _ = notifier.ready();
    let _ = notifier.status(&status_line(&registry));

    let ticker = {
        let updater = updater.clone();
        let registry = registry.clone();
        let notifier = notifier.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            let mut last_status = status_line(&registry);
            loop {
                interval.tick().await;
                let u = updater.clone();
                let _ = tokio::task::spawn_blocking(move || u.tick()).await;
                // systemctl status shows what is served now, not what was served at start.
                let status = status_line(&registry);
                if status != last_status {
                    let _ = notifier.status(&status);
                    last_status = status;
                }
            }
        })
    };
    let watchdog = notifier.watchdog_interval().map(|every| {
        let notifier = notifier.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            loop {
                interval.tick().await;
                let _ = notifier.watchdog();
            }
        })
    });

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                };
                let peer = match stream.peer_cred() {
                    Ok(c) => Peer { uid: c.uid(), gid: c.gid(), pid: c.pid() },
                    Err(e) => { tracing::warn!(error = %e, "no peer credentials; connection dropped"); continue; }
                };
                tokio::spawn(serve_connection(stream, state.clone(), Caller::Local(peer)));
            }
            accepted = accept_tcp(tcp.as_ref()) => {
                let (stream, addr) = match accepted {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!(error = %e, "TCP accept failed"); continue; }
                };
                // Small request/answer exchanges: do not wait to fill a segment.
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_connection(stream, state.clone(), Caller::Tcp(addr)));
            }
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping");
    let _ = notifier.stopping();
    ticker.abort();
    drift_events.abort();
    drop(reverifier);
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(link) = link {
        // Publishes the offline status and waits for its PUBACK (bounded): not on a worker.
        let _ = tokio::task::spawn_blocking(move || link.stop()).await;
    }
    let _ = fs::remove_file(&config.paths.socket);
    Ok(())
}

/// Serves the API on one accepted connection until it closes.
async fn serve_connection<S>(stream: S, state: Arc<AppState>, caller: Caller)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| api::handle(req, state.clone(), caller));
    if let Err(e) = http1::Builder::new()
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(error = %e, %caller, "connection ended with an error");
    }
}

/// The next TCP connection, or never when there is no TCP listener.
async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Starts the MQTT link (`[mqtt] enabled = true`).
fn start_fleet_link(
    config: &Config,
    updater: &Arc<Updater>,
    metrics: &Arc<metrics::Metrics>,
    drift: Arc<drift::DriftMonitor>,
    started: Instant,
) -> anyhow::Result<fleet::Link> {
    let bundle_keys = trust_store(config)?.keys().count();
    let settings = fleet::LinkSettings::from_config(config, bundle_keys)?;
    let (handle, inbox) = fleet::FleetHandle::new(&config.device.id);
    // Signed commands: checked and obeyed by the dispatcher; later results (the end of an
    // install) are queued on `cmd/result` through the handle. Resumes pending installs.
    let dispatcher = fleet::dispatch::Dispatcher::new(
        fleet::dispatch::DispatcherConfig::from_config(config)
            .context("cannot load the fleet command keys (trust.fleet_keys)")?,
        updater.clone(),
        fleet::dispatch::ResultSink::Outbox {
            handle: handle.clone(),
            bounds: settings.bounds,
        },
    );
    dispatcher.set_report(Arc::new(move || handle.request_report()));
    let parts = fleet::link::LinkParts {
        updater: updater.clone(),
        metrics: metrics.clone(),
        drift: Some(drift),
        commands: dispatcher.handler(),
        runtime: tokio::runtime::Handle::current(),
        started,
    };
    Ok(fleet::Link::start(settings, parts, inbox)?)
}

/// `STATUS=` text: what is served.
fn status_line(registry: &Registry) -> String {
    let models = registry.all();
    if models.is_empty() {
        return "serving no model".into();
    }
    let names: Vec<String> = models
        .iter()
        .map(|m| format!("{} {}", m.installed.name, m.installed.rev.version))
        .collect();
    format!("serving {}", names.join(", "))
}

/// Opens the update core on `config` (trust, measurement log, tract health probe, serving
/// through `registry`), as the service does; public for in-process tests.
pub fn open_updater(config: &Config, registry: Arc<Registry>) -> anyhow::Result<Updater> {
    let trust = trust_store(config)?;
    let measurer = Arc::new(
        probe::LogMeasurer::open(
            config.paths.state_dir.join("measurements.log"),
            u8::try_from(config.attest.pcr).context("attest.pcr is above 23")?,
        )
        .map_err(anyhow::Error::msg)?,
    );
    let probe = Arc::new(probe::TractProbe {
        registry: registry.clone(),
    });
    let on_serve = {
        let registry = registry.clone();
        Box::new(
            move |name: &str, model: Option<&mint_updater::updater::InstalledModel>| {
                if let Err(e) = registry.serve(name, model) {
                    tracing::error!(model = name, error = %e, "cannot load the model to serve");
                }
            },
        )
    };
    let updater_config = UpdaterConfig {
        state_dir: config.paths.state_dir.clone(),
        trust,
        limits: limits(config),
        device_targets: vec![config.device.class.clone(), config.device.arch.clone()],
        retain: config.update.retain as usize,
        health_timeout: Duration::from_millis(config.update.health_timeout_ms),
        trial_max_restarts: config.update.trial_max_restarts,
        trial_cap: (
            u32::try_from(config.update.trial_requests).unwrap_or(u32::MAX),
            u32::try_from(config.update.trial_seconds).unwrap_or(u32::MAX),
        ),
        on_serve: Some(on_serve),
    };
    Updater::open(updater_config, probe, measurer).context("cannot open the update state")
}

/// Binds the API socket with the configured mode, replacing a stale socket file (never
/// anything else).
fn bind(path: &Path, mode: u32) -> anyhow::Result<UnixListener> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A socket someone still accepts on is not stale: replacing it would orphan that
            // daemon (and its shutdown would later delete our socket).
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "{} is in use: another process (another mintd?) is listening on it",
                    path.display()
                );
            }
            fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
        }
        Ok(_) => bail!(
            "{} exists and is not a socket: refusing to replace it",
            path.display()
        ),
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set mode {mode:o} on {}", path.display()))?;
    Ok(listener)
}
