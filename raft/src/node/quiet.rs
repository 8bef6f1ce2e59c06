//! Quiet location groups: an idle group sends no heartbeats, and its
//! followers do not time out, for as long as its leader's node is alive.
//!
//! openraft drives every group on its own: a leader heartbeats each follower
//! every `heartbeat_interval_ms`, and each replica ticks its timers. With
//! thousands of locations that is most of a node's idle CPU. Instead, nodes
//! ping each other (one `ping` RPC per peer every [`PING_INTERVAL`]; the
//! answer is the peer's boot id, given once its groups are open), and a
//! pass over the local location groups every [`PASS_INTERVAL`] (at every
//! ping while a group has no leader it trusts, and at once when a peer's
//! liveness changes) sets each group's runtime switches:
//!
//! - **Leader** whose log and applied index have not moved for
//!   [`QUIET_AFTER`] and whose followers hold every entry: heartbeats and
//!   ticks off. Until then the group heartbeats as usual, so a follower
//!   that missed the commit index of the last entries learns it; a
//!   linearizable read still confirms leadership with its own quorum round.
//!   When a peer answers again after it was suspected (a restart, a healed
//!   partition), or with a new boot id, every group this node leads and the
//!   peer replicates sends it a heartbeat at once and stays out of quiet for
//!   [`QUIET_AFTER`] again, so that the peer's replicas hear from their
//!   leader and catch up. (A restarted replica knows its leader from the
//!   committed vote it stored, so it does not stand meanwhile.)
//! - **Follower** whose known leader is another node that answers pings
//!   with the same boot id: elections and ticks off. With a leader whose
//!   node has not answered for [`SUSPECT_AFTER`], or answers with a new boot
//!   id (it restarted; the log storage makes a restarted leader win a new
//!   term, so it leads nothing however fast it came back), or with no known
//!   leader for [`SUSPECT_AFTER`] (time for a new group's first election, or
//!   for a leader that learnt of this node's restart to introduce itself):
//!   the live voter with the lowest id stands at once (the voters' leader
//!   leases, 300 ms, have run out by then), the next one
//!   [`SECOND_CANDIDATE_AFTER`] later, and so on in id order, so that the
//!   replicas of an idle group (whose election timeouts have long passed)
//!   do not all stand at once and split the vote; while no leader emerges,
//!   each stands again one round (voters × [`SECOND_CANDIDATE_AFTER`])
//!   later. A learner never stands.
//!
//! The pass starts every election of a location group (and a returning
//! peer's heartbeats) itself; only leaders tick. A location group heartbeats
//! only every `location_heartbeat_interval_ms` (1 s), and openraft wakes its
//! timer every 1.5 of those, because with thousands of groups those wakeups
//! are most of an idle node's CPU; a follower's own election timer (150–300
//! ms) would then fire between two heartbeats.
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
pub(crate) const PASS_INTERVAL: Duration = Duration::from_millis(500);

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

/// A follower that may stand, but only when the pass says so.
const WAITING: Switches = Switches {
    heartbeat: true,
    elect: true,
    tick: false,
};

/// A group this node leads: since when its log and applied index have been
/// what they are.
struct Led {
    since: Instant,
    at: (Option<u64>, Option<u64>),
}

/// What the pass remembers of one group between runs.
struct Seen {
    /// The switches the group was given.
    switches: Switches,
    /// Its term at the previous pass.
    term: u64,
    /// Set while this node leads it.
    led: Option<Led>,
    /// Its leader restarted: the term then, and when it was seen.
    doubted: Option<(u64, Instant)>,
    /// Since when it has known no leader.
    leaderless: Option<Instant>,
    /// When this replica last stood for it.
    stood: Option<Instant>,
    /// It has no leader this replica trusts: the pass runs at every ping
    /// until it does, rather than every [`PASS_INTERVAL`].
    unsettled: bool,
}

impl Seen {
    fn new(term: u64) -> Self {
        Self {
            switches: NORMAL,
            term,
            led: None,
            doubted: None,
            leaderless: None,
            stood: None,
            unsettled: false,
        }
    }
}

/// What the pass does to a group besides setting its switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Nudge {
    None,
    /// Stand for election now.
    Elect,
    /// Send every follower a heartbeat now.
    Heartbeat,
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
    /// The switches `raft` should have now, and what to do to it at once.
    /// Most groups, most of the time, are quiet followers of a live leader:
    /// that case allocates nothing and walks no membership.
    fn switches(&self, raft: &Raft, seen: &mut Seen) -> (Switches, Nudge) {
        let (me, now) = (self.me, self.now);
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        // A reboot learnt now concerns the leader of the term seen at the
        // previous pass, not one elected since (after a partition healed).
        let term_before = std::mem::replace(&mut seen.term, m.current_term);
        seen.unsettled = false;
        if m.state == ServerState::Leader {
            seen.doubted = None;
            seen.leaderless = None;
            seen.stood = None;
            let at = (m.last_log_index, m.last_applied.map(|l| l.index));
            // Peers rarely return: the membership is walked only then.
            let returned = self
                .revived
                .iter()
                .chain(self.liveness.rebooted.iter())
                .any(|p| membership.voter_ids().any(|v| v == *p));
            let led = seen.led.get_or_insert(Led { since: now, at });
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
            // A returning replica hears from its leader (and what it missed)
            // now, not at the next heartbeat, which may be a second away.
            let nudge = if returned {
                Nudge::Heartbeat
            } else {
                Nudge::None
            };
            return (switches, nudge);
        }
        seen.led = None;
        // How long this replica has had reason to stand: its leader is
        // silent or restarted, or it knows of no leader at all.
        let leader = m.current_leader.filter(|l| *l != me);
        let doubt = match leader {
            Some(leader) => {
                seen.leaderless = None;
                if self.liveness.rebooted.contains(&leader) && term_before == m.current_term {
                    seen.doubted.get_or_insert((m.current_term, now));
                }
                if seen.doubted.is_some_and(|(term, _)| term != m.current_term) {
                    seen.doubted = None;
                }
                let silent = self.liveness.silent_for(leader, now);
                if silent > SUSPECT_AFTER {
                    Some(silent - SUSPECT_AFTER)
                } else {
                    seen.doubted.map(|(_, at)| now.duration_since(at))
                }
            }
            None => {
                // Give a leader that is about to introduce itself (a new
                // group's first election) time to do so.
                seen.doubted = None;
                let since = *seen.leaderless.get_or_insert(now);
                now.duration_since(since).checked_sub(SUSPECT_AFTER)
            }
        };
        let Some(doubt) = doubt else {
            seen.stood = None;
            if leader.is_some() {
                let quiet = Switches {
                    heartbeat: true,
                    elect: false,
                    tick: false,
                };
                return (quiet, Nudge::None);
            }
            seen.unsettled = true;
            return (WAITING, Nudge::None);
        };
        // Live candidates stand in id order, one SECOND_CANDIDATE_AFTER
        // apart (voters are in id order), and each again one round later
        // while no leader has emerged. A learner never stands.
        let Some(rank) = membership
            .voter_ids()
            .filter(|id| Some(*id) != leader && (*id == me || !self.liveness.suspected(*id, now)))
            .position(|id| id == me)
        else {
            return (WAITING, Nudge::None);
        };
        seen.unsettled = true;
        let stand = doubt >= SECOND_CANDIDATE_AFTER * rank as u32;
        let round = SECOND_CANDIDATE_AFTER * membership.voter_ids().count().max(1) as u32;
        let nudge = if stand && seen.stood.is_none_or(|at| now.duration_since(at) >= round) {
            seen.stood = Some(now);
            Nudge::Elect
        } else {
            Nudge::None
        };
        let switches = Switches {
            elect: stand,
            ..WAITING
        };
        (switches, nudge)
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
    let mut state: BTreeMap<GroupId, Seen> = BTreeMap::new();
    let in_flight: Arc<Mutex<BTreeSet<NodeId>>> = Default::default();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pass = started;
    let mut unsettled = false;
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
        if !changed && !unsettled && now.duration_since(last_pass) < PASS_INTERVAL {
            continue;
        }
        last_pass = now;
        let rafts = shared.location_rafts();
        let liveness_now = {
            let mut l = liveness.lock().expect("liveness lock");
            let now = l.clone();
            l.rebooted.clear();
            now
        };
        let pass = Pass {
            me: shared.id,
            liveness: &liveness_now,
            revived: &revived,
            now,
        };
        let mut changed = false;
        unsettled = false;
        for (group, raft) in &rafts {
            let seen = state
                .entry(*group)
                .or_insert_with(|| Seen::new(raft.metrics().borrow().current_term));
            let had = seen.switches;
            let (want, nudge) = pass.switches(raft, seen);
            unsettled |= seen.unsettled;
            if had != want {
                let config = raft.runtime_config();
                config.heartbeat(want.heartbeat);
                config.elect(want.elect);
                config.tick(want.tick);
                seen.switches = want;
                changed = true;
            }
            // openraft's own timers wake only every 1.5 heartbeat intervals
            // of a location group: elections and the heartbeats a returning
            // peer needs are started here instead.
            let _ = match nudge {
                Nudge::None => Ok(()),
                Nudge::Elect => raft.trigger().elect().await,
                Nudge::Heartbeat => raft.trigger().heartbeat().await,
            };
        }
        // Every open group has its record now; more records mean closed groups.
        if state.len() != rafts.len() {
            let open: BTreeSet<GroupId> = rafts.iter().map(|(id, _)| *id).collect();
            state.retain(|g, _| open.contains(g));
            changed = true;
        }
        if changed {
            let quiet = state
                .iter()
                .filter(|(_, s)| !s.switches.heartbeat || !s.switches.elect)
                .map(|(g, _)| *g)
                .collect();
            *shared.quiet.write().expect("quiet groups lock") = quiet;
        }
    }
}
