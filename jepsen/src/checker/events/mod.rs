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
//!
//! Layout: this module holds the records and the helpers; `streams` the
//! checks of the streams themselves and against the final read
//! (duplicates, order, gaps, agreement); `truth` the checks against the
//! history (phantoms, receipts); `tests` crafted records for each.

use std::collections::BTreeMap;

use garrison_client::events::{Cursor, EventBody, StreamEvent};
use garrison_client::tx::PlayerKey;
use serde::Serialize;

use super::Check;
use crate::history::Event;

mod streams;
mod truth;

pub use streams::{log_order, no_duplicate, no_gap, watchers_agree};
pub use truth::{acknowledged, no_phantom};

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
    pub fn in_window(&self, c: Cursor) -> bool {
        self.from().is_none_or(|f| c >= f) && c <= self.end
    }

    /// Does the list hold the outcome of entry `index`, if it has one? (An
    /// entry's outcome follows its own events and precedes its rules'
    /// matches: the list holds it if it holds the entry from position 0.)
    fn covers(&self, index: u64) -> bool {
        self.from()
            .is_none_or(|f| index > f.index || (index == f.index && f.position == 0))
            && Cursor::end_of(index) <= self.end
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

/// Is `e` a rule's match (a derived event, after its entry's own)?
fn derived(e: &StreamEvent) -> bool {
    matches!(e.body, EventBody::Matched { .. })
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

#[cfg(test)]
mod tests;
