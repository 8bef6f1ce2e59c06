//! Per-key linearizability of a read/write/compare-and-set register, by a
//! Wing–Gong search with Lowe's memoization (the algorithm Knossos and
//! Porcupine use), written here for garrison's histories.
//!
//! Completed operations must take effect between their invocation and
//! completion; operations whose outcome is unknown (`info`) may take effect
//! at any time after their invocation, or never; failed operations never
//! happened and are left out.

use std::collections::{BTreeMap, HashSet};

use crate::history::{Event, Kind, Op};

/// Most search states explored per key before the checker gives up.
pub const MAX_STATES_PER_KEY: usize = 2_000_000;

/// One operation on a register.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegOp {
    /// Saw this value (`None`: the register was empty).
    Read(Option<i64>),
    /// Set the value.
    Write(i64),
    /// Set `new` if the register held `old`.
    Cas(Option<i64>, i64),
}

/// An operation with its real-time interval.
#[derive(Clone, Debug)]
pub struct Call {
    /// The worker.
    pub process: u32,
    /// What it did.
    pub op: RegOp,
    /// Invocation time.
    pub invoke: u64,
    /// Completion time; `None` when the outcome is unknown.
    pub complete: Option<u64>,
}

/// The verdict for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists; the text names the operation that cannot be explained.
    Violation(String),
    /// The search was too large to finish.
    Unknown(String),
}

fn step(state: Option<i64>, op: &RegOp) -> Option<Option<i64>> {
    match op {
        RegOp::Read(v) => (state == *v).then_some(state),
        RegOp::Write(v) => Some(Some(*v)),
        RegOp::Cas(old, new) => (state == *old).then_some(Some(*new)),
    }
}

/// Checks one register's calls, starting from an empty register.
pub fn check_register(calls: &[Call]) -> Verdict {
    // Entries: a call entry for every operation, a return entry for every
    // completed one, in time order (calls first at equal times).
    let mut entries: Vec<(u64, bool, usize)> = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        entries.push((c.invoke, false, i));
        if let Some(t) = c.complete {
            entries.push((t, true, i));
        }
    }
    entries.sort_by_key(|(t, is_return, i)| (*t, *is_return, *i));
    let n = entries.len();
    let head = n;
    // Doubly linked list over entries, with `head` as sentinel and `n + 1` as end.
    let end = n + 1;
    let mut next: Vec<usize> = (1..=n + 1).collect();
    next.push(end);
    let mut prev: Vec<usize> = vec![0; n + 2];
    for (i, p) in prev.iter_mut().enumerate().take(n) {
        *p = if i == 0 { head } else { i - 1 };
    }
    next[head] = if n == 0 { end } else { 0 };
    prev[end] = if n == 0 { head } else { n - 1 };
    let mut return_of = vec![usize::MAX; calls.len()];
    for (e, (_, is_return, c)) in entries.iter().enumerate() {
        if *is_return {
            return_of[*c] = e;
        }
    }
    let unlink = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, q) = (prev[e], next[e]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |e: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, q) = (prev[e], next[e]);
        next[p] = e;
        prev[q] = e;
    };

    let words = calls.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<i64>)> = Vec::new();
    let mut state: Option<i64> = None;
    let mut remaining = calls.iter().filter(|c| c.complete.is_some()).count();
    let mut entry = next[head];
    let mut deepest = (0usize, None::<usize>);
    while remaining > 0 {
        if cache.len() > MAX_STATES_PER_KEY {
            return Verdict::Unknown(format!("search exceeded {MAX_STATES_PER_KEY} states"));
        }
        let blocked = entry == end || entries[entry].1;
        if !blocked {
            let c = entries[entry].2;
            if let Some(after) = step(state, &calls[c].op) {
                linearized[c / 64] |= 1 << (c % 64);
                if cache.insert((linearized.clone(), after)) {
                    stack.push((entry, state));
                    state = after;
                    unlink(entry, &mut next, &mut prev);
                    if return_of[c] != usize::MAX {
                        unlink(return_of[c], &mut next, &mut prev);
                        remaining -= 1;
                    }
                    entry = next[head];
                    continue;
                }
                linearized[c / 64] &= !(1 << (c % 64));
            }
            entry = next[entry];
            continue;
        }
        // A completed operation that cannot be placed: undo the last choice.
        if stack.len() >= deepest.0 && entry != end {
            deepest = (stack.len(), Some(entries[entry].2));
        }
        let Some((e, s)) = stack.pop() else {
            let culprit = deepest.1.map(|c| {
                format!(
                    "{:?} by process {} completing at {:?} ns",
                    calls[c].op, calls[c].process, calls[c].complete
                )
            });
            return Verdict::Violation(
                culprit.unwrap_or_else(|| "no operation can be placed first".into()),
            );
        };
        let c = entries[e].2;
        linearized[c / 64] &= !(1 << (c % 64));
        if return_of[c] != usize::MAX {
            relink(return_of[c], &mut next, &mut prev);
            remaining += 1;
        }
        relink(e, &mut next, &mut prev);
        state = s;
        entry = next[e];
    }
    Verdict::Linearizable
}

/// Turns a history's register operations into calls per key: invocations
/// paired with their process's next completion; failed operations dropped;
/// operations without a completion treated as unknown.
pub fn calls_by_key(events: &[Event]) -> BTreeMap<u64, Vec<Call>> {
    let mut open: BTreeMap<u32, (u64, Op)> = BTreeMap::new();
    let mut out: BTreeMap<u64, Vec<Call>> = BTreeMap::new();
    let reg = |op: &Op| -> Option<(u64, RegOp)> {
        match op {
            Op::Read { key, value } => Some((*key, RegOp::Read(*value))),
            Op::Write { key, value } => Some((*key, RegOp::Write(*value))),
            Op::Cas { key, old, new } => Some((*key, RegOp::Cas(*old, *new))),
            Op::Tx { .. } => None,
        }
    };
    for e in events {
        match e.kind {
            Kind::Invoke => {
                open.insert(e.process, (e.time_ns, e.op.clone()));
            }
            Kind::Ok | Kind::Fail | Kind::Info => {
                let Some((invoke, invoked)) = open.remove(&e.process) else {
                    continue;
                };
                let Some((key, op)) = reg(if e.kind == Kind::Ok { &e.op } else { &invoked }) else {
                    continue;
                };
                match e.kind {
                    Kind::Fail => {}
                    // A read whose outcome is unknown constrains nothing.
                    Kind::Info if matches!(op, RegOp::Read(_)) => {}
                    Kind::Info => out.entry(key).or_default().push(Call {
                        process: e.process,
                        op,
                        invoke,
                        complete: None,
                    }),
                    _ => out.entry(key).or_default().push(Call {
                        process: e.process,
                        op,
                        invoke,
                        complete: Some(e.time_ns),
                    }),
                }
            }
        }
    }
    for (process, (invoke, op)) in open {
        if let Some((key, op)) = reg(&op) {
            if !matches!(op, RegOp::Read(_)) {
                out.entry(key).or_default().push(Call {
                    process,
                    op,
                    invoke,
                    complete: None,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(process: u32, op: RegOp, invoke: u64, complete: u64) -> Call {
        Call {
            process,
            op,
            invoke,
            complete: Some(complete),
        }
    }

    fn info(process: u32, op: RegOp, invoke: u64) -> Call {
        Call {
            process,
            op,
            invoke,
            complete: None,
        }
    }

    use RegOp::*;

    #[test]
    fn sequential_histories_are_linearizable() {
        let h = [
            ok(0, Write(1), 0, 1),
            ok(0, Read(Some(1)), 2, 3),
            ok(0, Cas(Some(1), 2), 4, 5),
            ok(0, Read(Some(2)), 6, 7),
        ];
        assert_eq!(check_register(&h), Verdict::Linearizable);
        assert_eq!(
            check_register(&[ok(0, Read(None), 0, 1)]),
            Verdict::Linearizable
        );
    }

    #[test]
    fn a_stale_read_is_a_violation() {
        // Write 2 completed before the read began, yet the read saw 1.
        let h = [
            ok(0, Write(1), 0, 1),
            ok(0, Write(2), 2, 3),
            ok(1, Read(Some(1)), 4, 5),
        ];
        assert!(matches!(check_register(&h), Verdict::Violation(_)));
    }

    #[test]
    fn a_lost_write_is_a_violation() {
        // An acknowledged write that later reads never see.
        let h = [ok(0, Write(1), 0, 1), ok(1, Read(None), 2, 3)];
        assert!(matches!(check_register(&h), Verdict::Violation(_)));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Reads overlapping a write may see the old or the new value.
        let h = [
            ok(0, Write(1), 0, 10),
            ok(1, Read(Some(1)), 1, 2),
            ok(2, Read(None), 3, 4),
        ];
        // The read of None comes after a read of 1 in real time: not allowed...
        assert!(matches!(check_register(&h), Verdict::Violation(_)));
        // ...but both reads overlapping each other, it is.
        let h = [
            ok(0, Write(1), 0, 10),
            ok(1, Read(Some(1)), 1, 5),
            ok(2, Read(None), 2, 6),
        ];
        assert_eq!(check_register(&h), Verdict::Linearizable);
    }

    #[test]
    fn an_unknown_write_may_or_may_not_have_happened() {
        let took_effect = [info(0, Write(7), 0), ok(1, Read(Some(7)), 5, 6)];
        assert_eq!(check_register(&took_effect), Verdict::Linearizable);
        let did_not = [info(0, Write(7), 0), ok(1, Read(None), 5, 6)];
        assert_eq!(check_register(&did_not), Verdict::Linearizable);
        // But not before it was invoked.
        let too_early = [ok(1, Read(Some(7)), 0, 1), info(0, Write(7), 5)];
        assert!(matches!(check_register(&too_early), Verdict::Violation(_)));
    }

    #[test]
    fn a_duplicated_apply_is_a_violation() {
        // One increment-like CAS chain applied twice: 1 -> 2 can only happen once.
        let h = [
            ok(0, Write(1), 0, 1),
            ok(0, Cas(Some(1), 2), 2, 3),
            ok(1, Write(1), 4, 5),
            ok(2, Read(Some(2)), 6, 7),
        ];
        assert!(matches!(check_register(&h), Verdict::Violation(_)));
    }

    #[test]
    fn calls_are_built_from_a_history() {
        use crate::history::{Event, Kind, Op};
        let ev = |process, kind, op, time_ns| Event {
            process,
            kind,
            op,
            time_ns,
            note: String::new(),
            tx: None,
        };
        let events = vec![
            ev(0, Kind::Invoke, Op::Write { key: 1, value: 5 }, 0),
            ev(
                1,
                Kind::Invoke,
                Op::Read {
                    key: 1,
                    value: None,
                },
                1,
            ),
            ev(0, Kind::Info, Op::Write { key: 1, value: 5 }, 2),
            ev(
                1,
                Kind::Ok,
                Op::Read {
                    key: 1,
                    value: Some(5),
                },
                3,
            ),
            ev(
                2,
                Kind::Invoke,
                Op::Cas {
                    key: 2,
                    old: Some(1),
                    new: 2,
                },
                4,
            ),
            ev(
                2,
                Kind::Fail,
                Op::Cas {
                    key: 2,
                    old: Some(1),
                    new: 2,
                },
                5,
            ),
            ev(3, Kind::Invoke, Op::Write { key: 2, value: 9 }, 6),
        ];
        let calls = calls_by_key(&events);
        assert_eq!(calls[&1].len(), 2);
        assert_eq!(calls[&1][0].complete, None);
        assert_eq!(calls[&1][1].op, RegOp::Read(Some(5)));
        assert_eq!(
            calls[&2].len(),
            1,
            "the failed cas is dropped, the unfinished write kept"
        );
        assert_eq!(check_register(&calls[&1]), Verdict::Linearizable);
    }
}
