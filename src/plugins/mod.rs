//! PluginManager: WebAssembly plugins that react to a location's
//! committed events, run by `wasmtime` the same way on every replica.
//!
//! # What a plugin is
//!
//! A plugin is a WebAssembly module (written in WAT, AssemblyScript or C)
//! that exports a memory, an allocator and an event handler, and imports
//! only the host API of module `garrison` (`docs/plugins.md` is the ABI).
//! For each event it subscribes to, the host makes a fresh instance, copies
//! the event into its memory and calls the handler; what the plugin asks
//! for through the host API (a derived event, a log line) is collected and
//! takes effect only if the call returns normally.
//!
//! # Why every replica gets the same result
//!
//! Nothing a plugin can observe depends on the node: the instance is new
//! for every event (no state survives from one event to the next, so a
//! replica that restarted, or installed a snapshot, runs it exactly as one
//! that never stopped); there is no clock, no randomness and no I/O to
//! import; floating-point NaNs are canonicalized and relaxed SIMD, threads
//! and shared memory are refused. Work is bounded by fuel, which counts
//! instructions and host calls alike, so an infinite loop stops at the
//! same instruction everywhere; memory is bounded by a cap. A node may
//! also protect itself with wall-clock watchdogs, but those never decide a
//! replicated outcome: only fuel and the cap do.
//!
//! # How it fits
//!
//! - [`runtime`]: the engine configuration (and its fingerprint), the
//!   validation of a module at deploy (imports, memory, exports), and the
//!   run of one event under fuel and a memory cap, with the host API
//!   (`emit`, `log`, `read`, `propose`).
//! - [`state`]: what a location keeps of its plugins in its replicated
//!   state (modules, bind index, runs, failures, suspension) and the
//!   refusal of a node whose engine differs.
//! - [`host`]: the node's host: compiled modules, node-local log lines,
//!   and the run of a location's plugins over one applied entry, their
//!   transactions applied in that entry.
//! - [`outbox`]: transactions for other locations, kept in the source's
//!   replicated outbox and delivered once per key by its leader.
//!
//! Deploys are administrative transactions ([`crate::security::admin`]);
//! the plugin set reaches each location's log like the policy
//! ([`crate::security::propagate`]). `runtime` and `host` need the
//! `plugins` feature (wasmtime); a node built without it refuses to apply
//! the entries of a location where plugins run.

#[cfg(feature = "plugins")]
pub mod host;
pub mod outbox;
#[cfg(feature = "plugins")]
pub mod runtime;
pub mod state;
#[cfg(all(test, feature = "plugins"))]
mod tests;

use garrison_client::plugins::PluginLogLine;

/// What the client API needs of the node's plugin host: module validation
/// at ingress and the node-local log lines. Empty on a node built without
/// the `plugins` feature, which validates nothing and keeps no lines.
#[derive(Clone, Default)]
pub struct NodePlugins {
    #[cfg(feature = "plugins")]
    host: Option<std::sync::Arc<host::PluginHost>>,
}

impl NodePlugins {
    /// The API's view of `host`.
    #[cfg(feature = "plugins")]
    pub fn new(host: std::sync::Arc<host::PluginHost>) -> Self {
        Self { host: Some(host) }
    }

    /// Validates a module to deploy; the fingerprint of the engine that
    /// did, or why the module (or this node) cannot run it.
    pub fn validate(&self, module: &[u8]) -> Result<String, String> {
        #[cfg(feature = "plugins")]
        if let Some(host) = &self.host {
            host.validate(module).map_err(|e| e.to_string())?;
            return Ok(host.fingerprint().to_string());
        }
        let _ = module;
        Err("this node was built without the plugins feature: deploy through another node".into())
    }

    /// The log lines kept after `after`, of `plugin` if given, at most `max`.
    pub fn logs(&self, plugin: Option<&str>, after: u64, max: usize) -> Vec<PluginLogLine> {
        #[cfg(feature = "plugins")]
        if let Some(host) = &self.host {
            return host.logs(plugin, after, max).0;
        }
        let _ = (plugin, after, max);
        Vec::new()
    }
}
