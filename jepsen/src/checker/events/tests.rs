//! The event checkers against small hand-made records: each check must
//! pass on watchers that saw the log, and fail on a crafted gap,
//! duplicate, phantom, reordering or contradicted receipt.

use std::collections::BTreeMap;

use garrison_client::api::Rejection;
use garrison_client::events::{Cursor, EventBody, EventId, StreamEvent};
use garrison_client::tx::PlayerKey;

use super::*;
use crate::history::{Event, Kind, Op, Receipt, Submitted};

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

fn match_of(took: u64) -> EventBody {
    EventBody::Matched {
        rule: "r".into(),
        version: 1,
        kind: "k".into(),
        events: vec![Cursor {
            index: took,
            position: 1,
        }],
        window: None,
        fields: vec![],
        depth: 1,
    }
}

#[test]
fn rules_matches_after_an_outcome_or_alone_in_a_tick_pass() {
    // A match after entry 9's outcome, one after a rejection, and a tick's
    // entry (10) that holds only a match and no player.
    let mut with = log();
    with.insert(3, event(7, 1, match_of(5)));
    with.push(event(9, 2, match_of(9)));
    let mut tick = event(10, 0, match_of(9));
    tick.player = None;
    with.push(tick);
    let end = |mut w: Watch| {
        w.end.insert(L.into(), Cursor::end_of(10));
        w
    };
    let mut r = reference(with.clone(), false);
    r.logs.get_mut(L).unwrap().end = Cursor::end_of(10);
    let watches = [
        end(watch("w1", with.clone())),
        end(watch("w2", with.clone())),
    ];
    assert!(
        failing(&watches, &r).is_empty(),
        "{:?}",
        failing(&watches, &r)
    );
    // A match before the entry's own events is not how apply makes them.
    let mut early = with.clone();
    early[4].id.position = 9; // entry 9's entity event after its match
    let watches = [
        end(watch("w1", early.clone())),
        end(watch("w2", early.clone())),
    ];
    let mut r = reference(early, false);
    r.logs.get_mut(L).unwrap().end = Cursor::end_of(10);
    assert!(failing(&watches, &r).contains(&"events-no-phantom".into()));
}
