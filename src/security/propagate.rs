//! Carries the access policy from the meta group, where it changes, into
//! every location's log, where transactions are checked against it; and
//! bootstraps the policy of a new cluster. The rules of the complex event
//! processor ([`RuleSet`]) travel the same way, as entries of their own.
//!
//! Three paths, all idempotent (a location takes a policy, or a rule set,
//! only if it is newer than its own):
//! - an administrative transaction's submitter pushes the new policy to
//!   every location (or the current one to the locations it created) and
//!   answers the client only then;
//! - every node's [`sync`] task checks the locations it leads and proposes
//!   the meta group's policy to any that is behind (after a crash
//!   mid-push, a leader change, a node that was down): within a second of
//!   the policy changing or of one of its own pushes failing, and otherwise
//!   in a sweep every 10 s;
//! - [`bootstrap`] proposes the first policy, from the node's configuration.

use std::time::{Duration, Instant};

use futures::StreamExt;
use garrison_client::tx::PlayerKey;
use garrison_raft::{codec, Error, GroupId, Node, META_GROUP};
use tokio_util::sync::CancellationToken;

use garrison_client::plugins::PluginSet;
use garrison_client::rules::RuleSet;

use crate::security::access::Policy;
use crate::security::admin::{AdminApp, AdminCommand, AdminReply};
use crate::state::location::{LocationApp, LocationCommand};

/// How often a node checks whether the meta group's policy changed (or its
/// last sweep left locations behind), and sweeps its locations if so.
pub const POLICY_SYNC_INTERVAL_MS: u64 = 1_000;
/// How often a node sweeps the locations it leads regardless: a location
/// that took over leadership, or one whose push failed unseen, gets the
/// policy within this.
pub const POLICY_SWEEP_INTERVAL_MS: u64 = 10_000;
/// Locations a push proposes to at once.
pub const MAX_CONCURRENT_POLICY_PUSHES: usize = 16;

/// Reads this node's meta replica's [`AdminApp`] (`T::default()` if the
/// node has none open).
fn read_admin<T: Default>(node: &Node, read: impl FnOnce(&AdminApp) -> T) -> T {
    node.read_extension(|ext| ext.as_any().downcast_ref::<AdminApp>().map(read))
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The policy of this node's meta replica (version 0: not bootstrapped).
pub fn meta_policy(node: &Node) -> Policy {
    read_admin(node, |a| a.policy().clone())
}

/// The version of that policy, without copying it.
fn meta_policy_version(node: &Node) -> u64 {
    read_admin(node, |a| a.policy().version)
}

/// The rules of this node's meta replica.
pub fn meta_rules(node: &Node) -> RuleSet {
    read_admin(node, |a| a.rules().clone())
}

/// The version of those rules, without copying them.
fn meta_rules_version(node: &Node) -> u64 {
    read_admin(node, |a| a.rules().version)
}

/// The plugins of this node's meta replica.
pub fn meta_plugins(node: &Node) -> PluginSet {
    read_admin(node, |a| a.plugins().clone())
}

/// The version of those plugins, without copying them.
fn meta_plugins_version(node: &Node) -> u64 {
    read_admin(node, |a| a.plugins().version)
}

/// The plugin set version of this node's replica of `group` (0: none, or
/// not a location hosted here).
pub fn location_plugins_version(node: &Node, group: GroupId) -> u64 {
    read_location(node, group, |l| l.plugins().version)
}

/// Reads this node's replica of location `group` (0 if it has none).
fn read_location(node: &Node, group: GroupId, read: impl FnOnce(&LocationApp) -> u64) -> u64 {
    node.read_local(group, |s| {
        s.app
            .as_any()
            .downcast_ref::<LocationApp>()
            .map(read)
            .unwrap_or(0)
    })
    .unwrap_or(0)
}

/// The rule set version of this node's replica of `group` (0: none, or
/// not a location hosted here).
pub fn location_rules_version(node: &Node, group: GroupId) -> u64 {
    read_location(node, group, |l| l.cep().version)
}

/// The policy version of this node's replica of `group` (0: none, or not a
/// location hosted here).
pub fn location_policy_version(node: &Node, group: GroupId) -> u64 {
    read_location(node, group, |l| l.policy().version)
}

/// Proposes `policy` to each of `groups` (through their leaders) and waits
/// until each has applied it, or a newer one. Returns the groups that
/// failed, with why.
pub async fn push(node: &Node, policy: &Policy, groups: Vec<GroupId>) -> Vec<(GroupId, Error)> {
    let payload = codec::encode(&LocationCommand::Policy(policy.clone()));
    push_entry(node, payload, policy.version, "policy", groups).await
}

/// Proposes `rules` as [`push`] proposes a policy.
pub async fn push_rules(
    node: &Node,
    rules: &RuleSet,
    groups: Vec<GroupId>,
) -> Vec<(GroupId, Error)> {
    let payload = codec::encode(&LocationCommand::Rules(rules.clone()));
    push_entry(node, payload, rules.version, "rule set", groups).await
}

/// Proposes `plugins` as [`push`] proposes a policy.
pub async fn push_plugins(
    node: &Node,
    plugins: &PluginSet,
    groups: Vec<GroupId>,
) -> Vec<(GroupId, Error)> {
    let payload = codec::encode(&LocationCommand::Plugins(plugins.clone()));
    push_entry(node, payload, plugins.version, "plugin set", groups).await
}

/// Proposes `payload` (a policy, a rule set or a plugin set of version `version`) to
/// each of `groups`; the groups that did not reach `version`, with why.
async fn push_entry(
    node: &Node,
    payload: Vec<u8>,
    version: u64,
    what: &str,
    groups: Vec<GroupId>,
) -> Vec<(GroupId, Error)> {
    futures::stream::iter(groups)
        .map(|group| {
            let payload = payload.clone();
            async move {
                let reached = match node.write(group, payload).await {
                    Ok(reply) => codec::decode::<u64>(&reply.reply).map_err(Error::from),
                    Err(e) => Err(e),
                };
                match reached {
                    Ok(v) if v >= version => None,
                    Ok(v) => Some((group, Error::Meta(format!("kept {what} version {v}")))),
                    Err(e) => Some((group, e)),
                }
            }
        })
        .buffer_unordered(MAX_CONCURRENT_POLICY_PUSHES)
        .filter_map(|failed| async move { failed })
        .collect()
        .await
}

/// Keeps the locations this node leads at the meta group's policy and
/// rules, until `stop` is cancelled.
pub async fn sync(node: Node, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(POLICY_SYNC_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The versions every led location had at the last sweep (0: sweep).
    let mut swept = (0, 0, 0);
    let mut last_sweep = Instant::now();
    let sweep_every = Duration::from_millis(POLICY_SWEEP_INTERVAL_MS);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Most ticks find nothing new: the walk over thousands of locations
        // runs when the policy moved, after a failed push, or once a sweep
        // interval; the policy is copied only to push it.
        let versions = (
            meta_policy_version(&node),
            meta_rules_version(&node),
            meta_plugins_version(&node),
        );
        if versions.0 == 0 || (versions == swept && last_sweep.elapsed() < sweep_every) {
            continue;
        }
        last_sweep = Instant::now();
        let led: Vec<GroupId> = node
            .groups()
            .into_iter()
            .filter(|&g| g != META_GROUP && node.leader(g) == Some(node.id()))
            .collect();
        let behind: Vec<GroupId> = led
            .iter()
            .copied()
            .filter(|&g| location_policy_version(&node, g) < versions.0)
            .collect();
        let mut failed = if behind.is_empty() {
            Vec::new()
        } else {
            push(&node, &meta_policy(&node), behind).await
        };
        let behind: Vec<GroupId> = led
            .iter()
            .copied()
            .filter(|&g| location_rules_version(&node, g) < versions.1)
            .collect();
        if !behind.is_empty() {
            failed.extend(push_rules(&node, &meta_rules(&node), behind).await);
        }
        let behind: Vec<GroupId> = led
            .into_iter()
            .filter(|&g| location_plugins_version(&node, g) < versions.2)
            .collect();
        if !behind.is_empty() {
            failed.extend(push_plugins(&node, &meta_plugins(&node), behind).await);
        }
        for (group, e) in &failed {
            tracing::debug!(group, "policy or rules sync failed, will retry: {e}");
        }
        swept = if failed.is_empty() {
            versions
        } else {
            (0, 0, 0)
        };
    }
}

/// Proposes the cluster's first policy until the meta group has one (ours or
/// another node's), or `stop` is cancelled. Does nothing without admins.
pub async fn bootstrap(
    node: Node,
    admins: Vec<PlayerKey>,
    roles: Policy,
    replication_factor: u32,
    stop: CancellationToken,
) {
    if admins.is_empty() {
        tracing::info!(
            "no admin_keys configured: this node will not bootstrap the cluster's policy"
        );
        return;
    }
    let command = codec::encode(&AdminCommand::Bootstrap {
        admins,
        roles,
        replication_factor,
    });
    let mut backoff = Duration::from_millis(50);
    while meta_policy_version(&node) == 0 && !stop.is_cancelled() {
        match node.extension_command(command.clone()).await {
            Ok(reply) => match codec::decode::<AdminReply>(&reply) {
                Ok(AdminReply::Bootstrapped(version)) => {
                    tracing::info!(version, "bootstrapped the cluster's access policy");
                    return;
                }
                Ok(AdminReply::Refused(why)) => {
                    tracing::warn!("not bootstrapping the cluster's policy: {why}");
                    return;
                }
                other => tracing::warn!("unexpected bootstrap reply {other:?}"),
            },
            Err(e) => tracing::debug!("bootstrap not yet possible: {e}"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}
