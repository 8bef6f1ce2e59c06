//! The registry of groups on one node: start-up, creating, finding, writing
//! to and removing groups, and shutdown.
//!
//! # Group lifecycle
//!
//! 1. **Start.** [`Node::start`] opens the node's sled database, binds the
//!    peer listener, reopens the meta group and every location group recorded
//!    in the `groups` tree, and, if the meta group has never been initialized
//!    and `members` is set, initializes it with those members (every node of a
//!    new cluster does so with the same map; openraft accepts that).
//! 2. **Create.** [`Node::create_location`] writes a `CreateLocation` command
//!    to the meta group (from any node; it is forwarded to the leader). Apply
//!    allocates a group id and chooses replicas; asking again returns the same
//!    record.
//! 3. **Open.** Every node runs a reconciler that follows the meta group's
//!    applied directory. For each location it replicates but does not hold,
//!    it records the group in `groups` (flushed), opens it, and initializes it
//!    with the replicas from the directory. All replicas initialize with the
//!    same membership, so it does not matter which one is first.
//! 4. **Remove.** When the directory no longer lists a group whose id it has
//!    handed out, the reconciler shuts that group down and deletes its data.
//!    A group with an id the local directory has not reached yet (the meta
//!    group is still catching up) is never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use tokio_util::sync::CancellationToken;

use crate::app::{AppFactory, MetaExtension};
use crate::codec;
use crate::config::{NodeConfig, RaftConfig};
use crate::error::Error;
use crate::meta::{directory_of, Directory, LocationRecord, MetaApp, MetaCommand, MetaReply};
use crate::network::{
    GroupNetworkFactory, PeerListener, PeerPool, PeerTls, ReadConsistency, ReadReply, WriteReply,
};
use crate::storage::state::AppliedState;
use crate::storage::{GroupRecord, StateMachineStore, Storage};
use crate::typ::{GroupId, Node as RaftNode, NodeId, Raft, META_GROUP};

mod quiet;
mod read_batch;
mod reconcile;
mod route;

/// How many times a request is re-routed (to a new leader, another replica)
/// before the caller gets the last error; the waits between tries double
/// from `ROUTING_BACKOFF_MIN` to `ROUTING_BACKOFF_MAX`, so the tries span
/// several election timeouts.
pub const MAX_ROUTING_ATTEMPTS: usize = 32;

/// First wait before re-routing a request.
pub const ROUTING_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// Longest wait between two tries of a request.
pub const ROUTING_BACKOFF_MAX: Duration = Duration::from_millis(250);

/// How long a write or read may take, routing and retries included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How soon the reconciler tries again after a failed pass (it also wakes
/// on every meta apply).
pub(crate) const RECONCILE_INTERVAL: Duration = Duration::from_millis(500);

/// One group open on this node.
#[derive(Clone)]
struct Group {
    raft: Raft,
    sm: StateMachineStore,
    record: GroupRecord,
}

/// What the outside sees of one local group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub group: GroupId,
    /// The location it holds (`None` for the meta group).
    pub location: Option<String>,
    /// The leader this replica knows of.
    pub leader: Option<NodeId>,
    /// This replica's current term.
    pub term: u64,
    /// Index of this replica's last log entry.
    pub last_log_index: Option<u64>,
    /// Index of the last entry this replica applied.
    pub applied_index: Option<u64>,
    /// The group's voters.
    pub voters: BTreeSet<NodeId>,
    /// Quiet here: as leader, sending no heartbeats; as follower, not
    /// timing out while the leader's node answers pings.
    pub quiet: bool,
}

/// One replica's account of a group, for comparison with the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsistencyReport {
    /// The group.
    pub group: GroupId,
    /// The replica's applied index.
    pub applied_index: u64,
    /// The index `chain` belongs to.
    pub index: u64,
    /// The hash chain after applying `index`; `None` if the replica no longer
    /// (or not yet) holds that index.
    pub chain: Option<[u8; 32]>,
    /// SHA-256 of the replica's state at `applied_index`.
    pub state_digest: [u8; 32],
}

struct Shared {
    id: NodeId,
    config: NodeConfig,
    limits: Arc<RaftConfig>,
    /// openraft's configuration of the meta group.
    raft_config: Arc<openraft::Config>,
    /// openraft's configuration of location groups.
    location_raft_config: Arc<openraft::Config>,
    storage: Storage,
    pool: Arc<PeerPool>,
    groups: RwLock<BTreeMap<GroupId, Group>>,
    factory: Arc<dyn AppFactory>,
    stop: CancellationToken,
    /// Read-index rounds shared by concurrent linearizable reads.
    reads: read_batch::ReadBatcher,
    /// The location groups that are quiet here (see `quiet`): as leader,
    /// sending no heartbeats; as follower, not timing out.
    quiet: std::sync::RwLock<std::collections::BTreeSet<GroupId>>,
    /// This run of the node (the start time in nanoseconds), which peers
    /// learn from pings.
    boot_id: u64,
    /// Set once the stored groups are open: pings are answered from then.
    started: std::sync::atomic::AtomicBool,
}

/// The index `raft` has applied, from its metrics (0: none yet).
fn applied_index(raft: &Raft) -> u64 {
    raft.metrics()
        .borrow()
        .last_applied
        .map(|l| l.index)
        .unwrap_or(0)
}

/// A running garrison node: its storage, its peer listener and its groups.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
    peer_addr: SocketAddr,
}

impl Node {
    /// Starts a node: binds `config.listen_addr`, opens storage and every
    /// stored group, and bootstraps the meta group if it is new.
    pub async fn start(config: NodeConfig, factory: Arc<dyn AppFactory>) -> Result<Self, Error> {
        let listener = tokio::net::TcpListener::bind(config.listen_addr)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", config.listen_addr)))?;
        Self::start_with_listener(config, listener, factory).await
    }

    /// Like [`Node::start`], on a listener the caller has bound already
    /// (`config.listen_addr` is then only informative).
    pub async fn start_with_listener(
        config: NodeConfig,
        listener: tokio::net::TcpListener,
        factory: Arc<dyn AppFactory>,
    ) -> Result<Self, Error> {
        config.validate()?;
        for (broken, what) in [
            (
                cfg!(garrison_unsafe_stale_reads),
                "serves linearizable reads without a read index",
            ),
            (
                cfg!(garrison_unsafe_early_ack),
                "acknowledges log appends before they are flushed",
            ),
        ] {
            if broken {
                tracing::error!("THIS IS A DELIBERATELY BROKEN TEST BUILD: it {what}; never use it for real data");
            }
        }
        let tls = PeerTls::load(&config.tls, config.node_id)?;
        let limits = Arc::new(config.raft.clone());
        let raft_config = limits.meta_openraft(&config.cluster_name)?;
        let location_raft_config = limits.location_openraft(&config.cluster_name)?;
        let storage = Storage::open(&config.data_dir, config.raft.storage_cache_bytes)?;
        let shared = Arc::new(Shared {
            id: config.node_id,
            pool: PeerPool::new(config.node_id, limits.clone(), tls.clone()),
            limits: limits.clone(),
            raft_config,
            location_raft_config,
            storage,
            groups: RwLock::new(BTreeMap::new()),
            factory,
            stop: CancellationToken::new(),
            reads: Default::default(),
            quiet: Default::default(),
            boot_id: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            started: Default::default(),
            config,
        });
        let listener =
            PeerListener::start_on(listener, limits, tls, shared.clone(), shared.stop.clone())
                .map_err(|e| Error::Config(format!("cannot serve peers: {e}")))?;
        let node = Node {
            peer_addr: listener.local_addr(),
            shared,
        };
        if let Err(e) = node.open_stored_groups().await {
            node.shutdown().await;
            return Err(e);
        }
        node.shared
            .started
            .store(true, std::sync::atomic::Ordering::Release);
        tokio::spawn(reconcile::reconcile_loop(node.shared.clone()));
        tokio::spawn(quiet::quiet_loop(node.shared.clone()));
        Ok(node)
    }

    async fn open_stored_groups(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let stored = shared.storage.groups()?;
        if !stored.iter().any(|(g, _)| *g == META_GROUP) {
            shared
                .storage
                .add_group(META_GROUP, &GroupRecord::Meta)
                .await?;
        }
        for group in shared.storage.forget_unrecorded().await? {
            tracing::info!(
                group,
                "forgot the Raft log of a group removed before a crash"
            );
        }
        shared.open_group(META_GROUP, GroupRecord::Meta).await?;
        for (group, record) in stored {
            if group != META_GROUP {
                shared.open_group(group, record).await?;
            }
        }
        if !shared.config.members.is_empty() {
            let members: BTreeMap<NodeId, RaftNode> = shared
                .config
                .members
                .iter()
                .map(|(id, addr)| (*id, RaftNode::new(addr.clone())))
                .collect();
            shared.initialize(META_GROUP, members).await?;
        }
        Ok(())
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// The address the peer listener is bound to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The node's storage (for flush statistics and inspection).
    pub fn storage(&self) -> &Storage {
        &self.shared.storage
    }

    /// Creates a location (or returns the existing one of that name) through
    /// the meta group. `replicas` empty lets the meta group place it.
    pub async fn create_location(
        &self,
        name: &str,
        replicas: &[NodeId],
    ) -> Result<LocationRecord, Error> {
        let command = MetaCommand::CreateLocation {
            name: name.to_string(),
            replicas: replicas.to_vec(),
            replication_factor: self.shared.limits.replication_factor as u32,
        };
        match self.meta_command(command).await? {
            MetaReply::Created(record) | MetaReply::Exists(record) => Ok(record),
            other => Err(Error::Meta(format!("{other:?}"))),
        }
    }

    /// Removes a location through the meta group; every replica then deletes
    /// its group's data.
    pub async fn remove_location(&self, name: &str) -> Result<LocationRecord, Error> {
        match self
            .meta_command(MetaCommand::RemoveLocation {
                name: name.to_string(),
            })
            .await?
        {
            MetaReply::Removed(record) => Ok(record),
            other => Err(Error::Meta(format!("{other:?}"))),
        }
    }

    /// Proposes `payload` to the meta group's extension and returns its
    /// reply, from any node.
    pub async fn extension_command(&self, payload: Vec<u8>) -> Result<Vec<u8>, Error> {
        match self.meta_command(MetaCommand::Extension(payload)).await? {
            MetaReply::Extension(reply) => Ok(reply),
            other => Err(Error::Meta(format!("unexpected meta reply {other:?}"))),
        }
    }

    /// Reads this node's meta replica's extension (possibly behind the leader).
    pub fn read_extension<T>(
        &self,
        read: impl FnOnce(&dyn MetaExtension) -> T,
    ) -> Result<T, Error> {
        self.shared.read_app(META_GROUP, |state| {
            read(crate::meta::extension_of(state).expect("group 0 holds the meta app"))
        })
    }

    async fn meta_command(&self, command: MetaCommand) -> Result<MetaReply, Error> {
        let reply = self.write(META_GROUP, codec::encode(&command)).await?;
        match codec::decode::<MetaReply>(&reply.reply)? {
            MetaReply::Refused(why) => Err(Error::Meta(why)),
            reply => Ok(reply),
        }
    }

    /// The location directory as this node's meta replica has applied it
    /// (possibly behind the leader's).
    pub fn directory(&self) -> Directory {
        self.shared
            .read_app(META_GROUP, |state| {
                directory_of(state).cloned().unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// One location's record in this node's meta replica's directory
    /// (without copying the whole directory, which every request would).
    pub fn location(&self, name: &str) -> Option<LocationRecord> {
        self.shared
            .read_app(META_GROUP, |state| {
                directory_of(state).and_then(|d| d.locations.get(name).cloned())
            })
            .ok()
            .flatten()
    }

    /// Proposes `payload` to `group` and waits until it is applied on the
    /// leader; from any node (forwarded to the leader). The same payload may
    /// be applied twice if the leader changes while the write is in flight:
    /// applications that need exactly-once deduplicate in apply.
    pub async fn write(&self, group: GroupId, payload: Vec<u8>) -> Result<WriteReply, Error> {
        self.shared.write(group, payload).await
    }

    /// Reads the local replica's applied state of `group` (may lag the
    /// leader): for inspection and tests; clients use [`Node::read`].
    pub fn read_local<T>(
        &self,
        group: GroupId,
        read: impl FnOnce(&AppliedState) -> T,
    ) -> Result<T, Error> {
        self.shared.read_app(group, read)
    }

    /// Answers `query` with `group`'s app, from any node: linearizable
    /// (reflects every write acknowledged before the call) or stale (from
    /// whichever replica answers, at least at `min_index`).
    pub async fn read(
        &self,
        group: GroupId,
        query: Vec<u8>,
        consistency: ReadConsistency,
    ) -> Result<ReadReply, Error> {
        self.shared.read(group, query, consistency).await
    }

    /// Does this node hold a replica of `group`?
    pub fn hosts(&self, group: GroupId) -> bool {
        self.shared.raft(group).is_some()
    }

    /// Waits until this node's replica of `group` has applied what
    /// `consistency` requires (for a linearizable read, the leader's read
    /// index, asked of the leader wherever it is); returns the replica's
    /// applied index then. For reads served beside the group's app, such
    /// as from a cache kept current by apply.
    pub async fn catch_up(
        &self,
        group: GroupId,
        consistency: ReadConsistency,
    ) -> Result<u64, Error> {
        self.shared.catch_up(group, consistency).await
    }

    /// This replica's consistency report for `group`: its applied index,
    /// the hash chain at `at` (default: the applied index) if it still holds
    /// that index, and the digest of its state at the applied index.
    pub fn consistency(&self, group: GroupId, at: Option<u64>) -> Result<ConsistencyReport, Error> {
        self.shared.read_app(group, |s| {
            let applied_index = s.applied_index();
            let index = at.unwrap_or(applied_index);
            ConsistencyReport {
                group,
                applied_index,
                index,
                chain: s.chain_at(index),
                state_digest: s.state_digest(),
            }
        })
    }

    /// The ids of the groups open on this node.
    pub fn groups(&self) -> Vec<GroupId> {
        self.shared
            .groups
            .read()
            .expect("group table lock")
            .keys()
            .copied()
            .collect()
    }

    /// Status of one local group.
    pub fn group_status(&self, group: GroupId) -> Option<GroupStatus> {
        let g = self
            .shared
            .groups
            .read()
            .expect("group table lock")
            .get(&group)
            .cloned()?;
        let m = g.raft.metrics().borrow().clone();
        Some(GroupStatus {
            group,
            location: match g.record {
                GroupRecord::Meta => None,
                GroupRecord::Location { name } => Some(name),
            },
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            voters: m.membership_config.membership().voter_ids().collect(),
            quiet: self
                .shared
                .quiet
                .read()
                .expect("quiet groups lock")
                .contains(&group),
        })
    }

    /// Status of every local group, by id.
    pub fn status(&self) -> Vec<GroupStatus> {
        self.groups()
            .into_iter()
            .filter_map(|g| self.group_status(g))
            .collect()
    }

    /// The leader of a local group, as this replica knows it.
    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        let raft = self.shared.raft(group)?;
        let leader = raft.metrics().borrow().current_leader;
        leader
    }

    /// Asks a local group to build a snapshot now and purge its log up to it
    /// (operators use it before backups; tests use it to force catch-up by
    /// snapshot). Returns once the snapshot covers `applied` at the call.
    pub async fn compact(&self, group: GroupId, timeout: Duration) -> Result<u64, Error> {
        let raft = self.shared.raft(group).ok_or(Error::UnknownGroup(group))?;
        let applied = applied_index(&raft);
        raft.trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        raft.wait(Some(timeout))
            .metrics(
                |m| m.snapshot.map(|s| s.index).unwrap_or(0) >= applied,
                "snapshot",
            )
            .await
            .map_err(|e| Error::Timeout(e.to_string()))?;
        raft.trigger()
            .purge_log(applied)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        Ok(applied)
    }

    /// The last log index covered by the local replica's current snapshot.
    pub fn snapshot_index(&self, group: GroupId) -> Option<u64> {
        self.shared
            .raft(group)
            .and_then(|r| r.metrics().borrow().snapshot.map(|s| s.index))
    }

    /// The last log index the local replica has purged from its log.
    pub fn purged_index(&self, group: GroupId) -> Option<u64> {
        self.shared
            .raft(group)
            .and_then(|r| r.metrics().borrow().purged.map(|s| s.index))
    }

    /// Waits until the local replica of `group` has applied `index`.
    pub async fn wait_applied(
        &self,
        group: GroupId,
        index: u64,
        timeout: Duration,
    ) -> Result<(), Error> {
        let raft = self.shared.raft(group).ok_or(Error::UnknownGroup(group))?;
        raft.wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(|_| ())
            .map_err(|e| Error::Timeout(format!("group {group} to apply index {index}: {e}")))
    }

    /// Stops every group and the listener, and flushes storage. In-flight
    /// requests fail; the data stays on disk for the next start.
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        let groups: Vec<(GroupId, Group)> =
            std::mem::take(&mut *self.shared.groups.write().expect("group table lock"))
                .into_iter()
                .collect();
        for (id, group) in groups {
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(group = id, error = %e, "raft shutdown failed");
            }
        }
        let _ = self.shared.storage.flush().await;
    }
}

impl Shared {
    fn raft(&self, group: GroupId) -> Option<Raft> {
        self.groups
            .read()
            .expect("group table lock")
            .get(&group)
            .map(|g| g.raft.clone())
    }

    fn read_app<T>(
        &self,
        group: GroupId,
        read: impl FnOnce(&AppliedState) -> T,
    ) -> Result<T, Error> {
        let sm = self
            .groups
            .read()
            .expect("group table lock")
            .get(&group)
            .map(|g| g.sm.clone());
        let sm = sm.ok_or(Error::UnknownGroup(group))?;
        let state = sm.read();
        Ok(read(&state))
    }

    async fn open_group(&self, group: GroupId, record: GroupRecord) -> Result<(), Error> {
        if self.stop.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let app = match &record {
            GroupRecord::Meta => {
                Box::new(MetaApp::new(self.factory.meta_extension())) as Box<dyn crate::GroupApp>
            }
            GroupRecord::Location { name } => self.factory.create(group, name),
        };
        let sm = StateMachineStore::open(&self.storage, group, app)?;
        let network = GroupNetworkFactory::new(self.pool.clone(), group);
        let raft = Raft::new(
            self.id,
            match record {
                GroupRecord::Meta => self.raft_config.clone(),
                GroupRecord::Location { .. } => self.location_raft_config.clone(),
            },
            network,
            self.storage
                .log_store(group)
                .for_node(self.id)
                .after_snapshots(sm.snapshot_mark()),
            sm.for_raft(),
        )
        .await
        .map_err(|e| Error::Raft(format!("opening group {group}: {e}")))?;
        self.groups
            .write()
            .expect("group table lock")
            .insert(group, Group { raft, sm, record });
        Ok(())
    }

    /// Initializes `group` with `members` unless it already has state.
    async fn initialize(
        &self,
        group: GroupId,
        members: BTreeMap<NodeId, RaftNode>,
    ) -> Result<(), Error> {
        let raft = self.raft(group).ok_or(Error::UnknownGroup(group))?;
        match raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(Error::Raft(format!("initializing group {group}: {e}"))),
        }
    }
}
