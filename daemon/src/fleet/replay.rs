//! The fleet's durable state, in the updater's redb file (`mintd.redb`): the replay cache of
//! command nonces and the commands still being carried out (an `install` whose download a
//! restart must resume).
//!
//! Tables (owned by the daemon; the updater does not know them):
//! - `fleet_nonces`: nonce → until when it must be remembered (unix seconds: the command's
//!   expiry plus the clock skew; after it the command is refused as expired anyway);
//! - `fleet_meta`: `nonce_floor`, the latest `until` of a nonce already purged. A command
//!   whose `until` is not above the floor is refused: its nonce may have been purged, so the
//!   cache could not tell a replay. A clock that jumps forward then back therefore cannot
//!   revive a purged nonce;
//! - `fleet_jobs`: job key → pending command (JSON), removed when the command has finished.
//!
//! Every write commits with `Durability::Immediate`: a nonce is on disk before its command
//! runs, a job before its download starts.

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

const NONCES: TableDefinition<&str, i64> = TableDefinition::new("fleet_nonces");
const META: TableDefinition<&str, i64> = TableDefinition::new("fleet_meta");
const JOBS: TableDefinition<&str, &str> = TableDefinition::new("fleet_jobs");
const NONCE_FLOOR: &str = "nonce_floor";

/// Most live nonces remembered; beyond it new commands are refused until some expire (never
/// evicted early: that would let a replay through).
pub const MAX_NONCES: usize = 10_000;

/// The fleet state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("fleet state in the state database: {action}: {source}")]
pub struct ReplayError {
    /// What was being done.
    pub action: &'static str,
    /// The database error.
    #[source]
    pub source: redb::Error,
}

/// What [`claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The nonce was new and is now remembered (durably).
    Claimed,
    /// The nonce was seen before.
    Seen,
    /// The nonce's window ends at or before the purge floor (given): it may have been
    /// forgotten, so the command is refused as expired.
    Stale(i64),
    /// [`MAX_NONCES`] live nonces are remembered (how many).
    Full(usize),
}

fn write<T>(
    db: &Database,
    action: &'static str,
    f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
) -> Result<T, ReplayError> {
    let run = || -> Result<T, redb::Error> {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let out = f(&txn)?;
        txn.commit()?;
        Ok(out)
    };
    run().map_err(|source| ReplayError { action, source })
}

/// Whether `nonce` is remembered (a read: nothing is claimed).
pub fn seen(db: &Database, nonce: &str) -> Result<bool, ReplayError> {
    let run = || -> Result<bool, redb::Error> {
        let txn = db.begin_read()?;
        match txn.open_table(NONCES) {
            Ok(t) => Ok(t.get(nonce)?.is_some()),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    };
    run().map_err(|source| ReplayError {
        action: "reading the replay cache",
        source,
    })
}

/// Remembers `nonce` until `until` (unix seconds) unless it is known, first forgetting every
/// nonce whose window ended at or before `now`. When claimed, `job` (key, JSON) is stored in
/// the same durable transaction, so a command is never remembered as obeyed without the work
/// it started, nor started twice.
pub fn claim(
    db: &Database,
    nonce: &str,
    until: i64,
    now: i64,
    max: usize,
    job: Option<(&str, &str)>,
) -> Result<Claim, ReplayError> {
    write(db, "claiming a command nonce", |txn| {
        let mut nonces = txn.open_table(NONCES)?;
        let mut meta = txn.open_table(META)?;
        if nonces.get(nonce)?.is_some() {
            return Ok(Claim::Seen);
        }
        let mut floor = meta.get(NONCE_FLOOR)?.map_or(i64::MIN, |v| v.value());
        let mut purged_max = None::<i64>;
        nonces.retain(|_, u| {
            if u <= now {
                purged_max = Some(purged_max.map_or(u, |m: i64| m.max(u)));
                false
            } else {
                true
            }
        })?;
        if let Some(p) = purged_max {
            if p > floor {
                floor = p;
                meta.insert(NONCE_FLOOR, floor)?;
            }
        }
        if until <= floor {
            return Ok(Claim::Stale(floor));
        }
        let live = nonces.len()? as usize;
        if live >= max {
            return Ok(Claim::Full(live));
        }
        nonces.insert(nonce, until)?;
        if let Some((key, json)) = job {
            txn.open_table(JOBS)?.insert(key, json)?;
        }
        Ok(Claim::Claimed)
    })
}

/// Stores (or replaces) a pending job.
pub fn put_job(db: &Database, key: &str, json: &str) -> Result<(), ReplayError> {
    write(db, "storing a pending command", |txn| {
        txn.open_table(JOBS)?.insert(key, json)?;
        Ok(())
    })
}

/// Removes a finished job.
pub fn remove_job(db: &Database, key: &str) -> Result<(), ReplayError> {
    write(db, "removing a finished command", |txn| {
        remove_job_in(txn, key)
    })
}

/// Removes the pending job `key` within the caller's transaction (see
/// `StateDb::outbox_push_and`: the job goes in the transaction that stores its result).
pub fn remove_job_in(txn: &redb::WriteTransaction, key: &str) -> Result<(), redb::Error> {
    txn.open_table(JOBS)?.remove(key)?;
    Ok(())
}

/// Every pending job, by key (oldest first when keys start with a zero-padded time).
pub fn jobs(db: &Database) -> Result<Vec<(String, String)>, ReplayError> {
    let run = || -> Result<Vec<(String, String)>, redb::Error> {
        let txn = db.begin_read()?;
        let table = match txn.open_table(JOBS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    };
    run().map_err(|source| ReplayError {
        action: "reading pending commands",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("t.redb")).unwrap();
        (dir, db)
    }

    #[test]
    fn a_nonce_is_claimed_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.redb");
        {
            let db = Database::create(&path).unwrap();
            assert!(!seen(&db, "n1").unwrap());
            assert_eq!(
                claim(&db, "n1", 200, 100, 10, None).unwrap(),
                Claim::Claimed
            );
            assert_eq!(claim(&db, "n1", 200, 100, 10, None).unwrap(), Claim::Seen);
        }
        let db = Database::create(&path).unwrap();
        assert!(seen(&db, "n1").unwrap());
        assert_eq!(claim(&db, "n1", 200, 150, 10, None).unwrap(), Claim::Seen);
    }

    #[test]
    fn expired_nonces_are_purged_and_the_floor_refuses_what_they_could_hide() {
        let (_d, db) = db();
        assert_eq!(claim(&db, "a", 200, 100, 10, None).unwrap(), Claim::Claimed);
        assert_eq!(claim(&db, "b", 300, 100, 10, None).unwrap(), Claim::Claimed);
        // At 250, "a" (until 200) is purged; the floor becomes 200.
        assert_eq!(claim(&db, "c", 400, 250, 10, None).unwrap(), Claim::Claimed);
        assert!(!seen(&db, "a").unwrap());
        assert!(seen(&db, "b").unwrap());
        // The clock goes back to 150: "a" would be fresh again, but its window ends at the
        // floor, so it is refused instead of replayed.
        assert_eq!(
            claim(&db, "a", 200, 150, 10, None).unwrap(),
            Claim::Stale(200)
        );
        assert_eq!(
            claim(&db, "d", 199, 150, 10, None).unwrap(),
            Claim::Stale(200)
        );
        assert_eq!(claim(&db, "e", 201, 150, 10, None).unwrap(), Claim::Claimed);
    }

    #[test]
    fn a_full_cache_refuses_rather_than_evicts() {
        let (_d, db) = db();
        for i in 0..3 {
            assert_eq!(
                claim(&db, &format!("n{i}"), 1_000, 0, 3, None).unwrap(),
                Claim::Claimed
            );
        }
        assert_eq!(claim(&db, "n9", 1_000, 0, 3, None).unwrap(), Claim::Full(3));
        assert_eq!(claim(&db, "n0", 1_000, 0, 3, None).unwrap(), Claim::Seen);
        // Once they expire there is room again.
        assert_eq!(
            claim(&db, "n9", 2_000, 1_000, 3, None).unwrap(),
            Claim::Claimed
        );
    }

    #[test]
    fn jobs_are_stored_listed_and_removed() {
        let (_d, db) = db();
        assert!(jobs(&db).unwrap().is_empty());
        // A job goes in with its nonce, and not with a refused one.
        assert_eq!(
            claim(&db, "n", 10, 0, 5, Some(("000-n", "{}"))).unwrap(),
            Claim::Claimed
        );
        assert_eq!(
            claim(&db, "n", 10, 0, 5, Some(("000-x", "{}"))).unwrap(),
            Claim::Seen
        );
        assert_eq!(jobs(&db).unwrap().len(), 1);
        remove_job(&db, "000-n").unwrap();
        put_job(&db, "002-b", "{\"b\":1}").unwrap();
        put_job(&db, "001-a", "{}").unwrap();
        assert_eq!(
            jobs(&db).unwrap(),
            vec![
                ("001-a".to_owned(), "{}".to_owned()),
                ("002-b".to_owned(), "{\"b\":1}".to_owned())
            ]
        );
        remove_job(&db, "001-a").unwrap();
        remove_job(&db, "nope").unwrap();
        assert_eq!(jobs(&db).unwrap().len(), 1);
    }
}
