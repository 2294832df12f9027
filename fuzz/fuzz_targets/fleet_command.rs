//! Fuzzes the signed fleet command parser (`daemon/src/fleet/command.rs`): anyone who may
//! publish on a device's `cmd` topic or the broadcast topic controls these bytes.
//!
//! Two ways in, chosen by the first byte:
//! - the bytes as an envelope, verified against a fleet key: any input must be refused with a
//!   reason or (never, in practice) accepted, never panic;
//! - the bytes as a payload signed by the trusted key (JSON or CBOR content type), so that the
//!   payload parser, the target and time checks and the command argument checks behind the
//!   signature are reached: a refusal here must be about the payload, never the signature,
//!   and an accepted payload must survive a sign → verify round trip unchanged.
//!
//! Run: `scripts/fuzz.sh fleet_command`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mint_updater::{OperatorKey, TrustStore};

#[allow(dead_code)] // the dispatcher uses every variant; the fuzz target does not
#[path = "../../daemon/src/fleet/command.rs"]
mod command;

fn key() -> &'static (OperatorKey, TrustStore) {
    static KEY: OnceLock<(OperatorKey, TrustStore)> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = OperatorKey::generate().expect("a key");
        let trust = TrustStore::new([key.public()], 1).expect("a trust store");
        (key, trust)
    })
}

fn exercise(cmd: &command::SignedCommand) {
    let device = command::DeviceIdentity {
        id: "dev-1".into(),
        class: "cam".into(),
        arch: "aarch64".into(),
    };
    for now in [
        i64::MIN,
        0,
        cmd.payload.issued_at,
        cmd.payload.expires_at,
        i64::MAX,
    ] {
        for skew in [0, 300, u64::MAX] {
            let _ = cmd.check(&device, now, skew);
        }
    }
    let _ = cmd.retain_until(u64::MAX);
    if let Ok(command::Command::Install(args)) = command::Command::parse(&cmd.payload, u64::MAX) {
        assert!(command::check_url(&args.url).is_ok());
        assert_eq!(args.sha256.len(), 64);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (key, trust) = key();
    match mode % 3 {
        0 => match command::verify(rest, trust) {
            Ok(cmd) => exercise(&cmd),
            Err(e) => {
                std::hint::black_box((e.reason(), e.authenticated(), e.to_string()));
            }
        },
        m => {
            let ct = if m == 1 {
                command::CONTENT_TYPE_JSON
            } else {
                command::CONTENT_TYPE_CBOR
            };
            let Ok(signed) = command::sign_bytes(rest, ct, key) else {
                return;
            };
            match command::verify(&signed, trust) {
                Ok(cmd) => {
                    exercise(&cmd);
                    let again = command::sign(&cmd.payload, key).expect("re-signs");
                    let back =
                        command::verify(&again, trust).expect("a re-signed command verifies");
                    assert_eq!(back.payload, cmd.payload, "not a fixed point");
                }
                Err(command::CommandError::TooLarge { .. }) => {}
                Err(e) => assert_eq!(e.reason(), "payload", "{e}"),
            }
        }
    }
});
