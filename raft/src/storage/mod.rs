//! Durable storage of every group on a node, in one sled database.
//!
//! # Layout
//!
//! One sled database per node; every group's data lives under its group id as
//! an 8-byte big-endian key prefix, so that a node's thousands of groups share
//! a handful of trees and one write-ahead log (and therefore one flush):
//!
//! | tree       | key                          | value                        |
//! |------------|------------------------------|------------------------------|
//! | `groups`   | group                        | [`GroupRecord`]              |
//! | `log`      | group ‖ index (big-endian)   | a Raft [`Entry`](crate::typ::Entry) |
//! | `raft`     | group ‖ tag byte             | vote, committed, last purged |
//! | `snapshot` | group                        | [`state::SnapshotRecord`]    |
//!
//! # Durability and group commit
//!
//! sled flushes on its own only every 500 ms, so nothing here is durable until
//! [`Flusher`] has flushed it. A vote, and a log append, is written and then
//! waits for a flush that began after the write; only then does the call
//! return (openraft 0.9 answers a leader's append-entries as soon as `append`
//! returns, so waiting for the callback alone would not do). Writes from
//! every group that arrive while a flush runs share the following one: one
//! `fsync` for many entries, across groups.
//!
//! The state machine is kept in memory and persisted as a snapshot record that
//! holds the applied log id and the state it produced in one value, so a crash
//! can never separate them; after a restart the entries after the snapshot are
//! applied again from the log (see [`state`]).

pub mod log;
pub mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::codec;
use crate::error::Error;
use crate::typ::GroupId;

pub use self::log::LogStore;
pub use self::state::StateMachineStore;

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

/// The node's sled database and the trees every group shares.
#[derive(Clone)]
pub struct Storage {
    db: sled::Db,
    groups: sled::Tree,
    log: sled::Tree,
    raft: sled::Tree,
    snapshot: sled::Tree,
    flusher: Flusher,
}

impl Storage {
    /// Opens (or creates) the database in `dir`, with a page cache of
    /// `cache_bytes`, and starts its flusher on the current tokio runtime.
    pub fn open(dir: &std::path::Path, cache_bytes: u64) -> Result<Self, Error> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()?;
        Self::from_db(db)
    }

    /// Uses an already open database (for tests on temporary databases).
    pub fn from_db(db: sled::Db) -> Result<Self, Error> {
        Ok(Self {
            groups: db.open_tree("groups")?,
            log: db.open_tree("log")?,
            raft: db.open_tree("raft")?,
            snapshot: db.open_tree("snapshot")?,
            flusher: Flusher::start(db.clone()),
            db,
        })
    }

    /// The log store of one group.
    pub fn log_store(&self, group: GroupId) -> LogStore {
        LogStore::new(
            group,
            self.log.clone(),
            self.raft.clone(),
            self.flusher.clone(),
        )
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
        // next removal or an idle scan can sweep, never a group without its log.
        self.groups.remove(group.to_be_bytes())?;
        self.snapshot.remove(group.to_be_bytes())?;
        for tree in [&self.log, &self.raft] {
            let mut batch = sled::Batch::default();
            for key in tree.scan_prefix(group.to_be_bytes()).keys() {
                batch.remove(key?);
            }
            tree.apply_batch(batch)?;
        }
        self.flusher.flush().await.map_err(Error::Storage)
    }

    /// Waits until everything written before the call is on disk. Calls that
    /// overlap share flushes with each other and with log appends.
    pub async fn flush(&self) -> Result<(), Error> {
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
    /// Appends and votes acknowledged by those flushes.
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
                // flush covers its data.
                // sled's own `flush_async` hands the flush to sled's thread
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

/// Key of `index` in `group`'s log.
pub(crate) fn log_key(group: GroupId, index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Key of one of `group`'s Raft variables.
pub(crate) fn raft_key(group: GroupId, tag: RaftVar) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8] = tag as u8;
    key
}

/// The Raft variables stored per group in the `raft` tree.
#[derive(Clone, Copy)]
#[repr(u8)]
pub(crate) enum RaftVar {
    Vote = 1,
    Committed = 2,
    LastPurged = 3,
}
