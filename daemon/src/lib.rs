//! # mintd
//!
//! The device service and the operator tool. This crate wires the libraries together:
//! `mint-updater` (bundles, trust), `mint-config`, and tract for running models.
//!
//! - [`engine`]: tract, fed only with digest-checked bytes.
//! - [`tensor`]: Open Inference Protocol v2 tensors.
//! - [`golden`]: golden cases and reference statistics for the health check and drift.
//! - [`ctl`]: the `mintctl` commands; [`client`]: their HTTP client over the socket.
//! - [`fleet`]: the MQTT fleet link (status, inventory, telemetry, events, durable outbox).
//! - [`service`]: the `mintd` service (API, registry of loaded models, health probe).
//! - [`notify`]: systemd notifications.
//! - [`demo`]: the guided tour.
//! - [`exit`]: the one place where errors become exit codes and JSON.

#![deny(missing_docs)]

pub mod client;
pub mod ctl;
pub mod demo;
pub mod engine;
pub mod exit;
pub mod fleet;
pub mod golden;
pub mod notify;
pub mod service;
pub mod tensor;
