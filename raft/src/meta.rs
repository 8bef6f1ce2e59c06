//! The meta group's application: the location directory, and the
//! application's cluster-wide state (its [`MetaExtension`]).
//!
//! The meta group (group 0) runs on every node. Its Raft membership *is* the
//! cluster's membership (node ids and peer addresses); its state is the
//! [`Directory`]: for every location, the group that holds it and the nodes
//! that replicate it. Group ids are handed out here, in log order, and never
//! reused, so a removed location's old replicas can never be mistaken for a
//! new one's.
//!
//! Placement is decided in apply, deterministically: a location created
//! without explicit replicas goes to the `replication_factor` voters holding
//! the fewest replicas, ties broken by node id.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::app::{ApplyContext, GroupApp, MetaExtension, NoExtension};
use crate::codec;
use crate::typ::{GroupId, NodeId, META_GROUP};

/// Version of the encoded [`Directory`] in meta snapshots.
pub const DIRECTORY_FORMAT_VERSION: u16 = 2;

/// Longest location name, in bytes.
pub const MAX_LOCATION_NAME_BYTES: usize = 128;

/// Where one location lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationRecord {
    /// The location's name, unique in the cluster.
    pub name: String,
    /// The Raft group holding its state.
    pub group: GroupId,
    /// The nodes that replicate it.
    pub replicas: BTreeSet<NodeId>,
    /// The meta log index that created it.
    pub created_at_index: u64,
}

/// The meta group's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// Every location, by name.
    pub locations: BTreeMap<String, LocationRecord>,
    /// The id the next created location's group gets.
    pub next_group: GroupId,
}

impl Directory {
    /// The location held by `group`, if any.
    pub fn by_group(&self, group: GroupId) -> Option<&LocationRecord> {
        self.locations.values().find(|l| l.group == group)
    }
}

/// A change to the directory, as proposed to the meta group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Creates a location; creating an existing one returns its record.
    CreateLocation {
        /// The name; 1 to [`MAX_LOCATION_NAME_BYTES`] bytes of `[A-Za-z0-9_./-]`.
        name: String,
        /// The replicas; empty lets apply choose `replication_factor` of them.
        replicas: Vec<NodeId>,
        /// How many replicas to choose when `replicas` is empty.
        replication_factor: u32,
    },
    /// Removes a location and, on every node, its group's data.
    RemoveLocation {
        /// The name.
        name: String,
    },
    /// A payload for the application's [`MetaExtension`]; the reply is
    /// [`MetaReply::Extension`].
    Extension(Vec<u8>),
}

/// The meta group's answer to a [`MetaCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaReply {
    /// The location was created now.
    Created(LocationRecord),
    /// The location already existed; nothing changed.
    Exists(LocationRecord),
    /// The location was removed.
    Removed(LocationRecord),
    /// The command was refused and changed nothing; the text says why.
    Refused(String),
    /// The extension's encoded reply.
    Extension(Vec<u8>),
}

/// A read of the meta group's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaQuery {
    /// The whole directory; the reply is an encoded `Option<Directory>`.
    Directory,
    /// One location; the reply is an encoded `Option<LocationRecord>`.
    Location(String),
    /// A query for the application's [`MetaExtension`]; the reply is its
    /// reply, as it encoded it.
    Extension(Vec<u8>),
}

impl Directory {
    /// Creates the location `name`, or returns the existing record (and
    /// `false`). `replicas` empty lets placement choose `factor` of the
    /// voters in `ctx`'s membership. On error nothing changed.
    pub fn create_location(
        &mut self,
        ctx: &ApplyContext<'_>,
        name: &str,
        replicas: &[NodeId],
        factor: u32,
    ) -> Result<(LocationRecord, bool), String> {
        if let Some(existing) = self.locations.get(name) {
            return Ok((existing.clone(), false));
        }
        check_location_name(name)?;
        let voters: BTreeSet<NodeId> = ctx.membership.voter_ids().collect();
        let chosen: BTreeSet<NodeId> = if replicas.is_empty() {
            if factor == 0 {
                return Err("replication_factor must be positive".into());
            }
            self.least_loaded(&voters, factor as usize)
        } else {
            let set: BTreeSet<NodeId> = replicas.iter().copied().collect();
            if set.len() != replicas.len() {
                return Err("replicas name a node twice".into());
            }
            if let Some(stranger) = set.iter().find(|n| !voters.contains(n)) {
                return Err(format!("node {stranger} is not a member of the cluster"));
            }
            set
        };
        let record = LocationRecord {
            name: name.to_string(),
            group: self.next_group,
            replicas: chosen,
            created_at_index: ctx.index,
        };
        self.next_group += 1;
        self.locations.insert(name.to_string(), record.clone());
        Ok((record, true))
    }

    /// Removes the location `name`; on error nothing changed.
    pub fn remove_location(&mut self, name: &str) -> Result<LocationRecord, String> {
        self.locations
            .remove(name)
            .ok_or_else(|| format!("location {name:?} does not exist"))
    }

    /// The `count` voters holding the fewest replicas, ties by node id.
    fn least_loaded(&self, voters: &BTreeSet<NodeId>, count: usize) -> BTreeSet<NodeId> {
        let mut load: BTreeMap<NodeId, usize> = voters.iter().map(|&n| (n, 0)).collect();
        for location in self.locations.values() {
            for node in &location.replicas {
                if let Some(n) = load.get_mut(node) {
                    *n += 1;
                }
            }
        }
        let mut ranked: Vec<(usize, NodeId)> =
            load.into_iter().map(|(node, n)| (n, node)).collect();
        ranked.sort();
        ranked
            .into_iter()
            .take(count)
            .map(|(_, node)| node)
            .collect()
    }
}

/// The meta group's [`GroupApp`]: the directory and the application's
/// [`MetaExtension`].
pub struct MetaApp {
    directory: Directory,
    extension: Box<dyn MetaExtension>,
}

impl std::fmt::Debug for MetaApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaApp")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl Default for MetaApp {
    fn default() -> Self {
        Self::new(Box::new(NoExtension))
    }
}

impl MetaApp {
    /// An empty directory (the first location group gets id 1) and an empty
    /// `extension`.
    pub fn new(extension: Box<dyn MetaExtension>) -> Self {
        Self {
            directory: Directory {
                locations: BTreeMap::new(),
                next_group: META_GROUP + 1,
            },
            extension,
        }
    }

    /// The directory as of the last applied entry.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// The application's extension, as of the last applied entry.
    pub fn extension(&self) -> &dyn MetaExtension {
        self.extension.as_ref()
    }
}

/// The directory held by the meta group's applied state (empty if `state`
/// is not the meta group's).
pub fn directory_of(state: &crate::storage::state::AppliedState) -> Option<&Directory> {
    state
        .app
        .as_any()
        .downcast_ref::<MetaApp>()
        .map(MetaApp::directory)
}

/// The extension held by the meta group's applied state (`None` if `state`
/// is not the meta group's).
pub fn extension_of(state: &crate::storage::state::AppliedState) -> Option<&dyn MetaExtension> {
    state
        .app
        .as_any()
        .downcast_ref::<MetaApp>()
        .map(MetaApp::extension)
}

/// Checks a location name: 1 to [`MAX_LOCATION_NAME_BYTES`] bytes of `[A-Za-z0-9_./-]`.
pub fn check_location_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_LOCATION_NAME_BYTES {
        return Err(format!(
            "location name must be 1 to {MAX_LOCATION_NAME_BYTES} bytes, got {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_./-".contains(*c)))
    {
        return Err(format!(
            "location name {name:?} contains {c:?}; use letters, digits and _ . / -"
        ));
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct DirectoryImage {
    format_version: u16,
    directory: Directory,
    /// The extension's own snapshot.
    extension: Vec<u8>,
}

impl GroupApp for MetaApp {
    fn apply(&mut self, ctx: &ApplyContext<'_>, payload: &[u8]) -> Vec<u8> {
        let reply = match codec::decode::<MetaCommand>(payload) {
            Err(e) => MetaReply::Refused(format!("undecodable meta command: {e}")),
            Ok(MetaCommand::CreateLocation {
                name,
                replicas,
                replication_factor,
            }) => match self
                .directory
                .create_location(ctx, &name, &replicas, replication_factor)
            {
                Ok((record, true)) => MetaReply::Created(record),
                Ok((record, false)) => MetaReply::Exists(record),
                Err(why) => MetaReply::Refused(why),
            },
            Ok(MetaCommand::RemoveLocation { name }) => {
                match self.directory.remove_location(&name) {
                    Ok(record) => MetaReply::Removed(record),
                    Err(why) => MetaReply::Refused(why),
                }
            }
            Ok(MetaCommand::Extension(payload)) => {
                MetaReply::Extension(self.extension.apply(ctx, &mut self.directory, &payload))
            }
        };
        codec::encode(&reply)
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        match codec::decode::<MetaQuery>(query) {
            Ok(MetaQuery::Directory) => codec::encode(&Some(self.directory.clone())),
            Ok(MetaQuery::Location(name)) => codec::encode(&self.directory.locations.get(&name)),
            Ok(MetaQuery::Extension(query)) => self.extension.query(&self.directory, &query),
            // An undecodable query gets an empty reply, which no query's
            // reply type decodes from.
            Err(_) => Vec::new(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&DirectoryImage {
            format_version: DIRECTORY_FORMAT_VERSION,
            directory: self.directory.clone(),
            extension: self.extension.snapshot(),
        })
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let image: DirectoryImage = codec::decode_stored(snapshot).map_err(|e| e.to_string())?;
        if image.format_version != DIRECTORY_FORMAT_VERSION {
            return Err(format!(
                "directory format version {} is not supported",
                image.format_version
            ));
        }
        self.extension.restore(&image.extension)?;
        self.directory = image.directory;
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typ::{Membership, Node};

    fn membership(voters: &[NodeId]) -> Membership {
        let nodes: BTreeMap<NodeId, Node> = voters
            .iter()
            .map(|&n| (n, Node::new(format!("127.0.0.1:{n}"))))
            .collect();
        Membership::new(vec![voters.iter().copied().collect()], nodes)
    }

    fn apply(app: &mut MetaApp, m: &Membership, index: u64, cmd: MetaCommand) -> MetaReply {
        let ctx = ApplyContext {
            group: META_GROUP,
            index,
            term: 1,
            leader: 1,
            log_time_ms: 0,
            membership: m,
        };
        codec::decode(&app.apply(&ctx, &codec::encode(&cmd))).unwrap()
    }

    fn create(name: &str, replicas: Vec<NodeId>) -> MetaCommand {
        MetaCommand::CreateLocation {
            name: name.into(),
            replicas,
            replication_factor: 3,
        }
    }

    #[test]
    fn creating_a_location_twice_returns_the_first_record() {
        let m = membership(&[1, 2, 3]);
        let mut app = MetaApp::default();
        let MetaReply::Created(first) = apply(&mut app, &m, 1, create("hill", vec![])) else {
            panic!()
        };
        assert_eq!(first.group, 1);
        assert_eq!(
            apply(&mut app, &m, 2, create("hill", vec![1])),
            MetaReply::Exists(first)
        );
        assert_eq!(app.directory().next_group, 2);
    }

    #[test]
    fn placement_spreads_replicas_over_the_least_loaded_nodes() {
        let m = membership(&[1, 2, 3, 4, 5]);
        let mut app = MetaApp::default();
        let mut counts = BTreeMap::new();
        for i in 0..10 {
            let MetaReply::Created(r) =
                apply(&mut app, &m, i + 1, create(&format!("l{i}"), vec![]))
            else {
                panic!()
            };
            assert_eq!(r.replicas.len(), 3);
            for n in r.replicas {
                *counts.entry(n).or_insert(0) += 1;
            }
        }
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![6, 6, 6, 6, 6]
        );
    }

    #[test]
    fn bad_commands_are_refused_and_change_nothing() {
        let m = membership(&[1, 2, 3]);
        let mut app = MetaApp::default();
        let cases = [
            create("", vec![]),
            create("has space", vec![]),
            create(&"x".repeat(MAX_LOCATION_NAME_BYTES + 1), vec![]),
            create("ok", vec![1, 1]),
            create("ok", vec![1, 9]),
            MetaCommand::CreateLocation {
                name: "ok".into(),
                replicas: vec![],
                replication_factor: 0,
            },
            MetaCommand::RemoveLocation {
                name: "missing".into(),
            },
        ];
        for cmd in cases {
            let before = app.directory().clone();
            assert!(
                matches!(apply(&mut app, &m, 1, cmd.clone()), MetaReply::Refused(_)),
                "{cmd:?}"
            );
            assert_eq!(app.directory(), &before);
        }
        let ctx = ApplyContext {
            group: META_GROUP,
            index: 1,
            term: 1,
            leader: 1,
            log_time_ms: 0,
            membership: &m,
        };
        let reply: MetaReply = codec::decode(&app.apply(&ctx, b"garbage")).unwrap();
        assert!(matches!(reply, MetaReply::Refused(_)));
    }

    #[test]
    fn snapshot_and_restore_round_trip() {
        let m = membership(&[1, 2, 3]);
        let mut app = MetaApp::default();
        apply(&mut app, &m, 1, create("a", vec![2]));
        apply(&mut app, &m, 2, create("b", vec![]));
        let mut copy = MetaApp::default();
        copy.restore(&app.snapshot()).unwrap();
        assert_eq!(copy.directory(), app.directory());
        assert!(copy.restore(b"nonsense").is_err());
        assert_eq!(copy.directory(), app.directory());
    }
}
