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
//! # What is here so far
//!
//! - [`runtime`]: the engine configuration (and its fingerprint, which a
//!   node will record and compare before it applies plugin entries), the
//!   validation of a module at deploy (imports, memory, exports), and the
//!   run of one event with its fuel and memory bounds, giving either the
//!   plugin's requests or the kind of failure.
//!
//! Deployment through the log, subscriptions, failure records in the
//! state, suspension after repeated failures, reads of entities, proposed
//! transactions and the `garrison plugin` command line are the rest of
//! this component (issue 16).

pub mod runtime;
