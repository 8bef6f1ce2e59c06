//! The openraft type configuration shared by every group, and short aliases
//! for the openraft types the rest of the crate names.
//!
//! Every group on every node uses the same [`TypeConfig`]: what differs between
//! the meta group and a location group is the [`crate::GroupApp`] behind the
//! state machine, not the Raft types. Only this crate imports openraft; the
//! aliases here keep the generic parameters out of everyone else's way.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// Identifies a node in the cluster. Node ids are chosen by the operator and
/// never reused for a different machine.
pub type NodeId = u64;

/// Identifies a Raft group on a node and on the wire. Group 0 is the meta
/// group; location groups get ids from the meta group, never reused.
pub type GroupId = u64;

/// The meta group's id: it exists on every node of the cluster.
pub const META_GROUP: GroupId = 0;

/// What a client proposes to a group: opaque application bytes, stamped by the
/// leader with its log time when it proposes them.
///
/// The log time is the only clock a state machine ever sees. Apply makes it
/// monotonic (`max(previous, stamped)`), so a leader with a clock behind its
/// predecessor's cannot make time go backwards inside the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Milliseconds since the Unix epoch on the leader's clock when it proposed.
    pub log_time_ms: u64,
    /// The application's encoded command; its meaning belongs to the group's app.
    pub payload: Vec<u8>,
}

impl std::fmt::Display for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Proposal(t={}ms, {} bytes)",
            self.log_time_ms,
            self.payload.len()
        )
    }
}

/// What apply returns for one entry: the application's encoded reply. Blank
/// and membership entries reply with an empty vector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply(pub Vec<u8>);

openraft::declare_raft_types!(
    /// The Raft type configuration of every garrison group.
    pub TypeConfig:
        D = Proposal,
        R = Reply,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// One Raft instance of one group.
pub type Raft = openraft::Raft<TypeConfig>;
/// A node's address as Raft stores it in memberships.
pub type Node = openraft::BasicNode;
/// A log entry of any group.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log position: (leader term and node, index).
pub type LogId = openraft::LogId<NodeId>;
/// A vote: (term, candidate, committed).
pub type Vote = openraft::Vote<NodeId>;
/// A membership together with the log id that set it.
pub type StoredMembership = openraft::StoredMembership<NodeId, Node>;
/// A membership configuration.
pub type Membership = openraft::Membership<NodeId, Node>;
/// Metadata of a snapshot: last included log id and membership.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, Node>;
/// A snapshot as openraft hands it around.
pub type Snapshot = openraft::storage::Snapshot<TypeConfig>;
/// An error of the storage layer as openraft wants it reported.
pub type StorageError = openraft::StorageError<NodeId>;
/// Metrics of one group, as published by openraft.
pub type RaftMetrics = openraft::RaftMetrics<NodeId, Node>;
/// openraft's generic error wrapper for API calls.
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
/// Append-entries request.
pub type AppendEntriesRequest = openraft::raft::AppendEntriesRequest<TypeConfig>;
/// Append-entries response.
pub type AppendEntriesResponse = openraft::raft::AppendEntriesResponse<NodeId>;
/// Vote request.
pub type VoteRequest = openraft::raft::VoteRequest<NodeId>;
/// Vote response.
pub type VoteResponse = openraft::raft::VoteResponse<NodeId>;
/// One chunk of a snapshot transfer.
pub type InstallSnapshotRequest = openraft::raft::InstallSnapshotRequest<TypeConfig>;
/// The answer to one snapshot chunk.
pub type InstallSnapshotResponse = openraft::raft::InstallSnapshotResponse<NodeId>;
/// The error a snapshot chunk can get from the receiving Raft.
pub type InstallSnapshotError = RaftError<openraft::error::InstallSnapshotError>;
