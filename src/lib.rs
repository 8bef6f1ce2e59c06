//! garrison: the authoritative, replicated state store of a persistent-world
//! wargame.
//!
//! # Layout
//!
//! - [`raft`] (the `garrison-raft` crate): many Raft groups per node on
//!   openraft, sled and tarpc; the only place that knows openraft.

pub use garrison_raft as raft;
