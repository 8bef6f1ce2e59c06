//! The reconciler: keeps the groups open on this node in line with the meta
//! group's location directory (see the lifecycle in the module above).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Shared, RECONCILE_INTERVAL};
use crate::error::Error;
use crate::meta::{directory_of, Directory};
use crate::storage::GroupRecord;
use crate::typ::{GroupId, Node as RaftNode, NodeId, META_GROUP};

impl Shared {
    /// Brings the local groups in line with the meta group's directory and
    /// membership, unless they are those of the last pass that succeeded
    /// (`done`, which a successful pass updates).
    async fn reconcile(&self, done: &mut Option<Reconciled>) -> Result<(), Error> {
        let current = self.read_app(META_GROUP, |s| {
            let members: BTreeMap<NodeId, RaftNode> = s
                .membership
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.clone()))
                .collect();
            let directory = directory_of(s);
            if let Some((last_directory, last_members)) = done.as_ref() {
                if directory == Some(last_directory) && *last_members == members {
                    return None;
                }
            }
            Some((directory.cloned().unwrap_or_default(), members))
        })?;
        let Some((directory, members)) = current else {
            return Ok(());
        };
        let local: BTreeMap<GroupId, GroupRecord> = self
            .groups
            .read()
            .expect("group table lock")
            .iter()
            .map(|(id, g)| (*id, g.record.clone()))
            .collect();
        for location in directory.locations.values() {
            if !location.replicas.contains(&self.id) {
                continue;
            }
            let replicas: BTreeMap<NodeId, RaftNode> = location
                .replicas
                .iter()
                .filter_map(|id| members.get(id).map(|n| (*id, n.clone())))
                .collect();
            if replicas.len() != location.replicas.len() {
                tracing::warn!(location = %location.name, "some replicas have no address in the meta membership");
                continue;
            }
            if local.contains_key(&location.group) {
                // Opened before a crash but never initialized: do it now
                // (initializing a group that has state is refused, harmlessly).
                if self.raft(location.group).is_some_and(|r| {
                    r.metrics()
                        .borrow()
                        .membership_config
                        .membership()
                        .nodes()
                        .next()
                        .is_none()
                }) {
                    self.initialize(location.group, replicas).await?;
                }
                continue;
            }
            let record = GroupRecord::Location {
                name: location.name.clone(),
            };
            self.storage.add_group(location.group, &record).await?;
            self.open_group(location.group, record).await?;
            self.initialize(location.group, replicas).await?;
            tracing::info!(location = %location.name, group = location.group, "opened location group");
        }
        for (group, record) in local {
            let GroupRecord::Location { name } = record else {
                continue;
            };
            // Only a group id the directory has handed out and no longer lists
            // was removed; a higher id means our meta replica is behind.
            let listed = directory
                .locations
                .values()
                .any(|l| l.group == group && l.replicas.contains(&self.id));
            if group < directory.next_group && !listed {
                let removed = self
                    .groups
                    .write()
                    .expect("group table lock")
                    .remove(&group);
                if let Some(g) = removed {
                    let _ = g.raft.shutdown().await;
                    drop(g);
                    self.storage.remove_group(group).await?;
                    tracing::info!(location = %name, group, "removed location group");
                }
            }
        }
        *done = Some((directory, members));
        Ok(())
    }
}

/// The directory and membership a reconciliation pass brought the local
/// groups in line with.
type Reconciled = (Directory, BTreeMap<NodeId, RaftNode>);

pub(super) async fn reconcile_loop(shared: Arc<Shared>) {
    let Some(meta) = shared.raft(META_GROUP) else {
        return;
    };
    let mut metrics = meta.metrics();
    drop(meta);
    // The directory changes only by applied meta entries: look again when
    // the meta group's applied index moved (its metrics change far more
    // often, with every heartbeat), and after a failed pass every interval.
    // A pass whose directory and membership are those of the last good one
    // does nothing.
    let mut done = None;
    loop {
        let applied = metrics.borrow().last_applied;
        if let Err(e) = shared.reconcile(&mut done).await {
            if shared.stop.is_cancelled() {
                break;
            }
            tracing::warn!(error = %e, "reconciling groups with the directory failed; will retry");
            done = None;
        }
        let retry = done.is_none();
        let interval = tokio::time::sleep(RECONCILE_INTERVAL);
        tokio::pin!(interval);
        loop {
            tokio::select! {
                _ = shared.stop.cancelled() => return,
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if metrics.borrow().last_applied != applied {
                        break;
                    }
                }
                _ = &mut interval, if retry => break,
            }
        }
    }
}
