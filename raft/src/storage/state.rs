//! openraft's state machine for one group: the log-side bookkeeping around a
//! [`GroupApp`].
//!
//! The app's state lives in memory. It is persisted only as a snapshot record
//! (applied log id, membership, log time and the app's encoded state in one
//! sled value), written when openraft builds or installs a snapshot. At
//! start-up the store restores the last record and reports its log id as
//! applied; openraft then re-applies the committed entries after it from the
//! log. Applied index and state are therefore always persisted together.

use std::collections::VecDeque;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, StorageIOError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Flusher, Storage};
use crate::app::{ApplyContext, GroupApp};
use crate::codec;
use crate::typ::{
    Entry, GroupId, LogId, Reply, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

/// Version of [`SnapshotImage`]; bumped when its layout changes.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;

/// What a group keeps in the `snapshot` tree: the snapshot's metadata and data
/// together, so the applied log id and the state it produced are one value.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Last included log id, membership and snapshot id.
    pub meta: SnapshotMeta,
    /// The encoded [`SnapshotImage`].
    pub data: Vec<u8>,
}

/// How many recent (index, chain value) pairs a group keeps, so replicas at
/// slightly different indexes can still be compared at a common one.
pub const CHAIN_HISTORY_LEN: usize = 4096;

/// Domain separation for the hash chain.
const CHAIN_DOMAIN: &[u8] = b"garrison/chain/v1";

/// The bytes of a snapshot, as stored and as sent to followers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotImage {
    /// [`SNAPSHOT_FORMAT_VERSION`] when written.
    pub format_version: u16,
    /// The log time of the last included entry.
    pub log_time_ms: u64,
    /// The hash chain value at the last included entry.
    pub chain: [u8; 32],
    /// The app's [`GroupApp::snapshot`] bytes.
    pub app: Vec<u8>,
}

/// How far this node's stored snapshot of a group reaches, once it is on
/// disk (the index of its last entry), or why no purge can count on it any
/// more: an install failed, or openraft's state machine task stopped.
///
/// The group's log store waits on it before a purge (see
/// [`LogStore::after_snapshots`](super::LogStore::after_snapshots)).
#[derive(Clone)]
pub struct SnapshotMark(tokio::sync::watch::Receiver<Durable>);

#[derive(Clone, Debug, Default)]
pub(crate) struct Durable {
    /// `None`: no snapshot stored (openraft's first index is 0).
    index: Option<u64>,
    failed: Option<String>,
}

impl SnapshotMark {
    /// Waits until a snapshot that covers `index` is on disk.
    pub async fn covers(&mut self, index: u64) -> Result<(), String> {
        let durable = self
            .0
            .wait_for(|d| d.index >= Some(index) || d.failed.is_some())
            .await
            .map_err(|_| "the state machine was closed".to_string())?;
        match &durable.failed {
            Some(e) if durable.index < Some(index) => Err(e.clone()),
            _ => Ok(()),
        }
    }
}

/// Held by the copy of a [`StateMachineStore`] given to openraft: when its
/// task has stopped (an error, a panic in apply, shutdown) and dropped the
/// last of it, no install will come, so a purge must not wait for one.
struct TaskAlive(Arc<tokio::sync::watch::Sender<Durable>>);

impl Drop for TaskAlive {
    fn drop(&mut self) {
        self.0.send_modify(|d| {
            d.failed
                .get_or_insert_with(|| "openraft's state machine task stopped".into());
        });
    }
}

/// The applied state of one group, readable by queries.
pub struct AppliedState {
    /// The last applied log id.
    pub last_applied: Option<LogId>,
    /// The membership as of the last applied entry.
    pub membership: StoredMembership,
    /// The log time of the last applied entry.
    pub log_time_ms: u64,
    /// The group's application.
    pub app: Box<dyn GroupApp>,
    /// The rolling hash over every applied entry:
    /// `h(i) = SHA-256(domain ‖ h(i-1) ‖ index ‖ term ‖ encoded payload)`.
    pub chain: [u8; 32],
    /// Recent chain values, oldest first, at most [`CHAIN_HISTORY_LEN`].
    history: VecDeque<(u64, [u8; 32])>,
}

impl AppliedState {
    /// The index of the last applied entry (0: none yet).
    pub fn applied_index(&self) -> u64 {
        self.last_applied.map(|l| l.index).unwrap_or(0)
    }

    /// The chain value after applying `index`, if this replica still holds it.
    pub fn chain_at(&self, index: u64) -> Option<[u8; 32]> {
        let at = self
            .history
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()?;
        Some(self.history[at].1)
    }

    /// SHA-256 of the app's snapshot: equal states give equal digests.
    pub fn state_digest(&self) -> [u8; 32] {
        Sha256::digest(self.app.snapshot()).into()
    }

    /// Advances the hash chain over one applied entry.
    fn extend_chain(&mut self, entry: &Entry) {
        let mut h = Sha256::new();
        h.update(CHAIN_DOMAIN);
        h.update(self.chain);
        h.update(entry.log_id.index.to_be_bytes());
        h.update(entry.log_id.leader_id.term.to_be_bytes());
        h.update(codec::encode(&entry.payload));
        self.chain = h.finalize().into();
        self.remember_chain(entry.log_id.index);
    }

    fn remember_chain(&mut self, index: u64) {
        if self.history.len() == CHAIN_HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back((index, self.chain));
    }

    /// Replaces the state with a restored snapshot's.
    fn restore_from(&mut self, meta: &SnapshotMeta, image: &SnapshotImage) -> Result<(), String> {
        check_version(image)?;
        self.app.restore(&image.app)?;
        self.app
            .restored_at(meta.last_log_id.map(|l| l.index).unwrap_or(0));
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.log_time_ms = image.log_time_ms;
        self.chain = image.chain;
        self.history.clear();
        if let Some(id) = meta.last_log_id {
            self.remember_chain(id.index);
        }
        Ok(())
    }
}

/// The state machine store of one group. Clones share the same state.
#[derive(Clone)]
pub struct StateMachineStore {
    group: GroupId,
    tree: sled::Tree,
    flusher: Flusher,
    state: Arc<RwLock<AppliedState>>,
    snapshots_built: Arc<AtomicU64>,
    /// Serializes snapshot writes (see `persist`).
    persisting: Arc<tokio::sync::Mutex<()>>,
    /// Where the stored snapshot reaches, once flushed.
    durable: Arc<tokio::sync::watch::Sender<Durable>>,
    /// Set in the copy openraft runs (see [`Self::for_raft`]).
    _task_alive: Option<Arc<TaskAlive>>,
}

impl StateMachineStore {
    /// Opens the state machine of `group` around `app`, restoring the last
    /// persisted snapshot if there is one.
    pub fn open(
        storage: &Storage,
        group: GroupId,
        app: Box<dyn GroupApp>,
    ) -> Result<Self, crate::Error> {
        let tree = storage.snapshot_tree();
        let mut state = AppliedState {
            last_applied: None,
            membership: StoredMembership::default(),
            log_time_ms: 0,
            app,
            chain: [0; 32],
            history: VecDeque::new(),
        };
        let mut durable = Durable::default();
        if let Some(bytes) = tree.get(group.to_be_bytes())? {
            let record: SnapshotRecord = codec::decode_stored(&bytes)?;
            let image: SnapshotImage = codec::decode_stored(&record.data)?;
            state
                .restore_from(&record.meta, &image)
                .map_err(crate::Error::Storage)?;
            durable.index = record.meta.last_log_id.map(|l| l.index);
        }
        Ok(Self {
            group,
            tree,
            flusher: storage.flusher(),
            state: Arc::new(RwLock::new(state)),
            snapshots_built: Arc::new(AtomicU64::new(0)),
            persisting: Arc::new(tokio::sync::Mutex::new(())),
            durable: Arc::new(tokio::sync::watch::Sender::new(durable)),
            _task_alive: None,
        })
    }

    /// The copy to hand to `Raft::new`: once openraft's state machine task
    /// has dropped it (and every clone of it), purges waiting on
    /// [`Self::snapshot_mark`] fail instead of waiting for good.
    pub fn for_raft(&self) -> Self {
        Self {
            _task_alive: Some(Arc::new(TaskAlive(self.durable.clone()))),
            ..self.clone()
        }
    }

    /// Where this group's stored snapshot reaches once on disk; the log
    /// store waits on it before purging (see
    /// [`LogStore::after_snapshots`](super::LogStore::after_snapshots)).
    pub fn snapshot_mark(&self) -> SnapshotMark {
        SnapshotMark(self.durable.subscribe())
    }

    /// Read access to the applied state. Hold it briefly: apply waits for it.
    pub fn read(&self) -> RwLockReadGuard<'_, AppliedState> {
        self.state
            .read()
            .expect("a panic in apply poisons the state machine; the node must stop")
    }

    /// Saves `record` (unless a newer one is stored) and raises the mark.
    async fn persist(&self, record: &SnapshotRecord) -> Result<(), String> {
        self.write_record(record).await?;
        let reaches = record.meta.last_log_id.map(|l| l.index);
        self.durable.send_modify(|d| d.index = d.index.max(reaches));
        Ok(())
    }

    /// Writes `record` unless a newer one is stored, and flushes sled.
    async fn write_record(&self, record: &SnapshotRecord) -> Result<(), String> {
        // A snapshot built from older state can finish after an installed,
        // newer one: never let it replace the newer record.
        let _order = self.persisting.lock().await;
        let stored = self
            .tree
            .get(self.group.to_be_bytes())
            .map_err(|e| e.to_string())?;
        if let Some(stored) = stored {
            let stored: SnapshotRecord =
                codec::decode_stored(&stored).map_err(|e| e.to_string())?;
            if stored.meta.last_log_id > record.meta.last_log_id {
                return Ok(());
            }
        }
        self.tree
            .insert(self.group.to_be_bytes(), codec::encode(record))
            .map_err(|e| e.to_string())?;
        self.flusher.flush().await
    }
}

fn check_version(image: &SnapshotImage) -> Result<(), String> {
    if image.format_version != SNAPSHOT_FORMAT_VERSION {
        return Err(format!(
            "snapshot format version {} is not supported (expected {})",
            image.format_version, SNAPSHOT_FORMAT_VERSION
        ));
    }
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self
            .state
            .write()
            .expect("a panic in apply poisons the state machine; the node must stop");
        let state = &mut *state;
        let mut replies = Vec::new();
        for entry in entries {
            let log_id = entry.log_id;
            if let Some(why) = state.app.refusal() {
                tracing::error!(
                    group = self.group,
                    index = log_id.index,
                    "refusing to apply: {why}"
                );
                let e = format!("group {} refuses entry {}: {why}", self.group, log_id.index);
                return Err(StorageIOError::apply(log_id, openraft::AnyError::error(e)).into());
            }
            state.extend_chain(&entry);
            if let Some(last) = state.last_applied {
                // openraft applies in log order; its storage suite skips
                // indexes, so only monotonicity is asserted.
                assert!(
                    log_id.index > last.index,
                    "group {}: apply of {} after {}",
                    self.group,
                    log_id.index,
                    last.index
                );
            }
            let reply = match entry.payload {
                EntryPayload::Blank => Reply::default(),
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(log_id), membership);
                    Reply::default()
                }
                EntryPayload::Normal(proposal) => {
                    state.log_time_ms = state.log_time_ms.max(proposal.log_time_ms);
                    let ctx = ApplyContext {
                        group: self.group,
                        index: log_id.index,
                        term: log_id.leader_id.term,
                        leader: log_id.leader_id.node_id,
                        log_time_ms: state.log_time_ms,
                        membership: state.membership.membership(),
                    };
                    Reply(state.app.apply(&ctx, &proposal.payload))
                }
            };
            state.last_applied = Some(log_id);
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let restored = codec::decode_stored::<SnapshotImage>(&data)
            .map_err(|e| e.to_string())
            .and_then(|image| {
                self.state
                    .write()
                    .expect("a panic in apply poisons the state machine; the node must stop")
                    .restore_from(meta, &image)
            });
        let installed = match restored {
            Ok(()) => {
                let record = SnapshotRecord {
                    meta: meta.clone(),
                    data,
                };
                self.persist(&record).await
            }
            Err(e) => Err(e),
        };
        installed.map_err(|e| {
            // The purge openraft queued behind this install waits on the
            // mark: fail it too, or it would wait for good.
            let e = format!("snapshot {} not installed: {e}", meta.snapshot_id);
            self.durable.send_modify(|d| d.failed = Some(e.clone()));
            StorageIOError::write_snapshot(Some(meta.signature()), openraft::AnyError::error(e))
                .into()
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let bytes = self
            .tree
            .get(self.group.to_be_bytes())
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let Some(bytes) = bytes else { return Ok(None) };
        let record: SnapshotRecord =
            codec::decode_stored(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot {
            meta: record.meta,
            snapshot: Box::new(Cursor::new(record.data)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let (meta, data) = {
            let state = self.read();
            let image = SnapshotImage {
                format_version: SNAPSHOT_FORMAT_VERSION,
                log_time_ms: state.log_time_ms,
                chain: state.chain,
                app: state.app.snapshot(),
            };
            let seq = self.snapshots_built.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match state.last_applied {
                Some(id) => format!(
                    "{}-{}-{}-{seq}",
                    id.leader_id.term, id.leader_id.node_id, id.index
                ),
                None => format!("empty-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
                snapshot_id,
            };
            (meta, codec::encode(&image))
        };
        let record = SnapshotRecord { meta, data };
        // A failed build leaves purges alone: openraft purges only behind
        // a snapshot it was told of.
        self.persist(&record).await.map_err(|e| {
            StorageIOError::write_snapshot(
                Some(record.meta.signature()),
                openraft::AnyError::error(e),
            )
        })?;
        Ok(Snapshot {
            meta: record.meta,
            snapshot: Box::new(Cursor::new(record.data)),
        })
    }
}
