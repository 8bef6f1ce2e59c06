//! The faults. Each nemesis injects a fault, holds it, heals, and leaves a
//! quiet period; the runner repeats that for the run's duration.

use std::time::Duration;

use garrison_client::{Client, ClientOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::workload::REGISTER_LOCATIONS;

/// Every nemesis, by name, in the order `--nemesis all` runs them.
pub const ALL: [&str; 16] = [
    "partition-random",
    "partition-leader",
    "split-minority-leader",
    "ring",
    "bridge",
    "one-way",
    "kill-random",
    "kill-leader",
    "kill-majority",
    "kill-after-burst",
    "pause-leader",
    "clock",
    "slow-links",
    "snapshot-catchup",
    "mix",
    "none",
];

/// One injected fault, for the summary.
#[derive(Clone, Debug, Serialize)]
pub struct Injection {
    /// Nanoseconds since the run began.
    pub at_ns: u64,
    /// What was done.
    pub what: String,
    /// Whether the fault can take away the leader of some group (failover
    /// times are reported for these).
    pub hits_leader: bool,
}

/// The leader of the first register location, as the nodes report it.
pub async fn leader(cluster: &Cluster) -> Option<u64> {
    let mut best: Option<(u64, u64)> = None;
    for node in &cluster.nodes {
        let options = ClientOptions {
            request_timeout: Duration::from_millis(500),
            deadline: Duration::from_secs(1),
            max_attempts: 1,
            discover: false,
            tls: None,
        };
        let Ok(client) = Client::connect_with(&[node.endpoint()], options).await else {
            continue;
        };
        let Ok(status) = client.status_of(&node.endpoint()).await else {
            continue;
        };
        for g in status.groups {
            if g.location.as_deref() == Some(REGISTER_LOCATIONS[0])
                && g.leader == Some(status.node)
                && best.is_none_or(|(term, _)| g.term > term)
            {
                best = Some((g.term, status.node));
            }
        }
    }
    best.map(|(_, id)| id)
}

fn others(n: u64, not: u64) -> Vec<u64> {
    (1..=n).filter(|i| *i != not).collect()
}

/// Injects `name`'s fault; returns a description (empty if nothing was done).
pub async fn inject(
    name: &str,
    cluster: &mut Cluster,
    rng: &mut StdRng,
) -> anyhow::Result<(String, bool)> {
    let n = cluster.nodes.len() as u64;
    let random = rng.gen_range(1..=n);
    let leader_or_random = leader(cluster).await.unwrap_or(random);
    Ok(match name {
        "partition-random" | "partition-leader" => {
            let target = if name == "partition-leader" {
                leader_or_random
            } else {
                random
            };
            cluster.partition(&[vec![target], others(n, target)])?;
            (format!("isolated node {target}"), true)
        }
        "split-minority-leader" => {
            let leader = leader_or_random;
            let mut rest = others(n, leader);
            rest.shuffle(rng);
            let minority_size = (n - 1) / 2; // with the leader: a minority
            let mut minority = vec![leader];
            minority.extend(rest.drain(..(minority_size as usize - 1).min(rest.len())));
            cluster.partition(&[minority.clone(), rest.clone()])?;
            (
                format!("split {minority:?} (old leader's minority) from {rest:?}"),
                true,
            )
        }
        "ring" => {
            if n < 5 {
                return Ok(("skipped: a majorities ring needs 5 nodes".into(), false));
            }
            // Node i sees i-1, i+1 (and itself): a majority of 3, no two the same.
            let mut order: Vec<u64> = (1..=n).collect();
            order.shuffle(rng);
            for (pos, id) in order.iter().enumerate() {
                let near = [
                    order[(pos + 1) % n as usize],
                    order[(pos + n as usize - 1) % n as usize],
                ];
                let far: Vec<u64> = order
                    .iter()
                    .copied()
                    .filter(|o| o != id && !near.contains(o))
                    .collect();
                cluster.drop_from(*id, &far, true)?;
            }
            (format!("majorities ring {order:?}"), true)
        }
        "bridge" => {
            let mut order: Vec<u64> = (1..=n).collect();
            order.shuffle(rng);
            let half = (n as usize - 1) / 2;
            let (a, rest) = order.split_at(half);
            let (bridge, b) = rest.split_first().expect("at least three nodes");
            for id in a {
                cluster.drop_from(*id, b, true)?;
            }
            for id in b {
                cluster.drop_from(*id, a, true)?;
            }
            (format!("bridge: {a:?} | {bridge} | {b:?}"), true)
        }
        "one-way" => {
            let a = leader_or_random;
            let b = *others(n, a).choose(rng).expect("another node");
            cluster.drop_from(a, &[b], false)?;
            (
                format!("node {a} drops packets from node {b} ({b} still hears {a})"),
                true,
            )
        }
        "kill-random" => {
            cluster.kill(random);
            (format!("kill -9 node {random}"), true)
        }
        "kill-leader" => {
            cluster.kill(leader_or_random);
            (format!("kill -9 leader node {leader_or_random}"), true)
        }
        "kill-majority" => {
            let mut ids: Vec<u64> = (1..=n).collect();
            ids.shuffle(rng);
            let majority: Vec<u64> = ids[..(n as usize / 2 + 1)].to_vec();
            for id in &majority {
                cluster.kill(*id);
            }
            (format!("kill -9 nodes {majority:?}"), true)
        }
        "pause-leader" => {
            cluster.pause(leader_or_random, true);
            (format!("SIGSTOP leader node {leader_or_random}"), true)
        }
        "clock" => {
            let offset = match rng.gen_range(0..4) {
                0 => format!("+{}s", rng.gen_range(5..120)),
                1 => format!("-{}s", rng.gen_range(5..120)),
                2 => "+0 x3".to_string(),
                _ => format!("+{}m", rng.gen_range(1..60)),
            };
            cluster.set_clock(random, &offset)?;
            (format!("node {random}'s wall clock at {offset}"), false)
        }
        "snapshot-catchup" => {
            // A leader keeps the log a cut-off follower still needs, but a
            // restarted leader (or a new one) has no such claim: after the
            // restart the others purge, and the follower can only catch up
            // by snapshot once the cut heals.
            let leader = leader_or_random;
            let follower = *others(n, leader).choose(rng).expect("a follower");
            cluster.partition(&[vec![follower], others(n, follower)])?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            cluster.kill(leader);
            cluster.start(leader)?;
            (format!("cut follower {follower} off, restarted leader {leader} while the others write past the snapshot threshold"), true)
        }
        "slow-links" => {
            use crate::proxy::LinkMode;
            let Some(links) = cluster.links.clone() else {
                return Ok(("skipped: this run has no link proxies".into(), false));
            };
            let mode = match rng.gen_range(0..3) {
                0 => LinkMode::Delay(Duration::from_millis(rng.gen_range(50..300))),
                1 => LinkMode::Stall,
                _ => LinkMode::Reset,
            };
            let target = leader_or_random;
            for other in others(n, target) {
                links.set(target, other, mode);
                links.set(other, target, mode);
            }
            (
                format!("links to and from node {target}: {mode:?}"),
                matches!(mode, LinkMode::Stall | LinkMode::Reset),
            )
        }
        "none" => ("no fault".into(), false),
        other => anyhow::bail!("unknown nemesis {other:?}; known: {}", ALL.join(", ")),
    })
}

/// The nemeses `mix` draws from.
pub const MIX: [&str; 11] = [
    "partition-random",
    "partition-leader",
    "split-minority-leader",
    "bridge",
    "one-way",
    "kill-random",
    "kill-leader",
    "kill-majority",
    "pause-leader",
    "clock",
    "snapshot-catchup",
];
