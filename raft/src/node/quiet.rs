//! Quiet location groups: an idle group sends no heartbeats, and its
//! followers do not time out, for as long as its leader's node is alive.
//!
//! openraft drives every group on its own: a leader heartbeats each follower
//! every `heartbeat_interval_ms`, and each replica ticks its timers. With
//! thousands of locations that is most of a node's idle CPU. Instead, nodes
//! ping each other (one `ping` RPC per peer every [`PING_INTERVAL`]), and a
//! pass over the local location groups every [`PASS_INTERVAL`] (and at once
//! when a peer's liveness changes) sets each group's runtime switches:
//!
//! - **Leader** that has led for [`QUIET_AFTER`] and whose followers have
//!   every entry: heartbeats and ticks off. Entries and commit indexes
//!   still reach the followers (openraft replicates both without
//!   heartbeats); a linearizable read still confirms leadership with its
//!   own quorum round. Otherwise: heartbeats and ticks on. When a peer
//!   answers again after it was suspected (a restart, a healed partition),
//!   every quiet group this node leads and the peer replicates sends it one
//!   heartbeat, so that its replicas learn their leader instead of
//!   standing for election.
//! - **Follower** whose known leader is another node that answers pings:
//!   elections and ticks off. With no known leader: elections and ticks on,
//!   and openraft's election timeout (measured from the last word of the
//!   leader) runs as usual. With a leader whose node has not answered for
//!   [`SUSPECT_AFTER`]: the same, at once on the live voter with the lowest
//!   id and [`SECOND_CANDIDATE_AFTER`] later on the others, so that the
//!   replicas of an idle group (whose election timeouts have all long
//!   passed) do not all stand at once and split the vote. The first
//!   candidate stands at once, without waiting for its next tick: the
//!   voters' leader leases (300 ms) have run out by then.
//!
//! The switches change when groups elect, never what they decide: Raft's
//! safety does not depend on them, only its liveness. The meta group is
//! never quiet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::Shared;
use crate::typ::{GroupId, NodeId, Raft, META_GROUP};

/// How often a node pings each peer.
pub(crate) const PING_INTERVAL: Duration = Duration::from_millis(100);
/// A peer that has not answered a ping for this long is suspected dead.
pub(crate) const SUSPECT_AFTER: Duration = Duration::from_millis(400);
/// How much longer the other replicas of a group whose leader is suspected
/// wait before they may stand too.
pub(crate) const SECOND_CANDIDATE_AFTER: Duration = Duration::from_millis(400);
/// How long a leader leads, with every follower's node answering, before
/// its group goes quiet.
pub(crate) const QUIET_AFTER: Duration = Duration::from_secs(2);
/// How often every local location group's switches are set, besides when
/// a peer's liveness changes.
pub(crate) const PASS_INTERVAL: Duration = Duration::from_millis(250);

/// What this node knows of its peers' liveness.
#[derive(Clone)]
struct Liveness {
    /// When each peer last answered a ping.
    answered: BTreeMap<NodeId, Instant>,
    /// The peers not suspected at the last update.
    alive: std::collections::BTreeSet<NodeId>,
    started: Instant,
}

impl Liveness {
    /// How long `node` has not answered.
    fn silent_for(&self, node: NodeId, now: Instant) -> Duration {
        let last = self.answered.get(&node).copied().unwrap_or(self.started);
        now.duration_since(last)
    }

    fn suspected(&self, node: NodeId, now: Instant) -> bool {
        self.silent_for(node, now) > SUSPECT_AFTER
    }

    /// Updates `alive` at `now`: whether any peer's liveness changed, and
    /// the peers that answer again.
    fn update(&mut self, peers: &[NodeId], now: Instant) -> (bool, Vec<NodeId>) {
        let (mut changed, mut revived) = (false, Vec::new());
        for &peer in peers {
            let suspected = self.suspected(peer, now);
            let was_alive = self.alive.contains(&peer);
            if suspected && was_alive {
                self.alive.remove(&peer);
                tracing::info!(
                    peer,
                    "peer stopped answering pings; its quiet groups may elect"
                );
                changed = true;
            } else if !suspected && !was_alive {
                self.alive.insert(peer);
                revived.push(peer);
                changed = true;
            }
        }
        (changed, revived)
    }
}

/// The switches of one group, as the pass wants them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Switches {
    heartbeat: bool,
    elect: bool,
    tick: bool,
}

const NORMAL: Switches = Switches {
    heartbeat: true,
    elect: true,
    tick: true,
};

impl Shared {
    /// The other members of the cluster, with their addresses.
    fn peers(&self) -> Vec<(NodeId, String)> {
        let Some(meta) = self.raft(META_GROUP) else {
            return Vec::new();
        };
        let metrics = meta.metrics();
        let metrics = metrics.borrow();
        metrics
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    fn location_rafts(&self) -> Vec<(GroupId, Raft)> {
        self.groups
            .read()
            .expect("group table lock")
            .iter()
            .filter(|(id, _)| **id != META_GROUP)
            .map(|(id, g)| (*id, g.raft.clone()))
            .collect()
    }
}

/// The switches `raft` should have now, and whether this replica is the
/// first to stand for its suspected leader; `led_since` remembers when this
/// node began to lead each group.
fn switches(
    me: NodeId,
    group: GroupId,
    raft: &Raft,
    liveness: &Liveness,
    led_since: &mut BTreeMap<GroupId, Instant>,
    now: Instant,
) -> (Switches, bool) {
    let metrics = raft.metrics();
    let m = metrics.borrow();
    if m.state == ServerState::Leader {
        let since = *led_since.entry(group).or_insert(now);
        let last = m.last_log_index;
        let followers_current = m.replication.as_ref().is_some_and(|r| {
            r.iter()
                .filter(|(id, _)| **id != me)
                .all(|(_, matched)| matched.map(|l| l.index) == last)
        });
        let quiet = now.duration_since(since) >= QUIET_AFTER && followers_current;
        let switches = Switches {
            heartbeat: !quiet,
            elect: true,
            tick: !quiet,
        };
        return (switches, false);
    }
    led_since.remove(&group);
    let mut first_candidate = false;
    let stand = match m.current_leader {
        Some(leader) if leader != me => {
            let silent = liveness.silent_for(leader, now);
            let first = m
                .membership_config
                .membership()
                .voter_ids()
                .filter(|id| *id != leader && (*id == me || !liveness.suspected(*id, now)))
                .min()
                == Some(me);
            first_candidate = first && silent > SUSPECT_AFTER;
            silent > SUSPECT_AFTER && (first || silent > SUSPECT_AFTER + SECOND_CANDIDATE_AFTER)
        }
        _ => true,
    };
    let switches = Switches {
        heartbeat: true,
        elect: stand,
        tick: stand,
    };
    (switches, first_candidate)
}

/// Pings the peers and sets every local location group's switches, until
/// the node stops.
pub(super) async fn quiet_loop(shared: Arc<Shared>) {
    let started = Instant::now();
    let liveness = Arc::new(std::sync::Mutex::new(Liveness {
        answered: BTreeMap::new(),
        alive: Default::default(),
        started,
    }));
    let mut set: BTreeMap<GroupId, Switches> = BTreeMap::new();
    let mut led_since: BTreeMap<GroupId, Instant> = BTreeMap::new();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pass = started;
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = ping.tick() => {}
        }
        let peers = shared.peers();
        for (peer, addr) in &peers {
            let (shared, liveness, peer, addr) =
                (shared.clone(), liveness.clone(), *peer, addr.clone());
            tokio::spawn(async move {
                if shared.pool.ping(peer, &addr, SUSPECT_AFTER).await.is_ok() {
                    let mut l = liveness.lock().expect("liveness lock");
                    l.answered.insert(peer, Instant::now());
                }
            });
        }
        let now = Instant::now();
        let ids: Vec<NodeId> = peers.iter().map(|(id, _)| *id).collect();
        let (changed, revived) = liveness.lock().expect("liveness lock").update(&ids, now);
        if !changed && now.duration_since(last_pass) < PASS_INTERVAL {
            continue;
        }
        last_pass = now;
        let rafts = shared.location_rafts();
        let open: std::collections::BTreeSet<GroupId> = rafts.iter().map(|(id, _)| *id).collect();
        set.retain(|g, _| open.contains(g));
        led_since.retain(|g, _| open.contains(g));
        let liveness = liveness.lock().expect("liveness lock").clone();
        for (group, raft) in rafts {
            let (want, first_candidate) =
                switches(shared.id, group, &raft, &liveness, &mut led_since, now);
            let had = set.get(&group).copied().unwrap_or(NORMAL);
            if !had.heartbeat && !want.heartbeat && !revived.is_empty() {
                let replicated = raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|id| revived.contains(&id));
                if replicated {
                    let _ = raft.trigger().heartbeat().await;
                }
            }
            if had != want {
                let config = raft.runtime_config();
                config.heartbeat(want.heartbeat);
                config.elect(want.elect);
                config.tick(want.tick);
                set.insert(group, want);
                // The first candidate stands now rather than at its next
                // tick: the voters' leases have run out by the time a
                // leader is suspected.
                if first_candidate && !had.elect {
                    let _ = raft.trigger().elect().await;
                }
            }
        }
        let quiet = set
            .iter()
            .filter(|(_, s)| !s.heartbeat || !s.elect)
            .map(|(g, _)| *g)
            .collect();
        *shared.quiet.write().expect("quiet groups lock") = quiet;
    }
}
