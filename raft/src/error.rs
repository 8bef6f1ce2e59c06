//! The crate's one error type.

use crate::codec::DecodeError;
use crate::network::PeerError;
use crate::typ::{GroupId, NodeId};

/// Everything that can go wrong in the consensus core, in words a caller can act on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The configuration is inconsistent; the message names the field.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The local storage engine failed; the node cannot go on safely.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Stored or received bytes do not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// This node does not host the group.
    #[error("group {0} is not hosted on this node")]
    UnknownGroup(GroupId),
    /// The meta group's directory has no such location.
    #[error("location {0:?} does not exist; create it first")]
    UnknownLocation(String),
    /// The group has no known leader right now (an election is under way);
    /// retry shortly.
    #[error("group {group} has no leader at the moment; retry shortly")]
    NoLeader {
        /// The group.
        group: GroupId,
    },
    /// This node is not the group's leader; `leader` is the last known one.
    #[error("node is not the leader of group {group}; last known leader: {leader:?}")]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The leader this node knows of, if any.
        leader: Option<NodeId>,
    },
    /// A replica had not applied the index a read needs within the read's time.
    #[error("group {group}: the replica has applied index {applied} but the read needs {wanted}; retry or read elsewhere")]
    Behind {
        /// The group.
        group: GroupId,
        /// What the replica has applied.
        applied: u64,
        /// What the read needs.
        wanted: u64,
    },
    /// A proposal is larger than the configured limit.
    #[error("proposal of {bytes} bytes exceeds max_proposal_bytes ({max})")]
    ProposalTooLarge {
        /// Size of the rejected payload.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// A peer could not be reached or dropped the connection.
    #[error("peer node {node} unreachable: {reason}")]
    Unreachable {
        /// The peer.
        node: NodeId,
        /// What the transport said.
        reason: String,
    },
    /// A peer answered with an error.
    #[error("peer node {node} refused: {error}")]
    Remote {
        /// The peer.
        node: NodeId,
        /// What it said.
        error: Box<PeerError>,
    },
    /// The meta group refused a command; the message says why.
    #[error("meta group refused: {0}")]
    Meta(String),
    /// Raft itself failed (a fatal error, or the group is shutting down).
    #[error("raft: {0}")]
    Raft(String),
    /// A bounded wait ran out.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
