//! The MQTT link: one thread with its own single-threaded runtime (the state database's
//! durable commits block it, never the API's workers) that keeps a connection to the broker
//! and moves the outbox through it.
//!
//! Per connection (a fresh rumqttc client and event loop each time, so no request of a dead
//! connection is silently dropped or replayed behind our back): CONNECT with the Last Will
//! (`status` offline, retained) → on CONNACK subscribe to `cmd` and the broadcast topic (again
//! after every reconnect), publish the retained `status` online (birth), `inventory`, the
//! Home Assistant discovery if enabled, then the whole outbox from its oldest message. A
//! message leaves the outbox on its PUBACK only. A lost connection is retried with
//! exponential backoff and jitter (0.25 s doubling to 30 s, reset on CONNACK).
//!
//! Whether connected or not, the loop keeps moving new journal events into the outbox (with
//! their durable cursor), stores telemetry every interval, and stores command results.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mint_config::Config;
use mint_updater::state::{OutboxBounds, OutboxMessage};
use mint_updater::updater::Updater;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS,
    TlsConfiguration, Transport,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch, Notify};

use super::ha;
use super::outbox::{Inflight, Outbox};
use super::payload::{self, Posture, Resources, StatusFacts};
use super::topics::{Topics, FLEET_CMD};
use crate::service::metrics::Metrics;

/// Publishes handed to the client and not yet acknowledged, at most.
const WINDOW: usize = 1000;
/// rumqttc's own in-flight limit (QoS 1 publishes on the wire without PUBACK).
const MQTT_INFLIGHT: u16 = 200;
/// Acknowledged ids are removed from the database in batches of at most this many.
const ACK_BATCH: usize = 512;
/// Largest MQTT packet accepted from or sent to the broker.
const MAX_PACKET: usize = 1024 * 1024;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the journal and the inventory are looked at.
const TICK: Duration = Duration::from_millis(200);

/// The link could not be set up from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A TLS file could not be read.
    #[error("cannot read mqtt.tls.{key} {}: {source}", path.display())]
    TlsFile {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS material was refused.
    #[error("mqtt.tls: {what}: {source}")]
    Tls {
        /// Which part.
        what: &'static str,
        /// Why.
        source: native_tls::Error,
    },
    /// The link thread could not be started.
    #[error("cannot start the MQTT link thread: {0}")]
    Thread(std::io::Error),
}

/// Everything the link needs to know, read from the configuration once.
#[derive(Clone)]
pub struct LinkSettings {
    /// The device's topics.
    pub topics: Topics,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id.
    pub client_id: String,
    /// Keep-alive.
    pub keepalive: Duration,
    /// TLS connector, when `[mqtt.tls]` is set.
    pub tls: Option<native_tls::TlsConnector>,
    /// Telemetry interval.
    pub telemetry_interval: Duration,
    /// The outbox bound.
    pub bounds: OutboxBounds,
    /// Publish Home Assistant discovery.
    pub ha_discovery: bool,
    /// What `inventory` says of the posture.
    pub posture: Posture,
}

impl std::fmt::Debug for LinkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSettings")
            .field("device", &self.topics.device)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a native-tls connector from PEM files: the CA bundle, and optionally a client
/// certificate with its PKCS#8 key.
pub fn tls_connector(
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<native_tls::TlsConnector, LinkError> {
    let read = |key: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| LinkError::TlsFile {
            key,
            path: path.to_owned(),
            source,
        })
    };
    let ca_pem = read("ca", ca)?;
    let mut builder = native_tls::TlsConnector::builder();
    builder.disable_built_in_roots(true);
    let cert = native_tls::Certificate::from_pem(&ca_pem).map_err(|source| LinkError::Tls {
        what: "the CA certificate is not PEM",
        source,
    })?;
    builder.add_root_certificate(cert);
    if let Some((cert, key)) = client {
        let cert_pem = read("cert", cert)?;
        let key_pem = read("key", key)?;
        let identity = native_tls::Identity::from_pkcs8(&cert_pem, &key_pem).map_err(|source| {
            LinkError::Tls {
                what: "the client certificate and key (PEM, key in PKCS#8) do not load",
                source,
            }
        })?;
        builder.identity(identity);
    }
    builder.build().map_err(|source| LinkError::Tls {
        what: "cannot build the TLS connector",
        source,
    })
}

impl LinkSettings {
    /// From the configuration (reads the TLS files).
    pub fn from_config(config: &Config, bundle_keys: usize) -> Result<Self, LinkError> {
        let mqtt = &config.mqtt;
        let tls = match &mqtt.tls {
            Some(t) => Some(tls_connector(
                &t.ca,
                t.cert.as_deref().zip(t.key.as_deref()),
            )?),
            None => None,
        };
        Ok(LinkSettings {
            topics: Topics::new(&config.device.id),
            host: mqtt.host.clone(),
            port: mqtt.port,
            client_id: config.mqtt_client_id().to_owned(),
            keepalive: Duration::from_secs(mqtt.keepalive_secs.into()),
            tls,
            telemetry_interval: Duration::from_secs(mqtt.telemetry_interval_secs),
            bounds: OutboxBounds {
                max_messages: mqtt.outbox_max_messages,
                max_bytes: mqtt.outbox_max_bytes,
            },
            ha_discovery: mqtt.home_assistant_discovery,
            posture: Posture {
                // Only the software attestor exists so far; it is reported as such.
                attestation_mode: "software".to_owned(),
                bundle_keys,
                bundle_threshold: config.trust.threshold,
                fleet_keys: config.trust.fleet_keys.len(),
                mqtt_tls: mqtt.tls.is_some(),
                mqtt_client_cert: mqtt.tls.as_ref().is_some_and(|t| t.cert.is_some()),
            },
        })
    }
}

/// The future of one command's handling: the `cmd/result` payload, or `None`.
pub type CommandFuture = Pin<Box<dyn Future<Output = Option<Value>> + Send>>;
/// What the link calls with each message received on `cmd` or the broadcast topic (topic and
/// payload); run on the service's runtime.
pub type CommandHandler = Arc<dyn Fn(String, Vec<u8>) -> CommandFuture + Send + Sync>;

/// What the rest of the daemon holds of the link: ask for a report, queue a message.
#[derive(Clone, Debug)]
pub struct FleetHandle {
    report: Arc<Notify>,
    stored: Arc<Notify>,
    queue: mpsc::Sender<OutboxMessage>,
    topics: Topics,
}

/// The receiving half of a [`FleetHandle`], given to [`Link::start`].
#[derive(Debug)]
pub struct FleetInbox {
    report: Arc<Notify>,
    stored: Arc<Notify>,
    queue: mpsc::Receiver<OutboxMessage>,
}

/// The link's queue is closed (the link stopped).
#[derive(Debug, thiserror::Error)]
#[error("the MQTT link is stopped")]
pub struct LinkStopped;

impl FleetHandle {
    /// A handle and the inbox the link reads.
    pub fn new(device: &str) -> (FleetHandle, FleetInbox) {
        let report = Arc::new(Notify::new());
        let stored = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(8192);
        (
            FleetHandle {
                report: report.clone(),
                stored: stored.clone(),
                queue: tx,
                topics: Topics::new(device),
            },
            FleetInbox {
                report,
                stored,
                queue: rx,
            },
        )
    }

    /// Republish `status` and `inventory` now (the `report` command).
    pub fn request_report(&self) {
        self.report.notify_one();
    }

    /// The device's topics.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Tells the link that messages were stored in the outbox directly (in a transaction of
    /// the caller's, see `StateDb::outbox_push_and`): it sends them without waiting for its
    /// next turn.
    pub fn stored(&self) {
        self.stored.notify_one();
    }

    /// Queues a message for the outbox; it is durable once the link stored it (within one
    /// loop turn), delivered at least once after that.
    pub async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), LinkStopped> {
        self.queue
            .send(OutboxMessage {
                destination: topic,
                payload,
            })
            .await
            .map_err(|_| LinkStopped)
    }
}

/// The running link.
pub struct Link {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

/// Where the link's data comes from.
pub struct LinkParts {
    /// The update core (state database, models, events).
    pub updater: Arc<Updater>,
    /// Inference counters.
    pub metrics: Arc<Metrics>,
    /// Drift scores of the served models, for telemetry (none in tools and benches).
    pub drift: Option<Arc<crate::service::drift::DriftMonitor>>,
    /// The handler of incoming commands.
    pub commands: CommandHandler,
    /// The runtime the command handler runs on.
    pub runtime: tokio::runtime::Handle,
    /// When the daemon started.
    pub started: Instant,
}

impl Link {
    /// Starts the link thread.
    pub fn start(
        settings: LinkSettings,
        parts: LinkParts,
        inbox: FleetInbox,
    ) -> Result<Link, LinkError> {
        let (stop, stop_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("mintd-mqtt".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the MQTT link's runtime");
                        return;
                    }
                };
                let mut driver = Driver::new(settings, parts, inbox);
                rt.block_on(driver.run(stop_rx));
            })
            .map_err(LinkError::Thread)?;
        Ok(Link {
            stop,
            thread: Some(thread),
        })
    }

    /// Publishes `status` offline (when connected), disconnects and waits for the thread
    /// (at most a few seconds).
    pub fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection: the client, the events of its event loop, what is in flight.
struct Session {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, ConnectionError>>,
    driver: tokio::task::JoinHandle<()>,
    connected: bool,
    inflight: Inflight,
    /// The newest outbox id handed to the client on this connection.
    sent_upto: u64,
    /// The last inventory published on this connection.
    inventory: Option<Value>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

struct Driver {
    settings: LinkSettings,
    parts: LinkParts,
    outbox: Outbox,
    inbox: FleetInbox,
    results_tx: mpsc::UnboundedSender<Value>,
    results_rx: mpsc::UnboundedReceiver<Value>,
    acked: Vec<u64>,
    /// New messages were stored: look at the outbox again.
    dirty: bool,
    backoff: Duration,
    next_attempt: tokio::time::Instant,
}

impl Driver {
    fn new(settings: LinkSettings, parts: LinkParts, inbox: FleetInbox) -> Self {
        let outbox = Outbox::new(
            parts.updater.clone(),
            settings.bounds,
            settings.topics.clone(),
        );
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        Driver {
            settings,
            parts,
            outbox,
            inbox,
            results_tx,
            results_rx,
            acked: Vec::new(),
            dirty: true,
            backoff: BACKOFF_MIN,
            next_attempt: tokio::time::Instant::now(),
        }
    }

    async fn run(&mut self, mut stop: watch::Receiver<bool>) {
        let mut session: Option<Session> = None;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut telemetry = tokio::time::interval(self.settings.telemetry_interval);
        telemetry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let report = self.inbox.report.clone();
        let stored = self.inbox.stored.clone();
        let (_, idle_queue) = mpsc::channel(1);
        let mut queue = std::mem::replace(&mut self.inbox.queue, idle_queue);
        let mut queue_open = true;
        let (idle_tx, idle_rx) = mpsc::unbounded_channel();
        drop(idle_tx);
        let mut results_rx = std::mem::replace(&mut self.results_rx, idle_rx);
        tracing::info!(
            broker = %format!("{}:{}", self.settings.host, self.settings.port),
            tls = self.settings.tls.is_some(),
            device = %self.settings.topics.device,
            "MQTT link starting"
        );
        loop {
            if session.is_none() && tokio::time::Instant::now() >= self.next_attempt {
                session = Some(self.connect());
            }
            if let Some(s) = session.as_mut() {
                if s.connected {
                    if let Err(e) = self.fill(s) {
                        tracing::warn!(error = %e, "cannot hand the outbox to the MQTT client");
                    }
                }
            }
            let attempt_at = self.next_attempt;
            tokio::select! {
                _ = stop.changed() => break,
                ev = async {
                    match session.as_mut() {
                        Some(s) => s.events.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(s) = session.as_mut() else { continue };
                    let mut ev = ev;
                    let mut alive;
                    // Handle the whole burst, then write the acks once.
                    loop {
                        match ev {
                            Some(e) => alive = self.on_event(s, e),
                            None => alive = false,
                        }
                        if !alive || self.acked.len() >= ACK_BATCH {
                            break;
                        }
                        match s.events.try_recv() {
                            Ok(e) => ev = Some(e),
                            Err(_) => break,
                        }
                    }
                    self.flush_acks();
                    if !alive {
                        session = None;
                        self.schedule_retry();
                    }
                }
                _ = tokio::time::sleep_until(attempt_at), if session.is_none() => {}
                n = queue.recv(), if queue_open => {
                    if let Some(first) = n {
                        let mut batch = vec![first];
                        while batch.len() < 4096 {
                            match queue.try_recv() {
                                Ok(m) => batch.push(m),
                                Err(_) => break,
                            }
                        }
                        self.store(&batch);
                    } else {
                        // Every handle is gone; only the stop signal ends the link.
                        queue_open = false;
                    }
                }
                r = results_rx.recv() => {
                    if let Some(v) = r {
                        let m = OutboxMessage {
                            destination: self.settings.topics.cmd_result(),
                            payload: v.to_string().into_bytes(),
                        };
                        self.store(&[m]);
                    }
                }
                _ = tick.tick() => {
                    self.pump();
                    self.flush_acks();
                    if let Some(s) = session.as_mut().filter(|s| s.connected) {
                        self.publish_inventory(s, false);
                    }
                }
                _ = telemetry.tick() => {
                    self.pump();
                    self.store_telemetry();
                    if let Some(s) = session.as_mut().filter(|s| s.connected) {
                        self.publish_status(s);
                    }
                }
                _ = stored.notified() => {
                    // Picked up by `fill` at the top of the loop.
                    self.dirty = true;
                }
                _ = report.notified() => {
                    if let Some(s) = session.as_mut().filter(|s| s.connected) {
                        self.publish_status(s);
                        self.publish_inventory(s, true);
                    }
                }
            }
        }
        self.shutdown(session).await;
    }

    fn connect(&mut self) -> Session {
        let s = &self.settings;
        let mut options = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        options
            .set_keep_alive(s.keepalive)
            .set_clean_session(true)
            .set_inflight(MQTT_INFLIGHT)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_last_will(LastWill::new(
                s.topics.status(),
                payload::status_offline(&s.topics.device, "connection lost", payload::now_ms())
                    .to_string(),
                QoS::AtLeastOnce,
                true,
            ));
        if let Some(tls) = &s.tls {
            options.set_transport(Transport::tls_with_config(
                TlsConfiguration::NativeConnector(tls.clone()),
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(options, 2 * WINDOW + 64);
        eventloop.network_options.set_connection_timeout(5);
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(eventloop, tx));
        tracing::debug!("connecting to the MQTT broker");
        Session {
            client,
            events: rx,
            driver,
            connected: false,
            inflight: Inflight::default(),
            sent_upto: 0,
            inventory: None,
        }
    }

    fn schedule_retry(&mut self) {
        // Jitter (so a fleet does not reconnect in lockstep) from the clock's nanoseconds.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let jitter = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
        let wait = self.backoff.mul_f64(jitter);
        self.next_attempt = tokio::time::Instant::now() + wait;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        tracing::debug!(
            retry_in_ms = wait.as_millis() as u64,
            "MQTT reconnect scheduled"
        );
    }

    /// Handles one event of the connection; false when the connection is gone.
    fn on_event(&mut self, s: &mut Session, ev: Result<Event, ConnectionError>) -> bool {
        match ev {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                tracing::info!(
                    broker = %format!("{}:{}", self.settings.host, self.settings.port),
                    "MQTT connected"
                );
                s.connected = true;
                self.backoff = BACKOFF_MIN;
                self.dirty = true;
                let topics = &self.settings.topics;
                for t in [topics.cmd(), FLEET_CMD.to_owned()] {
                    if let Err(e) = s.client.try_subscribe(t, QoS::AtLeastOnce) {
                        tracing::warn!(error = %e, "cannot subscribe");
                        return false;
                    }
                }
                self.publish_status(s);
                self.publish_inventory(s, true);
                if self.settings.ha_discovery {
                    for d in ha::discovery(topics) {
                        publish_state(s, d.topic, &d.payload);
                    }
                }
                true
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                for code in &ack.return_codes {
                    if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                        tracing::error!("the broker refused a command subscription");
                    }
                }
                true
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if !s.inflight.sent(pkid) {
                    tracing::error!(pkid, "publish reported that was never requested");
                    return false;
                }
                true
            }
            Ok(Event::Incoming(Incoming::PubAck(ack))) => {
                if let Some(id) = s.inflight.acked(ack.pkid) {
                    self.acked.push(id);
                }
                true
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let topic = p.topic.clone();
                if topic == self.settings.topics.cmd() || topic == FLEET_CMD {
                    let handler = self.parts.commands.clone();
                    let results = self.results_tx.clone();
                    let payload = p.payload.to_vec();
                    self.parts.runtime.spawn(async move {
                        if let Some(result) = handler(topic, payload).await {
                            let _ = results.send(result);
                        }
                    });
                } else {
                    tracing::debug!(topic = %topic, "message on an unexpected topic ignored");
                }
                true
            }
            Ok(_) => true,
            Err(e) => {
                if s.connected {
                    tracing::warn!(error = %e, "MQTT connection lost");
                } else {
                    tracing::debug!(error = %e, "MQTT connection failed");
                }
                false
            }
        }
    }

    /// Hands outbox messages to the client while the window has room.
    fn fill(&mut self, s: &mut Session) -> Result<(), mint_updater::state::StateError> {
        while self.dirty && s.inflight.len() < WINDOW {
            let room = WINDOW - s.inflight.len();
            let batch = self.outbox.peek(s.sent_upto, room)?;
            if batch.len() < room {
                self.dirty = false;
            }
            if batch.is_empty() {
                break;
            }
            for (id, m) in batch {
                if m.size() as usize + 64 > MAX_PACKET {
                    // It would kill the connection on every attempt: a poison message.
                    tracing::error!(
                        id,
                        bytes = m.size(),
                        "outbox message larger than the MQTT packet limit dropped"
                    );
                    self.outbox.drop_unsendable(id)?;
                    s.sent_upto = id;
                    continue;
                }
                if s.client
                    .try_publish(m.destination, QoS::AtLeastOnce, false, m.payload)
                    .is_err()
                {
                    // The request queue is full or closed: try again on the next turn.
                    self.dirty = true;
                    return Ok(());
                }
                s.inflight.requested(Some(id));
                s.sent_upto = id;
            }
        }
        Ok(())
    }

    fn flush_acks(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        if let Err(e) = self.outbox.remove(&self.acked) {
            tracing::error!(error = %e, "cannot remove delivered messages from the outbox");
        }
        self.acked.clear();
    }

    fn store(&mut self, messages: &[OutboxMessage]) {
        match self.outbox.push(messages) {
            Ok(_) => self.dirty = true,
            Err(e) => tracing::error!(error = %e, "cannot store messages in the outbox"),
        }
    }

    fn pump(&mut self) {
        loop {
            match self.outbox.pump_events() {
                Ok(0) => break,
                Ok(_) => self.dirty = true,
                Err(e) => {
                    tracing::error!(error = %e, "cannot move events into the outbox");
                    break;
                }
            }
        }
    }

    fn store_telemetry(&mut self) {
        let updater = &self.parts.updater;
        let models = updater.models();
        let mut snapshot = self.parts.metrics.snapshot();
        if let Some(drift) = &self.parts.drift {
            for d in drift.snapshot() {
                if let Some(score) = d.score {
                    snapshot.drift.insert(d.model, (score, d.drifting));
                }
            }
        }
        let last_event_seq = updater
            .state()
            .cursor(super::outbox::EVENTS_CURSOR)
            .unwrap_or(0);
        let resources = Resources {
            rss_bytes: payload::rss_bytes(),
            uptime_secs: self.parts.started.elapsed().as_secs(),
            models_served: models.iter().filter(|m| m.serving().is_some()).count(),
            outbox: self.outbox.stats(),
            last_event_seq,
        };
        let t = payload::telemetry(
            &self.settings.topics.device,
            &snapshot,
            &resources,
            payload::now_ms(),
        );
        let m = OutboxMessage {
            destination: self.settings.topics.telemetry(),
            payload: t.to_string().into_bytes(),
        };
        self.store(&[m]);
    }

    fn publish_status(&self, s: &mut Session) {
        let models = self.parts.updater.models();
        let status = payload::status_online(&StatusFacts {
            device: &self.settings.topics.device,
            uptime_secs: self.parts.started.elapsed().as_secs(),
            models: &models,
            outbox: self.outbox.stats(),
            unix_ms: payload::now_ms(),
        });
        publish_state(s, self.settings.topics.status(), &status);
    }

    /// Publishes `inventory` when it changed since the last one on this connection (or
    /// always with `force`); a change also refreshes `status` (model, version, health).
    fn publish_inventory(&self, s: &mut Session, force: bool) {
        let models = self.parts.updater.models();
        let device = &self.settings.topics.device;
        // Compared without its timestamps.
        let bare = payload::inventory(device, &models, &self.settings.posture, 0);
        if !force && s.inventory.as_ref() == Some(&bare) {
            return;
        }
        let changed = s.inventory.is_some();
        s.inventory = Some(bare);
        let inv = payload::inventory(device, &models, &self.settings.posture, payload::now_ms());
        publish_state(s, self.settings.topics.inventory(), &inv);
        if changed && !force {
            self.publish_status(s);
        }
    }

    async fn shutdown(&mut self, session: Option<Session>) {
        self.flush_acks();
        let Some(mut s) = session.filter(|s| s.connected) else {
            return;
        };
        let offline =
            payload::status_offline(&self.settings.topics.device, "shutdown", payload::now_ms());
        publish_state(&mut s, self.settings.topics.status(), &offline);
        // Wait (briefly) for the acks of what is on the wire, then say goodbye: a clean
        // DISCONNECT suppresses the Last Will, so the offline status above is what stays.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !s.inflight.is_empty() {
            match tokio::time::timeout_at(deadline, s.events.recv()).await {
                Ok(Some(e)) => {
                    if !self.on_event(&mut s, e) {
                        break;
                    }
                }
                _ => break,
            }
        }
        self.flush_acks();
        let _ = s.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(e) = s.events.recv().await {
                if e.is_err() {
                    break;
                }
            }
        })
        .await;
        tracing::info!("MQTT link stopped");
    }
}

/// Publishes a retained state message (status, inventory, discovery) outside the outbox: it
/// is republished on every connection anyway.
fn publish_state(s: &mut Session, topic: String, payload: &Value) {
    match s
        .client
        .try_publish(topic, QoS::AtLeastOnce, true, payload.to_string())
    {
        Ok(()) => s.inflight.requested(None),
        Err(e) => tracing::warn!(error = %e, "cannot queue a state message"),
    }
}

/// Polls the event loop until its connection ends, forwarding every event.
async fn drive(
    mut eventloop: EventLoop,
    tx: mpsc::UnboundedSender<Result<Event, ConnectionError>>,
) {
    loop {
        let ev = eventloop.poll().await;
        let end = ev.is_err();
        if tx.send(ev).is_err() || end {
            return;
        }
    }
}
