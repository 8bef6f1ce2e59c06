//! The event checkers: what the watchers saw against what the logs hold
//! and what the history says was asked and answered.
//!
//! Three records meet here. The watchers' ([`Watch`]): every event each
//! received, in arrival order, through every fault of the run, read on to
//! the end of the logs afterwards. The reference ([`Reference`]): every
//! event each location holds at the end, read once more after healing,
//! after `garrison check` found the replicas identical (their state, events
//! included). And the history: every transaction the workload signed
//! (location, signer, sequence number), with the receipt a node gave for
//! it (log index, committed or rejected) or none (unknown, or refused at
//! ingress). The history is the independent truth: it is the harness's own
//! account, not something the cluster keeps.
//!
//! The checks, each failing the run:
//!
//! - [`no_duplicate`]: no watcher received one event id twice.
//! - [`log_order`]: each watcher received each location's events in
//!   increasing id order.
//! - [`no_gap`]: each watcher received every event the reference holds,
//!   read to the end of every log, and every entry it saw is whole (its
//!   positions from 0 up to its outcome).
//! - [`no_phantom`]: nothing a watcher received is missing from the
//!   reference or different there; every outcome event, anywhere, is one
//!   the history explains (a transaction of that signer, location and
//!   sequence number, whose receipt names that index, or whose outcome was
//!   unknown: never one certainly refused, never one of nobody's); no
//!   sequence number committed twice; every entry has one outcome, last,
//!   one signer, and a rejected one nothing else.
//! - [`acknowledged`]: every receipt in the history appears, in the
//!   reference and in each watcher, as exactly one outcome event at its
//!   index, of that signer and sequence number, committed or rejected as
//!   the receipt said.
//! - [`watchers_agree`]: the watchers' streams are the same, event for
//!   event, as far as both read.
//!
//! Retention: a location keeps only its most recent events, so a long run
//! may find the oldest gone at the end. The reference then starts at the
//! oldest event held (`trimmed`), and the comparisons with it cover only
//! that window; what came before is still checked against the history and
//! between the watchers. A watcher told that events after its cursor were
//! trimmed ([`Lost`]) is excused exactly the entries the loss touches.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use garrison_client::events::{Cursor, EventBody, EventId, StreamEvent};
use garrison_client::tx::PlayerKey;
use serde::Serialize;

use super::Check;
use crate::history::{Event, Kind, Receipt};

/// Most problems one check spells out; the others are counted.
const MAX_SHOWN: usize = 5;

/// What one watcher saw.
#[derive(Clone, Debug, Default)]
pub struct Watch {
    /// Which watcher, and which node it prefers.
    pub name: String,
    /// Every event it received, in arrival order.
    pub events: Vec<StreamEvent>,
    /// Losses it was told of (events trimmed past its cursor).
    pub lost: Vec<Lost>,
    /// Where its cursor ended in each location.
    pub end: BTreeMap<String, Cursor>,
    /// True when it reached the ends of the logs it was told.
    pub drained: bool,
    /// Polls and connections that failed (it retried each).
    pub errors: u64,
    /// The last of those failures.
    pub last_error: String,
}

/// Events a watcher was told it missed: those of `location` after `after`
/// and before `oldest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lost {
    /// The location.
    pub location: String,
    /// The watcher's cursor then.
    pub after: Cursor,
    /// The oldest event still held (`None`: none).
    pub oldest: Option<Cursor>,
}

impl Lost {
    /// Does the loss take events of entry `index` of `location`, or
    /// possibly some of them?
    fn touches(&self, location: &str, index: u64) -> bool {
        self.location == location
            && self.after.index <= index
            && self.oldest.is_none_or(|o| index <= o.index)
    }
}

impl Watch {
    fn lost_at(&self, location: &str, index: u64) -> bool {
        self.lost.iter().any(|l| l.touches(location, index))
    }

    /// Has it read every event of entry `index` of `location`?
    fn covers(&self, location: &str, index: u64) -> bool {
        self.end
            .get(location)
            .is_some_and(|c| *c >= Cursor::end_of(index))
            && !self.lost_at(location, index)
    }

    fn of<'a>(&'a self, location: &'a str) -> impl Iterator<Item = &'a StreamEvent> + 'a {
        self.events
            .iter()
            .filter(move |e| e.id.location == location)
    }
}

/// Every event each location holds at the end of the run.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    /// Per location.
    pub logs: BTreeMap<String, LocationLog>,
}

/// One location's events at the end of the run.
#[derive(Clone, Debug, Default)]
pub struct LocationLog {
    /// The events held, in log order.
    pub events: Vec<StreamEvent>,
    /// True when older events were trimmed: the list starts at the oldest
    /// held, not at the beginning of the log.
    pub trimmed: bool,
    /// Where the read ended: after every event up to this cursor.
    pub end: Cursor,
}

impl LocationLog {
    /// The first event the list is complete from (`None`: the beginning).
    fn from(&self) -> Option<Cursor> {
        self.trimmed
            .then(|| self.events.first().map_or(self.end, |e| e.id.cursor()))
    }

    /// Is the event at `c` one the list would hold?
    fn in_window(&self, c: Cursor) -> bool {
        self.from().is_none_or(|f| c >= f) && c <= self.end
    }

    /// Does the list hold the outcome of entry `index`, if it has one? (An
    /// entry's outcome is its last event, the last to be trimmed.)
    fn covers(&self, index: u64) -> bool {
        self.from().is_none_or(|f| index >= f.index) && Cursor::end_of(index) <= self.end
    }
}

/// One event as the results folder lists it.
#[derive(Debug, Serialize)]
pub struct Compact {
    /// `location@index.position`.
    pub id: String,
    /// The body's type.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The signer, first 8 hex digits.
    pub player: String,
    /// The sequence number, for an outcome event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
}

impl Compact {
    /// The compact form of `e`.
    pub fn of(e: &StreamEvent) -> Self {
        Self {
            id: e.id.to_string(),
            kind: e.body.event_type().name(),
            player: short(e.player.as_ref()),
            sequence: outcome(e).map(|(s, _)| s),
        }
    }
}

/// An outcome event's sequence number and whether it committed.
fn outcome(e: &StreamEvent) -> Option<(u64, bool)> {
    match e.body {
        EventBody::Committed { sequence } => Some((sequence, true)),
        EventBody::Rejected { sequence, .. } => Some((sequence, false)),
        _ => None,
    }
}

fn short(player: Option<&PlayerKey>) -> String {
    player.map_or("nobody".into(), |p| hex::encode(&p[..4]))
}

fn verb(committed: bool) -> &'static str {
    if committed {
        "committed"
    } else {
        "rejected"
    }
}

/// How `seen` differs from `held` (the same id), briefly.
fn differences(seen: &StreamEvent, held: &StreamEvent) -> String {
    let mut out = Vec::new();
    if seen.player != held.player {
        out.push(format!(
            "signer {} against {}",
            short(seen.player.as_ref()),
            short(held.player.as_ref())
        ));
    }
    if seen.log_time_ms != held.log_time_ms {
        out.push(format!(
            "log time {} against {} ms",
            seen.log_time_ms, held.log_time_ms
        ));
    }
    if seen.body != held.body {
        let body = |e: &StreamEvent| match outcome(e) {
            Some((sequence, committed)) => format!("{} sequence {sequence}", verb(committed)),
            None => e.body.event_type().name().to_string(),
        };
        out.push(format!(
            "body {} against {} (values differ)",
            body(seen),
            body(held)
        ));
    }
    out.join(", ")
}

/// A check's findings: the first few spelled out, all counted.
#[derive(Default)]
struct Problems {
    shown: Vec<String>,
    total: usize,
}

impl Problems {
    fn push(&mut self, problem: String) {
        self.total += 1;
        if self.shown.len() < MAX_SHOWN {
            self.shown.push(problem);
        }
    }

    fn check(self, name: &str, fine: String) -> Check {
        if self.total == 0 {
            return Check::new(name, true, fine);
        }
        let more = self.total - self.shown.len();
        let mut detail = self.shown.join("; ");
        if more > 0 {
            detail += &format!("; and {more} more");
        }
        Check::new(name, false, detail)
    }
}

/// Every event check, in the order the summary lists them. Without a
/// reference (its read failed: `Err` says why), the checks that need one
/// fail and say so.
pub fn all(
    history: &[Event],
    watches: &[Watch],
    reference: Result<&Reference, &str>,
) -> Vec<Check> {
    let mut checks = vec![no_duplicate(watches), log_order(watches)];
    match reference {
        Ok(r) => {
            checks.push(no_gap(watches, r));
            checks.push(no_phantom(history, watches, r));
            checks.push(acknowledged(history, watches, r));
        }
        Err(why) => {
            for name in ["events-no-gap", "events-no-phantom", "events-acknowledged"] {
                checks.push(Check::new(
                    name,
                    false,
                    format!("no final read of the logs' events to compare with: {why}"),
                ));
            }
        }
    }
    checks.push(watchers_agree(watches));
    checks
}

/// No watcher received an event id twice.
pub fn no_duplicate(watches: &[Watch]) -> Check {
    let mut problems = Problems::default();
    for w in watches {
        let mut seen: HashSet<&EventId> = HashSet::new();
        for e in &w.events {
            if !seen.insert(&e.id) {
                problems.push(format!("{} received {} twice", w.name, e.id));
            }
        }
    }
    let total: usize = watches.iter().map(|w| w.events.len()).sum();
    problems.check(
        "events-no-duplicate",
        format!(
            "{} watchers, {total} events received, no id twice",
            watches.len()
        ),
    )
}

/// Each watcher received each location's events in increasing id order.
pub fn log_order(watches: &[Watch]) -> Check {
    let mut problems = Problems::default();
    for w in watches {
        let mut last: HashMap<&str, Cursor> = HashMap::new();
        for e in &w.events {
            let here = e.id.cursor();
            if let Some(before) = last.get_mut(e.id.location.as_str()) {
                if here <= *before {
                    problems.push(format!(
                        "{} received {} after {}@{}",
                        w.name, e.id, e.id.location, before
                    ));
                }
                *before = (*before).max(here);
            } else {
                last.insert(&e.id.location, here);
            }
        }
    }
    problems.check(
        "events-log-order",
        "every watcher received each location's events in log order".into(),
    )
}

/// Each watcher received every event the reference holds, read to the end
/// of every log, and saw every entry whole.
pub fn no_gap(watches: &[Watch], reference: &Reference) -> Check {
    let mut problems = Problems::default();
    for w in watches {
        for (location, log) in &reference.logs {
            let held: HashSet<Cursor> = w.of(location).map(|e| e.id.cursor()).collect();
            let missing: Vec<&StreamEvent> = log
                .events
                .iter()
                .filter(|e| log.in_window(e.id.cursor()) && !held.contains(&e.id.cursor()))
                .collect();
            if let Some(first) = missing.first() {
                problems.push(format!(
                    "{} misses {} of the {} events {location} holds, the first {}",
                    w.name,
                    missing.len(),
                    log.events.len(),
                    first.id
                ));
            }
            let end = w.end.get(location).copied().unwrap_or(Cursor::START);
            if end < log.end {
                problems.push(format!(
                    "{} stopped at {location}@{end}, the log ends at {}",
                    w.name, log.end
                ));
            }
            // Whole entries, the reference aside (it may not reach back
            // as far as the watcher).
            let mut entries: BTreeMap<u64, (BTreeSet<u32>, Option<u32>)> = BTreeMap::new();
            for e in w.of(location) {
                let entry = entries.entry(e.id.index).or_default();
                entry.0.insert(e.id.position);
                if outcome(e).is_some() {
                    entry.1 = Some(e.id.position);
                }
            }
            for (index, (positions, outcome_at)) in entries {
                if !w.covers(location, index) {
                    continue;
                }
                let last = outcome_at
                    .unwrap_or(0)
                    .max(*positions.last().expect("non-empty"));
                let gaps: Vec<u32> = (0..=last).filter(|p| !positions.contains(p)).collect();
                if outcome_at.is_none() {
                    problems.push(format!(
                        "{} saw entry {location}@{index} without its outcome",
                        w.name
                    ));
                } else if !gaps.is_empty() {
                    problems.push(format!(
                        "{} saw entry {location}@{index} without positions {gaps:?}",
                        w.name
                    ));
                }
            }
        }
    }
    let total: usize = reference.logs.values().map(|l| l.events.len()).sum();
    let trimmed: Vec<String> = reference
        .logs
        .iter()
        .filter_map(|(l, log)| log.from().map(|f| format!("{l} from {f}")))
        .collect();
    let mut fine = format!(
        "each of {} watchers saw all {total} events of {} locations, to the end",
        watches.len(),
        reference.logs.len()
    );
    if !trimmed.is_empty() {
        fine += &format!(" (older events trimmed; compared {})", trimmed.join(", "));
    }
    let lost: usize = watches.iter().map(|w| w.lost.len()).sum();
    if lost > 0 {
        fine += &format!(" ({lost} announced losses past retention)");
    }
    problems.check("events-no-gap", fine)
}

/// The transactions the history says each (location, signer, sequence)
/// was: how each ended and its receipt.
type Signed<'a> = HashMap<(&'a str, &'a str, u64), Vec<(Kind, Option<Receipt>)>>;

fn signed(history: &[Event]) -> Signed<'_> {
    let mut out: Signed<'_> = HashMap::new();
    for e in history {
        if let (Some(tx), false) = (&e.tx, e.kind == Kind::Invoke) {
            out.entry((tx.location.as_str(), tx.player.as_str(), tx.sequence))
                .or_default()
                .push((e.kind, tx.receipt));
        }
    }
    out
}

/// Why the history does not explain outcome event `e`, if it does not.
fn unexplained(e: &StreamEvent, signed: &Signed<'_>, players: &HashSet<&str>) -> Option<String> {
    let (sequence, committed) = outcome(e)?;
    let Some(player) = e.player.as_ref() else {
        return Some(format!("{} is an outcome of nobody's", e.id));
    };
    let player = hex::encode(player);
    let what = format!(
        "{} ({} of {} sequence {sequence})",
        e.id,
        verb(committed),
        &player[..8]
    );
    let key = (e.id.location.as_str(), player.as_str(), sequence);
    let Some(txs) = signed.get(&key) else {
        return Some(if players.contains(player.as_str()) {
            format!("{what}: the harness never signed that transaction")
        } else {
            format!("{what}: the harness never signed for that player")
        });
    };
    let explains = |(kind, receipt): &(Kind, Option<Receipt>)| match receipt {
        Some(r) => r.index == e.id.index,
        None => *kind == Kind::Info,
    };
    if txs.iter().any(explains) {
        return None;
    }
    let told: Vec<String> = txs
        .iter()
        .map(|(kind, receipt)| match receipt {
            Some(r) => format!("answered {} at index {}", verb(r.committed), r.index),
            None => format!("{kind:?} with no receipt (refused at ingress)"),
        })
        .collect();
    Some(format!("{what}: the history has it {}", told.join(", ")))
}

/// Nothing a watcher received is missing from the reference or different
/// there; the history explains every outcome event; no sequence number is
/// committed twice; every entry is shaped as apply makes it.
pub fn no_phantom(history: &[Event], watches: &[Watch], reference: &Reference) -> Check {
    let mut problems = Problems::default();
    for w in watches {
        for (location, log) in &reference.logs {
            let by_id: HashMap<Cursor, &StreamEvent> =
                log.events.iter().map(|e| (e.id.cursor(), e)).collect();
            for e in w.of(location) {
                if !log.in_window(e.id.cursor()) {
                    continue;
                }
                match by_id.get(&e.id.cursor()) {
                    None => problems.push(format!(
                        "{} received {} ({}), which the log does not hold",
                        w.name,
                        e.id,
                        e.body.event_type().name()
                    )),
                    Some(held) if *held != e => problems.push(format!(
                        "{} received {} unlike the log: {}",
                        w.name,
                        e.id,
                        differences(e, held)
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    // Every event anyone saw, once (the reference's first).
    let mut union: BTreeMap<&EventId, &StreamEvent> = BTreeMap::new();
    for e in reference.logs.values().flat_map(|l| &l.events) {
        union.entry(&e.id).or_insert(e);
    }
    for e in watches.iter().flat_map(|w| &w.events) {
        union.entry(&e.id).or_insert(e);
    }
    let signed = signed(history);
    let players: HashSet<&str> = signed.keys().map(|(_, p, _)| *p).collect();
    let mut commits: BTreeMap<(&str, Option<&PlayerKey>, u64), Vec<u64>> = BTreeMap::new();
    let mut entries: BTreeMap<(&str, u64), Vec<&StreamEvent>> = BTreeMap::new();
    let mut outcomes = 0;
    for e in union.values() {
        if let Some(why) = unexplained(e, &signed, &players) {
            problems.push(why);
        }
        if let Some((sequence, committed)) = outcome(e) {
            outcomes += 1;
            if committed {
                commits
                    .entry((e.id.location.as_str(), e.player.as_ref(), sequence))
                    .or_default()
                    .push(e.id.index);
            }
        }
        entries
            .entry((e.id.location.as_str(), e.id.index))
            .or_default()
            .push(e);
    }
    for ((location, player, sequence), at) in commits {
        if at.len() > 1 {
            problems.push(format!(
                "{} sequence {sequence} committed {} times at {location}, at indexes {at:?}",
                short(player),
                at.len()
            ));
        }
    }
    for ((location, index), events) in entries {
        let ends: Vec<&&StreamEvent> = events.iter().filter(|e| outcome(e).is_some()).collect();
        let last = events.iter().map(|e| e.id.position).max().unwrap_or(0);
        let signers: BTreeSet<Option<&PlayerKey>> =
            events.iter().map(|e| e.player.as_ref()).collect();
        if ends.len() > 1 {
            problems.push(format!(
                "entry {location}@{index} has {} outcomes",
                ends.len()
            ));
        }
        if ends.iter().any(|e| e.id.position != last) {
            problems.push(format!(
                "entry {location}@{index} has events after its outcome"
            ));
        }
        if signers.len() > 1 {
            problems.push(format!(
                "entry {location}@{index} has {} signers",
                signers.len()
            ));
        }
        let rejected = ends
            .iter()
            .any(|e| matches!(e.body, EventBody::Rejected { .. }));
        if rejected && events.len() > ends.len() {
            problems.push(format!(
                "entry {location}@{index} was rejected yet has {} other events",
                events.len() - ends.len()
            ));
        }
    }
    problems.check(
        "events-no-phantom",
        format!(
            "{} distinct events, {outcomes} outcomes, each held by the log and explained by the history",
            union.len()
        ),
    )
}

/// Every receipt in the history is one outcome event at its index, of its
/// signer and sequence number, with its outcome: in the reference and in
/// each watcher, where they reach.
pub fn acknowledged(history: &[Event], watches: &[Watch], reference: &Reference) -> Check {
    let mut problems = Problems::default();
    // (location, index) -> (signer, sequence, committed), from receipts.
    let mut told: BTreeMap<(&str, u64), (&str, u64, bool)> = BTreeMap::new();
    for e in history {
        let Some(tx) = &e.tx else { continue };
        let Some(r) = tx.receipt else { continue };
        let said = (tx.player.as_str(), tx.sequence, r.committed);
        match told.insert((tx.location.as_str(), r.index), said) {
            Some(other) if other != said => problems.push(format!(
                "two receipts name {}@{}: {} sequence {} and {} sequence {}",
                tx.location,
                r.index,
                &other.0[..8],
                other.1,
                &said.0[..8],
                said.1
            )),
            _ => {}
        }
    }
    let mut uncovered = 0;
    let mut against = |name: &str, events: &[&StreamEvent], covers: &dyn Fn(&str, u64) -> bool| {
        let mut at: HashMap<(&str, u64), Vec<&StreamEvent>> = HashMap::new();
        for e in events.iter().filter(|e| outcome(e).is_some()) {
            at.entry((e.id.location.as_str(), e.id.index))
                .or_default()
                .push(e);
        }
        for (&(location, index), &(player, sequence, committed)) in &told {
            if !covers(location, index) {
                uncovered += 1;
                continue;
            }
            let what = format!(
                "{location}@{index} ({} of {} sequence {sequence})",
                verb(committed),
                &player[..8]
            );
            match at.get(&(location, index)).map(Vec::as_slice) {
                None | Some([]) => problems.push(format!("{name} has no outcome for {what}")),
                Some([e]) => {
                    let signer = e.player.map(hex::encode);
                    if signer.as_deref() != Some(player)
                        || outcome(e) != Some((sequence, committed))
                    {
                        problems.push(format!(
                            "{name} has {} ({} of {} sequence {}) for {what}",
                            e.id,
                            e.body.event_type().name(),
                            short(e.player.as_ref()),
                            outcome(e).map_or(0, |(s, _)| s)
                        ));
                    }
                }
                Some(many) => {
                    problems.push(format!("{name} has {} outcomes for {what}", many.len()))
                }
            }
        }
    };
    let held: Vec<&StreamEvent> = reference.logs.values().flat_map(|l| &l.events).collect();
    against("the log", &held, &|l, i| {
        reference.logs.get(l).is_some_and(|log| log.covers(i))
    });
    for w in watches {
        let seen: Vec<&StreamEvent> = w.events.iter().collect();
        against(&w.name, &seen, &|l, i| w.covers(l, i));
    }
    let mut fine = format!(
        "{} receipts, each one outcome event in the log and in every watcher",
        told.len()
    );
    if uncovered > 0 {
        fine += &format!(
            " ({uncovered} look-ups skipped: older than retention, or past a watcher's end)"
        );
    }
    problems.check("events-acknowledged", fine)
}

/// The watchers' streams are the same, event for event, as far as both
/// read and outside any loss either was told of.
pub fn watchers_agree(watches: &[Watch]) -> Check {
    let mut problems = Problems::default();
    let mut compared = 0;
    let Some((first, others)) = watches.split_first() else {
        return Check::new("watchers-agree", true, "no watchers".into());
    };
    for other in others {
        let locations: BTreeSet<&String> = first.end.keys().chain(other.end.keys()).collect();
        for location in locations {
            let end = |w: &Watch| w.end.get(location).copied().unwrap_or(Cursor::START);
            let common = end(first).min(end(other));
            let part = |w: &'_ Watch| -> Vec<StreamEvent> {
                w.of(location)
                    .filter(|e| {
                        e.id.cursor() <= common
                            && !first.lost_at(location, e.id.index)
                            && !other.lost_at(location, e.id.index)
                    })
                    .cloned()
                    .collect()
            };
            let (a, b) = (part(first), part(other));
            compared += a.len();
            if let Some(i) = (0..a.len().max(b.len())).find(|i| a.get(*i) != b.get(*i)) {
                let show = |e: Option<&StreamEvent>| {
                    e.map_or("nothing".into(), |e| {
                        format!("{} ({})", e.id, e.body.event_type().name())
                    })
                };
                let how = match (a.get(i), b.get(i)) {
                    (Some(x), Some(y)) if x.id == y.id => {
                        format!("{}: {}", x.id, differences(x, y))
                    }
                    (x, y) => format!("{} against {}", show(x), show(y)),
                };
                problems.push(format!(
                    "{} and {} differ in {location} at their event {i}: {how}",
                    first.name, other.name
                ));
            }
        }
    }
    problems.check(
        "watchers-agree",
        format!(
            "{} watchers received the same {compared} events",
            watches.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, Submitted};
    use garrison_client::api::Rejection;

    const L: &str = "jepsen-r0";
    const P: PlayerKey = [0xaa; 32];

    fn event(index: u64, position: u32, body: EventBody) -> StreamEvent {
        StreamEvent {
            id: EventId {
                location: L.into(),
                index,
                position,
            },
            log_time_ms: 1_000 + index,
            player: Some(P),
            body,
        }
    }

    fn changed(index: u64) -> EventBody {
        EventBody::Changed {
            entity: "reg/0".into(),
            owner: P,
            version: index,
            changes: vec![],
        }
    }

    fn committed(sequence: u64) -> EventBody {
        EventBody::Committed { sequence }
    }

    fn rejected(sequence: u64) -> EventBody {
        EventBody::Rejected {
            sequence,
            op: Some(0),
            reason: Rejection::Malformed("expected another value".into()),
        }
    }

    /// A completion of a transaction of `P` at `L`.
    fn done(kind: Kind, sequence: u64, receipt: Option<(u64, bool)>) -> Event {
        Event {
            process: 0,
            kind,
            op: Op::Write { key: 0, value: 1 },
            time_ns: 0,
            note: String::new(),
            tx: Some(Submitted {
                location: L.into(),
                player: hex::encode(P),
                sequence,
                receipt: receipt.map(|(index, committed)| Receipt {
                    index,
                    committed,
                    duplicate: false,
                }),
            }),
        }
    }

    /// Sequence 1 committed at 5, 2 rejected at 7, 3 unknown (it committed
    /// at 9), 4 refused at ingress (nothing).
    fn history() -> Vec<Event> {
        vec![
            done(Kind::Ok, 1, Some((5, true))),
            done(Kind::Fail, 2, Some((7, false))),
            done(Kind::Info, 3, None),
            done(Kind::Fail, 4, None),
        ]
    }

    fn log() -> Vec<StreamEvent> {
        vec![
            event(5, 0, changed(5)),
            event(5, 1, committed(1)),
            event(7, 0, rejected(2)),
            event(9, 0, changed(9)),
            event(9, 1, committed(3)),
        ]
    }

    fn reference(events: Vec<StreamEvent>, trimmed: bool) -> Reference {
        let log = LocationLog {
            events,
            trimmed,
            end: Cursor::end_of(9),
        };
        Reference {
            logs: [(L.to_string(), log)].into_iter().collect(),
        }
    }

    fn watch(name: &str, events: Vec<StreamEvent>) -> Watch {
        Watch {
            name: name.into(),
            events,
            end: [(L.to_string(), Cursor::end_of(9))].into_iter().collect(),
            drained: true,
            ..Default::default()
        }
    }

    fn verdicts(watches: &[Watch], reference: &Reference) -> BTreeMap<String, bool> {
        all(&history(), watches, Ok(reference))
            .into_iter()
            .map(|c| (c.name, c.valid))
            .collect()
    }

    /// The names of the checks that fail.
    fn failing(watches: &[Watch], reference: &Reference) -> Vec<String> {
        verdicts(watches, reference)
            .into_iter()
            .filter(|(_, valid)| !valid)
            .map(|(name, _)| name)
            .collect()
    }

    #[test]
    fn watchers_that_saw_the_log_pass_every_check() {
        let watches = [watch("w1", log()), watch("w2", log())];
        let checks = all(&history(), &watches, Ok(&reference(log(), false)));
        assert_eq!(checks.len(), 6);
        for c in &checks {
            assert!(c.valid, "{c:?}");
        }
    }

    #[test]
    fn a_gap_is_caught() {
        let mut gap = log();
        gap.remove(2);
        let watches = [watch("w1", gap), watch("w2", log())];
        let fails = failing(&watches, &reference(log(), false));
        assert!(fails.contains(&"events-no-gap".into()), "{fails:?}");
        assert!(fails.contains(&"events-acknowledged".into()), "{fails:?}");
        assert!(fails.contains(&"watchers-agree".into()), "{fails:?}");
        // An entity event missing from a whole entry, both watchers alike.
        let mut part = log();
        part.remove(3);
        let watches = [watch("w1", part.clone()), watch("w2", part)];
        assert_eq!(
            failing(&watches, &reference(log(), false)),
            ["events-no-gap"]
        );
        // A watcher that stopped early.
        let mut short = watch("w1", log()[..3].to_vec());
        short.end.insert(L.into(), Cursor::end_of(7));
        let fails = failing(&[short, watch("w2", log())], &reference(log(), false));
        assert_eq!(fails, ["events-no-gap"]);
    }

    #[test]
    fn a_duplicate_is_caught() {
        let mut twice = log();
        twice.insert(2, event(5, 1, committed(1)));
        let watches = [watch("w1", twice), watch("w2", log())];
        let fails = failing(&watches, &reference(log(), false));
        assert!(fails.contains(&"events-no-duplicate".into()), "{fails:?}");
        // A duplicate apply: the same sequence committed at a second index.
        let mut again = log();
        again.push(event(11, 0, committed(1)));
        let mut w = watch("w1", again.clone());
        w.end.insert(L.into(), Cursor::end_of(11));
        let mut r = reference(again, false);
        r.logs.get_mut(L).unwrap().end = Cursor::end_of(11);
        let mut w2 = w.clone();
        w2.name = "w2".into();
        assert_eq!(failing(&[w, w2], &r), ["events-no-phantom"]);
    }

    #[test]
    fn a_phantom_is_caught() {
        // A watcher receives an event the log does not hold.
        let mut extra = log();
        extra.insert(3, event(8, 0, committed(3)));
        let watches = [watch("w1", extra), watch("w2", log())];
        let fails = failing(&watches, &reference(log(), false));
        assert!(fails.contains(&"events-no-phantom".into()), "{fails:?}");
        // The log itself holds the outcome of a transaction refused at
        // ingress (sequence 4), or of one never signed (sequence 8).
        for body in [committed(4), committed(8)] {
            let mut phantom = log();
            phantom[4] = event(9, 1, body);
            let watches = [watch("w1", phantom.clone()), watch("w2", phantom.clone())];
            let fails = failing(&watches, &reference(phantom, false));
            assert_eq!(fails, ["events-no-phantom"]);
        }
        // Of a player the harness never signed for.
        let mut stranger = log();
        stranger[4].player = Some([0xbb; 32]);
        stranger[3].player = Some([0xbb; 32]);
        let watches = [watch("w1", stranger.clone()), watch("w2", stranger.clone())];
        assert_eq!(
            failing(&watches, &reference(stranger, false)),
            ["events-no-phantom"]
        );
        // A rejected transaction that changed something.
        let mut changed_anyway = log();
        changed_anyway.insert(2, event(7, 0, changed(7)));
        changed_anyway[3].id.position = 1;
        let watches = [
            watch("w1", changed_anyway.clone()),
            watch("w2", changed_anyway.clone()),
        ];
        assert_eq!(
            failing(&watches, &reference(changed_anyway, false)),
            ["events-no-phantom"]
        );
        // A watcher's event that differs from the log's.
        let mut other = log();
        other[0].log_time_ms += 1;
        let watches = [watch("w1", other.clone()), watch("w2", other)];
        assert_eq!(
            failing(&watches, &reference(log(), false)),
            ["events-no-phantom"]
        );
    }

    #[test]
    fn a_reordering_is_caught() {
        let mut swapped = log();
        swapped.swap(1, 2);
        let watches = [watch("w1", swapped), watch("w2", log())];
        let fails = failing(&watches, &reference(log(), false));
        assert!(fails.contains(&"events-log-order".into()), "{fails:?}");
        assert!(fails.contains(&"watchers-agree".into()), "{fails:?}");
    }

    #[test]
    fn a_receipt_the_log_contradicts_is_caught() {
        // Rejected at 7 by its receipt, committed at 7 by the log.
        let mut turned = log();
        turned[2] = event(7, 0, committed(2));
        let watches = [watch("w1", turned.clone()), watch("w2", turned.clone())];
        let fails = failing(&watches, &reference(turned, false));
        assert!(fails.contains(&"events-acknowledged".into()), "{fails:?}");
        // The log lost an acknowledged transaction, and the watchers too.
        let mut lost = log();
        lost.truncate(2);
        let watches = [watch("w1", lost.clone()), watch("w2", lost.clone())];
        let fails = failing(&watches, &reference(lost, false));
        assert!(fails.contains(&"events-acknowledged".into()), "{fails:?}");
    }

    #[test]
    fn trimmed_events_are_compared_only_where_both_hold_them() {
        // The log kept entries 7 and 9 only; the watchers saw everything.
        let watches = [watch("w1", log()), watch("w2", log())];
        let r = reference(log()[2..].to_vec(), true);
        assert!(failing(&watches, &r).is_empty());
        // A watcher told of a loss before 7 is excused exactly that.
        let mut told = watch("w1", log()[2..].to_vec());
        told.lost.push(Lost {
            location: L.into(),
            after: Cursor::START,
            oldest: Some(Cursor {
                index: 7,
                position: 0,
            }),
        });
        assert!(failing(&[told, watch("w2", log())], &r).is_empty());
        // Without being told, the missing entry 5 is a gap (half of it) or
        // an unacknowledged receipt (all of it), even where the log no
        // longer holds it.
        let half = watch("w1", log()[1..].to_vec());
        assert!(failing(&[half, watch("w2", log())], &r).contains(&"events-no-gap".into()));
        let none = watch("w1", log()[2..].to_vec());
        let fails = failing(&[none, watch("w2", log()[2..].to_vec())], &r);
        assert_eq!(fails, ["events-acknowledged"]);
    }

    #[test]
    fn without_a_reference_the_comparisons_fail() {
        let watches = [watch("w1", log()), watch("w2", log())];
        let checks = all(&history(), &watches, Err("no node answered"));
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.valid)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(
            failed,
            ["events-no-gap", "events-no-phantom", "events-acknowledged"]
        );
    }
}
