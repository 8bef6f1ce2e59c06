//! The outbox: a plugin's transactions for other locations, exactly once.
//!
//! A plugin's call in location A may propose a transaction for location
//! B. It cannot apply there in A's entry (B is another Raft group), so A's
//! apply appends it, with the call's other effects or not at all, to A's
//! replicated outbox under the next key of A's outbox
//! ([`Delivery::seq`](super::state::Delivery::seq)).
//! The node that leads A drains the outbox oldest first ([`drain`]):
//!
//! 1. it proposes the item to B as [`LocationCommand::Deliver`]; B's apply
//!    takes each source's keys once, in increasing order (it keeps the last
//!    key taken per source), and applies the operations under the plugin's
//!    identity and the role its deploy named, against B's policy;
//! 2. once B answered, it proposes [`LocationCommand::Delivered`] to A,
//!    whose apply drops the item.
//!
//! A leader that dies between the two steps leaves the item in A's
//! outbox; the next leader delivers it again and B answers that it is a
//! duplicate, so the effect happens once. Delivery is at least once,
//! application exactly once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use garrison_client::plugins::PluginFailure;
use garrison_raft::{codec, GroupId, Node};
use tokio_util::sync::CancellationToken;

use super::state::{DeliveryReply, OutboxItem};
use crate::state::location::{LocationApp, LocationCommand};

/// How often a node looks at the outboxes of the locations it leads.
pub const OUTBOX_CHECK_INTERVAL_MS: u64 = 100;
/// Locations whose outboxes a node drains at once.
pub const MAX_CONCURRENT_DRAINS: usize = 16;
/// Items one location's drain delivers before the others get a turn.
pub const MAX_DELIVERIES_PER_ROUND: usize = 64;

/// The locations hosted here whose outbox holds items, as their replicas
/// last said.
#[derive(Debug, Default)]
pub struct Outboxes {
    pending: Mutex<BTreeSet<GroupId>>,
}

impl Outboxes {
    /// `group`'s outbox holds items, or not.
    pub fn set(&self, group: GroupId, holds: bool) {
        let mut pending = self.pending.lock().expect("outboxes lock");
        if holds {
            pending.insert(group);
        } else {
            pending.remove(&group);
        }
    }

    /// The groups whose outbox holds items.
    pub fn pending(&self) -> Vec<GroupId> {
        let pending = self.pending.lock().expect("outboxes lock");
        pending.iter().copied().collect()
    }
}

/// The oldest item of `group`'s outbox on this node's replica.
fn front(node: &Node, group: GroupId) -> Option<OutboxItem> {
    node.read_local(group, |s| {
        s.app
            .as_any()
            .downcast_ref::<LocationApp>()
            .and_then(|l| l.plugins().outbox.front().cloned())
    })
    .ok()
    .flatten()
}

/// Delivers `group`'s outbox items, oldest first, until it is empty, a
/// step fails (the next round retries), or the round's share is spent.
async fn drain_one(node: &Node, group: GroupId) {
    for _ in 0..MAX_DELIVERIES_PER_ROUND {
        let Some(item) = front(node, group) else {
            return;
        };
        let seq = item.delivery.seq;
        let target = node
            .directory()
            .locations
            .get(&item.target)
            .map(|l| l.group);
        let refused = match target {
            None => Some(PluginFailure::BadOutput(format!(
                "no location {:?}",
                item.target
            ))),
            Some(to) => {
                let payload = codec::encode(&LocationCommand::Deliver(item.delivery));
                let reply = match node.write(to, payload).await {
                    Ok(r) => codec::decode::<DeliveryReply>(&r.reply),
                    Err(e) => {
                        tracing::debug!(group, to, seq, "delivery not committed, will retry: {e}");
                        return;
                    }
                };
                match reply {
                    Ok(reply) => reply.refused,
                    Err(e) => {
                        tracing::warn!(group, to, seq, "undecodable delivery reply: {e}");
                        return;
                    }
                }
            }
        };
        let done = codec::encode(&LocationCommand::Delivered { seq, refused });
        if let Err(e) = node.write(group, done).await {
            tracing::debug!(group, seq, "delivery not acknowledged, will retry: {e}");
            return;
        }
    }
}

/// Drains the outboxes of the locations this node leads, until `stop` is
/// cancelled.
pub async fn drain(node: Node, outboxes: Arc<Outboxes>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_millis(OUTBOX_CHECK_INTERVAL_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let led: Vec<GroupId> = outboxes
            .pending()
            .into_iter()
            .filter(|&g| node.leader(g) == Some(node.id()))
            .collect();
        futures::stream::iter(led)
            .for_each_concurrent(MAX_CONCURRENT_DRAINS, |group| {
                let node = &node;
                async move { drain_one(node, group).await }
            })
            .await;
    }
}
