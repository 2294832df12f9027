//! # mint-attest: measured models and replayable evidence
//!
//! Every model mintd activates is *measured*: its digest is extended into a PCR (a TPM's, or a
//! software stand-in's) and the same digest is appended to a durable measurement log. A
//! verifier that receives the log and a quote of the PCR replays the log from the reset value;
//! if the replay equals the quoted PCR, every entry in the log is what the device measured, in
//! that order, and the log says which model the device really runs.
//!
//! This crate is the pure part of that story plus its one piece of IO:
//!
//! - [`pcr`]: the SHA-256 bank arithmetic ([`extend`] is exactly `TPM2_PCR_Extend`).
//! - [`log`]: the measurement log as JSON Lines; [`parse_log`] is the pure parser shared by
//!   the device ([`MeasurementLog::open`]), the fuzz target and the fleet verifier, and
//!   [`MeasurementLog`] is the durable, append-only file that survives a power cut mid-append.
//! - [`verify`]: [`replay`] a log and [`verify_against`] a quoted PCR value.
//!
//! The TPM (tss-esapi) and software attestors, quotes and the NV counter come later; this crate
//! knows nothing of tract, MQTT or HTTP.
//!
//! ## Log invariants
//!
//! - Entries are numbered from 0, consecutively; line *n* of the file holds index *n − 1*.
//! - An append is durable (file fsynced) before [`MeasurementLog::append`] returns.
//! - Only the *last* line may be torn (a crash mid-append); opening the log truncates it and
//!   reports how many bytes were dropped. Damage anywhere else is an error naming the line:
//!   nothing is ever silently skipped.
//! - Whatever `append` writes, `open` reads back: the line is checked by the parser before it
//!   is written.
#![deny(missing_docs)]

mod error;
pub mod log;
pub mod pcr;
pub mod verify;

pub use error::{Error, Result};
pub use log::{
    encode_log, parse_log, Measurement, MeasurementKind, MeasurementLog, NewMeasurement, ParsedLog,
    MAX_LINE_LEN,
};
pub use pcr::{extend, Digest, PCR_MAX, PCR_RESET};
pub use verify::{replay, verify_against};
