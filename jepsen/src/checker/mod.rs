//! The checkers. Each returns a [`Check`] with a verdict a person can read;
//! any violation makes the run exit non-zero. The history's checkers are
//! here; [`linear`] holds the linearizability search, [`events`] the
//! checkers of what the event watchers saw, [`cep`] the check of the
//! rules' matches.

pub mod cep;
pub mod events;
pub mod linear;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::history::{Event, Kind, Op};

/// One checker's result.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// The checker's name.
    pub name: String,
    /// Whether it found a violation.
    pub valid: bool,
    /// What it found.
    pub detail: String,
}

impl Check {
    fn new(name: &str, valid: bool, detail: String) -> Self {
        Self {
            name: name.to_string(),
            valid,
            detail,
        }
    }

    /// A check that could not be made, which fails the run.
    pub fn failed(name: &str, why: &str) -> Self {
        Self::new(name, false, why.to_string())
    }
}

/// Per-key linearizability of the register operations.
pub fn linearizability(events: &[Event]) -> Check {
    let mut bad = Vec::new();
    let mut unknown = Vec::new();
    let calls = linear::calls_by_key(events);
    for (key, calls) in &calls {
        match linear::check_register(calls) {
            linear::Verdict::Linearizable => {}
            linear::Verdict::Violation(why) => bad.push(format!("key {key}: {why}")),
            linear::Verdict::Unknown(why) => unknown.push(format!("key {key}: {why}")),
        }
    }
    let valid = bad.is_empty();
    let mut detail = format!(
        "{} keys, {} operations checked",
        calls.len(),
        calls.values().map(Vec::len).sum::<usize>()
    );
    if !bad.is_empty() {
        detail += &format!("; NOT linearizable: {}", bad.join("; "));
    }
    if !unknown.is_empty() {
        detail += &format!("; not decided: {}", unknown.join("; "));
    }
    Check::new("linearizability", valid, detail)
}

/// A player's ledger entity as one replica holds it after healing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ledger {
    /// The last sequence number applied (the `last` field).
    pub last: u64,
    /// How many transactions were applied (the `count` field).
    pub count: u64,
}

/// The acknowledged, unknown and invoked game transactions of each player.
fn tx_outcomes(events: &[Event]) -> BTreeMap<String, (Vec<u64>, Vec<u64>, u64)> {
    let mut out: BTreeMap<String, (Vec<u64>, Vec<u64>, u64)> = BTreeMap::new();
    for e in events {
        if let Op::Tx { player, sequence } = &e.op {
            let entry = out.entry(player.clone()).or_default();
            match e.kind {
                Kind::Invoke => entry.2 = entry.2.max(*sequence),
                Kind::Ok => entry.0.push(*sequence),
                Kind::Info => entry.1.push(*sequence),
                Kind::Fail => {}
            }
        }
    }
    out
}

/// No acknowledged transaction is missing from the final state.
pub fn no_lost_writes(events: &[Event], ledgers: &BTreeMap<String, Ledger>) -> Check {
    let mut lost = Vec::new();
    let mut acked_total = 0;
    for (player, (acked, _, _)) in tx_outcomes(events) {
        acked_total += acked.len();
        let last = ledgers.get(&player).map(|l| l.last).unwrap_or(0);
        if let Some(max) = acked.iter().max().filter(|m| **m > last) {
            lost.push(format!(
                "player {}: sequence {max} acknowledged, final state has {last}",
                &player[..8]
            ));
        }
    }
    let detail = if lost.is_empty() {
        format!("all {acked_total} acknowledged transactions present")
    } else {
        format!("LOST: {}", lost.join("; "))
    };
    Check::new("no-lost-writes", lost.is_empty(), detail)
}

/// Every player's applied sequence numbers go up by one: each applied
/// transaction increments `count` once and sets `last` to its sequence, so
/// `count == last`; and nothing beyond what was invoked was applied.
pub fn exactly_once(events: &[Event], ledgers: &BTreeMap<String, Ledger>) -> Check {
    let mut bad = Vec::new();
    let outcomes = tx_outcomes(events);
    for (player, ledger) in ledgers {
        let invoked = outcomes.get(player).map(|o| o.2).unwrap_or(0);
        if ledger.count != ledger.last {
            bad.push(format!(
                "player {}: {} applications for sequences up to {} (duplicate or gap)",
                &player[..8],
                ledger.count,
                ledger.last
            ));
        }
        if ledger.last > invoked {
            bad.push(format!(
                "player {}: sequence {} applied, only {invoked} sent",
                &player[..8],
                ledger.last
            ));
        }
    }
    let detail = if bad.is_empty() {
        format!(
            "{} players, every sequence applied exactly once",
            ledgers.len()
        )
    } else {
        bad.join("; ")
    };
    Check::new("exactly-once", bad.is_empty(), detail)
}

/// The result of `garrison check` after healing.
pub fn replicas_identical(exit_ok: bool, output: &str) -> Check {
    let valid = exit_ok && output.contains("no divergence") && !output.contains("not checked");
    let detail = output.lines().last().unwrap_or("").to_string();
    Check::new(
        "replicas-identical",
        valid,
        if valid {
            detail
        } else {
            format!("garrison check: {}", output.trim())
        },
    )
}

/// The majority accepted writes again within the bound after healing.
pub fn liveness(recovered_after_ms: Option<u64>, bound_ms: u64) -> Check {
    match recovered_after_ms {
        Some(ms) if ms <= bound_ms => Check::new(
            "liveness",
            true,
            format!("writes accepted {ms} ms after healing"),
        ),
        Some(ms) => Check::new(
            "liveness",
            false,
            format!("writes accepted only {ms} ms after healing (bound {bound_ms} ms)"),
        ),
        None => Check::new(
            "liveness",
            false,
            format!("no write accepted within {bound_ms} ms of healing"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(process: u32, kind: Kind, sequence: u64) -> Event {
        Event {
            process,
            kind,
            op: Op::Tx {
                player: "p".repeat(16),
                sequence,
            },
            time_ns: 0,
            note: String::new(),
            tx: None,
        }
    }

    fn ledgers(last: u64, count: u64) -> BTreeMap<String, Ledger> {
        [("p".repeat(16), Ledger { last, count })]
            .into_iter()
            .collect()
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let events = vec![
            ev(0, Kind::Invoke, 1),
            ev(0, Kind::Ok, 1),
            ev(0, Kind::Invoke, 2),
            ev(0, Kind::Ok, 2),
        ];
        assert!(no_lost_writes(&events, &ledgers(2, 2)).valid);
        let check = no_lost_writes(&events, &ledgers(1, 1));
        assert!(!check.valid, "{check:?}");
        assert!(check.detail.contains("LOST"));
    }

    #[test]
    fn a_duplicate_apply_is_caught() {
        let events = vec![
            ev(0, Kind::Invoke, 1),
            ev(0, Kind::Info, 1),
            ev(0, Kind::Invoke, 2),
            ev(0, Kind::Ok, 2),
        ];
        assert!(exactly_once(&events, &ledgers(2, 2)).valid);
        assert!(
            !exactly_once(&events, &ledgers(2, 3)).valid,
            "applied three times for two sequences"
        );
        assert!(!exactly_once(&events, &ledgers(2, 1)).valid, "a gap");
        assert!(
            !exactly_once(&events, &ledgers(5, 5)).valid,
            "more applied than sent"
        );
    }

    #[test]
    fn a_stale_read_is_caught() {
        let r = |process, kind, op, time_ns| Event {
            process,
            kind,
            op,
            time_ns,
            note: String::new(),
            tx: None,
        };
        let events = vec![
            r(0, Kind::Invoke, Op::Write { key: 1, value: 1 }, 0),
            r(0, Kind::Ok, Op::Write { key: 1, value: 1 }, 1),
            r(0, Kind::Invoke, Op::Write { key: 1, value: 2 }, 2),
            r(0, Kind::Ok, Op::Write { key: 1, value: 2 }, 3),
            r(
                1,
                Kind::Invoke,
                Op::Read {
                    key: 1,
                    value: None,
                },
                4,
            ),
            r(
                1,
                Kind::Ok,
                Op::Read {
                    key: 1,
                    value: Some(1),
                },
                5,
            ),
        ];
        assert!(!linearizability(&events).valid);
        assert!(linearizability(&events[..4]).valid);
    }

    #[test]
    fn divergence_and_lost_liveness_are_caught() {
        assert!(replicas_identical(true, "group 1 ... identical\nno divergence in 4 groups").valid);
        assert!(!replicas_identical(false, "group 1 DIVERGED\n1 group(s) DIVERGED").valid);
        assert!(!replicas_identical(true, "no divergence in 4 groups (some replicas could not be checked)\nnode at x not checked").valid);
        assert!(liveness(Some(900), 10_000).valid);
        assert!(!liveness(Some(20_000), 10_000).valid);
        assert!(!liveness(None, 10_000).valid);
    }
}
