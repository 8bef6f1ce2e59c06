//! ComplexEventProcessor: pattern rules over a location's event stream,
//! evaluated on log time, the same on every replica.
//!
//! # What a rule is
//!
//! A rule is a short text (`docs/cep.md` has its grammar, every operator
//! and examples). It is either a *pattern*: a sequence of steps, each
//! matching one event or a quantified run of them, joined by strict
//! contiguity (`then`), relaxed contiguity (`followed by`, `followed by
//! any`) or negation (`not then`, `not followed by`), within a span of
//! log time, partitioned by a key, with an after-match skip strategy; or
//! an *aggregate*: count, sum, min, max and average of the events that
//! match one step, over tumbling or sliding windows of log time, grouped
//! by a key, with a `having` condition. Either way a match is emitted as a
//! derived event whose fields the rule computes.
//!
//! # Why it can be replicated
//!
//! Everything a rule reads comes from applied entries: the events, their
//! log times, their field values. Arithmetic is on 64-bit integers with
//! overflow an evaluation error, never a wrap or a float. So a rule's
//! matches are a function of the log, and every replica that applies the
//! same entries computes the same matches at the same indexes.
//!
//! # What is here so far
//!
//! - [`lang`]: the rule language: lexing, parsing with errors that name
//!   the line and column, the checks a rule must pass before it is
//!   deployed, its limits, and its canonical text, which is what a deploy
//!   stores.
//! - [`eval`]: what a step matches, an event's attributes and partition,
//!   and the value of an expression: checked integer arithmetic, no
//!   mixing of types, an error for whatever has no value.
//! - [`window`]: aggregate rules: tumbling and sliding windows of log
//!   time, groups, `having`, judged when log time passes a window's end;
//!   their bounded state and the deadline a tick must reach.
//! - [`pattern`]: pattern rules: partial matches through steps,
//!   contiguity, quantifiers, negation and absence, `within`, partitions
//!   and skip strategies, with bounded state.
//!
//! Running rules in apply, their deployment through the log, ticks for
//! deadlines in idle locations, derived events, the CLI and the golden
//! scripts of every operator are the rest of this component (issue 15);
//! they build on the checked rules [`lang::parse`] returns and on the two
//! engines here, whose states are plain data for snapshots.

pub mod engine;
pub mod eval;
pub mod lang;
pub mod pattern;
pub mod script;
pub mod ticks;
pub mod window;
