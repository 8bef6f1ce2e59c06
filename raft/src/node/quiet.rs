//! Quiet location groups: an idle group sends no heartbeats, and its
//! followers do not time out, for as long as its leader's node is alive.
//!
//! openraft drives every group on its own: a leader heartbeats each follower
//! every `heartbeat_interval_ms`, and each replica ticks its timers. With
//! thousands of locations that is most of a node's idle CPU. Instead, nodes
//! ping each other (one `ping` RPC per peer every [`PING_INTERVAL`]; the
//! answer is the peer's boot id, given once its groups are open), and a
//! pass over the local location groups every [`PASS_INTERVAL`] (at every
//! ping while a group has no leader it trusts or a group was opened, and at
//! once when a peer's liveness changes) sets each group's runtime switches,
//! skipping (unless a peer's liveness changed) the groups that were quiet
//! at the last look and whose metrics have not moved since:
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
//!   leader for [`SUSPECT_AFTER`] (time for a new group's first election to
//!   settle): the live voter with the lowest id stands at once (the voters'
//!   leader leases, 300 ms, have run out by then), the next one
//!   [`SECOND_CANDIDATE_AFTER`] later, and so on in id order, so that the
//!   replicas of an idle group (whose election timeouts have long passed)
//!   do not all stand at once and split the vote; while no leader emerges,
//!   they stand again. A learner never stands, nor does a replica whose
//!   live voters (itself included) are no majority: it could not win, and
//!   its raised term would depose the leader when the partition heals.
//!
//! The pass starts every election of a location group (and a returning
//! peer's heartbeats) itself; only leaders tick (groups open with ticks
//! off). A location group's leader heartbeats at its ticks, every 1.5 ×
//! `location_heartbeat_interval_ms` (1 s): openraft wakes each group's timer
//! that often even when its ticks are off, and with thousands of groups
//! those wakeups were most of an idle node's CPU. A follower's own election
//! timer (150–300 ms) would fire between two such heartbeats.
//!
//! Silence is measured from the peer's last answer, but not across this
//! node's own stalls: when the ping loop wakes more than two intervals
//! after it started waiting (the process was paused or starved), every live
//! peer gets a fresh [`SUSPECT_AFTER`], once per run of late wakeups, so
//! that a paused node does not stand in every group it follows the moment
//! it resumes, and a node that stays starved still suspects a dead peer.
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
use crate::typ::{GroupId, NodeId, Raft, RaftMetrics, META_GROUP};

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
pub(crate) const PASS_INTERVAL: Duration = Duration::from_secs(1);

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
    fn new(started: Instant) -> Self {
        Self {
            answered: BTreeMap::new(),
            boots: BTreeMap::new(),
            rebooted: BTreeSet::new(),
            alive: BTreeSet::new(),
            started,
        }
    }

    /// How long `node` has not answered.
    fn silent_for(&self, node: NodeId, now: Instant) -> Duration {
        let last = self.answered.get(&node).copied().unwrap_or(self.started);
        now.duration_since(last)
    }

    fn suspected(&self, node: NodeId, now: Instant) -> bool {
        self.silent_for(node, now) > SUSPECT_AFTER
    }

    /// This node itself was stalled (paused, starved of CPU) until `now`:
    /// silence across its own stall says nothing about its peers, so each
    /// peer that was alive gets a full [`SUSPECT_AFTER`] from now to answer.
    fn forgive(&mut self, now: Instant) {
        for peer in &self.alive {
            self.answered.insert(*peer, now);
        }
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

/// A leader that is not quiet: openraft as usual.
const NORMAL: Switches = Switches {
    heartbeat: true,
    elect: true,
    tick: true,
};

/// A follower whose leader's node answers.
const QUIET_FOLLOWER: Switches = Switches {
    heartbeat: true,
    elect: false,
    tick: false,
};

/// A leader whose group is still and whose followers hold every entry.
const QUIET_LEADER: Switches = Switches {
    heartbeat: false,
    elect: true,
    tick: false,
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
    /// The group's metrics, to tell whether they moved since the last look.
    metrics: tokio::sync::watch::Receiver<RaftMetrics>,
}

impl Seen {
    fn new(raft: &Raft) -> Self {
        let metrics = raft.metrics();
        let term = metrics.borrow().current_term;
        Self {
            metrics,
            // What `RaftConfig::location_openraft` opens a group with.
            switches: WAITING,
            term,
            led: None,
            doubted: None,
            leaderless: None,
            stood: None,
            unsettled: false,
        }
    }

    /// Whether the last look left the group quiet and settled, and nothing
    /// has moved since: then only a change of a peer's liveness (which
    /// makes every group be looked at) could change its switches. Most of
    /// ten thousand idle groups are skipped this way, most of the time.
    fn still(&self) -> bool {
        !self.unsettled
            && (self.switches == QUIET_FOLLOWER || self.switches == QUIET_LEADER)
            && !self.metrics.has_changed().unwrap_or(true)
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
            let switches = if quiet { QUIET_LEADER } else { NORMAL };
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
            if leader.is_some() {
                seen.stood = None;
                return (QUIET_FOLLOWER, Nudge::None);
            }
            // Leaderless for less than SUSPECT_AFTER, perhaps because this
            // replica just stood: `stood` keeps it from standing again
            // before its round is up.
            seen.unsettled = true;
            return (WAITING, Nudge::None);
        };
        let live = |id: NodeId| id == me || !self.liveness.suspected(id, now);
        // Only a group in doubt gets here: the allocation is rare.
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let Some(rank) = standing_rank(&voters, me, leader, live) else {
            // Not unsettled: nothing changes for it until a peer's liveness
            // does, which runs a pass anyway.
            return (WAITING, Nudge::None);
        };
        seen.unsettled = true;
        let stand = doubt >= SECOND_CANDIDATE_AFTER * rank as u32;
        let round = SECOND_CANDIDATE_AFTER * voters.len().max(1) as u32;
        let nudge = if stand && seen.stood.is_none_or(|at| now.duration_since(at) >= round) {
            seen.stood = Some(now);
            Nudge::Elect
        } else {
            Nudge::None
        };
        // Elections on (not quiet) even before its turn: the switch is
        // what status reports; with ticks off, only the nudge starts one.
        (WAITING, nudge)
    }
}

/// This replica's place in the order in which live voters stand when
/// `leader` (if any) is in doubt, or `None` if it must not stand: it is a
/// learner, or the voters it can reach (itself included) are no majority, so
/// it could not win, and standing anyway would only raise its term, which
/// deposes the leader when a partition heals. Candidates stand in id order
/// (`voters` come in id order), one [`SECOND_CANDIDATE_AFTER`] apart.
fn standing_rank(
    voters: &[NodeId],
    me: NodeId,
    leader: Option<NodeId>,
    live: impl Fn(NodeId) -> bool,
) -> Option<usize> {
    if voters.iter().filter(|id| live(**id)).count() * 2 <= voters.len() {
        return None;
    }
    voters
        .iter()
        .filter(|id| Some(**id) != leader && live(**id))
        .position(|id| *id == me)
}

/// Pings the peers and sets every local location group's switches, until
/// the node stops.
pub(super) async fn quiet_loop(shared: Arc<Shared>) {
    let started = Instant::now();
    let liveness = Arc::new(Mutex::new(Liveness::new(started)));
    let mut state: BTreeMap<GroupId, Seen> = BTreeMap::new();
    let in_flight: Arc<Mutex<BTreeSet<NodeId>>> = Default::default();
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pass = started;
    let mut unsettled = false;
    let mut was_late = false;
    loop {
        let waiting_since = Instant::now();
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = ping.tick() => {}
        }
        // Woken late: this node was stalled. Forgive once per stall, so that
        // a node that stays starved still suspects a peer that died.
        let now = Instant::now();
        let late = now.duration_since(waiting_since) > 2 * PING_INTERVAL;
        if late && !was_late {
            liveness.lock().expect("liveness lock").forgive(now);
        }
        was_late = late;
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
        let ids: Vec<NodeId> = peers.iter().map(|(id, _)| *id).collect();
        let (changed, revived) = liveness.lock().expect("liveness lock").update(&ids, now);
        // A group opened or closed since the last pass (a new location
        // has its first election to settle) is looked at now.
        let opened = {
            let groups = shared.groups.read().expect("group table lock");
            groups.len() - usize::from(groups.contains_key(&META_GROUP)) != state.len()
        };
        if !changed && !unsettled && !opened && now.duration_since(last_pass) < PASS_INTERVAL {
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
        let mut switched = false;
        unsettled = false;
        for (group, raft) in &rafts {
            let seen = state.entry(*group).or_insert_with(|| Seen::new(raft));
            if !changed && seen.still() {
                continue;
            }
            seen.metrics.mark_unchanged();
            let had = seen.switches;
            let (want, nudge) = pass.switches(raft, seen);
            unsettled |= seen.unsettled;
            if had != want {
                let config = raft.runtime_config();
                config.heartbeat(want.heartbeat);
                config.elect(want.elect);
                config.tick(want.tick);
                seen.switches = want;
                switched = true;
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
            switched = true;
        }
        if switched {
            let quiet = state
                .iter()
                .filter(|(_, s)| !s.switches.heartbeat || !s.switches.elect)
                .map(|(g, _)| *g)
                .collect();
            *shared.quiet.write().expect("quiet groups lock") = quiet;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_voters_stand_in_id_order_and_only_with_a_majority() {
        let three = || &[1, 2, 3][..];
        let all_live = |_| true;
        // Leader 1 in doubt: 2 stands first, then 3.
        assert_eq!(standing_rank(three(), 2, Some(1), all_live), Some(0));
        assert_eq!(standing_rank(three(), 3, Some(1), all_live), Some(1));
        // No leader at all: the lowest id first.
        assert_eq!(standing_rank(three(), 1, None, all_live), Some(0));
        // A suspected voter does not hold a place.
        let two_down = |id| id != 2;
        assert_eq!(standing_rank(three(), 3, Some(1), two_down), Some(0));
        // Alone (the leader and the other voter silent): no majority.
        let alone = |id| id == 3;
        assert_eq!(standing_rank(three(), 3, Some(1), alone), None);
        // Five voters, two down: three reach a majority.
        let five = || &[1, 2, 3, 4, 5][..];
        let two_of_five_down = |id| id > 2;
        assert_eq!(standing_rank(five(), 4, Some(1), two_of_five_down), Some(1));
        let three_of_five_down = |id| id > 3;
        assert_eq!(standing_rank(five(), 4, Some(1), three_of_five_down), None);
        // A learner never stands.
        assert_eq!(standing_rank(three(), 7, Some(1), all_live), None);
    }

    #[test]
    fn a_node_that_was_stalled_does_not_suspect_its_peers_for_it() {
        let t0 = Instant::now();
        let mut liveness = Liveness::new(t0);
        liveness.answer(2, 7, t0);
        assert_eq!(liveness.update(&[2], t0), (true, vec![2]));
        // The node was paused for a second: silence alone says 2 is dead.
        let resumed = t0 + Duration::from_secs(1);
        assert!(liveness.suspected(2, resumed));
        liveness.forgive(resumed);
        assert!(!liveness.suspected(2, resumed));
        assert_eq!(liveness.update(&[2], resumed), (false, vec![]));
        // But a peer that stays silent after the stall is suspected in time.
        let later = resumed + SUSPECT_AFTER + Duration::from_millis(1);
        assert!(liveness.suspected(2, later));
        assert_eq!(liveness.update(&[2], later), (true, vec![]));
    }
}
