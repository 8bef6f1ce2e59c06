//! openraft's log storage for one group, on the node's shared
//! [`LogEngine`].
//!
//! Writes are applied in call order (openraft requires log and vote I/O to
//! be serialized) and are readable at once; they are durable only after the
//! engine's flush thread has synced them. Votes, appends and truncations wait for that
//! before returning.

// openraft's trait methods return its StorageError by value; the helpers here
// return the same type rather than box it and unbox it again.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{OptionalSend, StorageIOError};

use super::engine::{LogEngine, Write};
use super::{RaftVar, SnapshotMark};
use crate::codec;
use crate::typ::{Entry, GroupId, LogId, NodeId, StorageError, TypeConfig, Vote};

/// The Raft log, vote and purge/commit marks of one group.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    engine: LogEngine,
    /// The node this store belongs to, when known (see [`Self::read_vote`]).
    local_node: Option<NodeId>,
    /// The group's stored snapshot, which a purge must not overtake (see
    /// [`Self::after_snapshots`]).
    snapshots: Option<SnapshotMark>,
}

impl LogStore {
    pub(crate) fn new(group: GroupId, engine: LogEngine) -> Self {
        Self {
            group,
            engine,
            local_node: None,
            snapshots: None,
        }
    }

    /// The store as node `id` uses it: a leadership of `id` saved before a
    /// restart is not resumed (see [`RaftLogStorage::read_vote`] below).
    pub fn for_node(mut self, id: NodeId) -> Self {
        self.local_node = Some(id);
        self
    }

    /// The store as a node uses it next to the group's state machine: a
    /// purge waits until a snapshot covering it is on disk.
    ///
    /// openraft 0.9 issues the purge that follows an installed snapshot
    /// right after handing the snapshot to the state machine task, without
    /// waiting for it to be saved. Had the purge reached the disk first, a
    /// crash in between would leave a log starting after the stored
    /// snapshot, and the group could not be rebuilt. A purge after a
    /// snapshot this node built never waits: the build saves its snapshot
    /// before openraft learns of it. If the install fails, or openraft's
    /// state machine task stops first, the purge fails rather than wait.
    ///
    /// openraft's storage suite purges logs no snapshot covers, so it runs
    /// the store without this.
    pub fn after_snapshots(mut self, snapshots: SnapshotMark) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    fn read_var<T: serde::de::DeserializeOwned>(
        &self,
        var: RaftVar,
    ) -> Result<Option<T>, StorageError> {
        match self.engine.var(self.group, var as u8) {
            None => Ok(None),
            Some(bytes) => codec::decode(&bytes)
                .map(Some)
                .map_err(|e| StorageIOError::read(openraft::AnyError::error(e)).into()),
        }
    }

    fn write_var<T: serde::Serialize>(&self, var: RaftVar, value: &T) -> Result<u64, StorageError> {
        let value = codec::encode(value);
        let write = Write::Var(var as u8, &value);
        match var {
            // Rides on the next sync (see `save_committed`).
            RaftVar::Committed => self.engine.write_lazily(self.group, write),
            RaftVar::Vote | RaftVar::LastPurged => self.engine.write(self.group, write),
        }
        .map_err(|e| StorageIOError::write(openraft::AnyError::error(e)).into())
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let Some((_, last)) = self.engine.bounds(self.group) else {
            return Ok(None);
        };
        let entries = self
            .engine
            .entries(self.group, last..=last)
            .map_err(|e| StorageIOError::read_logs(openraft::AnyError::error(e)))?;
        match entries.first() {
            None => Ok(None),
            Some((_, bytes)) => {
                let entry: Entry =
                    codec::decode(bytes).map_err(|e| StorageIOError::read_logs(&e))?;
                Ok(Some(entry.log_id))
            }
        }
    }

    fn write_logs(&self, write: Write<'_>) -> Result<u64, StorageError> {
        self.engine
            .write(self.group, write)
            .map_err(|e| StorageIOError::write_logs(openraft::AnyError::error(e)).into())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Some(i),
            Bound::Excluded(&0) => return Ok(Vec::new()),
            Bound::Excluded(&i) => Some(i - 1),
            Bound::Unbounded => None,
        };
        let end = end.unwrap_or(u64::MAX);
        if start > end {
            return Ok(Vec::new());
        }
        let mut entries = Vec::new();
        for (_, bytes) in self
            .engine
            .entries(self.group, start..=end)
            .map_err(|e| StorageIOError::read_logs(openraft::AnyError::error(e)))?
        {
            entries
                .push(codec::decode::<Entry>(&bytes).map_err(|e| StorageIOError::read_logs(&e))?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_var(RaftVar::LastPurged)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let ticket = self.write_var(RaftVar::Vote, vote)?;
        // A vote counts only once it is on disk: a node that forgot its vote
        // after a crash could vote twice in one term.
        self.engine
            .durable(ticket)
            .await
            .map_err(|e| StorageIOError::write_vote(openraft::AnyError::error(e)).into())
    }

    /// openraft 0.9 resumes leadership at start-up when the saved vote is a
    /// committed vote for this node, without appending an entry in a new
    /// term; its read index is then its saved commit index, which may be
    /// older than writes it acknowledged before the restart, so a
    /// linearizable read could miss them. Reported as not committed, the
    /// vote still binds this node in its term, and the node wins leadership
    /// back only through an election in a new term, whose first entry
    /// commits everything before it.
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote: Option<Vote> = self.read_var(RaftVar::Vote)?;
        Ok(vote.map(|v| match self.local_node {
            Some(me) if v.committed && v.leader_id.node_id == me => Vote::new(v.leader_id.term, me),
            _ => v,
        }))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed on its own: it rides on the next flush. A stale value
        // after a crash only means re-applying fewer entries at start-up.
        self.write_var(RaftVar::Committed, &committed).map(|_| ())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_var::<Option<LogId>>(RaftVar::Committed)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| (entry.log_id.index, codec::encode(&entry)))
            .collect();
        let ticket = self.write_logs(Write::Entries(&entries))?;
        if cfg!(garrison_unsafe_early_ack) {
            // The deliberately broken build: report entries durable before
            // they are flushed, so a crash can lose acknowledged writes.
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // openraft 0.9 answers a leader's append-entries as soon as this
        // returns, without waiting for the callback: a follower would count
        // toward a commit with the entries still in memory, and a crash of
        // every node could then lose an acknowledged write. So the entries
        // are on disk before this returns. Appends of other groups that
        // arrive meanwhile share the same sync.
        let flushed = self.engine.durable(ticket).await;
        callback.log_io_completed(flushed.clone().map_err(std::io::Error::other));
        flushed.map_err(|e| StorageIOError::write_logs(openraft::AnyError::error(e)).into())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Durable before openraft goes on: installing a snapshot truncates
        // the conflicting entries and then saves the snapshot (in sled); a
        // crash between the two must not bring back entries from an older
        // term behind the snapshot.
        let ticket = self.write_logs(Write::Truncate(log_id.index))?;
        self.engine
            .durable(ticket)
            .await
            .map_err(|e| StorageIOError::write_logs(openraft::AnyError::error(e)).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some(snapshots) = &mut self.snapshots {
            snapshots
                .covers(log_id.index)
                .await
                .map_err(|e| StorageIOError::write_logs(openraft::AnyError::error(e)))?;
        }
        // Record the mark before deleting, so a crash in between never leaves a
        // log that starts later than its purge mark says.
        self.write_var(RaftVar::LastPurged, &log_id)?;
        self.write_logs(Write::Purge(log_id.index)).map(|_| ())
    }
}
