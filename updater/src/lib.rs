//! # mint-updater
//!
//! Everything about getting a model onto a device safely, without knowing how it is run or
//! transported: the signed bundle format ([`bundle`]), operator keys and the trust store
//! ([`keys`]), the manifest ([`manifest`]), and streaming verification with bounded memory
//! ([`bundle::verify`]).
//!
//! Invariant: no byte of a manifest is parsed before the signatures over it verified, and
//! no byte is written outside a staging directory before every check passed.

#![deny(missing_docs)]

pub mod bundle;
pub mod error;
pub mod keys;
pub mod manifest;

pub use bundle::verify::{Limits, Policy, Sink, UnpackedFile, VerifiedHeader};
pub use error::{BundleError, Check, Region};
pub use keys::{KeyId, OperatorKey, TrustStore};
pub use manifest::Manifest;
