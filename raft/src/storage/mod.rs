//! Durable storage of every group on a node: the Raft log in the node's
//! [`engine::LogEngine`], everything else in one sled database.
//!
//! # Layout
//!
//! Every group's Raft log entries and Raft variables (vote, committed, last
//! purged) are in the log engine's segment files under `<data dir>/raftlog/`
//! (see [`engine`]), shared by all the node's groups so that they share one
//! sync. sled holds what changes rarely; every group's data lives under its
//! group id as an 8-byte big-endian key prefix:
//!
//! | tree       | key                          | value                        |
//! |------------|------------------------------|------------------------------|
//! | `groups`   | group                        | [`GroupRecord`]              |
//! | `snapshot` | group                        | [`state::SnapshotRecord`]    |
//!
//! A data directory written before the engine kept the log in the sled trees
//! `log` (group ‖ index) and `raft` (group ‖ tag byte); opening it moves both
//! into the engine once.
//!
//! # Durability and group commit
//!
//! A vote, and a log append, is written and then waits until the engine's
//! flush thread has synced it; only then does the call return (openraft 0.9
//! answers a leader's append-entries as soon as `append` returns, so waiting
//! for the callback alone would not do). Writes from every group that arrive
//! while a sync runs share the following one.
//!
//! sled flushes on its own only every 500 ms, so a snapshot or a group record
//! is durable only once `Flusher` has flushed sled; calls that overlap share
//! one flush.
//!
//! The state machine is kept in memory and persisted as a snapshot record that
//! holds the applied log id and the state it produced in one value, so a crash
//! can never separate them; after a restart the entries after the snapshot are
//! applied again from the log (see [`state`]).

pub mod engine;
pub mod log;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::error::Error;
use crate::typ::GroupId;

use self::engine::{LogEngine, Write};
pub use self::log::LogStore;
pub use self::state::{SnapshotMark, StateMachineStore};

/// The most completion callbacks one flush acknowledges; a longer queue is
/// served by the following flushes.
pub const MAX_WAITERS_PER_FLUSH: usize = 8192;

/// Capacity of the queue of callbacks waiting for a flush; appends wait for
/// room when it is full.
pub const FLUSH_QUEUE_CAPACITY: usize = 16384;

/// What kind of group a stored group is, and what it needs to be reopened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupRecord {
    /// The cluster's meta group (always group 0).
    Meta,
    /// A location group.
    Location {
        /// The location's name in the meta group's directory.
        name: String,
    },
}

/// The node's Raft log engine, its sled database and the trees every group
/// shares.
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    groups: sled::Tree,
    snapshot: sled::Tree,
    flusher: Flusher,
    engine: LogEngine,
}

impl Storage {
    /// Opens (or creates) the database in `dir`, with a page cache of
    /// `cache_bytes`, and the Raft log in `dir/raftlog`; starts the sled
    /// flusher on the current tokio runtime.
    pub fn open(dir: &std::path::Path, cache_bytes: u64) -> Result<Self, Error> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()?;
        // After sled's: sled's lock on `dir` keeps a second process out.
        let engine = LogEngine::open(&dir.join("raftlog")).map_err(Error::Storage)?;
        import_sled_log(&db, &engine)?;
        Ok(Self {
            groups: db.open_tree("groups")?,
            snapshot: db.open_tree("snapshot")?,
            flusher: Flusher::start(db.clone()),
            engine,
            db,
        })
    }

    /// The log store of one group.
    pub fn log_store(&self, group: GroupId) -> LogStore {
        LogStore::new(group, self.engine.clone())
    }

    /// Every group this node holds, in id order.
    pub fn groups(&self) -> Result<Vec<(GroupId, GroupRecord)>, Error> {
        let mut out = Vec::new();
        for item in self.groups.iter() {
            let (key, value) = item?;
            out.push((group_from_key(&key)?, codec::decode(&value)?));
        }
        Ok(out)
    }

    /// Records that this node holds `group`, durably.
    pub async fn add_group(&self, group: GroupId, record: &GroupRecord) -> Result<(), Error> {
        self.groups
            .insert(group.to_be_bytes(), codec::encode(record))?;
        self.flusher.flush().await.map_err(Error::Storage)
    }

    /// Deletes everything stored for `group`, durably. The group's Raft must
    /// have been shut down first.
    pub async fn remove_group(&self, group: GroupId) -> Result<(), Error> {
        // The record goes first: a crash midway leaves orphan data that the
        // next start forgets (`forget_unrecorded`), never a group without its log.
        self.groups.remove(group.to_be_bytes())?;
        self.snapshot.remove(group.to_be_bytes())?;
        self.flusher.flush().await.map_err(Error::Storage)?;
        self.engine
            .write_durably(group, Write::Drop)
            .await
            .map_err(Error::Storage)
    }

    /// Forgets the Raft log of every group that has no record, except the
    /// meta group's: what a crash inside [`Self::remove_group`] (the record
    /// goes first) leaves behind. Returns the groups forgotten.
    pub async fn forget_unrecorded(&self) -> Result<Vec<GroupId>, Error> {
        let recorded: std::collections::BTreeSet<GroupId> =
            self.groups()?.into_iter().map(|(g, _)| g).collect();
        let mut forgotten = Vec::new();
        for group in self.engine.groups() {
            if group != crate::META_GROUP && !recorded.contains(&group) {
                self.engine
                    .write_durably(group, Write::Drop)
                    .await
                    .map_err(Error::Storage)?;
                forgotten.push(group);
            }
        }
        Ok(forgotten)
    }

    /// Waits until everything written before the call is on disk, the Raft
    /// log's and sled's. Calls that overlap share flushes with each other and
    /// with snapshot writes.
    pub async fn flush(&self) -> Result<(), Error> {
        self.engine.settle().await.map_err(Error::Storage)?;
        self.flusher.flush().await.map_err(Error::Storage)
    }

    /// The snapshot tree, for the state machine stores.
    pub(crate) fn snapshot_tree(&self) -> sled::Tree {
        self.snapshot.clone()
    }

    /// The shared flusher.
    pub(crate) fn flusher(&self) -> Flusher {
        self.flusher.clone()
    }

    /// How many flushes have run and how many waiters they acknowledged.
    pub fn flush_stats(&self) -> FlushStats {
        self.flusher.stats()
    }

    /// The underlying database, for tests that inspect it.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The Raft log engine, for tests that inspect it.
    pub fn engine(&self) -> &LogEngine {
        &self.engine
    }
}

/// Moves a log kept in sled's `log` and `raft` trees (data directories
/// written before the log engine) into the engine, then empties the trees.
/// A crash midway repeats the move at the next start; writing the same
/// entries and variables again changes nothing.
fn import_sled_log(db: &sled::Db, engine: &LogEngine) -> Result<(), Error> {
    let log = db.open_tree("log")?;
    let raft = db.open_tree("raft")?;
    if log.is_empty() && raft.is_empty() {
        return Ok(());
    }
    for item in raft.iter() {
        let (key, value) = item?;
        let group = group_from_key(&key)?;
        let tag = *key
            .get(8)
            .ok_or_else(|| Error::Storage("a stored Raft variable's key has no tag".into()))?;
        engine
            .write(group, Write::Var(tag, &value))
            .map_err(Error::Storage)?;
    }
    for item in log.iter() {
        let (key, value) = item?;
        let group = group_from_key(&key)?;
        let index: [u8; 8] = key
            .get(8..16)
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| Error::Storage("a stored log entry's key has no index".into()))?;
        engine
            .write(
                group,
                Write::Entries(&[(u64::from_be_bytes(index), value.to_vec())]),
            )
            .map_err(Error::Storage)?;
    }
    engine.sync().map_err(Error::Storage)?;
    log.clear()?;
    raft.clear()?;
    db.flush()?;
    Ok(())
}

fn group_from_key(key: &[u8]) -> Result<GroupId, Error> {
    let bytes: [u8; 8] = key
        .get(..8)
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| {
            Error::Storage(format!(
                "stored key of {} bytes has no group prefix",
                key.len()
            ))
        })?;
    Ok(GroupId::from_be_bytes(bytes))
}

/// Counters of the group-commit flusher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Flushes performed.
    pub flushes: u64,
    /// Callers (snapshot and group writes, `Storage::flush`) acknowledged by
    /// those flushes.
    pub waiters: u64,
}

/// Someone waiting for the next flush.
type Waiter = oneshot::Sender<Result<(), String>>;

/// The node's group-commit flusher: one task that flushes sled and then
/// acknowledges everything that was waiting when the flush began.
#[derive(Clone)]
pub(crate) struct Flusher {
    tx: mpsc::Sender<Waiter>,
    flushes: Arc<AtomicU64>,
    waiters: Arc<AtomicU64>,
}

impl Flusher {
    fn start(db: sled::Db) -> Self {
        let (tx, mut rx) = mpsc::channel::<Waiter>(FLUSH_QUEUE_CAPACITY);
        let flushes = Arc::new(AtomicU64::new(0));
        let waiters = Arc::new(AtomicU64::new(0));
        let (flush_count, waiter_count) = (flushes.clone(), waiters.clone());
        tokio::spawn(async move {
            let mut batch = Vec::new();
            // Ends when every store holding a sender has been dropped, which
            // also releases this task's handle on the database.
            while rx.recv_many(&mut batch, MAX_WAITERS_PER_FLUSH).await > 0 {
                // Every waiter in `batch` wrote before it was queued, so this
                // flush covers its data. sled's own `flush_async` hands the flush to sled's thread
                // pool, whose every job wakes all of its idle threads (seven
                // or more); tokio's blocking pool wakes one.
                let db = db.clone();
                let result = match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(flushed) => flushed.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(format!("the flush thread failed: {e}")),
                };
                flush_count.fetch_add(1, Ordering::Relaxed);
                waiter_count.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for done in batch.drain(..) {
                    let _ = done.send(result.clone());
                }
            }
        });
        Self {
            tx,
            flushes,
            waiters,
        }
    }

    /// Waits until everything written before the call is on disk.
    pub(crate) async fn flush(&self) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(done)
            .await
            .map_err(|_| Error::ShuttingDown.to_string())?;
        wait.await.map_err(|_| Error::ShuttingDown.to_string())?
    }

    fn stats(&self) -> FlushStats {
        FlushStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            waiters: self.waiters.load(Ordering::Relaxed),
        }
    }
}

/// The tags of the Raft variables each group keeps in the log engine.
#[derive(Clone, Copy)]
#[repr(u8)]
pub(crate) enum RaftVar {
    Vote = 1,
    Committed = 2,
    LastPurged = 3,
}
