//! The reconciler: keeps the groups open on this node in line with the meta
//! group's location directory (see the lifecycle in the module above).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Shared, RECONCILE_INTERVAL};
use crate::error::Error;
use crate::meta::directory_of;
use crate::storage::GroupRecord;
use crate::typ::{GroupId, Node as RaftNode, NodeId, META_GROUP};

impl Shared {
    /// Brings the local groups in line with the meta group's directory.
    async fn reconcile(&self) -> Result<(), Error> {
        let (directory, members) = self.read_app(META_GROUP, |s| {
            let directory = directory_of(s).cloned().unwrap_or_default();
            let members: BTreeMap<NodeId, RaftNode> = s
                .membership
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.clone()))
                .collect();
            (directory, members)
        })?;
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
        Ok(())
    }
}

pub(super) async fn reconcile_loop(shared: Arc<Shared>) {
    let Some(meta) = shared.raft(META_GROUP) else {
        return;
    };
    let mut metrics = meta.metrics();
    drop(meta);
    loop {
        if let Err(e) = shared.reconcile().await {
            if shared.stop.is_cancelled() {
                break;
            }
            tracing::warn!(error = %e, "reconciling groups with the directory failed; will retry");
        }
        tokio::select! {
            _ = shared.stop.cancelled() => break,
            changed = metrics.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(RECONCILE_INTERVAL) => {}
        }
    }
}
