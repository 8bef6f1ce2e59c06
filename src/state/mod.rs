//! DistributedGameState: each location's state fragment, held by the
//! location's own Raft group.
//!
//! The map is cut into locations; a location's entities live in one Raft
//! group and change only by signed transactions applied in its log. This
//! room holds the two halves of that:
//!
//! - [`fragment`]: the entities and the rule of each operation, pure and
//!   deterministic (ordered maps, versions that are log indexes);
//! - [`location`]: the location group's [`garrison_raft::GroupApp`]: it
//!   decodes each entry, admits it by sequence number
//!   ([`crate::security::sequence`]), checks each operation against the
//!   location's copy of the access policy, applies the fragment's rules,
//!   records the outcome and the events it produced ([`crate::events`]),
//!   and answers queries and snapshots.
//!
//! Which node holds which location is the meta group's directory
//! (`garrison_raft::meta`); this room never knows about nodes.

pub mod fragment;
pub mod location;
