//! The peer protocol: Raft RPCs and forwarded writes between nodes, on tarpc
//! over TCP, one connection per peer shared by every group.
//!
//! Every request carries a [`Header`] naming the protocol version, the sender
//! and the group; the receiver dispatches it to that group's Raft, or answers
//! [`PeerError::UnknownGroup`]. Frames are length-prefixed (4 bytes,
//! big-endian) bincode 2 ([`crate::codec`]); a frame longer than
//! `max_frame_bytes` or one that does not decode closes that connection and
//! nothing else. `docs/formats.md` describes the frames.
//!
//! Connections are mutual TLS ([`tls`]): a peer's node id comes from its
//! certificate, and a request whose header claims another sender is
//! refused ([`PeerError::ForgedSender`]).

pub mod client;
pub mod server;
pub mod tls;

use serde::{Deserialize, Serialize};

use crate::typ::{
    AppendEntriesRequest, AppendEntriesResponse, GroupId, InstallSnapshotError,
    InstallSnapshotRequest, InstallSnapshotResponse, NodeId, RaftError, VoteRequest, VoteResponse,
};

pub use client::{GroupNetworkFactory, PeerPool};
pub use server::PeerListener;
pub use tls::{PeerTls, TlsFiles};

/// Version of the peer protocol; a node refuses requests of another version.
pub const PEER_PROTOCOL_VERSION: u16 = 3;

/// Sent with every peer request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// [`PEER_PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// The sending node.
    pub from: NodeId,
    /// The group the request is for.
    pub group: GroupId,
}

/// The outcome of a write a follower forwarded to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReply {
    /// The log index the write was committed at.
    pub index: u64,
    /// The app's reply.
    pub reply: Vec<u8>,
}

/// The answer to a query, with the log index of the state it reflects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadReply {
    /// The replica's applied index when it answered.
    pub index: u64,
    /// The app's answer.
    pub reply: Vec<u8>,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read began: the replica
    /// waits until it has applied the leader's read index (the leader
    /// confirms its leadership with a quorum first).
    Linearizable,
    /// Served by whichever replica answers, once it has applied at least
    /// `min_index` (0: whatever it has).
    Stale {
        /// The lowest applied index acceptable.
        min_index: u64,
    },
}

/// Why a peer refused a request.
#[derive(Clone, Debug, thiserror::Error, Serialize, Deserialize)]
pub enum PeerError {
    /// The sender speaks another protocol version.
    #[error("peer protocol version {got} is not supported; this node speaks {supported}")]
    Version {
        /// The version the request carried.
        got: u16,
        /// The version this node speaks.
        supported: u16,
    },
    /// The receiving node does not host the group (yet, or any more).
    #[error("group {0} is not hosted on this node")]
    UnknownGroup(GroupId),
    /// An append-entries request carried more entries than allowed.
    #[error("append of {entries} entries exceeds max_entries_per_append ({max})")]
    TooManyEntries {
        /// Entries in the request.
        entries: u64,
        /// The limit.
        max: u64,
    },
    /// A forwarded proposal is larger than allowed.
    #[error("proposal of {bytes} bytes exceeds max_proposal_bytes ({max})")]
    ProposalTooLarge {
        /// Size of the payload.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The receiver is not the group's leader.
    #[error("not the leader of group {group}; last known leader: {leader:?}")]
    NotLeader {
        /// The group.
        group: GroupId,
        /// The leader the receiver knows of.
        leader: Option<NodeId>,
    },
    /// The receiving Raft refused or failed.
    #[error("raft: {0}")]
    Raft(Box<RaftError>),
    /// The receiving Raft refused a snapshot chunk.
    #[error("raft: {0}")]
    InstallSnapshot(Box<InstallSnapshotError>),
    /// The replica has not applied the index a read asked for in time.
    #[error("group {group} replica has applied {applied}, the read wants {wanted}")]
    Behind {
        /// The group.
        group: GroupId,
        /// What the replica has applied.
        applied: u64,
        /// What the read asked for.
        wanted: u64,
    },
    /// A forwarded request failed on the receiver for another reason.
    #[error("request failed on the peer: {0}")]
    WriteFailed(String),
    /// The receiving node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The sender is not a member of the group (for Raft messages) or of
    /// the cluster (for forwarded requests): a removed or unknown node.
    #[error("node {node} is not a member of group {group}")]
    NotAMember {
        /// The sender the header names.
        node: NodeId,
        /// The group whose membership was checked.
        group: GroupId,
    },
    /// The header names another sender than the connection's certificate:
    /// a node speaking for another one.
    #[error("the request claims to come from node {claimed}, but the connection's certificate is node {certified}")]
    ForgedSender {
        /// The sender the header names.
        claimed: NodeId,
        /// The node the peer's certificate identifies.
        certified: NodeId,
    },
    /// The node is still opening its groups (answered to pings, so that
    /// peers count it alive only once its groups can hear them).
    #[error("the node is still opening its groups")]
    Starting,
}

/// The RPCs one node serves to its peers.
#[tarpc::service]
pub trait Peer {
    /// Raft append-entries (and heartbeats) for the header's group.
    async fn append_entries(
        header: Header,
        rpc: AppendEntriesRequest,
    ) -> Result<AppendEntriesResponse, PeerError>;
    /// Raft request-vote for the header's group.
    async fn vote(header: Header, rpc: VoteRequest) -> Result<VoteResponse, PeerError>;
    /// One chunk of a snapshot for the header's group.
    async fn install_snapshot(
        header: Header,
        rpc: InstallSnapshotRequest,
    ) -> Result<InstallSnapshotResponse, PeerError>;
    /// A client write forwarded by a node that is not the group's leader.
    async fn forward_write(header: Header, payload: Vec<u8>) -> Result<WriteReply, PeerError>;
    /// The leader's read index for the header's group, after it confirmed
    /// its leadership with a quorum.
    async fn read_index(header: Header) -> Result<u64, PeerError>;
    /// A query for a replica of the header's group (no further forwarding).
    async fn forward_read(
        header: Header,
        query: Vec<u8>,
        consistency: ReadConsistency,
    ) -> Result<ReadReply, PeerError>;
    /// Liveness: answered by any node that counts the sender among the
    /// cluster's members (the header names the meta group). Nodes ping each
    /// other so that quiet groups, which send no heartbeats, still notice a
    /// dead leader ([`crate::node`]'s quiet groups). The answer is the
    /// node's boot id, which changes when it restarts: its replicas then
    /// lead nothing, however fast it came back.
    async fn ping(header: Header) -> Result<u64, PeerError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    /// Found by `cargo fuzz run peer_frame`: a request whose deadline is so
    /// far away that tarpc's decoder overflows the clock and panics. It must
    /// be refused as malformed instead.
    #[test]
    fn a_request_with_an_absurd_deadline_is_malformed_not_a_panic() {
        let frame = [
            0x00, 0xfd, 0xd6, 0x31, 0x24, 0x40, 0x00, 0x3b, 0x9a, 0xca, 0x00,
        ];
        assert!(codec::decode::<tarpc::ClientMessage<PeerRequest>>(&frame).is_err());
    }
}
