//! Ticks: log time for locations that have a deadline and no traffic.
//!
//! A window's end or an absence's `within` is judged when the location's
//! log time passes it, and log time moves only with entries. So every
//! replica tells the node's [`Deadlines`] when its rules next need log
//! time to pass (after each entry it applies), and the node's [`run`]
//! task, every [`TICK_CHECK_INTERVAL_MS`], proposes a
//! [`LocationCommand::Tick`] to each location it leads whose deadline its
//! clock has passed. The tick is an ordinary entry: its log time (the
//! leader's clock, never behind the log's) is what every replica judges
//! by, so they all find the same matches at the same index. A location
//! with no pending deadline gets no ticks, so idle locations stay quiet.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use garrison_raft::{codec, GroupId, Node};
use tokio_util::sync::CancellationToken;

use crate::state::location::LocationCommand;

/// How often a node looks for locations whose deadline has passed: with
/// a commit's latency, the bound on how late an absence in an idle
/// location is judged.
pub const TICK_CHECK_INTERVAL_MS: u64 = 100;
/// Ticks a node proposes at once.
pub const MAX_CONCURRENT_TICKS: usize = 16;

/// The log time each location hosted here next needs to reach, as its
/// replica last said (only locations with one are held).
#[derive(Debug, Default)]
pub struct Deadlines {
    due: Mutex<BTreeMap<GroupId, u64>>,
}

impl Deadlines {
    /// `group`'s next deadline is now `deadline` (`None`: it has none).
    pub fn set(&self, group: GroupId, deadline: Option<u64>) {
        let mut due = self.due.lock().expect("deadlines lock");
        match deadline {
            Some(t) => due.insert(group, t),
            None => due.remove(&group),
        };
    }

    /// The groups whose deadline is at or before `now_ms`.
    pub fn due(&self, now_ms: u64) -> Vec<GroupId> {
        let due = self.due.lock().expect("deadlines lock");
        due.iter()
            .filter(|(_, &t)| t <= now_ms)
            .map(|(&g, _)| g)
            .collect()
    }

    /// How many groups have a deadline.
    pub fn pending(&self) -> usize {
        self.due.lock().expect("deadlines lock").len()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Proposes ticks to the due locations this node leads, until `stop` is
/// cancelled.
pub async fn run(node: Node, deadlines: std::sync::Arc<Deadlines>, stop: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_millis(TICK_CHECK_INTERVAL_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let payload = codec::encode(&LocationCommand::Tick);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let led: Vec<GroupId> = deadlines
            .due(now_ms())
            .into_iter()
            .filter(|&g| node.leader(g) == Some(node.id()))
            .collect();
        if led.is_empty() {
            continue;
        }
        futures::stream::iter(led)
            .for_each_concurrent(MAX_CONCURRENT_TICKS, |group| {
                let payload = payload.clone();
                let node = &node;
                async move {
                    if let Err(e) = node.write(group, payload).await {
                        tracing::debug!(group, "tick not committed, will retry: {e}");
                    }
                }
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_passed_deadlines_are_due() {
        let d = Deadlines::default();
        d.set(3, Some(100));
        d.set(4, Some(300));
        d.set(5, Some(200));
        assert_eq!(d.due(200), vec![3, 5]);
        d.set(3, None);
        assert_eq!(d.due(1_000), vec![4, 5]);
        assert_eq!(d.pending(), 2);
    }
}
