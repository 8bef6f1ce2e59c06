//! Node and Raft configuration: every tunable and every limit a peer can hit,
//! each a named field with its unit last.
//!
//! The defaults aim at a three-node cluster on one loaded two-core machine: a
//! dead leader is replaced in about half a second (election timeout 150–300
//! ms after the last heartbeat; openraft's leader lease, which makes a
//! follower refuse votes while it still hears from a leader, is the maximum,
//! 300 ms), while a heartbeat every 40 ms leaves three missed heartbeats of
//! slack before a follower suspects a quiet, healthy leader. No spurious
//! election was seen under the 256-client benchmark (docs/performance.md).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::DECODE_LIMIT_BYTES;
use crate::error::Error;
use crate::network::tls::TlsFiles;
use crate::typ::NodeId;

/// Bytes of framing and headers an append-entries frame may add on top of its
/// entries' payloads, per entry and per frame. Used to check that the limits
/// below fit inside one frame.
const ENTRY_OVERHEAD_BYTES: u64 = 128;
const FRAME_OVERHEAD_BYTES: u64 = 4096;

/// The longest `location_heartbeat_interval_ms` accepted.
pub const MAX_LOCATION_HEARTBEAT_INTERVAL_MS: u64 = 5_000;

/// Raft timing, snapshots and the limits of the peer protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// How often the meta group's leader sends heartbeats to each follower.
    pub heartbeat_interval_ms: u64,
    /// The heartbeat interval of location groups. openraft wakes each
    /// location group's timer every 1.5 × this, even when the group is
    /// quiet, and a leader that is not quiet heartbeats at those wakeups; with
    /// thousands of locations a short interval is most of an idle node's
    /// CPU. Location groups do not need it short: their followers learn that
    /// the leader is alive from the nodes' pings, and stand for election when
    /// the pings say so, not when a heartbeat is late
    /// (`raft/src/node/quiet.rs`). It may therefore exceed the election
    /// timeouts, up to [`MAX_LOCATION_HEARTBEAT_INTERVAL_MS`] (openraft also
    /// uses it as the timeout of a replication request and of a read's
    /// leadership check).
    pub location_heartbeat_interval_ms: u64,
    /// The shortest time a follower of the meta group waits without
    /// hearing from a leader before it stands for election. (Location
    /// followers stand when the nodes' pings say so.)
    pub election_timeout_min_ms: u64,
    /// The longest such wait; each follower picks at random in the range.
    /// It is also every group's leader lease: a voter that heard from its
    /// leader this recently refuses to vote for another.
    pub election_timeout_max_ms: u64,
    /// A group builds a snapshot after this many entries since the last one.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind a snapshot, for followers that lag a little.
    pub snapshot_logs_to_keep: u64,
    /// Largest chunk of snapshot data sent in one install-snapshot frame.
    pub snapshot_chunk_bytes: u64,
    /// Largest number of entries a leader sends, or a follower accepts, in one
    /// append-entries request.
    pub max_entries_per_append: u64,
    /// Largest application payload one proposal may carry.
    pub max_proposal_bytes: u64,
    /// Largest frame a node sends or accepts on a peer connection; a larger
    /// length prefix closes the connection.
    pub max_frame_bytes: u64,
    /// Requests one peer connection may have in flight, in each direction.
    pub max_in_flight_requests_per_connection: usize,
    /// Inbound peer connections a node accepts at once.
    pub max_peer_connections: usize,
    /// How long to wait for a TCP connection to a peer.
    pub connect_timeout_ms: u64,
    /// How long a TLS handshake on the peer port may take, on either end;
    /// an inbound connection still shaking hands after this is closed.
    pub handshake_timeout_ms: u64,
    /// First wait before reconnecting to an unreachable peer; doubles per failure.
    pub reconnect_backoff_min_ms: u64,
    /// Longest wait between reconnection attempts.
    pub reconnect_backoff_max_ms: u64,
    /// How many nodes replicate a location when its creator does not name them.
    pub replication_factor: usize,
    /// Bytes of sled's page cache (sled's own default is 1 GiB, which a
    /// node holding thousands of groups fills with log pages it rarely
    /// reads again).
    pub storage_cache_bytes: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 40,
            location_heartbeat_interval_ms: 1_000,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_logs_since_last: 10_000,
            snapshot_logs_to_keep: 1_000,
            snapshot_chunk_bytes: 4 * 1024 * 1024,
            max_entries_per_append: 512,
            max_proposal_bytes: 64 * 1024,
            max_frame_bytes: 64 * 1024 * 1024,
            max_in_flight_requests_per_connection: 1024,
            max_peer_connections: 64,
            connect_timeout_ms: 500,
            handshake_timeout_ms: 5_000,
            reconnect_backoff_min_ms: 20,
            reconnect_backoff_max_ms: 500,
            replication_factor: 3,
            storage_cache_bytes: 128 * 1024 * 1024,
        }
    }
}

impl RaftConfig {
    /// Checks that the values make sense together; the error names the field.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |why: String| Err(Error::Config(why));
        if self.location_heartbeat_interval_ms == 0
            || self.location_heartbeat_interval_ms > MAX_LOCATION_HEARTBEAT_INTERVAL_MS
        {
            return bad(format!(
                "location_heartbeat_interval_ms ({}) must be between 1 and \
                 {MAX_LOCATION_HEARTBEAT_INTERVAL_MS}: openraft also uses it as the \
                 timeout of a replication request and of a read's leadership check",
                self.location_heartbeat_interval_ms
            ));
        }
        if self.heartbeat_interval_ms == 0 {
            return bad("heartbeat_interval_ms must be positive".into());
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms {
            return bad(format!(
                "election_timeout_min_ms ({}) must exceed heartbeat_interval_ms ({})",
                self.election_timeout_min_ms, self.heartbeat_interval_ms
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return bad(format!(
                "election_timeout_max_ms ({}) must exceed election_timeout_min_ms ({})",
                self.election_timeout_max_ms, self.election_timeout_min_ms
            ));
        }
        if self.max_frame_bytes > DECODE_LIMIT_BYTES as u64 {
            return bad(format!(
                "max_frame_bytes may be at most {DECODE_LIMIT_BYTES}"
            ));
        }
        if self.max_entries_per_append == 0
            || self.max_proposal_bytes == 0
            || self.snapshot_chunk_bytes == 0
        {
            return bad("max_entries_per_append, max_proposal_bytes and snapshot_chunk_bytes must be positive".into());
        }
        let largest_append = self.max_entries_per_append
            * (self.max_proposal_bytes + ENTRY_OVERHEAD_BYTES)
            + FRAME_OVERHEAD_BYTES;
        if largest_append > self.max_frame_bytes {
            return bad(format!(
                "max_entries_per_append × max_proposal_bytes needs frames of {largest_append} bytes, above max_frame_bytes ({})",
                self.max_frame_bytes
            ));
        }
        if self.snapshot_chunk_bytes + FRAME_OVERHEAD_BYTES > self.max_frame_bytes {
            return bad("snapshot_chunk_bytes does not fit in max_frame_bytes".into());
        }
        if self.connect_timeout_ms == 0 || self.handshake_timeout_ms == 0 {
            return bad("connect_timeout_ms and handshake_timeout_ms must be positive".into());
        }
        if self.max_in_flight_requests_per_connection == 0 || self.max_peer_connections == 0 {
            return bad(
                "max_in_flight_requests_per_connection and max_peer_connections must be positive"
                    .into(),
            );
        }
        if self.reconnect_backoff_min_ms == 0
            || self.reconnect_backoff_max_ms < self.reconnect_backoff_min_ms
        {
            return bad(
                "reconnect_backoff_min_ms must be positive and at most reconnect_backoff_max_ms"
                    .into(),
            );
        }
        if self.replication_factor == 0 {
            return bad("replication_factor must be positive".into());
        }
        Ok(())
    }

    /// openraft's configuration for the meta group.
    pub(crate) fn meta_openraft(&self, cluster_name: &str) -> Result<Arc<openraft::Config>, Error> {
        let config = self.openraft(cluster_name, self.heartbeat_interval_ms);
        Ok(Arc::new(
            config
                .validate()
                .map_err(|e| Error::Config(e.to_string()))?,
        ))
    }

    /// openraft's configuration for location groups. openraft's own check
    /// wants the heartbeat shorter than the election timeout, because its
    /// followers stand when a heartbeat is late; a location group's
    /// followers stand when pings say its leader's node is gone instead, so
    /// that rule does not apply, and the short election timeout (which is
    /// also the voters' leader lease) keeps failover fast.
    pub(crate) fn location_openraft(
        &self,
        cluster_name: &str,
    ) -> Result<Arc<openraft::Config>, Error> {
        let meta = self.meta_openraft(cluster_name)?;
        Ok(Arc::new(openraft::Config {
            heartbeat_interval: self.location_heartbeat_interval_ms,
            // Only leaders tick, once the quiet pass says so: a follower's
            // timer would fire between heartbeats this far apart.
            enable_tick: false,
            ..(*meta).clone()
        }))
    }

    fn openraft(&self, cluster_name: &str, heartbeat_interval_ms: u64) -> openraft::Config {
        openraft::Config {
            cluster_name: cluster_name.to_string(),
            heartbeat_interval: heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            max_payload_entries: self.max_entries_per_append,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            max_in_snapshot_log_to_keep: self.snapshot_logs_to_keep,
            purge_batch_size: 256,
            ..Default::default()
        }
    }
}

/// Everything one node needs to start.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's id; must be a key of `members` when bootstrapping.
    pub node_id: NodeId,
    /// Address the peer listener binds to.
    pub listen_addr: SocketAddr,
    /// Directory of this node's sled database.
    pub data_dir: PathBuf,
    /// A name for the cluster; every node of one cluster uses the same.
    pub cluster_name: String,
    /// The initial members (id → peer address). Every node of a new cluster is
    /// started with the same map and initializes the meta group with it; a
    /// node that already holds state ignores it.
    pub members: BTreeMap<NodeId, String>,
    /// Raft timing and limits.
    pub raft: RaftConfig,
    /// The CA, certificate and key of mutual TLS on the peer port (always
    /// on; the certificate must name `node_id`).
    pub tls: TlsFiles,
}

impl NodeConfig {
    /// Checks the whole configuration.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.members.is_empty() && !self.members.contains_key(&self.node_id) {
            return Err(Error::Config(format!(
                "node_id {} is not among the members",
                self.node_id
            )));
        }
        self.raft.validate()
    }
}
