//! The state database (`mintd.redb`): one record per model, the event journal and a few
//! counters, in one redb file with durable commits.
//!
//! Tables:
//! - `models`: model name → [`ModelRecord`] as JSON;
//! - `meta`: `trusted_time` (unix seconds), `next_event_id`;
//! - `events`: id → [`LifecycleEvent`] as JSON; the newest [`EVENTS_KEPT`] are kept, older
//!   ones are deleted in the transaction that adds new ones;
//! - `tampered`: manifest digest → why its store entry failed re-verification (JSON); such
//!   an entry is never loaded again.
//! - `outbox`: id → an opaque outgoing message (a destination string and payload bytes) that a
//!   transport must deliver at least once; bounded by count and bytes, oldest dropped first,
//!   drops counted. The database knows nothing of the transport (MQTT lives in the daemon).
//!
//! A record and the events of its transition are written in ONE write transaction, committed
//! with `Durability::Immediate`, so that they are on disk before the driver acts on them.

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

pub use crate::lifecycle::LifecycleEvent;
use crate::lifecycle::ModelRecord;

const MODELS: TableDefinition<&str, &str> = TableDefinition::new("models");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");
const TAMPERED: TableDefinition<&str, &str> = TableDefinition::new("tampered");
const OUTBOX: TableDefinition<u64, (&str, &[u8])> = TableDefinition::new("outbox");

const TRUSTED_TIME: &str = "trusted_time";
const NEXT_EVENT_ID: &str = "next_event_id";
const OUTBOX_NEXT_ID: &str = "outbox_next_id";
const OUTBOX_COUNT: &str = "outbox_count";
const OUTBOX_BYTES: &str = "outbox_bytes";
const OUTBOX_DROPPED: &str = "outbox_dropped";
/// Prefix of the caller-named cursors kept in `meta` ([`StateDb::cursor`]).
const CURSOR_PREFIX: &str = "cursor.";

/// How many events the journal keeps.
pub const EVENTS_KEPT: u64 = 10_000;

/// A state database operation failed.
#[derive(Debug, thiserror::Error)]
#[error("state database {}: {action}: {source}", path.display())]
pub struct StateError {
    /// The database file.
    pub path: PathBuf,
    /// What was being done.
    pub action: String,
    /// What went wrong.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The state database.
pub struct StateDb {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for StateDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDb").field("path", &self.path).finish()
    }
}

impl StateDb {
    /// Opens the database at `path`, creating it (and its tables) if needed.
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        let fail = |action: &str, e: redb::Error| StateError {
            path: path.to_owned(),
            action: action.to_owned(),
            source: Box::new(e),
        };
        let db = Database::create(path).map_err(|e| fail("opening", e.into()))?;
        let state = StateDb {
            db,
            path: path.to_owned(),
        };
        state.write("creating the tables", |txn| {
            txn.open_table(MODELS)?;
            txn.open_table(META)?;
            txn.open_table(EVENTS)?;
            txn.open_table(TAMPERED)?;
            txn.open_table(OUTBOX)?;
            Ok(())
        })?;
        Ok(state)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying redb database, for tables a caller owns (the daemon's fleet replay
    /// cache and pending commands), so that they share this file's crash safety. Their
    /// write transactions must commit with `Durability::Immediate` before acting.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The record of model `name`.
    pub fn get(&self, name: &str) -> Result<Option<ModelRecord>, StateError> {
        let action = format!("reading the record of model {name}");
        let json = self.read(&action, |txn| {
            let table = txn.open_table(MODELS)?;
            Ok(table.get(name)?.map(|v| v.value().to_owned()))
        })?;
        json.map(|j| self.decode(&action, &j)).transpose()
    }

    /// Every model record, by name.
    pub fn all(&self) -> Result<Vec<ModelRecord>, StateError> {
        let action = "reading the model records";
        let jsons = self.read(action, |txn| {
            let table = txn.open_table(MODELS)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (_, v) = item?;
                out.push(v.value().to_owned());
            }
            Ok(out)
        })?;
        jsons.iter().map(|j| self.decode(action, j)).collect()
    }

    /// Writes `record` as the record of `name` and appends `events`, in one durable
    /// transaction. Returns the events with their ids.
    pub fn commit(
        &self,
        name: &str,
        record: &ModelRecord,
        events: &[LifecycleEvent],
    ) -> Result<Vec<LifecycleEvent>, StateError> {
        let action = format!("committing the record of model {name}");
        let json = self.encode(&action, record)?;
        self.write(&action, |txn| {
            txn.open_table(MODELS)?.insert(name, json.as_str())?;
            append(txn, events)
        })
    }

    /// Appends events that belong to no record change (refusals, tamper reports).
    pub fn append_events(
        &self,
        events: &[LifecycleEvent],
    ) -> Result<Vec<LifecycleEvent>, StateError> {
        self.write("appending events", |txn| append(txn, events))
    }

    /// Up to `limit` events with an id above `after_id`, oldest first.
    pub fn events_since(
        &self,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<LifecycleEvent>, StateError> {
        let action = "reading events";
        let jsons = self.read(action, |txn| {
            let table = txn.open_table(EVENTS)?;
            let mut out = Vec::new();
            if after_id == u64::MAX {
                return Ok(out);
            }
            for item in table.range(after_id + 1..)?.take(limit) {
                let (_, v) = item?;
                out.push(v.value().to_owned());
            }
            Ok(out)
        })?;
        jsons.iter().map(|j| self.decode(action, j)).collect()
    }

    /// The latest trusted time seen (the newest `created` of an accepted bundle), unix
    /// seconds.
    pub fn trusted_time(&self) -> Result<Option<i64>, StateError> {
        self.read("reading the trusted time", |txn| {
            let table = txn.open_table(META)?;
            Ok(table.get(TRUSTED_TIME)?.map(|v| v.value()))
        })
    }

    /// Raises the trusted time to `t` (never lowers it); returns the trusted time in force.
    pub fn raise_trusted_time(&self, t: i64) -> Result<i64, StateError> {
        self.write("raising the trusted time", |txn| {
            let mut table = txn.open_table(META)?;
            let current = table.get(TRUSTED_TIME)?.map(|v| v.value());
            let next = current.map_or(t, |c| c.max(t));
            if current != Some(next) {
                table.insert(TRUSTED_TIME, next)?;
            }
            Ok(next)
        })
    }

    /// Marks the store entry `digest` as tampered, with `why` (JSON), and records `event` in
    /// the same transaction; returns false (and records nothing) if it was marked already.
    pub fn mark_tampered(
        &self,
        digest: &str,
        why: &serde_json::Value,
        event: LifecycleEvent,
    ) -> Result<bool, StateError> {
        let action = "marking a store entry as tampered";
        let why = self.encode(action, why)?;
        self.write(action, |txn| {
            let mut table = txn.open_table(TAMPERED)?;
            if table.get(digest)?.is_some() {
                return Ok(false);
            }
            table.insert(digest, why.as_str())?;
            drop(table);
            append(txn, &[event])?;
            Ok(true)
        })
    }

    /// Every digest marked as tampered, with why.
    pub fn tampered(&self) -> Result<Vec<(String, serde_json::Value)>, StateError> {
        let action = "reading tampered entries";
        let rows: Vec<(String, String)> = self.read(action, |txn| {
            let table = txn.open_table(TAMPERED)?;
            let mut out = Vec::new();
            for row in table.iter()? {
                let (k, v) = row?;
                out.push((k.value().to_owned(), v.value().to_owned()));
            }
            Ok(out)
        })?;
        rows.into_iter()
            .map(|(k, v)| Ok((k, self.decode(action, &v)?)))
            .collect()
    }

    /// Stores `messages` in the outbox in one durable transaction, then drops the oldest
    /// messages until at most `bounds.max_messages` and `bounds.max_bytes` remain (a single
    /// message larger than `max_bytes` is dropped at once). When `cursor` is given, the named
    /// cursor is set in the same transaction, so that whatever the messages were made from is
    /// marked as handed over exactly when the messages are durable.
    pub fn outbox_push(
        &self,
        messages: &[OutboxMessage],
        bounds: OutboxBounds,
        cursor: Option<(&str, u64)>,
    ) -> Result<OutboxPush, StateError> {
        self.outbox_push_and(messages, bounds, cursor, |_| Ok(()))
    }

    /// [`StateDb::outbox_push`], with `also` run in the same transaction: whatever it writes
    /// (in tables of the caller's own) becomes durable exactly when the messages do, or not at
    /// all. The fleet dispatcher forgets a finished command and stores its result this way.
    pub fn outbox_push_and(
        &self,
        messages: &[OutboxMessage],
        bounds: OutboxBounds,
        cursor: Option<(&str, u64)>,
        also: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<OutboxPush, StateError> {
        self.write("storing outbox messages", |txn| {
            also(txn)?;
            let mut meta = txn.open_table(META)?;
            let mut table = txn.open_table(OUTBOX)?;
            let get = |meta: &redb::Table<&str, i64>, key: &str| -> Result<u64, redb::Error> {
                Ok(meta.get(key)?.map_or(0, |v| v.value().max(0) as u64))
            };
            let mut next_id = get(&meta, OUTBOX_NEXT_ID)?.max(1);
            let mut count = get(&meta, OUTBOX_COUNT)?;
            let mut bytes = get(&meta, OUTBOX_BYTES)?;
            let mut dropped = get(&meta, OUTBOX_DROPPED)?;
            let mut ids = Vec::with_capacity(messages.len());
            for m in messages {
                table.insert(next_id, (m.destination.as_str(), m.payload.as_slice()))?;
                ids.push(next_id);
                next_id += 1;
                count += 1;
                bytes += m.size();
            }
            let mut newly_dropped = 0;
            while count > bounds.max_messages || bytes > bounds.max_bytes {
                let Some(oldest) = table.pop_first()? else {
                    break;
                };
                let (destination, payload) = oldest.1.value();
                count -= 1;
                bytes = bytes.saturating_sub((destination.len() + payload.len()) as u64);
                newly_dropped += 1;
            }
            if table.is_empty()? {
                count = 0;
                bytes = 0;
            }
            dropped += newly_dropped;
            meta.insert(OUTBOX_NEXT_ID, to_i64(next_id)?)?;
            meta.insert(OUTBOX_COUNT, to_i64(count)?)?;
            meta.insert(OUTBOX_BYTES, to_i64(bytes)?)?;
            meta.insert(OUTBOX_DROPPED, to_i64(dropped)?)?;
            if let Some((name, value)) = cursor {
                meta.insert(format!("{CURSOR_PREFIX}{name}").as_str(), to_i64(value)?)?;
            }
            Ok(OutboxPush {
                ids,
                dropped: newly_dropped,
                stats: OutboxStats {
                    messages: count,
                    bytes,
                    dropped,
                },
            })
        })
    }

    /// Up to `limit` outbox messages with an id above `after_id`, oldest first.
    pub fn outbox_peek(
        &self,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<(u64, OutboxMessage)>, StateError> {
        self.read("reading the outbox", |txn| {
            let table = txn.open_table(OUTBOX)?;
            let mut out = Vec::new();
            if after_id == u64::MAX {
                return Ok(out);
            }
            for item in table.range(after_id + 1..)?.take(limit) {
                let (k, v) = item?;
                let (destination, payload) = v.value();
                out.push((
                    k.value(),
                    OutboxMessage {
                        destination: destination.to_owned(),
                        payload: payload.to_vec(),
                    },
                ));
            }
            Ok(out)
        })
    }

    /// Removes delivered messages (ids no longer present are ignored: the bound may have
    /// dropped them meanwhile). `durable = false` commits without waiting for the disk: a
    /// crash may then bring the messages back, to be delivered twice, never lost.
    pub fn outbox_remove(&self, ids: &[u64], durable: bool) -> Result<OutboxStats, StateError> {
        let run = || -> Result<OutboxStats, redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })?;
            let stats = {
                let mut meta = txn.open_table(META)?;
                let mut table = txn.open_table(OUTBOX)?;
                let get = |meta: &redb::Table<&str, i64>, key: &str| -> Result<u64, redb::Error> {
                    Ok(meta.get(key)?.map_or(0, |v| v.value().max(0) as u64))
                };
                let mut count = get(&meta, OUTBOX_COUNT)?;
                let mut bytes = get(&meta, OUTBOX_BYTES)?;
                for id in ids {
                    if let Some(old) = table.remove(*id)? {
                        let (destination, payload) = old.value();
                        count = count.saturating_sub(1);
                        bytes = bytes.saturating_sub((destination.len() + payload.len()) as u64);
                    }
                }
                if table.is_empty()? {
                    count = 0;
                    bytes = 0;
                }
                meta.insert(OUTBOX_COUNT, to_i64(count)?)?;
                meta.insert(OUTBOX_BYTES, to_i64(bytes)?)?;
                OutboxStats {
                    messages: count,
                    bytes,
                    dropped: get(&meta, OUTBOX_DROPPED)?,
                }
            };
            txn.commit()?;
            Ok(stats)
        };
        run().map_err(|e| self.error("removing delivered outbox messages", Box::new(e)))
    }

    /// What the outbox holds and how many messages its bound has dropped, ever.
    pub fn outbox_stats(&self) -> Result<OutboxStats, StateError> {
        self.read("reading the outbox counters", |txn| {
            let meta = txn.open_table(META)?;
            let get = |key: &str| -> Result<u64, redb::Error> {
                Ok(meta.get(key)?.map_or(0, |v| v.value().max(0) as u64))
            };
            Ok(OutboxStats {
                messages: get(OUTBOX_COUNT)?,
                bytes: get(OUTBOX_BYTES)?,
                dropped: get(OUTBOX_DROPPED)?,
            })
        })
    }

    /// Adds `n` to the outbox's drop counter (for losses that happen before a message is
    /// made, such as events that left the journal before they were forwarded).
    pub fn outbox_count_dropped(&self, n: u64) -> Result<(), StateError> {
        self.write("counting dropped outbox messages", |txn| {
            let mut meta = txn.open_table(META)?;
            let current = meta.get(OUTBOX_DROPPED)?.map_or(0, |v| v.value());
            meta.insert(OUTBOX_DROPPED, current.saturating_add(to_i64(n)?))?;
            Ok(())
        })
    }

    /// The value of the cursor `name` (0 if never set), as set by [`StateDb::outbox_push`].
    pub fn cursor(&self, name: &str) -> Result<u64, StateError> {
        self.read("reading a cursor", |txn| {
            let meta = txn.open_table(META)?;
            Ok(meta
                .get(format!("{CURSOR_PREFIX}{name}").as_str())?
                .map_or(0, |v| v.value().max(0) as u64))
        })
    }

    fn read<T>(
        &self,
        action: &str,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StateError> {
        let run = || -> Result<T, redb::Error> {
            let txn = self.db.begin_read()?;
            f(&txn)
        };
        run().map_err(|e| self.error(action, Box::new(e)))
    }

    fn write<T>(
        &self,
        action: &str,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StateError> {
        let run = || -> Result<T, redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            let out = f(&txn)?;
            txn.commit()?;
            Ok(out)
        };
        run().map_err(|e| self.error(action, Box::new(e)))
    }

    fn error(&self, action: &str, source: Box<dyn std::error::Error + Send + Sync>) -> StateError {
        StateError {
            path: self.path.clone(),
            action: action.to_owned(),
            source,
        }
    }

    fn encode<T: serde::Serialize>(&self, action: &str, value: &T) -> Result<String, StateError> {
        serde_json::to_string(value).map_err(|e| self.error(action, Box::new(e)))
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        action: &str,
        json: &str,
    ) -> Result<T, StateError> {
        serde_json::from_str(json).map_err(|e| self.error(action, Box::new(e)))
    }
}

/// One outgoing message of the outbox: where it goes (opaque to the database) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Destination (for the daemon: an MQTT topic).
    pub destination: String,
    /// Payload.
    pub payload: Vec<u8>,
}

impl OutboxMessage {
    /// The bytes the message counts against the outbox bound (destination and payload).
    pub fn size(&self) -> u64 {
        (self.destination.len() + self.payload.len()) as u64
    }
}

/// The outbox's bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxBounds {
    /// Most messages held.
    pub max_messages: u64,
    /// Most bytes held (destinations and payloads).
    pub max_bytes: u64,
}

/// What the outbox holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxStats {
    /// Messages waiting for delivery.
    pub messages: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Messages dropped by the bound since the database was created.
    pub dropped: u64,
}

/// The result of [`StateDb::outbox_push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxPush {
    /// The ids given to the pushed messages, in order.
    pub ids: Vec<u64>,
    /// How many messages this push made the bound drop.
    pub dropped: u64,
    /// The outbox after the push.
    pub stats: OutboxStats,
}

fn to_i64(v: u64) -> Result<i64, redb::Error> {
    i64::try_from(v).map_err(|_| redb::Error::Io(std::io::Error::other("counter above i64::MAX")))
}

/// Appends events with fresh ids and deletes those beyond [`EVENTS_KEPT`].
fn append(
    txn: &redb::WriteTransaction,
    events: &[LifecycleEvent],
) -> Result<Vec<LifecycleEvent>, redb::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut meta = txn.open_table(META)?;
    let mut next_id = meta
        .get(NEXT_EVENT_ID)?
        .map_or(1, |v| u64::try_from(v.value()).unwrap_or(1));
    let mut table = txn.open_table(EVENTS)?;
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let mut event = event.clone();
        event.id = next_id;
        next_id += 1;
        let json =
            serde_json::to_string(&event).map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
        table.insert(event.id, json.as_str())?;
        out.push(event);
    }
    meta.insert(
        NEXT_EVENT_ID,
        i64::try_from(next_id).map_err(|_| {
            redb::Error::Io(std::io::Error::other("event ids exhausted the i64 range"))
        })?,
    )?;
    if next_id > EVENTS_KEPT + 1 {
        let cutoff = next_id - EVENTS_KEPT;
        table.retain_in(..cutoff, |_, _| false)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str) -> LifecycleEvent {
        LifecycleEvent::new(kind, "info", Some("m"), json!({"k": kind}), 7)
    }

    #[test]
    fn records_and_events_commit_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mintd.redb");
        let mut record = ModelRecord::new("m");
        record.highest_sequence = 4;
        {
            let db = StateDb::open(&path).unwrap();
            assert_eq!(db.get("m").unwrap(), None);
            let stored = db.commit("m", &record, &[event("a"), event("b")]).unwrap();
            assert_eq!(stored.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
            db.commit("n", &ModelRecord::new("n"), &[]).unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.get("m").unwrap(), Some(record));
        assert_eq!(db.all().unwrap().len(), 2);
        // Ids keep growing across reopen.
        let more = db.append_events(&[event("c")]).unwrap();
        assert_eq!(more[0].id, 3);
        let all = db.events_since(0, 10).unwrap();
        assert_eq!(
            all.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(db.events_since(1, 1).unwrap()[0].kind, "b");
        assert!(db.events_since(3, 10).unwrap().is_empty());
        assert!(db.events_since(u64::MAX, 10).unwrap().is_empty());
    }

    #[test]
    fn the_journal_keeps_the_newest_events() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("mintd.redb")).unwrap();
        let batch: Vec<_> = (0..EVENTS_KEPT + 50).map(|_| event("x")).collect();
        db.append_events(&batch).unwrap();
        let first = db.events_since(0, 1).unwrap();
        assert_eq!(first[0].id, 51);
        db.append_events(&[event("y")]).unwrap();
        assert_eq!(db.events_since(0, 1).unwrap()[0].id, 52);
        assert_eq!(
            db.events_since(0, usize::MAX).unwrap().len() as u64,
            EVENTS_KEPT
        );
    }

    fn msg(n: usize) -> OutboxMessage {
        OutboxMessage {
            destination: "t".into(),
            payload: vec![b'x'; n],
        }
    }

    const WIDE: OutboxBounds = OutboxBounds {
        max_messages: 1000,
        max_bytes: 1 << 20,
    };

    #[test]
    fn outbox_messages_survive_reopen_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mintd.redb");
        {
            let db = StateDb::open(&path).unwrap();
            let pushed = db
                .outbox_push(&[msg(3), msg(4), msg(5)], WIDE, Some(("events", 9)))
                .unwrap();
            assert_eq!(pushed.ids, [1, 2, 3]);
            assert_eq!(pushed.stats.messages, 3);
            assert_eq!(pushed.stats.bytes, 4 + 5 + 6);
            db.outbox_remove(&[2], false).unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        let left = db.outbox_peek(0, 10).unwrap();
        assert_eq!(left.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(left[1].1, msg(5));
        assert_eq!(db.cursor("events").unwrap(), 9);
        assert_eq!(db.cursor("other").unwrap(), 0);
        // Ids keep growing; removing an unknown id is harmless.
        let stats = db.outbox_remove(&[1, 3, 77], true).unwrap();
        assert_eq!((stats.messages, stats.bytes), (0, 0));
        assert_eq!(db.outbox_push(&[msg(1)], WIDE, None).unwrap().ids, [4]);
        assert_eq!(db.outbox_peek(3, 10).unwrap().len(), 1);
        assert!(db.outbox_peek(4, 10).unwrap().is_empty());
    }

    #[test]
    fn outbox_drops_the_oldest_beyond_its_bounds_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("mintd.redb")).unwrap();
        let by_count = OutboxBounds {
            max_messages: 3,
            max_bytes: 1 << 20,
        };
        let batch: Vec<_> = (0..5).map(|_| msg(9)).collect();
        let pushed = db.outbox_push(&batch, by_count, None).unwrap();
        assert_eq!(pushed.dropped, 2);
        assert_eq!(pushed.stats.messages, 3);
        let ids: Vec<u64> = db.outbox_peek(0, 10).unwrap().iter().map(|m| m.0).collect();
        assert_eq!(ids, [3, 4, 5]);
        let by_bytes = OutboxBounds {
            max_messages: 100,
            max_bytes: 25,
        };
        let pushed = db.outbox_push(&[msg(9)], by_bytes, None).unwrap();
        // 4 messages of 10 bytes: two must go.
        assert_eq!(pushed.dropped, 2);
        assert_eq!(pushed.stats.bytes, 20);
        // One message bigger than the whole bound goes at once.
        let pushed = db.outbox_push(&[msg(99)], by_bytes, None).unwrap();
        assert_eq!(pushed.stats.messages, 0);
        assert_eq!(pushed.stats.dropped, 2 + 2 + 3);
        db.outbox_count_dropped(5).unwrap();
        assert_eq!(db.outbox_stats().unwrap().dropped, 12);
    }

    #[test]
    fn trusted_time_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let db = StateDb::open(&dir.path().join("mintd.redb")).unwrap();
        assert_eq!(db.trusted_time().unwrap(), None);
        assert_eq!(db.raise_trusted_time(100).unwrap(), 100);
        assert_eq!(db.raise_trusted_time(50).unwrap(), 100);
        assert_eq!(db.trusted_time().unwrap(), Some(100));
    }

    #[test]
    fn a_second_open_of_the_same_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mintd.redb");
        let _db = StateDb::open(&path).unwrap();
        let err = StateDb::open(&path).unwrap_err();
        assert!(err.to_string().contains("mintd.redb: opening"), "{err}");
    }
}
