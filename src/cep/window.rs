//! Aggregate rules: events counted and summed per window of log time and
//! per group, judged when the window closes.
//!
//! A window closes when the location's log time reaches its end: the
//! first entry (an event's, or a tick's) whose log time is at or past it.
//! Then each of its groups, in order of the group's value, is judged by
//! the rule's `having`; a group for which it holds is a match. So a
//! window's matches depend only on the entries and their log times, and
//! come at the same index on every replica.
//!
//! Log time can step back (it is the proposing leader's clock, and
//! leaders change). The state keeps the latest log time seen, its
//! watermark: windows that ended at or before it are closed, and an event
//! from before the watermark counts only in the windows still open.
//!
//! The state holds one small record per open (window, group): the count
//! of its events, one accumulator per aggregated attribute, and its last
//! event (for plain `e.x` references). At most [`MAX_OPEN_GROUPS`] are
//! open; an event that would open one more opens nothing, and the state
//! counts it ([`WindowState::dropped`]), the same on every replica.

use std::collections::BTreeMap;

use garrison_client::events::LocationEvent;
use garrison_client::Value;
use serde::{Deserialize, Serialize};

use crate::cep::eval::{self, Accumulator, Bindings, EvalError, Val};
use crate::cep::lang::{AggFunc, Attr, Body, Expr, Rule, Step, Window};

/// Most (window, group) pairs one aggregate rule keeps open in one
/// location.
pub const MAX_OPEN_GROUPS: usize = 10_000;

/// One open window's group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Group {
    events: u64,
    last: LocationEvent,
    /// One per aggregated attribute, as [`Aggregator`] lists them.
    accs: Vec<Accumulator>,
}

/// An aggregate rule's state in one location: part of the location's
/// replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowState {
    /// Open windows' groups, by window start and group.
    open: BTreeMap<(u64, Option<Val>), Group>,
    /// The latest log time seen.
    watermark: u64,
    /// Events that would have opened a group beyond [`MAX_OPEN_GROUPS`].
    pub dropped: u64,
}

impl WindowState {
    /// How many (window, group) pairs are open.
    pub fn open_groups(&self) -> usize {
        self.open.len()
    }
}

/// A window's group for which `having` held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowMatch {
    /// The window, `[start, end)` in log time.
    pub start_ms: u64,
    /// Its end.
    pub end_ms: u64,
    /// The group's value (`None`: the rule has no key).
    pub group: Option<Val>,
    /// How many events the group had.
    pub events: u64,
    /// The emitted fields that have a value, in the rule's order (one that
    /// cannot be evaluated is left out).
    pub fields: Vec<(String, Value)>,
}

/// Runs one aggregate rule.
pub struct Aggregator<'r> {
    rule: &'r Rule,
    step: &'r Step,
    window: Window,
    having: &'r Expr,
    /// The attributes aggregated in `having` and the fields, each once.
    attrs: std::borrow::Cow<'r, [Attr]>,
    max_groups: usize,
}

fn collect_attrs(e: &Expr, out: &mut Vec<Attr>) {
    match e {
        Expr::Agg { of: Some(a), .. } if !out.contains(a) => out.push(a.clone()),
        Expr::Unary(_, e) => collect_attrs(e, out),
        Expr::Binary(_, a, b) => {
            collect_attrs(a, out);
            collect_attrs(b, out);
        }
        _ => {}
    }
}

struct GroupBindings<'a> {
    group: &'a Group,
    attrs: &'a [Attr],
}

impl Bindings for GroupBindings<'_> {
    fn events(&self, _step: &str) -> &[LocationEvent] {
        std::slice::from_ref(&self.group.last)
    }

    fn aggregate(
        &self,
        func: AggFunc,
        _step: &str,
        of: Option<&Attr>,
        what: &str,
    ) -> Result<Val, EvalError> {
        match of {
            None => Ok(Val::Int(self.group.events as i64)),
            Some(attr) => {
                let i = self
                    .attrs
                    .iter()
                    .position(|a| a == attr)
                    .expect("every aggregated attribute is collected");
                self.group.accs[i].value(func, what)
            }
        }
    }
}

impl<'r> Aggregator<'r> {
    /// The aggregator of `rule`, if it is an aggregate rule.
    pub fn new(rule: &'r Rule) -> Option<Self> {
        let mut agg = Self::new_bare(rule)?;
        agg.attrs = std::borrow::Cow::Owned(Self::attrs_of(rule));
        Some(agg)
    }

    /// The attributes `rule` aggregates (in `having` and its fields), each
    /// once: what [`Aggregator::with_attrs`] takes, computed once.
    pub fn attrs_of(rule: &Rule) -> Vec<Attr> {
        let mut attrs = Vec::new();
        if let Body::Aggregate { having, .. } = &rule.body {
            collect_attrs(having, &mut attrs);
        }
        for (_, e) in &rule.emit.fields {
            collect_attrs(e, &mut attrs);
        }
        attrs
    }

    /// The aggregator of `rule` with its attributes computed already.
    pub fn with_attrs(rule: &'r Rule, attrs: &'r [Attr]) -> Option<Self> {
        let mut agg = Self::new_bare(rule)?;
        agg.attrs = std::borrow::Cow::Borrowed(attrs);
        Some(agg)
    }

    fn new_bare(rule: &'r Rule) -> Option<Self> {
        let Body::Aggregate {
            step,
            window,
            having,
        } = &rule.body
        else {
            return None;
        };
        Some(Self {
            rule,
            step,
            window: *window,
            having,
            attrs: std::borrow::Cow::Borrowed(&[]),
            max_groups: MAX_OPEN_GROUPS,
        })
    }

    /// The same aggregator keeping at most `max_groups` groups open (below
    /// [`MAX_OPEN_GROUPS`]: a location's share of its total).
    pub fn with_max_groups(mut self, max_groups: usize) -> Self {
        self.max_groups = max_groups.min(MAX_OPEN_GROUPS);
        self
    }

    fn size_ms(&self) -> u64 {
        match self.window {
            Window::Tumbling { size_ms } | Window::Sliding { size_ms, .. } => size_ms,
        }
    }

    /// The starts of the windows log time `t` falls in, oldest first.
    fn starts(&self, t: u64) -> Vec<u64> {
        match self.window {
            Window::Tumbling { size_ms } => vec![t - t % size_ms],
            Window::Sliding { size_ms, every_ms } => {
                let last = t / every_ms;
                // The oldest window that still holds t starts after t - size.
                let first = match t.checked_sub(size_ms) {
                    Some(before) => before / every_ms + 1,
                    None => 0,
                };
                (first..=last).map(|k| k * every_ms).collect()
            }
        }
    }

    /// When the next open window closes: a log time the location must
    /// reach (by a tick, if no entry comes) for its matches to come.
    pub fn next_deadline(&self, state: &WindowState) -> Option<u64> {
        state
            .open
            .keys()
            .next()
            .map(|(start, _)| start + self.size_ms())
    }

    /// Log time has reached `log_time_ms` (an entry was applied): closes
    /// the windows that ended by then and returns their matches, oldest
    /// window first, then by group.
    pub fn advance(&self, state: &mut WindowState, log_time_ms: u64) -> Vec<WindowMatch> {
        state.watermark = state.watermark.max(log_time_ms);
        let size = self.size_ms();
        let mut out = Vec::new();
        while let Some(entry) = state.open.first_entry() {
            let start = entry.key().0;
            if start + size > state.watermark {
                break;
            }
            let ((_, group_key), group) = entry.remove_entry();
            let bindings = GroupBindings {
                group: &group,
                attrs: &self.attrs,
            };
            if !eval::holds(self.having, &bindings) {
                continue;
            }
            let fields = self
                .rule
                .emit
                .fields
                .iter()
                .filter_map(|(name, e)| {
                    eval::eval(e, &bindings)
                        .ok()
                        .map(|v| (name.clone(), v.into_value()))
                })
                .collect();
            out.push(WindowMatch {
                start_ms: start,
                end_ms: start + size,
                group: group_key,
                events: group.events,
                fields,
            });
        }
        out
    }

    /// Applies one event: first log time advances to its entry's (which
    /// may close windows: their matches are returned), then the event, if
    /// the rule's step takes it, counts in every open window it falls in.
    pub fn add(&self, state: &mut WindowState, event: &LocationEvent) -> Vec<WindowMatch> {
        let matches = self.advance(state, event.log_time_ms);
        self.offer_event(state, event);
        matches
    }

    /// Counts one event whose log time `advance` has reached already (an
    /// event closes no window: only log time does).
    pub fn offer_event(&self, state: &mut WindowState, event: &LocationEvent) {
        if !eval::matches(&self.step.matcher, event) {
            return;
        }
        if let Some(condition) = &self.step.condition {
            struct One<'a>(&'a LocationEvent);
            impl Bindings for One<'_> {
                fn events(&self, _: &str) -> &[LocationEvent] {
                    std::slice::from_ref(self.0)
                }
            }
            if !eval::holds(condition, &One(event)) {
                return;
            }
        }
        let group_key = match &self.rule.partition {
            None => None,
            Some(key) => match eval::partition_of(key, event) {
                Some(v) => Some(v),
                // Without the key's value it joins no group.
                None => return,
            },
        };
        let size = self.size_ms();
        for start in self.starts(event.log_time_ms) {
            if start + size <= state.watermark {
                // That window has closed already (log time stepped back).
                continue;
            }
            let key = (start, group_key.clone());
            let open = state.open.len();
            let group = match state.open.get_mut(&key) {
                Some(g) => g,
                None if open >= self.max_groups => {
                    state.dropped += 1;
                    continue;
                }
                None => state.open.entry(key).or_insert_with(|| Group {
                    events: 0,
                    last: event.clone(),
                    accs: vec![Accumulator::default(); self.attrs.len()],
                }),
            };
            group.events += 1;
            group.last = event.clone();
            for (acc, attr) in group.accs.iter_mut().zip(self.attrs.iter()) {
                acc.add(eval::attribute(event, attr));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cep::lang::parse;
    use garrison_client::events::EventBody;

    fn lost(at_ms: u64, player: u8, cost: i64) -> LocationEvent {
        LocationEvent {
            index: at_ms,
            position: 0,
            log_time_ms: at_ms,
            player: Some([player; 32]),
            body: EventBody::Emitted {
                kind: "unit_lost".into(),
                fields: vec![("cost".into(), Value::Int(cost))],
            },
        }
    }

    fn player(p: u8) -> Option<Val> {
        Some(Val::Bytes([p; 32].to_vec()))
    }

    /// Every match of `rule` over `events`, then over log time `end`.
    fn run(rule: &str, events: &[LocationEvent], end: u64) -> Vec<WindowMatch> {
        let rule = parse(rule).unwrap();
        let agg = Aggregator::new(&rule).unwrap();
        let mut state = WindowState::default();
        let mut out = Vec::new();
        for e in events {
            out.extend(agg.add(&mut state, e));
        }
        out.extend(agg.advance(&mut state, end));
        out
    }

    const LOSSES: &str = r#"
        rule losses partition by player
        aggregate e: emitted "unit_lost"
        window tumbling 10s
        having count(e) > 2
        emit "heavy" { n = count(e), cost = sum(e.cost), worst = max(e.cost), avg = avg(e.cost) }
    "#;

    #[test]
    fn tumbling_windows_judge_each_group_when_they_close() {
        let events = [
            lost(1_000, 1, 5),
            lost(2_000, 2, 1),
            lost(3_000, 1, 7),
            lost(9_999, 1, 3),
            // Window [10s, 20s): player 1 has only two.
            lost(10_000, 1, 1),
            lost(12_000, 2, 1),
            lost(15_000, 2, 1),
            lost(19_000, 2, 2),
            lost(19_500, 1, 1),
        ];
        let rule = parse(LOSSES).unwrap();
        let agg = Aggregator::new(&rule).unwrap();
        let mut state = WindowState::default();
        let mut fired_at = Vec::new();
        for e in &events {
            for m in agg.add(&mut state, e) {
                fired_at.push((e.log_time_ms, m));
            }
        }
        // The first window closes at the first entry at or past 10 s.
        assert_eq!(fired_at.len(), 1);
        let (at, m) = &fired_at[0];
        assert_eq!(*at, 10_000);
        assert_eq!(
            (m.start_ms, m.end_ms, &m.group, m.events),
            (0, 10_000, &player(1), 3)
        );
        assert_eq!(
            m.fields,
            [
                ("n".to_string(), Value::Int(3)),
                ("cost".to_string(), Value::Int(15)),
                ("worst".to_string(), Value::Int(7)),
                ("avg".to_string(), Value::Int(5)),
            ]
        );
        assert_eq!(agg.next_deadline(&state), Some(20_000));
        // Nothing closes before the deadline, then the second window does.
        assert!(agg.advance(&mut state, 19_999).is_empty());
        let second = agg.advance(&mut state, 20_000);
        assert_eq!(second.len(), 1);
        assert_eq!((second[0].start_ms, &second[0].group), (10_000, &player(2)));
        assert_eq!(state.open_groups(), 0);
        assert_eq!(
            agg.next_deadline(&state),
            None,
            "no deadline: no tick needed"
        );
    }

    #[test]
    fn sliding_windows_count_an_event_in_every_window_that_holds_it() {
        let rule = r#"rule busy
            aggregate e: any
            window sliding 10s every 5s
            having count(e) >= 2
            emit "busy" { n = count(e) }"#;
        let events = [lost(4_000, 1, 0), lost(7_000, 1, 0), lost(12_000, 1, 0)];
        let got: Vec<(u64, u64, u64)> = run(rule, &events, 100_000)
            .iter()
            .map(|m| (m.start_ms, m.end_ms, m.events))
            .collect();
        // Windows start every 5 s from 0: [0,10) holds 4 s and 7 s,
        // [5,15) 7 s and 12 s, [10,20) only 12 s.
        assert_eq!(got, [(0, 10_000, 2), (5_000, 15_000, 2)]);
    }

    #[test]
    fn an_event_from_before_the_watermark_counts_only_where_windows_are_open() {
        let rule = r#"rule r aggregate e: any window tumbling 10s having count(e) >= 1
            emit "k" { n = count(e) }"#;
        // The clock stepped back from 15 s to 8 s: [0,10) has closed.
        let events = [
            lost(1_000, 1, 0),
            lost(15_000, 1, 0),
            lost(8_000, 1, 0),
            lost(11_000, 1, 0),
        ];
        let got: Vec<(u64, u64)> = run(rule, &events, 20_000)
            .iter()
            .map(|m| (m.start_ms, m.events))
            .collect();
        assert_eq!(got, [(0, 1), (10_000, 2)]);
    }

    #[test]
    fn a_condition_that_cannot_be_evaluated_does_not_fire_and_a_bad_field_is_left_out() {
        let rule = r#"rule r aggregate e: emitted "unit_lost" where e.cost > 0
            window tumbling 1s
            having sum(e.cost) > 0
            emit "k" { total = sum(e.cost), ratio = count(e) / (count(e) - 2) }"#;
        let events = [
            lost(100, 1, i64::MAX),
            lost(200, 1, 1),
            lost(1_100, 1, 0),
            lost(2_100, 1, 4),
            lost(2_200, 1, 3),
        ];
        let got = run(rule, &events, 10_000);
        // [0,1s): the sum overflows; [1s,2s): cost 0 is filtered out, no
        // group; [2s,3s): fires, with the field that divides by zero left out.
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].start_ms, 2_000);
        assert_eq!(got[0].fields, [("total".to_string(), Value::Int(7))]);
    }

    #[test]
    fn groups_beyond_the_limit_are_not_opened_and_are_counted() {
        let rule = parse(
            r#"rule r partition by field cost aggregate e: any window tumbling 1h
               having count(e) > 0 emit "k""#,
        )
        .unwrap();
        let agg = Aggregator::new(&rule).unwrap();
        let mut state = WindowState::default();
        for i in 0..(MAX_OPEN_GROUPS as i64 + 5) {
            agg.add(&mut state, &lost(1_000, 1, i));
        }
        assert_eq!(state.open_groups(), MAX_OPEN_GROUPS);
        assert_eq!(state.dropped, 5);
        // An open group still counts.
        agg.add(&mut state, &lost(1_001, 1, 0));
        assert_eq!(state.dropped, 5);
        assert_eq!(agg.advance(&mut state, 3_600_000).len(), MAX_OPEN_GROUPS);
    }

    #[test]
    fn a_restored_state_goes_on_as_the_original() {
        let rule = parse(LOSSES).unwrap();
        let agg = Aggregator::new(&rule).unwrap();
        let events: Vec<LocationEvent> = (0..40u64)
            .map(|i| lost(i * 700, (i % 3) as u8, i as i64))
            .collect();
        let (mut whole, mut first) = (WindowState::default(), WindowState::default());
        let mut expected = Vec::new();
        for e in &events {
            expected.extend(agg.add(&mut whole, e));
        }
        let mut got = Vec::new();
        for e in &events[..17] {
            got.extend(agg.add(&mut first, e));
        }
        let bytes = garrison_raft::codec::encode(&first);
        let mut restored: WindowState = garrison_raft::codec::decode(&bytes).unwrap();
        assert_eq!(restored, first);
        for e in &events[17..] {
            got.extend(agg.add(&mut restored, e));
        }
        assert_eq!(got, expected);
        assert_eq!(restored, whole);
        assert!(!expected.is_empty());
    }
}
