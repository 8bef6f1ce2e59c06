//! Quiet location groups: an idle group sends no heartbeats, and its
//! followers do not time out, for as long as its leader's node is alive.
//!
//! openraft drives every group on its own: a leader heartbeats each follower
//! every `heartbeat_interval_ms`, and each replica ticks its timers. With
//! thousands of locations that is most of a node's idle CPU. Instead, nodes
//! ping each other (one `ping` RPC per peer every [`PING_INTERVAL`]; the
//! answer is the peer's boot id, given once its groups are open), and a pass over the local location groups
//! every [`PASS_INTERVAL`] (and at once when a peer's liveness changes)
//! sets each group's runtime switches:
//!
//! - **Leader** whose log and applied index have not moved for
//!   [`QUIET_AFTER`] and whose followers hold every entry: heartbeats and
//!   ticks off. Until then the group heartbeats as usual, so a follower
//!   that missed the commit index of the last entries learns it; a
//!   linearizable read still confirms leadership with its own quorum round.
//!   When a peer answers again after it was suspected (a restart, a healed
//!   partition), or with a new boot id, every group this node leads and the
//!   peer replicates heartbeats for [`QUIET_AFTER`] again, so that the peer's replicas
//!   learn their leader and catch up instead of standing for election.
//! - **Follower** whose known leader is another node that answers pings
//!   with the same boot id: elections and ticks off. With no known leader:
//!   elections and ticks on, and openraft's election timeout (measured from
//!   the last word of the leader) runs as usual. With a leader whose node
//!   has not answered for [`SUSPECT_AFTER`], or answers with a new boot id
//!   (it restarted; the log storage makes a restarted leader win a new
//!   term, so it leads nothing however fast it came back): the
//!   same, at once on the live voter with the lowest id, which stands
//!   without waiting for its next tick (the voters' leader leases, 300 ms,
//!   have run out by then), and [`SECOND_CANDIDATE_AFTER`] later on the
//!   next, and so on in id order, so that the replicas of an idle group (whose election
//!   timeouts have long passed) do not all stand at once and split the
//!   vote.
//!
//! The switches change when groups elect, never what they decide: Raft's
//! safety does not depend on them, only its liveness. The meta group is
//! never quiet. Not covered: a replica that stops leading while its node
//! keeps answering, without another replica standing (openraft's core for
//! the group stopped on a storage error); its followers wait for the node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::Shared;
use crate::typ::{GroupId, NodeId, Raft, META_GROUP};

/// How often a node pings each peer.
pub(crate) const PING_INTERVAL: Duration = Duration::from_millis(100);
/// A peer that has not answered a ping for this long is suspected dead.
pub(crate) const SUSPECT_AFTER: Duration = Duration::from_millis(400);
/// How much longer each further replica (in id order) of a group whose
/// leader is suspected waits before it may stand too.
pub(crate) const SECOND_CANDIDATE_AFTER: Duration = Duration::from_millis(400);
/// How long a leader's group must be still before it goes quiet.
pub(crate) const QUIET_AFTER: Duration = Duration::from_secs(2);
/// How often every local location group's switches are set, besides when
/// a peer's liveness changes.
pub(crate) const PASS_INTERVAL: Duration = Duration::from_millis(250);

/// What this node knows of its peers' liveness.
#[derive(Clone)]
struct Liveness {
    /// When each peer last answered a ping.
    answered: BTreeMap<NodeId, Instant>,
    /// Each peer's boot id, from its last answer.
    boots: BTreeMap<NodeId, u64>,
    /// Peers that answered with a new boot id since the last pass.
    rebooted: BTreeSet<NodeId>,
    /// The peers not suspected at the last update.
    alive: BTreeSet<NodeId>,
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

    /// Records an answer from `peer`.
    fn answer(&mut self, peer: NodeId, boot: u64, now: Instant) {
        self.answered.insert(peer, now);
        match self.boots.get(&peer).copied() {
            // An answer of the old process that arrived late.
            Some(known) if boot < known => {}
            Some(known) if boot > known => {
                tracing::info!(peer, "peer restarted; the groups it led elect");
                self.boots.insert(peer, boot);
                self.rebooted.insert(peer);
            }
            Some(_) => {}
            None => {
                self.boots.insert(peer, boot);
            }
        }
    }

    /// Updates `alive` at `now`: whether any peer's liveness changed, and
    /// the peers that answer again.
    fn update(&mut self, peers: &[NodeId], now: Instant) -> (bool, Vec<NodeId>) {
        let (mut changed, mut revived) = (!self.rebooted.is_empty(), Vec::new());
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

/// A group this node leads: since when its log and applied index have been
/// what they are.
struct Led {
    since: Instant,
    at: (Option<u64>, Option<u64>),
}

/// What the pass remembers between runs.
#[derive(Default)]
struct PassState {
    /// The switches each group was given.
    set: BTreeMap<GroupId, Switches>,
    /// The groups this node leads.
    led: BTreeMap<GroupId, Led>,
    /// Groups whose leader restarted: the term then, and when it was seen.
    doubted: BTreeMap<GroupId, (u64, Instant)>,
    /// Each group's term at the previous pass.
    terms: BTreeMap<GroupId, u64>,
}

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

/// What one pass knows besides the group.
struct Pass<'a> {
    me: NodeId,
    liveness: &'a Liveness,
    revived: &'a [NodeId],
    now: Instant,
}

impl Pass<'_> {
    /// The switches `raft` should have now, and whether this replica is the
    /// first to stand for its leader.
    fn switches(&self, group: GroupId, raft: &Raft, state: &mut PassState) -> (Switches, bool) {
        let (me, now) = (self.me, self.now);
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        // A reboot learnt now concerns the leader of the term seen at the
        // previous pass, not one elected since (after a partition healed).
        let term_before = state.terms.insert(group, m.current_term);
        if m.state == ServerState::Leader {
            state.doubted.remove(&group);
            let at = (m.last_log_index, m.last_applied.map(|l| l.index));
            let led = state.led.entry(group).or_insert(Led { since: now, at });
            let returned = self
                .revived
                .iter()
                .chain(self.liveness.rebooted.iter())
                .any(|p| voters.contains(p));
            if led.at != at || returned {
                *led = Led { since: now, at };
            }
            let followers_current = m.replication.as_ref().is_some_and(|r| {
                r.iter()
                    .filter(|(id, _)| **id != me)
                    .all(|(_, matched)| matched.map(|l| l.index) == m.last_log_index)
            });
            let quiet = now.duration_since(led.since) >= QUIET_AFTER && followers_current;
            let switches = Switches {
                heartbeat: !quiet,
                elect: true,
                tick: !quiet,
            };
            return (switches, false);
        }
        state.led.remove(&group);
        let Some(leader) = m.current_leader.filter(|l| *l != me) else {
            state.doubted.remove(&group);
            return (NORMAL, false);
        };
        if self.liveness.rebooted.contains(&leader) && term_before == Some(m.current_term) {
            state.doubted.entry(group).or_insert((m.current_term, now));
        }
        if state
            .doubted
            .get(&group)
            .is_some_and(|(term, _)| *term != m.current_term)
        {
            state.doubted.remove(&group);
        }
        // How long the leader has been in doubt: silent, or restarted.
        let silent = self.liveness.silent_for(leader, now);
        let doubt = if silent > SUSPECT_AFTER {
            Some(silent - SUSPECT_AFTER)
        } else {
            state
                .doubted
                .get(&group)
                .map(|(_, at)| now.duration_since(*at))
        };
        let Some(doubt) = doubt else {
            let quiet = Switches {
                heartbeat: true,
                elect: false,
                tick: false,
            };
            return (quiet, false);
        };
        // Live candidates stand in id order, one SECOND_CANDIDATE_AFTER
        // apart (voters are in id order).
        let rank = voters
            .iter()
            .filter(|id| **id != leader && (**id == me || !self.liveness.suspected(**id, now)))
            .position(|id| *id == me)
            .unwrap_or(0);
        let first = rank == 0;
        let stand = doubt >= SECOND_CANDIDATE_AFTER * rank as u32;
        let switches = Switches {
            heartbeat: true,
            elect: stand,
            tick: stand,
        };
        (switches, first)
    }
}

/// Pings the peers and sets every local location group's switches, until
/// the node stops.
pub(super) async fn quiet_loop(shared: Arc<Shared>) {
    let started = Instant::now();
    let liveness = Arc::new(Mutex::new(Liveness {
        answered: BTreeMap::new(),
        boots: BTreeMap::new(),
        rebooted: BTreeSet::new(),
        alive: BTreeSet::new(),
        started,
    }));
    let mut state = PassState::default();
    let in_flight: Arc<Mutex<BTreeSet<NodeId>>> = Default::default();
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
            // One ping in flight per peer, so that pings to a dead peer do
            // not pile up while they time out.
            if !in_flight.lock().expect("ping lock").insert(*peer) {
                continue;
            }
            let (shared, liveness, in_flight, peer, addr) = (
                shared.clone(),
                liveness.clone(),
                in_flight.clone(),
                *peer,
                addr.clone(),
            );
            tokio::spawn(async move {
                if let Ok(boot) = shared.pool.ping(peer, &addr, SUSPECT_AFTER).await {
                    let mut l = liveness.lock().expect("liveness lock");
                    l.answer(peer, boot, Instant::now());
                }
                in_flight.lock().expect("ping lock").remove(&peer);
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
        let open: BTreeSet<GroupId> = rafts.iter().map(|(id, _)| *id).collect();
        state.set.retain(|g, _| open.contains(g));
        state.led.retain(|g, _| open.contains(g));
        state.doubted.retain(|g, _| open.contains(g));
        state.terms.retain(|g, _| open.contains(g));
        let seen = {
            let mut l = liveness.lock().expect("liveness lock");
            let seen = l.clone();
            l.rebooted.clear();
            seen
        };
        let pass = Pass {
            me: shared.id,
            liveness: &seen,
            revived: &revived,
            now,
        };
        for (group, raft) in rafts {
            let (want, first_candidate) = pass.switches(group, &raft, &mut state);
            let had = state.set.get(&group).copied().unwrap_or(NORMAL);
            if had != want {
                let config = raft.runtime_config();
                config.heartbeat(want.heartbeat);
                config.elect(want.elect);
                config.tick(want.tick);
                state.set.insert(group, want);
                // The first candidate stands now rather than at its next
                // tick: the voters' leases have run out by the time a
                // leader is suspected.
                if first_candidate && !had.elect {
                    let _ = raft.trigger().elect().await;
                }
            }
        }
        let quiet = state
            .set
            .iter()
            .filter(|(_, s)| !s.heartbeat || !s.elect)
            .map(|(g, _)| *g)
            .collect();
        *shared.quiet.write().expect("quiet groups lock") = quiet;
    }
}
