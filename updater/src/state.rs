//! The state database (`mintd.redb`): one record per model, the event journal and a few
//! counters, in one redb file with durable commits.
//!
//! Tables:
//! - `models`: model name → [`ModelRecord`] as JSON;
//! - `meta`: `trusted_time` (unix seconds), `next_event_id`;
//! - `events`: id → [`LifecycleEvent`] as JSON; the newest [`EVENTS_KEPT`] are kept, older
//!   ones are deleted in the transaction that adds new ones.
//!
//! A record and the events of its transition are written in ONE write transaction, committed
//! with `Durability::Immediate`, so that they are on disk before the driver acts on them.

use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

pub use crate::lifecycle::LifecycleEvent;
use crate::lifecycle::ModelRecord;

const MODELS: TableDefinition<&str, &str> = TableDefinition::new("models");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &str> = TableDefinition::new("events");

const TRUSTED_TIME: &str = "trusted_time";
const NEXT_EVENT_ID: &str = "next_event_id";

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
