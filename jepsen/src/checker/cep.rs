//! The complex event processor under faults: two rules run on the ledger
//! location for the whole run, and their matches in the final log are
//! held to an evaluation of the same log written here, plainly, without
//! the engine.
//!
//! - [`PAIR_RULE`]: per player, each two consecutive committed game
//!   transactions, then the next two (`skip past last`). Expected: a
//!   player's committed outcomes, in log order, paired off from the first,
//!   each pair matched at the entry of its second.
//! - [`QUIET_RULE`]: a committed transaction of a player not followed by
//!   another of the same player within [`QUIET_MS`] of log time (an
//!   absence: players fall quiet whenever a fault stops their writes, and
//!   at the end). Expected: exactly those committed outcomes whose next
//!   one (if any) came later than that; each matched at the first entry
//!   whose log time is past the span and no later than the next one's;
//!   judged even when no traffic follows, by ticks (the harness waits for
//!   the location to have no deadline pending before it reads the log).
//!
//! Replicas' agreement on the matches is `garrison check`'s (the rules'
//! state and the events are in the state digest); this checks that what
//! they agreed on is right, through leader changes, kills, restarts and
//! snapshots.

use std::collections::BTreeMap;

use garrison_client::events::{Cursor, EventBody, StreamEvent};
use garrison_client::tx::PlayerKey;

use super::events::LocationLog;
use super::Check;

/// The span of the absence rule, in ms of log time.
pub const QUIET_MS: u64 = 1_500;
/// The pairing rule's name.
pub const PAIR: &str = "jepsen_pair";
/// The absence rule's name.
pub const QUIET: &str = "jepsen_quiet";

/// The pairing rule (for the ledger location).
pub const PAIR_RULE: &str = r#"rule jepsen_pair
on "jepsen-ledger"
partition by player
pattern a: committed
  followed by b: committed
skip past last
emit "pair" { earlier = a.index, later = b.index }"#;

/// The absence rule (for the ledger location).
pub const QUIET_RULE: &str = r#"rule jepsen_quiet
on "jepsen-ledger"
partition by player
pattern a: committed
  not followed by b: committed
within 1500ms
emit "quiet" { since = a.time }"#;

/// One match as the log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Found {
    at: Cursor,
    log_time_ms: u64,
    version: u64,
    events: Vec<Cursor>,
}

/// Checks the rules' matches in `log` (the ledger location's final
/// events), deployed at meta index `version`; `judged` says whether the
/// location had no deadline pending when the log was read (`Ok(false)`:
/// its log time was ahead of the clocks, so a player's last absence may
/// still be pending; `Err`: why they were not judged).
pub fn matches(log: &LocationLog, version: u64, judged: Result<bool, String>) -> Check {
    let mut problems = Vec::new();
    if let Err(why) = &judged {
        problems.push(format!(
            "absences not all judged before the final read: {why}"
        ));
    }
    let all_judged = judged.unwrap_or(true);
    // Each player's committed outcomes, in log order, and the rules'
    // matches.
    let mut committed: BTreeMap<PlayerKey, Vec<&StreamEvent>> = BTreeMap::new();
    let mut found: BTreeMap<&str, Vec<Found>> = BTreeMap::new();
    for e in &log.events {
        match &e.body {
            EventBody::Committed { .. } => {
                if let Some(p) = e.player {
                    committed.entry(p).or_default().push(e);
                }
            }
            EventBody::Matched {
                rule,
                version: v,
                events,
                ..
            } => found.entry(rule.as_str()).or_default().push(Found {
                at: e.id.cursor(),
                log_time_ms: e.log_time_ms,
                version: *v,
                events: events.clone(),
            }),
            _ => {}
        }
    }
    // Log time by entry, for the entries the log shows.
    let mut times: Vec<(u64, u64)> = log
        .events
        .iter()
        .map(|e| (e.id.index, e.log_time_ms))
        .collect();
    times.dedup();
    let pairs = found.remove(PAIR).unwrap_or_default();
    let quiets = found.remove(QUIET).unwrap_or_default();
    for f in pairs.iter().chain(&quiets) {
        if f.version != version {
            problems.push(format!(
                "a match at {} names rule version {}, deployed at {version}",
                f.at, f.version
            ));
        }
    }
    for (rule, _) in found {
        problems.push(format!("matches of a rule nobody deployed: {rule}"));
    }

    // Pairs: by the second event.
    let mut pair_at: BTreeMap<Cursor, &Found> = BTreeMap::new();
    for f in &pairs {
        match f.events.as_slice() {
            [_, second] => {
                pair_at.insert(*second, f);
            }
            other => problems.push(format!("a pair match at {} takes {other:?}", f.at)),
        }
    }
    let mut expected_pairs = 0;
    for list in committed.values() {
        // With older events trimmed, the window may start on a pair's
        // second event.
        let first_in = list.first().map(|e| e.id.cursor());
        let offset = match first_in.and_then(|c| pair_at.get(&c)) {
            Some(f) if log.trimmed && f.events[0] < first_in.unwrap() => 1,
            _ => 0,
        };
        for two in list[offset.min(list.len())..].chunks(2) {
            let [a, b] = two else { continue };
            expected_pairs += 1;
            let want = vec![a.id.cursor(), b.id.cursor()];
            match pair_at.remove(&b.id.cursor()) {
                Some(f) if f.events == want && f.at.index == b.id.index => {}
                Some(f) => problems.push(format!(
                    "pair at {} takes {:?}, expected {want:?} at entry {}",
                    f.at, f.events, b.id.index
                )),
                None => problems.push(format!(
                    "no pair match for {} and {} (player {})",
                    a.id,
                    b.id,
                    hex::encode(&a.player.unwrap_or_default()[..4])
                )),
            }
        }
    }
    for (second, f) in pair_at {
        problems.push(format!(
            "pair match at {} ({:?}) that pairs no consecutive commits (second {second})",
            f.at, f.events
        ));
    }

    // Absences: by the event they waited after.
    let mut quiet_for: BTreeMap<Cursor, &Found> = BTreeMap::new();
    for f in &quiets {
        match f.events.as_slice() {
            [a] => {
                quiet_for.insert(*a, f);
            }
            other => problems.push(format!("a quiet match at {} takes {other:?}", f.at)),
        }
    }
    let mut expected_quiet = 0;
    for list in committed.values() {
        for (i, a) in list.iter().enumerate() {
            let next = list.get(i + 1);
            let deadline = a.log_time_ms + QUIET_MS + 1;
            let got = quiet_for.remove(&a.id.cursor());
            if next.is_some_and(|n| n.log_time_ms < deadline) {
                if let Some(f) = got {
                    problems.push(format!(
                        "quiet match at {} for {}, yet the player committed again at {} within {QUIET_MS} ms",
                        f.at,
                        a.id,
                        next.unwrap().id
                    ));
                }
                continue;
            }
            if next.is_none() && got.is_none() && !all_judged {
                // Log time has not reached its deadline yet.
                continue;
            }
            expected_quiet += 1;
            let Some(f) = got else {
                problems.push(format!(
                    "no quiet match for {} (log time {}), next commit {}",
                    a.id,
                    a.log_time_ms,
                    next.map_or("none".into(), |n| format!("{} at {}", n.id, n.log_time_ms))
                ));
                continue;
            };
            // At the first entry past the deadline: not before, not later
            // than an entry the log shows past it, nor than the next commit.
            let first_past = times
                .iter()
                .find(|(index, t)| *index > a.id.index && *t >= deadline)
                .map(|(index, _)| *index);
            let late = first_past.is_some_and(|i| f.at.index > i)
                || next.is_some_and(|n| f.at.index > n.id.index);
            if f.log_time_ms < deadline || f.at.index <= a.id.index || late {
                problems.push(format!(
                    "quiet match for {} (log time {}) at {} (log time {}); the first entry past {deadline} is {first_past:?}",
                    a.id, a.log_time_ms, f.at, f.log_time_ms
                ));
            }
        }
    }
    for (a, f) in quiet_for {
        if log.in_window(a) {
            problems.push(format!(
                "quiet match at {} for {a}, which is no commit",
                f.at
            ));
        }
    }
    let valid = problems.is_empty();
    let detail = if valid {
        format!(
            "{} pair and {} quiet matches, each where an evaluation of the log puts it{}",
            expected_pairs,
            expected_quiet,
            if log.trimmed {
                " (the log's window)"
            } else {
                ""
            }
        )
    } else {
        let more = problems.len().saturating_sub(5);
        let mut d = problems.into_iter().take(5).collect::<Vec<_>>().join("; ");
        if more > 0 {
            d += &format!("; and {more} more");
        }
        d
    };
    Check::new("cep-matches", valid, detail)
}

#[cfg(test)]
mod tests {
    use garrison_client::events::EventId;

    use super::*;

    const RED: PlayerKey = [0xaa; 32];

    fn event(index: u64, position: u32, time: u64, body: EventBody) -> StreamEvent {
        StreamEvent {
            id: EventId {
                location: "jepsen-ledger".into(),
                index,
                position,
            },
            log_time_ms: time,
            player: Some(RED),
            body,
        }
    }

    fn commit(index: u64, time: u64) -> StreamEvent {
        event(index, 0, time, EventBody::Committed { sequence: index })
    }

    fn matched(rule: &str, index: u64, position: u32, time: u64, took: &[u64]) -> StreamEvent {
        event(
            index,
            position,
            time,
            EventBody::Matched {
                rule: rule.into(),
                version: 7,
                kind: "k".into(),
                events: took
                    .iter()
                    .map(|&i| Cursor {
                        index: i,
                        position: 0,
                    })
                    .collect(),
                window: None,
                fields: vec![],
                depth: 1,
            },
        )
    }

    fn log(events: Vec<StreamEvent>) -> LocationLog {
        LocationLog {
            end: Cursor::end_of(events.last().map_or(0, |e| e.id.index)),
            events,
            trimmed: false,
        }
    }

    /// Commits at 10, 11, 12 (log times 1000, 1100, 5000): one pair, two
    /// absences (after 11, judged at 12; after 12, judged by a tick at 13).
    fn good() -> Vec<StreamEvent> {
        vec![
            commit(10, 1_000),
            commit(11, 1_100),
            matched(PAIR, 11, 1, 1_100, &[10, 11]),
            commit(12, 5_000),
            matched(QUIET, 12, 1, 5_000, &[11]),
            matched(QUIET, 13, 0, 7_000, &[12]),
        ]
    }

    #[test]
    fn matches_where_the_evaluation_puts_them_pass() {
        let c = matches(&log(good()), 7, Ok(true));
        assert!(c.valid, "{}", c.detail);
        assert!(c.detail.starts_with("1 pair and 2 quiet"), "{}", c.detail);
    }

    #[test]
    fn a_missing_an_extra_or_a_late_match_fails() {
        let mut missing = good();
        missing.remove(2);
        let c = matches(&log(missing), 7, Ok(true));
        assert!(
            !c.valid && c.detail.contains("no pair match"),
            "{}",
            c.detail
        );

        let mut extra = good();
        extra.push(matched(QUIET, 13, 1, 7_000, &[10]));
        let c = matches(&log(extra), 7, Ok(true));
        assert!(
            !c.valid && c.detail.contains("committed again"),
            "{}",
            c.detail
        );

        // The absence after 11 judged only at the tick, past commit 12.
        let mut late = good();
        late[4] = matched(QUIET, 13, 1, 7_000, &[11]);
        let c = matches(&log(late), 7, Ok(true));
        assert!(
            !c.valid && c.detail.contains("quiet match for"),
            "{}",
            c.detail
        );

        let c = matches(&log(good()), 8, Ok(true));
        assert!(
            !c.valid && c.detail.contains("names rule version 7"),
            "{}",
            c.detail
        );

        let c = matches(&log(good()), 7, Err("a deadline still pending".into()));
        assert!(!c.valid, "{}", c.detail);

        // With log time ahead of the clocks, a last absence may be pending.
        let mut pending = good();
        pending.pop();
        let c = matches(&log(pending.clone()), 7, Ok(true));
        assert!(
            !c.valid && c.detail.contains("no quiet match"),
            "{}",
            c.detail
        );
        let c = matches(&log(pending), 7, Ok(false));
        assert!(c.valid, "{}", c.detail);
    }
}
