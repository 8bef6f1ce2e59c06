//! garrison: the authoritative, replicated state store of a persistent-world
//! wargame.
//!
//! # Layout
//!
//! - [`raft`] (the `garrison-raft` crate): many Raft groups per node on
//!   openraft, sled and tarpc; the only place that knows openraft.
//! - `garrison-client`: transactions, signing, the client API and the Rust
//!   client; the only place that touches ed25519.
//! - [`state`]: a location's entities and the rules of each operation.
//! - [`access`]: roles, permissions and the access check (AccessControlManager).
//! - [`admin`]: the meta group's extension: the access policy's source of
//!   truth and administrative transactions.
//! - [`propagate`]: carries the policy into every location's log; bootstrap.
//! - [`sequence`]: per-player sequence numbers and remembered outcomes.
//! - [`audit`]: the audit trail of carried-out transactions.
//! - [`cache`]: the entity cache for reads, kept current by apply
//!   (CacheManager).
//! - [`location`]: the location group's app: sequence numbers, exactly-once
//!   outcomes, queries, snapshots.
//! - [`service`]: the client API a node serves: ingress checks, routing.
//! - [`session`]: login challenges, session tokens, the meta clock.
//! - [`limits`]: rate limits and timeouts of the client port.
//! - [`server`]: one garrison node: configuration, start, shutdown.
//! - [`logging`]: the binary's log, and the per-group noise it leaves out.
//! - [`cli`]: the `garrison` command line.

pub use garrison_raft as raft;

pub mod access;
pub mod admin;
pub mod audit;
pub mod cache;
pub mod cli;
pub mod limits;
pub mod location;
pub mod logging;
pub mod propagate;
pub mod sequence;
pub mod server;
pub mod service;
pub mod session;
pub mod state;
