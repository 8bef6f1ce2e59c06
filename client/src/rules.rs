//! The rules of the complex event processor as the cluster holds them: a
//! [`RuleSet`] that administrative transactions change in the meta group
//! and that every location's log receives whole, like the access policy.
//!
//! A rule here is its canonical text (the server's rule language, see
//! `docs/cep.md`) and the meta index that deployed this version of it.
//! The client never parses rule text; the server does, at deploy and in
//! apply.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Most bytes of one rule's text (it travels in one signed transaction,
/// whose limit is [`crate::tx::MAX_TRANSACTION_BYTES`]).
pub const MAX_RULE_TEXT_BYTES: usize = 8 * 1024;
/// Most bytes of a rule's name.
pub const MAX_RULE_NAME_BYTES: usize = 64;
/// Most rules a cluster holds; each location runs those that name it, or
/// that name no location.
pub const MAX_RULES: usize = 128;
/// Largest rule set, encoded: it travels whole in one entry of every
/// location's log, like the policy (a node refuses to start with a
/// smaller `max_proposal_bytes`).
pub const MAX_RULE_SET_BYTES: usize = 48 * 1024;

/// One deployed rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedRule {
    /// The meta log index of the deploy that made this version.
    pub version: u64,
    /// Its canonical text.
    pub text: String,
}

/// Every deployed rule, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleSet {
    /// The meta log index of the last change (0: none yet).
    pub version: u64,
    /// The rules, by name.
    pub rules: BTreeMap<String, DeployedRule>,
}

/// One rule's work in one location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStatus {
    /// The rule's name.
    pub name: String,
    /// The version running there.
    pub version: u64,
    /// Partial matches (a pattern) or open window groups (an aggregate)
    /// held.
    pub pending: u64,
    /// Matches made there.
    pub matches: u64,
    /// Partial matches or window events dropped at a limit.
    pub dropped: u64,
}

/// The rules at work in one location, as of a log index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationRules {
    /// The log index this reflects.
    pub index: u64,
    /// The version of the rule set the location took last.
    pub version: u64,
    /// The deployed rules that apply there, by name.
    pub rules: Vec<RuleStatus>,
    /// Matches not kept because their entry had the most an entry keeps.
    pub dropped_matches: u64,
    /// The log time at which a rule next has something to judge (the
    /// leader proposes a tick if no entry comes by then).
    pub next_deadline_ms: Option<u64>,
}
