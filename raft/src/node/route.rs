//! Routing of writes and reads: to the group's leader for writes, to a local
//! or remote replica for reads, over the shared peer connections.
//!
//! A write goes to the leader (local, or forwarded once); a `NotLeader`
//! answer names the leader to try next. A linearizable read is served by any
//! replica: it asks the leader for a read index (the leader confirms its
//! leadership with a quorum first), waits until it has applied that index,
//! and answers from its own state. A stale read waits only for the index the
//! caller names. A node that does not host the group forwards the read to a
//! replica.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};

use super::{
    Shared, MAX_ROUTING_ATTEMPTS, REQUEST_TIMEOUT, ROUTING_BACKOFF_MAX, ROUTING_BACKOFF_MIN,
};
use crate::error::Error;
use crate::meta::directory_of;
use crate::network::server::Dispatch;
use crate::network::{PeerError, ReadConsistency, ReadReply, WriteReply};
use crate::typ::{GroupId, NodeId, Proposal, Raft, META_GROUP};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shared {
    /// Proposes `payload` if this node leads `group`; never forwards.
    async fn write_as_leader(&self, group: GroupId, payload: Vec<u8>) -> Result<WriteReply, Error> {
        let raft = self.raft(group).ok_or(Error::UnknownGroup(group))?;
        let proposal = Proposal {
            log_time_ms: now_ms(),
            payload,
        };
        match raft.client_write(proposal).await {
            Ok(written) => Ok(WriteReply {
                index: written.log_id.index,
                reply: written.data.0,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    group,
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(Error::Raft(e.to_string())),
        }
    }

    /// The read index of `group` if this node leads it: the leader confirms
    /// with a quorum that it still leads, in a round that starts after this
    /// call and that concurrent reads of the group share. The reader waits
    /// for its own replica to apply the index.
    async fn read_index_as_leader(&self, group: GroupId) -> Result<u64, Error> {
        let raft = self.raft(group).ok_or(Error::UnknownGroup(group))?;
        self.reads
            .read_index(group, raft, move |raft| async move {
                match raft.get_read_log_id().await {
                    Ok((read_log_id, _)) => Ok(read_log_id.map(|l| l.index).unwrap_or(0)),
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                        Err(Error::NotLeader {
                            group,
                            leader: f.leader_id,
                        })
                    }
                    Err(e) => Err(Error::Raft(e.to_string())),
                }
            })
            .await
    }

    /// The peer address of `node` as `group` (or the meta group) knows it.
    fn address_of(&self, group: GroupId, node: NodeId) -> Option<String> {
        [group, META_GROUP].into_iter().find_map(|g| {
            let raft = self.raft(g)?;
            let metrics = raft.metrics();
            let metrics = metrics.borrow();
            metrics
                .membership_config
                .membership()
                .get_node(&node)
                .map(|n| n.addr.clone())
        })
    }

    /// The replicas of `group` according to the local directory.
    fn replicas_of(&self, group: GroupId) -> Vec<NodeId> {
        self.read_app(META_GROUP, |s| {
            directory_of(s)
                .and_then(|d| d.by_group(group))
                .map(|l| l.replicas.iter().copied().collect())
        })
        .ok()
        .flatten()
        .unwrap_or_default()
    }

    /// The replicas of a group this node does not host. A location created
    /// through another node may not have reached this node's directory yet:
    /// before calling the group unknown, the local meta replica catches up to
    /// the meta leader's commit index (within `left`) and is asked again. A
    /// group that is still not there is unknown; a catch-up that failed
    /// says why.
    async fn remote_replicas(&self, group: GroupId, left: Duration) -> Result<Vec<NodeId>, Error> {
        let replicas = self.replicas_of(group);
        if !replicas.is_empty() || group == META_GROUP || self.raft(META_GROUP).is_none() {
            return Ok(replicas);
        }
        // Boxed: catching up routes the meta read index, which comes back here.
        let caught_up = Box::pin(self.catch_up(META_GROUP, ReadConsistency::Linearizable));
        match tokio::time::timeout(left, caught_up).await {
            Ok(Ok(_)) => Ok(self.replicas_of(group)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout("the meta group's read index".into())),
        }
    }

    /// Waits (bounded by `left`) until the local replica of `group` knows a leader.
    async fn known_leader(
        &self,
        raft: &Raft,
        group: GroupId,
        left: Duration,
    ) -> Result<NodeId, Error> {
        let wait = raft.wait(Some(left.min(Duration::from_secs(2))));
        match wait
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
        {
            Ok(m) => Ok(m.current_leader.expect("waited for a leader")),
            Err(_) => Err(Error::NoLeader { group }),
        }
    }

    /// Runs `attempt` against the node that should serve it, following
    /// `NotLeader` hints, for at most [`MAX_ROUTING_ATTEMPTS`] tries within
    /// [`REQUEST_TIMEOUT`]. `None` as target means "this node's idea of the
    /// leader" for a hosted group, or the next replica for a remote one.
    /// Besides unreachable targets, lost leaders and timeouts, the errors
    /// `transient` accepts are retried too.
    async fn route<T, F, Fut>(
        &self,
        group: GroupId,
        transient: fn(&Error) -> bool,
        mut attempt: F,
    ) -> Result<T, Error>
    where
        F: FnMut(NodeId, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let started = Instant::now();
        let mut hint: Option<NodeId> = None;
        let mut replicas = Vec::new();
        let mut last_error = Error::NoLeader { group };
        let mut backoff = ROUTING_BACKOFF_MIN;
        for round in 0..MAX_ROUTING_ATTEMPTS {
            if self.stop.is_cancelled() {
                return Err(Error::ShuttingDown);
            }
            let left = REQUEST_TIMEOUT.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let target = match (hint.take(), self.raft(group)) {
                (Some(node), _) => node,
                (None, Some(raft)) => match self.known_leader(&raft, group, left).await {
                    Ok(leader) => leader,
                    Err(e) => {
                        last_error = e;
                        continue;
                    }
                },
                (None, None) => {
                    if replicas.is_empty() {
                        replicas = self.remote_replicas(group, left).await?;
                        if replicas.is_empty() {
                            return Err(Error::UnknownGroup(group));
                        }
                    }
                    replicas[round % replicas.len()]
                }
            };
            let left = REQUEST_TIMEOUT.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            // One try may not use the whole budget: a stale leader behind a
            // partition would otherwise hold the request until it runs out.
            let per_try = left.min(
                Duration::from_millis(3 * self.limits.election_timeout_max_ms)
                    .max(Duration::from_secs(1)),
            );
            match attempt(target, per_try).await {
                Ok(value) => return Ok(value),
                Err(Error::NotLeader {
                    leader: Some(leader),
                    ..
                }) if leader != target => {
                    hint = Some(leader);
                    last_error = Error::NotLeader {
                        group,
                        leader: Some(leader),
                    };
                }
                Err(e)
                    if transient(&e)
                        || matches!(
                            e,
                            Error::NotLeader { .. }
                                | Error::Unreachable { .. }
                                | Error::NoLeader { .. }
                                | Error::UnknownGroup(_)
                                | Error::Timeout(_)
                        ) =>
                {
                    if self.raft(group).is_none() && replicas.is_empty() {
                        return Err(e);
                    }
                    last_error = e;
                    // Give the group time to settle (an election, a restart).
                    // A hosted group says when its leader changes: go on at
                    // once then, instead of sleeping out the backoff.
                    match self.raft(group) {
                        Some(raft) => {
                            let wait = raft.wait(Some(ROUTING_BACKOFF_MAX.min(left)));
                            let moved = wait
                                .metrics(|m| m.current_leader != Some(target), "a new leader")
                                .await;
                            if moved.is_err() {
                                backoff = (backoff * 2).min(ROUTING_BACKOFF_MAX);
                            }
                        }
                        None => {
                            tokio::time::sleep(backoff.min(left)).await;
                            backoff = (backoff * 2).min(ROUTING_BACKOFF_MAX);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error)
    }

    fn peer_address(&self, group: GroupId, node: NodeId) -> Result<String, Error> {
        self.address_of(group, node).ok_or(Error::Unreachable {
            node,
            reason: "no known address".into(),
        })
    }

    /// Proposes `payload` to `group` through its leader, wherever it is.
    pub(super) async fn write(
        &self,
        group: GroupId,
        payload: Vec<u8>,
    ) -> Result<WriteReply, Error> {
        let bytes = payload.len() as u64;
        if bytes > self.limits.max_proposal_bytes {
            return Err(Error::ProposalTooLarge {
                bytes,
                max: self.limits.max_proposal_bytes,
            });
        }
        self.route(
            group,
            |_| false,
            |target, left| {
                let payload = payload.clone();
                async move {
                    if target == self.id {
                        self.write_as_leader(group, payload).await
                    } else {
                        let addr = self.peer_address(group, target)?;
                        self.pool
                            .forward_write(target, &addr, group, payload, left)
                            .await
                    }
                }
            },
        )
        .await
    }

    /// The leader's read index for `group`, asked of the leader wherever it is.
    async fn read_index(&self, group: GroupId) -> Result<u64, Error> {
        self.route(
            group,
            |_| false,
            |target, left| async move {
                if target == self.id {
                    self.read_index_as_leader(group).await
                } else {
                    let addr = self.peer_address(group, target)?;
                    self.pool.read_index(target, &addr, group, left).await
                }
            },
        )
        .await
    }

    /// Waits until the local replica of `group` has applied what
    /// `consistency` requires; returns its applied index then, which every
    /// answer from the replica after this reflects at least.
    pub(super) async fn catch_up(
        &self,
        group: GroupId,
        consistency: ReadConsistency,
    ) -> Result<u64, Error> {
        let raft = self.raft(group).ok_or(Error::UnknownGroup(group))?;
        let wanted = match consistency {
            // The deliberately broken build: serve "linearizable" reads from
            // whatever this replica has, even a deposed leader's state.
            ReadConsistency::Linearizable if cfg!(garrison_unsafe_stale_reads) => 0,
            ReadConsistency::Linearizable => self.read_index(group).await?,
            ReadConsistency::Stale { min_index } => min_index,
        };
        if wanted > 0 {
            // Most reads find the replica there already; its state says so
            // without waiting on (and copying) the group's metrics.
            let applied = self.read_app(group, |state| state.applied_index())?;
            if applied >= wanted {
                return Ok(applied);
            }
            let reached = raft
                .wait(Some(REQUEST_TIMEOUT))
                .applied_index_at_least(Some(wanted), "read index")
                .await;
            if reached.is_err() {
                let applied = super::applied_index(&raft);
                return Err(Error::Behind {
                    group,
                    applied,
                    wanted,
                });
            }
        }
        Ok(super::applied_index(&raft))
    }

    /// Answers `query` from the local replica of `group`, once it has applied
    /// what `consistency` requires.
    pub(super) async fn read_here(
        &self,
        group: GroupId,
        query: &[u8],
        consistency: ReadConsistency,
    ) -> Result<ReadReply, Error> {
        self.catch_up(group, consistency).await?;
        self.read_app(group, |state| ReadReply {
            index: state.applied_index(),
            reply: state.app.query(query),
        })
    }

    /// Answers `query` on `group` from this node if it hosts the group, or
    /// from one of its replicas.
    pub(super) async fn read(
        &self,
        group: GroupId,
        query: Vec<u8>,
        consistency: ReadConsistency,
    ) -> Result<ReadReply, Error> {
        let bytes = query.len() as u64;
        if bytes > self.limits.max_proposal_bytes {
            return Err(Error::ProposalTooLarge {
                bytes,
                max: self.limits.max_proposal_bytes,
            });
        }
        if self.raft(group).is_some() {
            return self.read_here(group, &query, consistency).await;
        }
        // Any replica serves the read. One that is down, has not opened the
        // group yet (it was just created), is behind, starting or stopping
        // is retried, the next replica in turn, like a write's leader.
        self.route(group, elsewhere_or_later, |target, left| {
            let query = query.clone();
            async move {
                let addr = self.peer_address(group, target)?;
                self.pool
                    .forward_read(target, &addr, group, query, consistency, left)
                    .await
            }
        })
        .await
    }
}

/// Whether a replica's refusal of a forwarded read may not recur at
/// another replica or a moment later: it is behind, starting or stopping,
/// or its group's Raft failed. A refusal of the query itself would recur.
fn elsewhere_or_later(e: &Error) -> bool {
    match e {
        Error::Behind { .. } => true,
        Error::Remote { error, .. } => matches!(
            **error,
            PeerError::ShuttingDown | PeerError::Starting | PeerError::Raft(_)
        ),
        _ => false,
    }
}

fn to_peer_error(e: Error) -> PeerError {
    match e {
        Error::NotLeader { group, leader } => PeerError::NotLeader { group, leader },
        Error::UnknownGroup(group) => PeerError::UnknownGroup(group),
        Error::Behind {
            group,
            applied,
            wanted,
        } => PeerError::Behind {
            group,
            applied,
            wanted,
        },
        Error::ShuttingDown => PeerError::ShuttingDown,
        other => PeerError::WriteFailed(other.to_string()),
    }
}

impl Dispatch for Shared {
    fn raft(&self, group: GroupId) -> Option<Raft> {
        Shared::raft(self, group)
    }

    async fn write_as_leader(
        &self,
        group: GroupId,
        payload: Vec<u8>,
    ) -> Result<WriteReply, PeerError> {
        Shared::write_as_leader(self, group, payload)
            .await
            .map_err(to_peer_error)
    }

    fn boot_id(&self) -> Option<u64> {
        self.started
            .load(std::sync::atomic::Ordering::Acquire)
            .then_some(self.boot_id)
    }

    async fn read_index_as_leader(&self, group: GroupId) -> Result<u64, PeerError> {
        Shared::read_index_as_leader(self, group)
            .await
            .map_err(to_peer_error)
    }

    async fn read_here(
        &self,
        group: GroupId,
        query: Vec<u8>,
        consistency: ReadConsistency,
    ) -> Result<ReadReply, PeerError> {
        Shared::read_here(self, group, &query, consistency)
            .await
            .map_err(to_peer_error)
    }
}
