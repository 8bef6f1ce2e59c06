//! garrison's consensus core: many Raft groups per node, on openraft, sled and
//! tarpc.
//!
//! # Concepts
//!
//! A garrison cluster is a few nodes (three or five). The game's map is cut
//! into *locations*; each location's state is replicated by its own Raft
//! *group* on some of the nodes (three by default). Raft gives each group a
//! single leader that orders every change into a log; an entry is committed
//! once a majority of the group's replicas have it on disk, and every replica
//! then applies the committed entries, in log order, to its copy of the state.
//! A group survives the loss of any minority of its replicas: the others elect
//! a new leader and carry on.
//!
//! One special group, the *meta group* (id 0), runs on every node. It records
//! the cluster's membership and the *location directory*: which group holds a
//! location and which nodes replicate it. Creating a location is a write to
//! the meta group; every node watches the directory and opens or removes its
//! local replicas to match.
//!
//! # Which type does what
//!
//! | concept | type |
//! |---|---|
//! | a node and its groups (the registry) | [`Node`] |
//! | one group's Raft | [`typ::Raft`] (openraft), opened by [`Node`] |
//! | the log of a group, on disk | [`storage::LogStore`] |
//! | the state machine of a group | [`storage::StateMachineStore`] around a [`GroupApp`] |
//! | the application rules | [`GroupApp`], made by an [`AppFactory`] |
//! | the meta group's rules | [`meta::MetaApp`] |
//! | durability (group commit) | `storage::Flusher` |
//! | peer connections | [`network::PeerPool`], [`network::PeerListener`] |
//! | who a peer is (mutual TLS) | [`network::PeerTls`], made from [`network::TlsFiles`] |
//! | tunables and limits | [`RaftConfig`], [`NodeConfig`] |
//!
//! # Layout
//!
//! - [`typ`]: the openraft type configuration and aliases.
//! - [`config`]: node and Raft configuration, limits.
//! - [`codec`]: the one binary encoding (bincode 2) of stored and sent data.
//! - [`app`]: the application trait and the apply contract.
//! - [`storage`]: sled layout, log store, state machine store, flusher.
//! - [`network`]: the peer protocol (tarpc), client pool and listener, TLS.
//! - [`certs`]: development certificates (a CA and one per node).
//! - [`meta`]: the meta group's state: membership and location directory.
//! - [`node`]: the registry that opens, finds and removes groups.
//! - [`error`]: the crate's error type.
//!
//! Only this crate imports openraft; the rest of garrison sees [`Node`],
//! [`GroupApp`] and the aliases in [`typ`].

pub mod app;
pub mod certs;
pub mod codec;
pub mod config;
pub mod error;
pub mod meta;
pub mod network;
pub mod node;
pub mod storage;
pub mod typ;

pub use app::{AppFactory, ApplyContext, GroupApp, MetaExtension, NoExtension};
pub use config::{NodeConfig, RaftConfig, MAX_LOCATION_HEARTBEAT_INTERVAL_MS};
pub use error::Error;
pub use network::{ReadConsistency, ReadReply, WriteReply};
pub use node::{ConsistencyReport, GroupStatus, Node};
pub use typ::{GroupId, NodeId, META_GROUP};
