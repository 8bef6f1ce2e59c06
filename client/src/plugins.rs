//! The WebAssembly plugins as the cluster holds them: a [`PluginSet`] that
//! administrative transactions change in the meta group and that every
//! location's log receives whole, like the access policy and the rules.
//!
//! A plugin travels as a [`PluginSpec`]: its module (a WebAssembly binary;
//! the command line compiles WAT first), the module's SHA-256, the
//! locations and event kinds it subscribes to, the role its transactions
//! are checked against, its fuel per event and how many failures in a row
//! suspend it. The client checks only these static limits; the server
//! validates the module itself when it is deployed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::EventId;
use crate::tx::PlayerKey;

/// Largest module, in bytes: it travels in one signed transaction (whose
/// limit is [`crate::tx::MAX_TRANSACTION_BYTES`]) and in one entry of every
/// location's log it subscribes to.
pub const MAX_PLUGIN_MODULE_BYTES: usize = 12 * 1024;
/// Most bytes of a plugin's name.
pub const MAX_PLUGIN_NAME_BYTES: usize = 64;
/// Most plugins a cluster holds.
pub const MAX_PLUGINS: usize = 16;
/// Largest plugin set, encoded: it travels whole in one entry of every
/// location's log, like the policy.
pub const MAX_PLUGIN_SET_BYTES: usize = 48 * 1024;
/// Most locations a plugin may name (none: every location).
pub const MAX_PLUGIN_LOCATIONS: usize = 64;
/// Most subscriptions (event kind patterns) of one plugin.
pub const MAX_SUBSCRIPTIONS: usize = 16;
/// Longest subscription pattern, in bytes.
pub const MAX_SUBSCRIPTION_BYTES: usize = 64;
/// Fuel per event when the deploy names none.
pub const DEFAULT_PLUGIN_FUEL: u64 = 1_000_000;
/// Most fuel per event a deploy may give.
pub const MAX_PLUGIN_FUEL: u64 = 20_000_000;
/// Failures in a row that suspend a plugin, when the deploy names none.
pub const DEFAULT_SUSPEND_AFTER: u32 = 5;
/// Most failures in a row a deploy may allow before suspension.
pub const MAX_SUSPEND_AFTER: u32 = 1_000;

/// A plugin as a deploy carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSpec {
    /// Its name (a later deploy of the same name replaces it).
    pub name: String,
    /// The WebAssembly binary.
    pub module: Vec<u8>,
    /// SHA-256 of `module`; the server refuses a deploy whose hash differs.
    pub hash: [u8; 32],
    /// The locations it runs in (empty: every location).
    pub locations: Vec<String>,
    /// The event kinds it is called for, as patterns with `*` (empty:
    /// every event). An event's kind is its emitted kind for a game event,
    /// the rule's kind for a match, and otherwise its type's name
    /// (`created`, `changed`, `deleted`, `committed`, `rejected`).
    pub on: Vec<String>,
    /// The role its transactions are checked against (it holds no other).
    pub role: String,
    /// Fuel for each event.
    pub fuel: u64,
    /// Failures in a row that suspend it.
    pub suspend_after: u32,
}

impl PluginSpec {
    /// A spec for `module` under `name`, with its hash, every location and
    /// event, role `role`, and the default fuel and suspension.
    pub fn new(name: &str, module: Vec<u8>, role: &str) -> Self {
        Self {
            name: name.to_string(),
            hash: module_hash(&module),
            module,
            locations: Vec::new(),
            on: Vec::new(),
            role: role.to_string(),
            fuel: DEFAULT_PLUGIN_FUEL,
            suspend_after: DEFAULT_SUSPEND_AFTER,
        }
    }

    /// Checks the static limits; the error says which one is broken.
    pub fn check_limits(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= MAX_PLUGIN_NAME_BYTES
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !name_ok {
            return Err(format!(
                "a plugin's name is 1 to {MAX_PLUGIN_NAME_BYTES} letters, digits and _ - ."
            ));
        }
        match self.module.len() {
            0 => return Err("the module is empty".into()),
            n if n > MAX_PLUGIN_MODULE_BYTES => {
                return Err(format!(
                    "the module is {n} bytes; the limit is {MAX_PLUGIN_MODULE_BYTES}"
                ))
            }
            _ => {}
        }
        if module_hash(&self.module) != self.hash {
            return Err("the module's SHA-256 is not the hash the deploy names".into());
        }
        if self.locations.len() > MAX_PLUGIN_LOCATIONS {
            return Err(format!(
                "a plugin names at most {MAX_PLUGIN_LOCATIONS} locations, not {}",
                self.locations.len()
            ));
        }
        for l in &self.locations {
            if l.is_empty() || l.len() > crate::tx::MAX_NAME_BYTES {
                return Err(format!(
                    "location name {l:?} must be 1 to {} bytes",
                    crate::tx::MAX_NAME_BYTES
                ));
            }
        }
        if self.on.len() > MAX_SUBSCRIPTIONS {
            return Err(format!(
                "a plugin has at most {MAX_SUBSCRIPTIONS} subscriptions, not {}",
                self.on.len()
            ));
        }
        for s in &self.on {
            if s.is_empty() || s.len() > MAX_SUBSCRIPTION_BYTES {
                return Err(format!(
                    "subscription {s:?} must be 1 to {MAX_SUBSCRIPTION_BYTES} bytes"
                ));
            }
        }
        if self.role.is_empty() || self.role.len() > crate::policy::MAX_ROLE_NAME_BYTES {
            return Err(format!(
                "role name must be 1 to {} bytes",
                crate::policy::MAX_ROLE_NAME_BYTES
            ));
        }
        if self.fuel == 0 || self.fuel > MAX_PLUGIN_FUEL {
            return Err(format!(
                "fuel per event must be 1 to {MAX_PLUGIN_FUEL}, not {}",
                self.fuel
            ));
        }
        if self.suspend_after == 0 || self.suspend_after > MAX_SUSPEND_AFTER {
            return Err(format!(
                "suspend_after must be 1 to {MAX_SUSPEND_AFTER}, not {}",
                self.suspend_after
            ));
        }
        Ok(())
    }

    /// Does the plugin run in `location`?
    pub fn runs_in(&self, location: &str) -> bool {
        self.locations.is_empty() || self.locations.iter().any(|l| l == location)
    }

    /// Is the plugin called for an event of kind `kind`?
    pub fn subscribes(&self, kind: &str) -> bool {
        self.on.is_empty()
            || self
                .on
                .iter()
                .any(|p| crate::policy::pattern_matches(p, kind))
    }
}

/// SHA-256 of a module.
pub fn module_hash(module: &[u8]) -> [u8; 32] {
    Sha256::digest(module).into()
}

/// The player key a plugin acts under: SHA-256 of `garrison plugin ` and
/// its name. No private key exists for it, so nobody can sign as a plugin;
/// its transactions are checked against the role its deploy names.
pub fn plugin_identity(name: &str) -> PlayerKey {
    let mut h = Sha256::new();
    h.update(b"garrison plugin ");
    h.update(name.as_bytes());
    h.finalize().into()
}

/// One deployed plugin.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedPlugin {
    /// The meta log index of the deploy that made this version.
    pub version: u64,
    /// What the deploy carried.
    pub spec: PluginSpec,
}

/// Every deployed plugin, by name, and the engine that validated them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSet {
    /// The meta log index of the last change (0: none yet).
    pub version: u64,
    /// The fingerprint of the engine (wasmtime version and configuration)
    /// that validated the last deploy: a node whose engine differs refuses
    /// to apply a location's entries while plugins run there.
    pub engine: String,
    /// The plugins, by name.
    pub plugins: BTreeMap<String, DeployedPlugin>,
}

/// Why a plugin's call on one event failed (the same on every replica).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PluginFailure {
    /// It ran out of fuel, after this many units.
    OutOfFuel(u64),
    /// It trapped; wasmtime's text.
    Trap(String),
    /// It tried to grow its memory past the cap.
    MemoryCap,
    /// It asked for something malformed, or returned non-zero.
    BadOutput(String),
    /// Its transaction was refused: the operation and why.
    Refused {
        /// The operation's position.
        op: Option<u32>,
        /// Why.
        reason: crate::api::Rejection,
    },
}

impl std::fmt::Display for PluginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginFailure::OutOfFuel(n) => write!(f, "out of fuel after {n} units"),
            PluginFailure::Trap(t) => write!(f, "trapped: {t}"),
            PluginFailure::MemoryCap => write!(f, "memory cap reached"),
            PluginFailure::BadOutput(w) => write!(f, "bad output: {w}"),
            PluginFailure::Refused { op, reason } => match op {
                Some(op) => write!(f, "its transaction was refused at operation {op}: {reason}"),
                None => write!(f, "its transaction was refused: {reason}"),
            },
        }
    }
}

/// What a plugin did in one location: kept in the location's state, and
/// reported as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// Events it was called for.
    pub runs: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Failures since its last success.
    pub failures_in_a_row: u32,
    /// The log index at which it was suspended, if it was.
    pub suspended_at: Option<u64>,
    /// Its last failure: the event it was called for, and why.
    pub last_failure: Option<(EventId, PluginFailure)>,
    /// Fuel its calls used, in all.
    pub fuel_used: u64,
    /// Calls not made because their entry made the most calls an entry
    /// makes.
    pub skipped: u64,
}

/// One plugin's work in one location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// The version running there.
    pub version: u64,
    /// Its module's SHA-256.
    pub hash: [u8; 32],
    /// What it did there.
    pub record: PluginRecord,
}

/// The plugins at work in one location, as of a log index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationPlugins {
    /// The log index this reflects.
    pub index: u64,
    /// The version of the plugin set the location took last.
    pub version: u64,
    /// The engine fingerprint the set names.
    pub engine: String,
    /// The deployed plugins that run there, by name.
    pub plugins: Vec<PluginStatus>,
    /// Transactions for other locations waiting in its outbox.
    pub outbox: u64,
}

/// A plugin's log line, as a node kept it (node-local: lines are not part
/// of the replicated state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginLogLine {
    /// The node's sequence number of the line (for `--after`).
    pub seq: u64,
    /// The plugin.
    pub plugin: String,
    /// The event it was handling.
    pub event: EventId,
    /// The line, cut at the limit.
    pub line: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_name_what_is_wrong() {
        let ok = PluginSpec::new("depot", b"\0asm\x01\0\0\0".to_vec(), "plugin");
        assert_eq!(ok.check_limits(), Ok(()));
        let mut bad = ok.clone();
        bad.hash[0] ^= 1;
        assert!(bad.check_limits().unwrap_err().contains("SHA-256"));
        let big = PluginSpec::new("depot", vec![0; MAX_PLUGIN_MODULE_BYTES + 1], "plugin");
        assert!(big.check_limits().unwrap_err().contains("the limit is"));
        let mut fuel = ok.clone();
        fuel.fuel = MAX_PLUGIN_FUEL + 1;
        assert!(fuel.check_limits().unwrap_err().contains("fuel"));
        let named = PluginSpec::new("a b", b"x".to_vec(), "plugin");
        assert!(named.check_limits().unwrap_err().contains("name"));
    }

    #[test]
    fn subscriptions_are_kind_patterns() {
        let mut spec = PluginSpec::new("depot", b"x".to_vec(), "plugin");
        assert!(spec.subscribes("anything"));
        spec.on = vec!["resupply".into(), "unit_*".into()];
        assert!(spec.subscribes("resupply"));
        assert!(spec.subscribes("unit_lost"));
        assert!(!spec.subscribes("attack"));
        assert_ne!(plugin_identity("a"), plugin_identity("b"));
    }
}
