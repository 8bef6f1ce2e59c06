//! garrison: the authoritative, replicated state store of a persistent-world
//! wargame.
//!
//! # Layout
//!
//! - [`raft`] (the `garrison-raft` crate): many Raft groups per node on
//!   openraft, sled and tarpc; the only place that knows openraft.
//! - `garrison-client`: transactions, signing, the client API and the Rust
//!   client; the only place that touches ed25519.
//! - [`state`] (DistributedGameState): a location's entities and the rules
//!   of each operation ([`state::fragment`]); the location group's app
//!   ([`state::location`]).
//! - [`security`] (AccessControlManager, TransactionAuthenticator): roles
//!   and the access check, administrative transactions, policy propagation,
//!   sequence numbers, the audit trail, session tokens.
//! - [`events`] (EventManager): events from the applied log, their
//!   retention, named consumers, observers inside the node, event reads.
//! - [`cep`] (ComplexEventProcessor): pattern and aggregate rules over
//!   the event stream on log time, deployed through the log, run in apply,
//!   their matches derived events.
//! - [`plugins`] (PluginManager): WebAssembly plugins on wasmtime,
//!   deployed through the log, run in apply on committed events,
//!   deterministic and bounded; their transactions applied in the entry.
//! - [`cache`] (CacheManager): the entity cache for reads, kept current by
//!   apply.
//! - [`api`]: the client API a node serves: ingress checks, routing, reads;
//!   rate limits and timeouts of the client port.
//! - [`server`]: one garrison node: configuration, start, shutdown.
//! - [`logging`]: the binary's log, and the per-group noise it leaves out.
//! - [`cli`]: the `garrison` command line.
//!
//! RedundantGameState (replicas, failover, hash-chain checks) is the
//! `garrison-raft` crate.

pub use garrison_raft as raft;

pub mod api;
pub mod cache;
pub mod cep;
pub mod cli;
pub mod events;
pub mod logging;
pub mod plugins;
pub mod security;
pub mod server;
pub mod state;
