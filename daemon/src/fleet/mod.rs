//! The fleet link over MQTT (the device's side).
//!
//! - [`topics`]: the topic contract of DESIGN.md, built in one place.
//! - [`payload`]: the JSON payloads (status, inventory, telemetry, events), pure functions.
//! - [`outbox`]: the durable outbox in the state database, PUBACK bookkeeping, the event pump.
//! - [`link`]: the connection (TLS, keepalive, Last Will, reconnect with backoff,
//!   resubscribe), the loop that moves the outbox through it, and [`FleetHandle`].
//! - [`ha`]: Home Assistant MQTT discovery.
//! - [`command`]: signed commands (COSE_Sign1), their payload and checks; [`replay`]: the
//!   durable replay cache and pending commands; [`dispatch`]: the [`dispatch::Dispatcher`]
//!   that checks and obeys them; [`download`]: resumable HTTP(S) download for `install`.
//!
//! Incoming commands are handed to a [`link::CommandHandler`]; their result is published on
//! `cmd/result` through the outbox.

pub mod command;
pub mod dispatch;
pub mod download;
pub mod ha;
pub mod link;
pub mod outbox;
pub mod payload;
pub mod replay;
pub mod topics;

pub use link::{FleetHandle, Link, LinkSettings};
