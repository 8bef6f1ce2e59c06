//! Rules in apply: a location's deployed rules, their replicated state,
//! and what one log entry does to them.
//!
//! A location holds a [`CepState`] in its replicated state: the rule set
//! version it took last (rule sets reach its log as entries, like the
//! access policy), and for each deployed rule that applies to it, the
//! rule's canonical text and version, its partial matches or open windows,
//! and how many matches it made. A rule binds from the index of the entry
//! that brought it: it sees exactly the events after that entry. A new
//! version of a rule starts from empty state; a rule whose version did not
//! change keeps its state across rule set entries.
//!
//! Each entry, in apply ([`CepState::entry`]):
//!
//! 1. log time advances to the entry's: every rule judges what that
//!    passes (a window's end, a `within` that an absence waited for);
//! 2. the entry's events, in order, are offered to every rule, in name
//!    order;
//! 3. each match becomes an [`EventBody::Matched`] appended to the entry's
//!    events, and is itself offered to the rules when its turn comes, so
//!    that a rule can match another's matches. A match's `depth` counts the
//!    generations within the entry; one of depth [`MAX_CHAIN_DEPTH`] is
//!    kept but offered to no rule, which bounds chains (and a rule that
//!    matches its own matches).
//!
//! At most [`MAX_MATCHES_PER_ENTRY`] matches are kept per entry (later
//! ones are counted in [`CepState::dropped_matches`]), and the rules of a
//! location share [`MAX_PARTIAL_STATE_PER_LOCATION`] partial matches and
//! open window groups equally. A condition that fails to evaluate is false;
//! nothing a rule does stops apply.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use garrison_client::events::{EventBody, LocationEvent};
use garrison_client::rules::RuleSet;
use garrison_client::tx::PlayerKey;
use serde::{Deserialize, Serialize};

use crate::cep::lang::{parse, Body, Rule};
use crate::cep::pattern::{PatternMatcher, PatternState};
use crate::cep::window::{Aggregator, WindowState};

/// Generations of matches within one entry: a match this deep is kept but
/// offered to no rule.
pub const MAX_CHAIN_DEPTH: u8 = 4;
/// Most matches one entry keeps.
pub const MAX_MATCHES_PER_ENTRY: usize = 256;
/// Partial matches and open window groups that all the rules of one
/// location may hold together; each rule gets an equal share.
pub const MAX_PARTIAL_STATE_PER_LOCATION: usize = 100_000;

/// A rule's engine state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleState {
    /// A pattern rule's partial matches.
    Pattern(PatternState),
    /// An aggregate rule's open windows.
    Window(WindowState),
}

/// The rule compiled from a [`RuleRun`]'s text, with what its engine
/// would otherwise work out at each event: derived data, not part of the
/// replicated state (equal whatever it holds).
#[derive(Clone, Default)]
struct Compiled(Option<Arc<Prepared>>);

struct Prepared {
    rule: Rule,
    /// An aggregate's attributes ([`Aggregator::attrs_of`]).
    attrs: Vec<crate::cep::lang::Attr>,
}

impl Compiled {
    fn of(rule: Rule) -> Self {
        let attrs = Aggregator::attrs_of(&rule);
        Compiled(Some(Arc::new(Prepared { rule, attrs })))
    }
}

impl PartialEq for Compiled {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Compiled {}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Compiled")
    }
}

/// One deployed rule in one location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRun {
    /// Its version (the meta index of its deploy).
    pub version: u64,
    /// Its canonical text.
    pub text: String,
    /// Its partial matches or open windows.
    pub state: RuleState,
    /// Matches it made here.
    pub matches: u64,
    #[serde(skip)]
    compiled: Compiled,
}

impl RuleRun {
    /// The rule, if its text parses (a deployed rule's always does on a
    /// node of the version that checked it).
    pub fn rule(&self) -> Option<&Rule> {
        self.compiled.0.as_deref().map(|p| &p.rule)
    }

    /// Partial matches (pattern) or open window groups (aggregate) held.
    pub fn pending(&self) -> usize {
        match &self.state {
            RuleState::Pattern(s) => s.runs(),
            RuleState::Window(s) => s.open_groups(),
        }
    }

    /// Partial matches or window events dropped at a limit.
    pub fn dropped(&self) -> u64 {
        match &self.state {
            RuleState::Pattern(s) => s.dropped,
            RuleState::Window(s) => s.dropped,
        }
    }

    /// The log time at which something is due (see [`CepState::next_deadline`]).
    fn next_deadline(&self) -> Option<u64> {
        let prepared = self.compiled.0.as_deref()?;
        let rule = &prepared.rule;
        match &self.state {
            RuleState::Pattern(s) => PatternMatcher::new(rule)?.next_deadline(s),
            RuleState::Window(s) => Aggregator::with_attrs(rule, &prepared.attrs)?.next_deadline(s),
        }
    }

    /// Log time reaches `now_ms` (`event`: `None`), or `event` comes;
    /// returns the bodies of the matches, at depth `depth`.
    fn step(
        &mut self,
        name: &str,
        now_ms: u64,
        event: Option<&LocationEvent>,
        share: usize,
        depth: u8,
    ) -> Vec<EventBody> {
        let Some(prepared) = self.compiled.0.clone() else {
            return Vec::new();
        };
        let rule = &prepared.rule;
        let matched = |events, window, fields| EventBody::Matched {
            rule: name.to_string(),
            version: self.version,
            kind: rule.emit.kind.clone(),
            events,
            window,
            fields,
            depth,
        };
        let out: Vec<EventBody> = match &mut self.state {
            RuleState::Pattern(state) => {
                let Some(matcher) = PatternMatcher::new(rule) else {
                    return Vec::new();
                };
                let matcher = matcher.with_max_runs(share);
                // `entry` has advanced every rule to the entry's log time
                // before it offers the events.
                let found = match event {
                    Some(e) => matcher.offer_event(state, e),
                    None => matcher.advance(state, now_ms),
                };
                found
                    .into_iter()
                    .map(|m| matched(m.events, None, m.fields))
                    .collect()
            }
            RuleState::Window(state) => {
                let Some(agg) = Aggregator::with_attrs(rule, &prepared.attrs) else {
                    return Vec::new();
                };
                let agg = agg.with_max_groups(share);
                let found = match event {
                    Some(e) => {
                        agg.offer_event(state, e);
                        Vec::new()
                    }
                    None => agg.advance(state, now_ms),
                };
                found
                    .into_iter()
                    .map(|m| matched(Vec::new(), Some((m.start_ms, m.end_ms)), m.fields))
                    .collect()
            }
        };
        self.matches += out.len() as u64;
        out
    }
}

/// The complex event processor's part of a location's replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CepState {
    /// The version of the last rule set taken (0: none yet).
    pub version: u64,
    /// The deployed rules that apply here, by name.
    pub rules: BTreeMap<String, RuleRun>,
    /// Matches not kept because their entry had [`MAX_MATCHES_PER_ENTRY`].
    pub dropped_matches: u64,
}

impl CepState {
    /// Takes the rule set `set` if it is newer than the last one taken,
    /// keeping the rules that apply to `location`; returns whether it did.
    pub fn set_rules(&mut self, set: &RuleSet, location: &str) -> bool {
        if set.version <= self.version {
            return false;
        }
        self.version = set.version;
        let mut next = BTreeMap::new();
        for (name, deployed) in &set.rules {
            if let Some(run) = self.rules.remove(name) {
                if run.version == deployed.version {
                    next.insert(name.clone(), run);
                    continue;
                }
            }
            // A deployed rule was checked when it was deployed; one this
            // node cannot parse (another garrison version) is left out.
            let Ok(rule) = parse(&deployed.text) else {
                tracing::warn!(rule = %name, "a deployed rule does not parse here; skipped");
                continue;
            };
            if !(rule.locations.is_empty() || rule.locations.iter().any(|l| l == location)) {
                continue;
            }
            let state = match rule.body {
                Body::Pattern { .. } => RuleState::Pattern(PatternState::default()),
                Body::Aggregate { .. } => RuleState::Window(WindowState::default()),
            };
            next.insert(
                name.clone(),
                RuleRun {
                    version: deployed.version,
                    text: deployed.text.clone(),
                    state,
                    matches: 0,
                    compiled: Compiled::of(rule),
                },
            );
        }
        self.rules = next;
        true
    }

    /// Compiles the rules' texts again (after a snapshot is restored).
    pub fn compile(&mut self) {
        for run in self.rules.values_mut() {
            run.compiled = parse(&run.text).map_or(Compiled(None), Compiled::of);
        }
    }

    /// The earliest log time at which a rule has something to judge (a
    /// window closes, a `within` passes): the time a tick must reach if no
    /// entry comes first. `None`: nothing is pending.
    pub fn next_deadline(&self) -> Option<u64> {
        self.rules.values().filter_map(RuleRun::next_deadline).min()
    }

    /// Runs the rules over the entry at `index` and `log_time_ms`, signed
    /// by `player`, whose events are `events`: appends the matches to
    /// `events` (see the module's documentation); returns how many.
    pub fn entry(
        &mut self,
        index: u64,
        log_time_ms: u64,
        player: Option<PlayerKey>,
        events: &mut Vec<EventBody>,
    ) -> usize {
        if self.rules.is_empty() {
            return 0;
        }
        let share = MAX_PARTIAL_STATE_PER_LOCATION / self.rules.len();
        let own = events.len();
        let keep = |events: &mut Vec<EventBody>, found: Vec<EventBody>, dropped: &mut u64| {
            for body in found {
                if events.len() - own < MAX_MATCHES_PER_ENTRY {
                    events.push(body);
                } else {
                    *dropped += 1;
                }
            }
        };
        for (name, run) in self.rules.iter_mut() {
            let found = run.step(name, log_time_ms, None, share, 1);
            keep(events, found, &mut self.dropped_matches);
        }
        let mut at = 0;
        while at < events.len() {
            let depth = match &events[at] {
                EventBody::Matched { depth, .. } => *depth,
                _ => 0,
            };
            if depth < MAX_CHAIN_DEPTH {
                // The body is moved out for the rules to see, and back.
                let body = std::mem::replace(&mut events[at], EventBody::Committed { sequence: 0 });
                let event = LocationEvent {
                    index,
                    position: at as u32,
                    log_time_ms,
                    player,
                    body,
                };
                for (name, run) in self.rules.iter_mut() {
                    let found = run.step(name, log_time_ms, Some(&event), share, depth + 1);
                    keep(events, found, &mut self.dropped_matches);
                }
                events[at] = event.body;
            }
            at += 1;
        }
        events.len() - own
    }
}

#[cfg(test)]
mod tests {
    use garrison_client::events::Cursor;
    use garrison_client::rules::DeployedRule;
    use garrison_client::Value;

    use super::*;

    fn set(version: u64, rules: &[(&str, u64, &str)]) -> RuleSet {
        RuleSet {
            version,
            rules: rules
                .iter()
                .map(|(name, v, text)| {
                    let canonical = parse(text).unwrap().to_string();
                    (
                        name.to_string(),
                        DeployedRule {
                            version: *v,
                            text: canonical,
                        },
                    )
                })
                .collect(),
        }
    }

    fn emitted(kind: &str, fields: &[(&str, i64)]) -> EventBody {
        EventBody::Emitted {
            kind: kind.into(),
            fields: fields
                .iter()
                .map(|(k, v)| (k.to_string(), Value::Int(*v)))
                .collect(),
        }
    }

    const PAIR: &str =
        "rule pair pattern a: emitted \"hit\" followed by b: emitted \"hit\" emit \"pair\"";
    const QUIET: &str = "rule quiet pattern a: emitted \"alarm\" not followed by b: emitted \"ack\" within 1s emit \"unanswered\"";

    #[test]
    fn a_rule_binds_from_its_entry_and_keeps_state_across_unrelated_changes() {
        let mut cep = CepState::default();
        let mut events = vec![emitted("hit", &[])];
        assert_eq!(cep.entry(1, 0, None, &mut events), 0, "no rules yet");
        assert!(cep.set_rules(&set(5, &[("pair", 5, PAIR)]), "hill"));
        assert!(!cep.set_rules(&set(5, &[]), "hill"), "not newer");
        let mut events = vec![emitted("hit", &[])];
        assert_eq!(
            cep.entry(6, 10, None, &mut events),
            0,
            "the hit before does not count"
        );
        // Another rule is deployed: pair keeps its partial match.
        let two = set(7, &[("pair", 5, PAIR), ("quiet", 7, QUIET)]);
        assert!(cep.set_rules(&two, "hill"));
        assert_eq!(cep.rules["pair"].pending(), 1);
        let mut events = vec![emitted("hit", &[])];
        assert_eq!(cep.entry(8, 20, None, &mut events), 1);
        let EventBody::Matched {
            rule,
            version,
            kind,
            events: took,
            depth,
            ..
        } = &events[1]
        else {
            panic!("{:?}", events[1])
        };
        assert_eq!(
            (rule.as_str(), *version, kind.as_str(), *depth),
            ("pair", 5, "pair", 1)
        );
        assert_eq!(
            took,
            &vec![
                Cursor {
                    index: 6,
                    position: 0
                },
                Cursor {
                    index: 8,
                    position: 0
                }
            ]
        );
        // A new version starts empty.
        let mut events = vec![emitted("hit", &[])];
        cep.entry(9, 30, None, &mut events);
        assert_eq!(cep.rules["pair"].pending(), 1);
        cep.set_rules(&set(10, &[("pair", 10, PAIR)]), "hill");
        assert_eq!(cep.rules["pair"].pending(), 0);
        assert!(!cep.rules.contains_key("quiet"), "removed");
    }

    #[test]
    fn rules_for_other_locations_are_left_out() {
        let north = "rule n on \"north\" pattern a: any emit \"k\"";
        let mut cep = CepState::default();
        cep.set_rules(&set(3, &[("n", 3, north), ("pair", 3, PAIR)]), "south");
        assert_eq!(cep.rules.keys().collect::<Vec<_>>(), vec!["pair"]);
    }

    #[test]
    fn an_absence_fires_when_log_time_passes_its_deadline() {
        let mut cep = CepState::default();
        cep.set_rules(&set(2, &[("quiet", 2, QUIET)]), "hill");
        let mut events = vec![emitted("alarm", &[])];
        cep.entry(3, 1_000, None, &mut events);
        assert_eq!(cep.next_deadline(), Some(2_001));
        let mut tick = Vec::new();
        assert_eq!(cep.entry(4, 2_000, None, &mut tick), 0, "not yet");
        assert_eq!(cep.entry(5, 2_001, None, &mut tick), 1);
        assert!(matches!(&tick[0], EventBody::Matched { kind, .. } if kind == "unanswered"));
        assert_eq!(cep.next_deadline(), None);
    }

    #[test]
    fn chains_are_matched_and_bounded() {
        // Every match of `echo` is matched by `echo` again: only the depth
        // bound ends it.
        let echo = "rule echo pattern a: matched \"*\" emit \"again\"";
        let start = "rule start pattern a: emitted \"go\" emit \"went\"";
        let mut cep = CepState::default();
        cep.set_rules(&set(2, &[("echo", 2, echo), ("start", 2, start)]), "hill");
        let mut events = vec![emitted("go", &[])];
        let found = cep.entry(3, 0, None, &mut events);
        assert_eq!(found, MAX_CHAIN_DEPTH as usize);
        let depths: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                EventBody::Matched { depth, .. } => Some(*depth),
                _ => None,
            })
            .collect();
        assert_eq!(depths, (1..=MAX_CHAIN_DEPTH).collect::<Vec<_>>());
    }

    #[test]
    fn an_entry_keeps_at_most_its_share_of_matches() {
        let each = "rule each pattern a: any emit \"seen\"";
        let mut cep = CepState::default();
        cep.set_rules(&set(2, &[("each", 2, each)]), "hill");
        let mut events: Vec<EventBody> = (0..MAX_MATCHES_PER_ENTRY + 10)
            .map(|_| emitted("x", &[]))
            .collect();
        // Each event matches, and each match matches again, up to the depth.
        let found = cep.entry(3, 0, None, &mut events);
        assert_eq!(found, MAX_MATCHES_PER_ENTRY);
        assert!(cep.dropped_matches > 0);
    }

    #[test]
    fn the_state_survives_a_snapshot() {
        let mut cep = CepState::default();
        cep.set_rules(&set(2, &[("pair", 2, PAIR)]), "hill");
        let mut events = vec![emitted("hit", &[])];
        cep.entry(3, 0, None, &mut events);
        let bytes = garrison_raft::codec::encode(&cep);
        let mut back: CepState = garrison_raft::codec::decode(&bytes).unwrap();
        assert!(
            back.rules["pair"].rule().is_none(),
            "compiled after restore only"
        );
        back.compile();
        assert_eq!(back, cep);
        let mut a = vec![emitted("hit", &[])];
        let mut b = a.clone();
        cep.entry(4, 1, None, &mut a);
        back.entry(4, 1, None, &mut b);
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
    }
}
