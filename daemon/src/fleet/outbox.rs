//! The durable outbox, seen from the MQTT link: messages live in the state database
//! (`StateDb::outbox_*`) from before their first publish until their PUBACK, so a broker
//! outage, a clean reconnect (rumqttc drops its in-memory in-flight publishes then) or a
//! daemon crash loses nothing within the bound; what the bound drops is counted.
//!
//! Two pieces:
//! - [`Inflight`], a pure bookkeeping of what was handed to the MQTT client: rumqttc assigns
//!   packet ids in the order publishes are requested and reports each with one
//!   `Outgoing::Publish(pkid)`, so a FIFO maps outbox ids to packet ids and a PUBACK back to
//!   the outbox id to remove. One per connection: a new connection starts empty and the whole
//!   outbox is sent again (consumers de-duplicate by event id).
//! - [`Outbox`], the IO shell around the database: push (one durable transaction per batch),
//!   peek, remove after PUBACK (batched, not waiting for the disk: a crash can only bring a
//!   delivered message back, never lose one), and the event pump that moves new entries of
//!   the event journal into the outbox together with a durable cursor.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use mint_updater::state::{OutboxBounds, OutboxMessage, OutboxStats, StateError};
use mint_updater::updater::Updater;

use super::payload;
use super::topics::Topics;

/// The cursor (in the state database) of the last event journal entry moved to the outbox.
pub const EVENTS_CURSOR: &str = "mqtt.events";

/// How many journal entries one pump moves at most.
const PUMP_BATCH: usize = 1000;

/// The publishes handed to the MQTT client on one connection, awaiting their PUBACK.
#[derive(Debug, Default)]
pub struct Inflight {
    /// Requested, packet id not known yet, in request order. `None`: not from the outbox
    /// (status, inventory, discovery).
    requested: VecDeque<Option<u64>>,
    /// Sent, by packet id.
    sent: HashMap<u16, Option<u64>>,
}

impl Inflight {
    /// A publish was requested from the client.
    pub fn requested(&mut self, outbox_id: Option<u64>) {
        self.requested.push_back(outbox_id);
    }

    /// The client reported `Outgoing::Publish(pkid)`: the oldest requested publish got
    /// `pkid`. Returns false if nothing was requested (a bookkeeping error the caller must
    /// treat as a broken connection).
    pub fn sent(&mut self, pkid: u16) -> bool {
        match self.requested.pop_front() {
            Some(id) => {
                self.sent.insert(pkid, id);
                true
            }
            None => false,
        }
    }

    /// A PUBACK for `pkid` arrived: the outbox id it delivered, if it was an outbox message.
    pub fn acked(&mut self, pkid: u16) -> Option<u64> {
        self.sent.remove(&pkid).flatten()
    }

    /// Publishes awaiting their PUBACK (requested or sent).
    pub fn len(&self) -> usize {
        self.requested.len() + self.sent.len()
    }

    /// Nothing awaits a PUBACK.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The outbox of one device in the state database.
pub struct Outbox {
    updater: Arc<Updater>,
    bounds: OutboxBounds,
    topics: Topics,
}

impl Outbox {
    /// The outbox in `updater`'s state database, bounded by `bounds`.
    pub fn new(updater: Arc<Updater>, bounds: OutboxBounds, topics: Topics) -> Self {
        Outbox {
            updater,
            bounds,
            topics,
        }
    }

    /// Stores messages durably (one transaction); returns their ids.
    pub fn push(&self, messages: &[OutboxMessage]) -> Result<Vec<u64>, StateError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let pushed = self
            .updater
            .state()
            .outbox_push(messages, self.bounds, None)?;
        if pushed.dropped > 0 {
            tracing::warn!(
                dropped = pushed.dropped,
                total_dropped = pushed.stats.dropped,
                "outbox full: oldest messages dropped"
            );
        }
        Ok(pushed.ids)
    }

    /// Moves the event journal's entries after the cursor into the outbox, with the cursor
    /// in the same durable transaction. Returns how many were moved.
    pub fn pump_events(&self) -> Result<usize, StateError> {
        let db = self.updater.state();
        let cursor = db.cursor(EVENTS_CURSOR)?;
        let events = db.events_since(cursor, PUMP_BATCH)?;
        let Some(last) = events.last() else {
            return Ok(0);
        };
        if let Some(first) = events.first() {
            // The journal keeps its newest entries only; what left it before the link could
            // forward it is lost, and counted as such.
            let gap = first.id.saturating_sub(cursor + 1);
            if cursor > 0 && gap > 0 {
                tracing::warn!(
                    lost = gap,
                    "events left the journal before they were forwarded"
                );
                db.outbox_count_dropped(gap)?;
            }
        }
        let topic = self.topics.events();
        let messages: Vec<OutboxMessage> = events
            .iter()
            .map(|e| OutboxMessage {
                destination: topic.clone(),
                payload: payload::event(&self.topics.device, e)
                    .to_string()
                    .into_bytes(),
            })
            .collect();
        let pushed = db.outbox_push(&messages, self.bounds, Some((EVENTS_CURSOR, last.id)))?;
        if pushed.dropped > 0 {
            tracing::warn!(
                dropped = pushed.dropped,
                "outbox full: oldest messages dropped"
            );
        }
        Ok(events.len())
    }

    /// Up to `limit` messages after `after_id`, oldest first.
    pub fn peek(
        &self,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutboxMessage)>, StateError> {
        self.updater.state().outbox_peek(after_id, limit)
    }

    /// Removes delivered messages.
    pub fn remove(&self, ids: &[u64]) -> Result<OutboxStats, StateError> {
        self.updater.state().outbox_remove(ids, false)
    }

    /// Removes a message that can never be sent and counts it as dropped.
    pub fn drop_unsendable(&self, id: u64) -> Result<(), StateError> {
        let db = self.updater.state();
        db.outbox_remove(&[id], true)?;
        db.outbox_count_dropped(1)
    }

    /// Counts and drops.
    pub fn stats(&self) -> OutboxStats {
        self.updater.state().outbox_stats().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot read the outbox counters");
            OutboxStats::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_map_back_to_outbox_ids_through_packet_ids() {
        let mut f = Inflight::default();
        f.requested(None);
        f.requested(Some(7));
        f.requested(Some(8));
        assert_eq!(f.len(), 3);
        assert!(f.sent(1));
        assert!(f.sent(2));
        // Acks may come before the last publish is even reported sent.
        assert_eq!(f.acked(2), Some(7));
        assert!(f.sent(3));
        assert_eq!(f.acked(1), None);
        assert_eq!(f.acked(3), Some(8));
        assert!(f.is_empty());
        // Unknown acks and unrequested sends are reported, not guessed.
        assert_eq!(f.acked(9), None);
        assert!(!f.sent(4));
    }

    #[test]
    fn a_reused_packet_id_maps_to_the_newest_publish() {
        let mut f = Inflight::default();
        f.requested(Some(1));
        assert!(f.sent(1));
        assert_eq!(f.acked(1), Some(1));
        f.requested(Some(2));
        assert!(f.sent(1));
        assert_eq!(f.acked(1), Some(2));
    }
}
