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
//! - [`location`]: the location group's app: sequence numbers, exactly-once
//!   outcomes, queries, snapshots.
//! - [`service`]: the client API a node serves: ingress checks, routing.
//! - [`limits`]: rate limits and timeouts of the client port.
//! - [`server`]: one garrison node: configuration, start, shutdown.
//! - [`cli`]: the `garrison` command line.

pub use garrison_raft as raft;

pub mod cli;
pub mod limits;
pub mod location;
pub mod server;
pub mod service;
pub mod state;
