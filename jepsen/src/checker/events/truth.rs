//! The checks that hold the events to the history, the harness's own
//! account of what it signed and what it was told: no phantom (every
//! outcome explained, nothing the log lacks, nothing committed twice,
//! entries shaped as apply makes them) and every receipt acknowledged.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use garrison_client::events::{Cursor, EventBody, EventId, StreamEvent};
use garrison_client::tx::PlayerKey;

use super::{derived, differences, outcome, short, verb, Check, Problems, Reference, Watch};
use crate::history::{Event, Kind, Receipt};

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
        // The rules' matches come after the entry's own events.
        let own: Vec<&&StreamEvent> = events.iter().filter(|e| !derived(e)).collect();
        let last = own.iter().map(|e| e.id.position).max().unwrap_or(0);
        let first_match = events
            .iter()
            .filter(|e| derived(e))
            .map(|e| e.id.position)
            .min();
        if first_match.is_some_and(|m| m <= last && !own.is_empty()) {
            problems.push(format!(
                "entry {location}@{index} has a rule's match before its own events"
            ));
        }
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
        if rejected && own.len() > ends.len() {
            problems.push(format!(
                "entry {location}@{index} was rejected yet has {} other events",
                own.len() - ends.len()
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
