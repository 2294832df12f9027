//! Fuzz what `mintctl fleet watch` does with messages from the broker (anyone who may publish
//! there controls them): any topic and payload must be folded or ignored, never panic, and the
//! table must render.
//!
//! Run: `scripts/fuzz.sh fleet_view`. Input: messages separated by 0xff, each a topic, a NUL
//! byte and a payload.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../daemon/src/fleet/topics.rs"]
pub mod topics;

/// What view.rs expects at `crate::fleet::topics`.
mod fleet {
    pub use super::topics;
}

#[path = "../../daemon/src/ctl/fleet/view.rs"]
mod view;

fuzz_target!(|data: &[u8]| {
    let mut fleet = view::FleetView::default();
    for (i, message) in data.split(|b| *b == 0xff).enumerate() {
        let (topic, payload) = match message.iter().position(|b| *b == 0) {
            Some(n) => (&message[..n], &message[n + 1..]),
            None => (message, &b""[..]),
        };
        let topic = String::from_utf8_lossy(topic);
        let _ = fleet.apply(&topic, payload, i as u64 * 1000);
    }
    std::hint::black_box(fleet.table(u64::MAX));
});
