//! Pattern rules: partial matches that advance step by step through a
//! partition's events, in log order.
//!
//! A partial match (a *run*) holds the events each step has taken so far
//! and the step it is at. For each event of its partition, in log order:
//!
//! 1. Runs whose `within` has passed end: one that only waited for an
//!    absence (a trailing `not followed by`), or whose greedy last step has
//!    enough events, is a match; the others are dropped.
//! 2. Each run, oldest first, offers the event to its step. A quantified
//!    step that has its least number of events may pass the event on to
//!    the next step: a reluctant step prefers to (the next step takes it
//!    if it can), a greedy one prefers to keep it. A negated step kills the
//!    run if the event matches it. An event no step takes is skipped,
//!    unless the step waiting for it is joined by `then`, which needs the
//!    very next event: then the run ends. `followed by any` keeps a copy of
//!    the run that did not take the event.
//! 3. If the first step takes the event, it starts a new run.
//! 4. Each run that completed is a match; the rule's skip strategy then
//!    drops the other runs it names.
//!
//! Nothing depends on anything but the events and the rule, so every
//! replica holds the same runs and finds the same matches. Runs are
//! bounded: at most [`MAX_RUNS_PER_PARTITION`] per partition (the oldest
//! is dropped first) and [`MAX_RUNS_PER_RULE`] in all (a new run beyond it
//! is not started); both are counted in [`PatternState::dropped`].

use std::collections::BTreeMap;

use garrison_client::events::{Cursor, LocationEvent};
use garrison_client::Value;
use serde::{Deserialize, Serialize};

use crate::cep::eval::{self, Bindings, Val};
use crate::cep::lang::{Body, Contiguity, Rule, Skip, Step};

/// Most partial matches one partition of one rule holds.
pub const MAX_RUNS_PER_PARTITION: usize = 1_000;
/// Most partial matches one rule holds in one location.
pub const MAX_RUNS_PER_RULE: usize = 10_000;

/// A partial match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Run {
    /// Started before every run with a higher number.
    id: u64,
    /// The events each step took (none for negated steps).
    taken: Vec<Vec<LocationEvent>>,
    /// The step it is at.
    at: usize,
    /// The log time of its first event.
    started_ms: u64,
}

impl Run {
    fn first(&self) -> Cursor {
        self.taken
            .iter()
            .flatten()
            .next()
            .expect("a run holds its first event")
            .cursor()
    }
}

/// A pattern rule's state in one location: part of its replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatternState {
    partitions: BTreeMap<Option<Val>, Vec<Run>>,
    next_run: u64,
    /// Partial matches dropped at a limit, or not started.
    pub dropped: u64,
}

impl PatternState {
    /// How many partial matches are held.
    pub fn runs(&self) -> usize {
        self.partitions.values().map(Vec::len).sum()
    }
}

/// A match of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatternMatch {
    /// Its partition's value (`None`: the rule has no key).
    pub partition: Option<Val>,
    /// The ids (cursors) of the events it took, in log order.
    pub events: Vec<Cursor>,
    /// The emitted fields that have a value, in the rule's order.
    pub fields: Vec<(String, Value)>,
}

/// Runs one pattern rule.
pub struct PatternMatcher<'r> {
    rule: &'r Rule,
    steps: &'r [Step],
    within_ms: Option<u64>,
    skip: &'r Skip,
    max_runs: usize,
    /// Whether an event no step matches can still change a run: with a
    /// `then` (the next event must match) or a greedy last step (done at
    /// the first event it cannot take).
    every_event: bool,
}

struct RunBindings<'a> {
    steps: &'a [Step],
    taken: &'a [Vec<LocationEvent>],
    /// Step `k`'s events if it took the candidate: what `events(k)`
    /// answers instead of `taken[k]` (a condition judges its candidate).
    trying: Option<(usize, &'a [LocationEvent])>,
}

impl Bindings for RunBindings<'_> {
    fn events(&self, step: &str) -> &[LocationEvent] {
        match self.steps.iter().position(|s| s.name == step) {
            Some(i) => match self.trying {
                Some((k, events)) if k == i => events,
                _ => self.taken[i].as_slice(),
            },
            None => &[],
        }
    }
}

/// What a run does with an event.
enum Fate {
    /// It took the event (or let it pass) and goes on as these runs (one,
    /// or two for `followed by any`).
    Go(Vec<Run>),
    /// It ended, unmatched.
    Dead,
}

impl<'r> PatternMatcher<'r> {
    /// The matcher of `rule`, if it is a pattern rule.
    pub fn new(rule: &'r Rule) -> Option<Self> {
        let Body::Pattern {
            steps,
            within_ms,
            skip,
        } = &rule.body
        else {
            return None;
        };
        Some(Self {
            rule,
            steps,
            within_ms: *within_ms,
            skip,
            max_runs: MAX_RUNS_PER_RULE,
            every_event: steps.iter().any(|s| s.contiguity == Contiguity::Strict)
                || steps
                    .iter()
                    .rev()
                    .find(|s| !s.negated)
                    .is_some_and(|s| s.quantifier.greedy),
        })
    }

    /// The same matcher holding at most `max_runs` partial matches (below
    /// [`MAX_RUNS_PER_RULE`]: a location's share of its total).
    pub fn with_max_runs(mut self, max_runs: usize) -> Self {
        self.max_runs = max_runs.min(MAX_RUNS_PER_RULE);
        self
    }

    fn last_positive(&self) -> usize {
        self.steps
            .iter()
            .rposition(|s| !s.negated)
            .expect("the first step is not negated")
    }

    /// Would step `k` of `run` take `event`?
    fn accepts(&self, run: &Run, k: usize, event: &LocationEvent) -> bool {
        let step = &self.steps[k];
        if !eval::matches(&step.matcher, event) {
            return false;
        }
        let Some(condition) = &step.condition else {
            return true;
        };
        // The step's events with the candidate (copied only for a
        // quantified step that has some already).
        let with: Vec<LocationEvent>;
        let trying = if run.taken[k].is_empty() {
            std::slice::from_ref(event)
        } else {
            with = run.taken[k].iter().chain([event]).cloned().collect();
            &with
        };
        eval::holds(
            condition,
            &RunBindings {
                steps: self.steps,
                taken: &run.taken,
                trying: Some((k, trying)),
            },
        )
    }

    /// Is `run` complete (every positive step has its events, and no
    /// absence is pending)?
    fn complete(&self, run: &Run) -> bool {
        let last = self.last_positive();
        run.at == last
            && run.taken[last].len() as u32 >= self.steps[last].quantifier.min
            && last == self.steps.len() - 1
            && {
                let q = self.steps[last].quantifier;
                // A reluctant last step completes at its least; a greedy
                // one at its most (or when it cannot take more: see
                // `offer`).
                !q.greedy || q.max == Some(run.taken[last].len() as u32)
            }
    }

    /// Offers `event` to `run` at step `k` as the step's next candidate,
    /// having come from the step before (`fresh`) or staying at it.
    fn enter(&self, mut run: Run, k: usize, event: &LocationEvent) -> Fate {
        let step = &self.steps[k];
        if step.negated {
            if self.accepts(&run, k, event) {
                return Fate::Dead;
            }
            if k + 1 == self.steps.len() {
                // An absence: it waits out `within`, and the event is not
                // its business.
                run.at = k;
                return Fate::Go(vec![run]);
            }
            let next = &self.steps[k + 1];
            match (step.contiguity, self.enter_positive(&run, k + 1, event)) {
                (_, Some(runs)) => Fate::Go(runs),
                // `not then` was the next event's test, and it passed; the
                // step after must take the next one if it is `then`.
                (Contiguity::Strict, None) if next.contiguity == Contiguity::Strict => Fate::Dead,
                (Contiguity::Strict, None) => {
                    run.at = k + 1;
                    Fate::Go(vec![run])
                }
                (_, None) => {
                    run.at = k;
                    Fate::Go(vec![run])
                }
            }
        } else {
            let here = self.enter_positive(&run, k, event);
            // An optional step (`?`, `*`) may be passed over: the step
            // after it may take the event instead. A reluctant one prefers
            // that; a greedy one prefers to take it, and a copy passes it
            // on if the step after would take it too.
            let past = (step.quantifier.min == 0 && !self.steps[k + 1].negated)
                .then(|| self.enter_positive(&run, k + 1, event))
                .flatten();
            match (here, past) {
                (Some(mut here), Some(past)) if step.quantifier.greedy => {
                    here.extend(past);
                    Fate::Go(here)
                }
                (_, Some(past)) if !step.quantifier.greedy => Fate::Go(past),
                (Some(here), _) => Fate::Go(here),
                (None, Some(past)) => Fate::Go(past),
                (None, None) if step.contiguity == Contiguity::Strict => Fate::Dead,
                (None, None) => Fate::Go(vec![run]),
            }
        }
    }

    /// `run` moved to positive step `k` (nothing taken there yet): the
    /// runs after `k` takes `event`, or `None` if it does not.
    fn enter_positive(&self, run: &Run, k: usize, event: &LocationEvent) -> Option<Vec<Run>> {
        if !self.accepts(run, k, event) {
            return None;
        }
        // Copied only once the step takes the event.
        let mut run = run.clone();
        let keep = (self.steps[k].contiguity == Contiguity::RelaxedAny).then(|| {
            let mut stay = run.clone();
            stay.at = k;
            stay
        });
        run.at = k;
        run.taken[k].push(event.clone());
        // A copy stays before step k, waiting for another event.
        Some(std::iter::once(run).chain(keep).collect())
    }

    /// What `run` does with the next event of its partition.
    fn offer(&self, run: Run, event: &LocationEvent, out: &mut Vec<Run>, done: &mut Vec<Run>) {
        let k = run.at;
        let step = &self.steps[k];
        if step.negated || run.taken[k].is_empty() {
            // Waiting before step k (a copy left by `followed by any`, or
            // after a `not then` that passed).
            match self.enter(run, k, event) {
                Fate::Go(runs) => self.settle(runs, out, done),
                Fate::Dead => {}
            }
            return;
        }
        let q = step.quantifier;
        let count = run.taken[k].len() as u32;
        let can_extend = q.max.is_none_or(|m| count < m) && self.accepts(&run, k, event);
        let can_pass = count >= q.min && k + 1 < self.steps.len();
        let extend = |mut run: Run| {
            run.taken[k].push(event.clone());
            run
        };
        if q.greedy && can_extend {
            // Greedy: the step keeps the event; if the next step would take
            // it too, a copy moves on with it (greed does not lose the
            // match that stopping here would give).
            let mut runs = Vec::new();
            if can_pass {
                let mut next = run.clone();
                next.at = k + 1;
                if let Fate::Go(moved) = self.enter(next, k + 1, event) {
                    runs.extend(moved.into_iter().filter(|r| {
                        r.at > k + 1 || r.taken[k + 1..].iter().any(|t| !t.is_empty())
                    }));
                }
            }
            runs.insert(0, extend(run));
            return self.settle(runs, out, done);
        }
        if can_pass {
            let mut next = run.clone();
            next.at = k + 1;
            if let Fate::Go(runs) = self.enter(next, k + 1, event) {
                // Not greedy (or unable to keep the event): the steps after
                // it take the event, or let it pass, and the run moves on.
                return self.settle(runs, out, done);
            } else if !can_extend {
                return;
            }
        }
        if can_extend {
            return self.settle(vec![extend(run)], out, done);
        }
        // Nothing takes the event.
        if q.greedy && count >= q.min && k == self.steps.len() - 1 {
            // A greedy last step that cannot take more is done.
            done.push(run);
            return;
        }
        // (Here the step cannot pass the event on: it has too few, or it is
        // the last.) `then` needed this event.
        if step.contiguity != Contiguity::Strict {
            out.push(run);
        }
    }

    fn settle(&self, runs: Vec<Run>, out: &mut Vec<Run>, done: &mut Vec<Run>) {
        for run in runs {
            if self.complete(&run) {
                done.push(run);
            } else {
                out.push(run);
            }
        }
    }

    fn expired(&self, run: &Run, now_ms: u64) -> bool {
        self.within_ms
            .is_some_and(|w| now_ms.saturating_sub(run.started_ms) > w)
    }

    /// Does an expired `run` count as a match (only an absence pending, or
    /// a greedy last step with enough)?
    fn matches_on_expiry(&self, run: &Run) -> bool {
        let last = self.steps.len() - 1;
        let positive = self.last_positive();
        let q = self.steps[positive].quantifier;
        let enough = run.at == positive && run.taken[positive].len() as u32 >= q.min;
        if self.steps[last].negated {
            // Only the absence was pending.
            run.at == last || enough
        } else {
            // A greedy last step that had enough.
            q.greedy && enough
        }
    }

    fn emit(&self, partition: &Option<Val>, run: &Run) -> PatternMatch {
        let bindings = RunBindings {
            steps: self.steps,
            taken: &run.taken,
            trying: None,
        };
        let mut events: Vec<Cursor> = run.taken.iter().flatten().map(|e| e.cursor()).collect();
        events.sort();
        PatternMatch {
            partition: partition.clone(),
            events,
            fields: self
                .rule
                .emit
                .fields
                .iter()
                .filter_map(|(name, e)| {
                    eval::eval(e, &bindings)
                        .ok()
                        .map(|v| (name.clone(), v.into_value()))
                })
                .collect(),
        }
    }

    /// Emits the runs that completed at one event (or one deadline),
    /// earliest start first (then the older run): each emitted match
    /// applies the skip strategy to the partial matches left and to the
    /// completed ones not yet emitted, as Flink CEP prunes both.
    fn emit_all(
        &self,
        partition: &Option<Val>,
        mut done: Vec<Run>,
        left: &mut Vec<Run>,
        out: &mut Vec<PatternMatch>,
    ) {
        done.sort_by_key(|r| (r.first(), r.id));
        let mut done = std::collections::VecDeque::from(done);
        while let Some(run) = done.pop_front() {
            out.push(self.emit(partition, &run));
            self.skip(left, &run);
            let mut rest: Vec<Run> = done.into();
            self.skip(&mut rest, &run);
            done = rest.into();
        }
    }

    /// Drops the runs that `matched` rules out under the skip strategy.
    fn skip(&self, runs: &mut Vec<Run>, matched: &Run) {
        let cursors = |k: usize| matched.taken[k].iter().map(|e| e.cursor());
        let step_of = |name: &str| self.steps.iter().position(|s| s.name == name);
        let first = matched.first();
        let all: Vec<Cursor> = matched.taken.iter().flatten().map(|e| e.cursor()).collect();
        let last = all.iter().max().copied().unwrap_or(first);
        match self.skip {
            Skip::NoSkip => {}
            Skip::ToNext => runs.retain(|r| r.first() != first),
            Skip::PastLast => runs.retain(|r| r.first() > last),
            Skip::ToFirst(s) | Skip::ToLast(s) => {
                let k = step_of(s).expect("checked when parsed");
                let mut at = cursors(k);
                let bound = if matches!(self.skip, Skip::ToFirst(_)) {
                    at.next()
                } else {
                    at.next_back()
                };
                if let Some(bound) = bound {
                    runs.retain(|r| r.first() >= bound);
                }
            }
        }
    }

    /// Ends the runs whose `within` has passed by log time `now_ms`;
    /// returns the matches among them (an absence fulfilled), by partition
    /// then age.
    pub fn advance(&self, state: &mut PatternState, now_ms: u64) -> Vec<PatternMatch> {
        let mut out = Vec::new();
        if self.within_ms.is_none() {
            return out;
        }
        for (partition, runs) in state.partitions.iter_mut() {
            // Runs are kept oldest first, and none starts before an older
            // one: if the first has not expired, none has.
            if !runs.first().is_some_and(|r| self.expired(r, now_ms)) {
                continue;
            }
            let mut kept = Vec::with_capacity(runs.len());
            let mut ended = Vec::new();
            for run in runs.drain(..) {
                if self.expired(&run, now_ms) {
                    if self.matches_on_expiry(&run) {
                        ended.push(run);
                    }
                } else {
                    kept.push(run);
                }
            }
            self.emit_all(partition, ended, &mut kept, &mut out);
            *runs = kept;
        }
        state.partitions.retain(|_, runs| !runs.is_empty());
        out
    }

    /// The earliest log time at which a run's `within` passes: when a tick
    /// must come if no entry does, so that an absence is judged.
    pub fn next_deadline(&self, state: &PatternState) -> Option<u64> {
        let w = self.within_ms?;
        // The oldest run of each partition is first, and started first.
        state
            .partitions
            .values()
            .filter_map(|runs| runs.first())
            .map(|r| r.started_ms + w + 1)
            .min()
    }

    /// Applies one event: expiries up to its log time, then its partition's
    /// runs and a new one. Returns the matches, in the order they
    /// completed.
    pub fn add(&self, state: &mut PatternState, event: &LocationEvent) -> Vec<PatternMatch> {
        let mut matches = self.advance(state, event.log_time_ms);
        matches.extend(self.offer_event(state, event));
        matches
    }

    /// Applies one event whose log time `advance` has reached already.
    pub fn offer_event(
        &self,
        state: &mut PatternState,
        event: &LocationEvent,
    ) -> Vec<PatternMatch> {
        let mut matches = Vec::new();
        // Most events concern most rules not at all: skipped, they change
        // nothing, unless contiguity or greed counts them.
        if !self.every_event && !self.steps.iter().any(|s| eval::matches(&s.matcher, event)) {
            return matches;
        }
        let partition = match &self.rule.partition {
            None => None,
            Some(key) => match eval::partition_of(key, event) {
                Some(v) => Some(v),
                None => return matches,
            },
        };
        let total = state.runs();
        let runs = state.partitions.remove(&partition).unwrap_or_default();
        let mut next = Vec::with_capacity(runs.len() + 1);
        let mut done = Vec::new();
        for run in runs {
            self.offer(run, event, &mut next, &mut done);
        }
        let fresh = eval::matches(&self.steps[0].matcher, event).then(|| Run {
            id: state.next_run,
            taken: vec![Vec::new(); self.steps.len()],
            at: 0,
            started_ms: event.log_time_ms,
        });
        if let Some(mut started) = fresh.and_then(|f| self.enter_positive(&f, 0, event)) {
            state.next_run += 1;
            let room = self.max_runs.saturating_sub(total);
            if started.len() > room {
                state.dropped += (started.len() - room) as u64;
                started.truncate(room);
            }
            self.settle(started, &mut next, &mut done);
        }
        self.emit_all(&partition, done, &mut next, &mut matches);
        // The oldest first, and at most MAX_RUNS_PER_PARTITION.
        next.sort_by_key(|r| r.id);
        if next.len() > MAX_RUNS_PER_PARTITION {
            let over = next.len() - MAX_RUNS_PER_PARTITION;
            state.dropped += over as u64;
            next.drain(..over);
        }
        if !next.is_empty() {
            state.partitions.insert(partition, next);
        }
        matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cep::lang::parse;
    use garrison_client::events::EventBody;

    /// Emitted events from a script: `KIND[:PLAYER][=HP]` per event, the
    /// n-th (from 1) at index n and log time n seconds.
    fn script(text: &str) -> Vec<LocationEvent> {
        text.split_whitespace()
            .enumerate()
            .map(|(i, word)| {
                let (rest, hp) = match word.split_once('=') {
                    Some((r, hp)) => (r, Some(hp.parse::<i64>().unwrap())),
                    None => (word, None),
                };
                let (kind, player) = match rest.split_once(':') {
                    Some((k, p)) => (k, p.parse::<u8>().unwrap()),
                    None => (rest, 0),
                };
                let index = i as u64 + 1;
                LocationEvent {
                    index,
                    position: 0,
                    log_time_ms: index * 1_000,
                    player: Some([player; 32]),
                    body: EventBody::Emitted {
                        kind: kind.into(),
                        fields: hp
                            .map(|h| ("hp".to_string(), Value::Int(h)))
                            .into_iter()
                            .collect(),
                    },
                }
            })
            .collect()
    }

    /// The matches of `rule` over `events` and then log time `end_ms`, each
    /// as the indexes of its events.
    fn run(rule: &str, events: &[LocationEvent], end_ms: u64) -> Vec<Vec<u64>> {
        let rule = parse(rule).unwrap_or_else(|e| panic!("{e}\n{rule}"));
        let matcher = PatternMatcher::new(&rule).unwrap();
        let mut state = PatternState::default();
        let mut out: Vec<PatternMatch> = Vec::new();
        for e in events {
            out.extend(matcher.add(&mut state, e));
        }
        out.extend(matcher.advance(&mut state, end_ms));
        out.iter()
            .map(|m| m.events.iter().map(|c| c.index).collect())
            .collect()
    }

    fn rule(pattern: &str) -> String {
        format!("rule r pattern {pattern} emit \"m\"")
    }

    #[test]
    fn strict_and_relaxed_contiguity() {
        let events = script("a c b a b");
        let strict = rule("x: emitted \"a\" then y: emitted \"b\"");
        assert_eq!(run(&strict, &events, 0), [vec![4, 5]]);
        let relaxed = rule("x: emitted \"a\" followed by y: emitted \"b\"");
        assert_eq!(run(&relaxed, &events, 0), [vec![1, 3], vec![4, 5]]);
    }

    #[test]
    fn followed_by_any_matches_every_later_event_and_skips_prune_overlaps() {
        let events = script("x x x");
        let any = |skip: &str| {
            format!("rule r pattern a: emitted \"x\" followed by any b: emitted \"x\" {skip} emit \"m\"")
        };
        assert_eq!(
            run(&any(""), &events, 0),
            [vec![1, 2], vec![1, 3], vec![2, 3]]
        );
        assert_eq!(
            run(&any("skip to next"), &events, 0),
            [vec![1, 2], vec![2, 3]]
        );
        assert_eq!(run(&any("skip past last"), &events, 0), [vec![1, 2]]);
        // Relaxed: each run takes the first later x.
        let relaxed = rule("a: emitted \"x\" followed by b: emitted \"x\"");
        assert_eq!(run(&relaxed, &events, 0), [vec![1, 2], vec![2, 3]]);
        let past = format!(
            "{} skip past last emit \"m\"",
            rule("a: emitted \"x\" followed by b: emitted \"x\"").trim_end_matches(" emit \"m\"")
        );
        assert_eq!(run(&past, &events, 0), [vec![1, 2]]);
    }

    #[test]
    fn reluctant_and_greedy_quantifiers() {
        let events = script("a y y y w");
        let reluctant = rule("s: emitted \"a\" then t: emitted \"y\" +");
        assert_eq!(run(&reluctant, &events, 0), [vec![1, 2]]);
        let greedy = rule("s: emitted \"a\" then t: emitted \"y\" + greedy");
        assert_eq!(run(&greedy, &events, 0), [vec![1, 2, 3, 4]]);
        let bounded = rule("s: emitted \"a\" then t: emitted \"y\" {2,3} greedy");
        assert_eq!(run(&bounded, &events, 0), [vec![1, 2, 3, 4]]);
        let exactly = rule("s: emitted \"a\" then t: emitted \"y\" {2}");
        assert_eq!(run(&exactly, &events, 0), [vec![1, 2, 3]]);
        // A reluctant step in the middle hands the next event on as soon
        // as it can; a greedy one keeps what it can take.
        let middle = script("a y y z");
        let reluctant = rule("s: emitted \"a\" followed by t: any + followed by u: emitted \"z\"");
        assert_eq!(run(&reluctant, &middle, 0), [vec![1, 2, 4]]);
        let greedy =
            rule("s: emitted \"a\" followed by t: any + greedy followed by u: emitted \"z\"");
        assert_eq!(run(&greedy, &middle, 0), [vec![1, 2, 3, 4]]);
    }

    #[test]
    fn iterative_conditions_compare_with_earlier_steps() {
        let events = script("hit=10 hit=12 hit=7 hit=3");
        let falling = rule("a: emitted \"hit\" followed by b: emitted \"hit\" where b.hp < a.hp");
        // 10 → 7, 12 → 7, and 7 → 3.
        assert_eq!(
            run(&falling, &events, 0),
            [vec![1, 3], vec![2, 3], vec![3, 4]]
        );
    }

    #[test]
    fn partitions_match_on_their_own() {
        let events = script("a:1 a:2 b:2 b:1");
        let text =
            "rule r partition by player pattern x: emitted \"a\" then y: emitted \"b\" emit \"m\"";
        // Strict within each player's own events.
        assert_eq!(run(text, &events, 0), [vec![2, 3], vec![1, 4]]);
        assert_eq!(
            run(&rule("x: emitted \"a\" then y: emitted \"b\""), &events, 0),
            [vec![2, 3]]
        );
    }

    #[test]
    fn absence_fires_when_log_time_passes_within() {
        let text = "rule r pattern a: emitted \"spot\" not followed by b: emitted \"reply\" within 10s emit \"m\"";
        let rule = parse(text).unwrap();
        let matcher = PatternMatcher::new(&rule).unwrap();
        let mut state = PatternState::default();
        let spot = &script("spot")[0];
        assert!(matcher.add(&mut state, spot).is_empty());
        assert_eq!(matcher.next_deadline(&state), Some(11_001));
        // At the deadline exactly nothing has passed yet; just after, it fires.
        assert!(matcher.advance(&mut state, 11_000).is_empty());
        let fired = matcher.advance(&mut state, 11_001);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].events, [spot.cursor()]);
        assert_eq!(state.runs(), 0);
        // A reply in time: no match.
        assert!(run(text, &script("spot other reply"), 60_000).is_empty());
        assert_eq!(run(text, &script("spot other"), 60_000), [vec![1]]);
    }

    #[test]
    fn negation_between_steps() {
        let not_then =
            rule("a: emitted \"a\" not then n: emitted \"n\" followed by b: emitted \"b\"");
        assert_eq!(run(&not_then, &script("a n b"), 0), Vec::<Vec<u64>>::new());
        assert_eq!(run(&not_then, &script("a x n b"), 0), [vec![1, 4]]);
        let not_followed =
            rule("a: emitted \"a\" not followed by n: emitted \"n\" followed by b: emitted \"b\"");
        assert!(run(&not_followed, &script("a x n b"), 0).is_empty());
        assert_eq!(run(&not_followed, &script("a x b n"), 0), [vec![1, 3]]);
    }

    #[test]
    fn within_bounds_a_match() {
        let text =
            "rule r pattern a: emitted \"a\" followed by b: emitted \"b\" within 2s emit \"m\"";
        // b at 3 s is within 2 s of a at 1 s; at 4 s it is not.
        assert_eq!(run(text, &script("a x b"), 0), [vec![1, 3]]);
        assert!(run(text, &script("a x x b"), 0).is_empty());
    }

    #[test]
    fn partial_matches_are_bounded_and_counted() {
        let text = rule("a: any followed by b: emitted \"never\"");
        let rule = parse(&text).unwrap();
        let matcher = PatternMatcher::new(&rule).unwrap();
        let mut state = PatternState::default();
        let events = script(&"x ".repeat(MAX_RUNS_PER_PARTITION + 7));
        for e in &events {
            matcher.add(&mut state, e);
        }
        assert_eq!(state.runs(), MAX_RUNS_PER_PARTITION);
        assert_eq!(state.dropped, 7);
    }

    #[test]
    fn a_restored_state_goes_on_as_the_original() {
        let text = "rule r partition by player pattern a: emitted \"a\" followed by any b: emitted \"b\" + greedy within 5s emit \"m\" { n = count(b) }";
        let rule = parse(text).unwrap();
        let matcher = PatternMatcher::new(&rule).unwrap();
        let events = script("a:1 b:1 a:2 b:2 b:1 c:1 b:2 a:1 b:1 c:2 b:1 b:1 c:1");
        let (mut whole, mut part) = (PatternState::default(), PatternState::default());
        let mut expected = Vec::new();
        for e in &events {
            expected.extend(matcher.add(&mut whole, e));
        }
        let mut got = Vec::new();
        for e in &events[..6] {
            got.extend(matcher.add(&mut part, e));
        }
        let bytes = garrison_raft::codec::encode(&part);
        let mut restored: PatternState = garrison_raft::codec::decode(&bytes).unwrap();
        for e in &events[6..] {
            got.extend(matcher.add(&mut restored, e));
        }
        assert_eq!(got, expected);
        assert_eq!(restored, whole);
        assert!(!expected.is_empty());
        assert!(expected
            .iter()
            .all(|m| matches!(m.fields[0].1, Value::Int(n) if n >= 1)));
    }

    mod against_a_reference {
        use super::*;
        use proptest::prelude::*;

        /// The matches of `x: emitted "a" JOIN y: emitted "b" [within W]`
        /// (no skip), computed plainly from the definitions: each `a`
        /// starts a match; `then` pairs it with the very next event if that
        /// is a `b`; `followed by` with the first later `b`; `followed by
        /// any` with every later `b`; all within `w` seconds if given.
        fn reference(kinds: &[char], join: &str, w: Option<u64>) -> Vec<Vec<u64>> {
            let mut out = Vec::new();
            let near = |i: usize, j: usize| w.is_none_or(|w| (j - i) as u64 <= w);
            // Matches complete in order of their last event, then of age.
            for j in 0..kinds.len() {
                for i in 0..j {
                    if kinds[i] != 'a' || kinds[j] != 'b' || !near(i, j) {
                        continue;
                    }
                    let first_b = (i + 1..kinds.len()).find(|k| kinds[*k] == 'b');
                    let pair = match join {
                        "then" => j == i + 1,
                        "followed by" => first_b == Some(j),
                        _ => true,
                    };
                    if pair {
                        out.push(vec![i as u64 + 1, j as u64 + 1]);
                    }
                }
            }
            out
        }

        proptest! {
            #[test]
            fn two_step_patterns_match_as_the_definitions_say(
                kinds in prop::collection::vec(prop::sample::select(vec!['a', 'b', 'c']), 0..24),
                join in prop::sample::select(vec!["then", "followed by", "followed by any"]),
                within in prop::option::of(1u64..6),
            ) {
                let text: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
                let events = script(&text.join(" "));
                let within_clause = within.map_or(String::new(), |w| format!(" within {w}s"));
                let rule = format!(
                    "rule r pattern x: emitted \"a\" {join} y: emitted \"b\"{within_clause} emit \"m\""
                );
                prop_assert_eq!(run(&rule, &events, 0), reference(&kinds, join, within));
            }
        }
    }
}
