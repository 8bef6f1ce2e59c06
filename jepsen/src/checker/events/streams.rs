//! The checks of the streams themselves: each watcher's against itself
//! (no duplicate, log order, whole entries), against the final read of the
//! logs (no gap, read to the end), and against the other watchers.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use garrison_client::events::{Cursor, EventId, StreamEvent};

use super::{derived, differences, outcome, Check, Problems, Reference, Watch};

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
            // (positions, the outcome's, whether it holds only matches)
            let mut entries: BTreeMap<u64, (BTreeSet<u32>, Option<u32>, bool)> = BTreeMap::new();
            for e in w.of(location) {
                let entry = entries
                    .entry(e.id.index)
                    .or_insert((BTreeSet::new(), None, true));
                entry.0.insert(e.id.position);
                entry.2 &= derived(e);
                if outcome(e).is_some() {
                    entry.1 = Some(e.id.position);
                }
            }
            for (index, (positions, outcome_at, only_matches)) in entries {
                if !w.covers(location, index) {
                    continue;
                }
                let last = outcome_at
                    .unwrap_or(0)
                    .max(*positions.last().expect("non-empty"));
                let gaps: Vec<u32> = (0..=last).filter(|p| !positions.contains(p)).collect();
                // A tick's entry (or a policy's) holds only the rules'
                // matches and has no outcome.
                if outcome_at.is_none() && !only_matches {
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
