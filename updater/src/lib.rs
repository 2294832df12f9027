//! # mint-updater
//!
//! Everything about getting a model onto a device safely, without knowing how it is run or
//! transported: the signed bundle format ([`bundle`]), operator keys and the trust store
//! ([`keys`]), the manifest ([`manifest`]), streaming verification with bounded memory
//! ([`bundle::verify`]), and on the device the update itself: the pure lifecycle state
//! machine ([`lifecycle`]), the state database ([`state`]) and the driver that verifies,
//! stores, measures, activates, health-checks, commits or rolls back ([`updater`]).
//!
//! Invariant: no byte of a manifest is parsed before the signatures over it verified, and
//! no byte is written outside a staging directory before every check passed.

#![deny(missing_docs)]

pub mod bundle;
pub mod error;
pub mod integrity;
pub mod keys;
pub mod lifecycle;
pub mod manifest;
pub mod state;
pub mod updater;

pub use bundle::verify::{Limits, Policy, Sink, UnpackedFile, VerifiedHeader};
pub use error::{BundleError, Check, Region};
pub use keys::{KeyId, OperatorKey, TrustStore};
pub use lifecycle::{LifecycleEvent, ModelRecord, Phase, Revision};
pub use manifest::Manifest;
pub use updater::{
    HealthProbe, HealthReport, InstallOutcome, InstalledModel, Measurer, ServeChange, UpdateError,
    Updater, UpdaterConfig,
};
