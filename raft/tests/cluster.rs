//! In-process three-node clusters: real nodes, real sled in temporary
//! directories, real tarpc on loopback. Each test is named after the property
//! it defends.

mod common;

use std::time::Instant;

use common::{eventually, record, test_config, Cluster, RecordApp, WAIT};
use garrison_raft::{Error, GroupId, NodeId, RaftConfig, META_GROUP};

/// Writes `count` payloads `"{tag}-{i}"` to `group` through `via`, retrying
/// each one (bounded) across leader changes; returns the acknowledged ones.
async fn write_all(
    cluster: &Cluster,
    via: NodeId,
    group: GroupId,
    tag: &str,
    count: usize,
) -> Vec<Vec<u8>> {
    let mut acked = Vec::new();
    for i in 0..count {
        let payload = format!("{tag}-{i}").into_bytes();
        let started = Instant::now();
        loop {
            match cluster.node(via).write(group, payload.clone()).await {
                Ok(_) => break,
                Err(e) => assert!(
                    started.elapsed() < WAIT,
                    "write {tag}-{i} never succeeded: {e}"
                ),
            }
        }
        acked.push(payload);
    }
    acked
}

/// A running node other than `node`.
fn other_than(cluster: &Cluster, node: NodeId) -> NodeId {
    cluster
        .running()
        .into_iter()
        .find(|id| *id != node)
        .expect("another node runs")
}

/// Every running replica of `group` applied exactly `expected`, in order.
async fn assert_replicas_hold(cluster: &Cluster, group: GroupId, expected: &[Vec<u8>]) {
    let nodes: Vec<NodeId> = cluster
        .running()
        .into_iter()
        .filter(|id| cluster.node(*id).groups().contains(&group))
        .collect();
    assert!(!nodes.is_empty());
    eventually(
        &format!(
            "replicas of group {group} to apply {} entries",
            expected.len()
        ),
        || {
            // Retried writes can apply twice, so a count reached is not yet
            // the end: wait until every replica has also applied the same
            // last index (their contents are compared after).
            let records: Vec<RecordApp> = nodes
                .iter()
                .map(|id| cluster.node(*id).read_local(group, record).unwrap())
                .collect();
            let last = |r: &RecordApp| r.applied.last().map(|(index, _, _)| *index);
            let done = records.iter().all(|r| r.applied.len() >= expected.len())
                && records.iter().all(|r| last(r) == last(&records[0]));
            async move { done }
        },
    )
    .await;
    let first = cluster.node(nodes[0]).read_local(group, record).unwrap();
    for id in &nodes {
        let state = cluster.node(*id).read_local(group, record).unwrap();
        assert_eq!(
            state, first,
            "replica on node {id} differs from node {}",
            nodes[0]
        );
    }
    let applied: Vec<Vec<u8>> = first.applied.iter().map(|(_, _, p)| p.clone()).collect();
    // Retried writes may apply twice (the raft layer is at-least-once); every
    // acknowledged payload is there, in acknowledgement order.
    let mut at = 0;
    for payload in expected {
        at += applied[at..]
            .iter()
            .position(|p| p == payload)
            .unwrap_or_else(|| panic!("{payload:?} lost"))
            + 1;
    }
}

async fn location_on_all(cluster: &Cluster, name: &str) -> GroupId {
    let record = cluster
        .node(1)
        .create_location(name, &[])
        .await
        .expect("create location");
    let group = record.group;
    eventually(&format!("every node to open {name}"), || {
        let open = cluster
            .running()
            .iter()
            .all(|id| cluster.node(*id).groups().contains(&group));
        async move { open }
    })
    .await;
    group
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_every_group_apply_the_same_entries_in_the_same_order() {
    let cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    let mut groups = Vec::new();
    for name in ["north/ridge", "south/ford", "east/mill"] {
        groups.push(location_on_all(&cluster, name).await);
    }
    // Concurrent writers, each through a different node, one per group.
    let mut tasks = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let via = (i as NodeId % 3) + 1;
        let node = cluster.node(via).clone();
        let group = *group;
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for n in 0..40 {
                let payload = format!("g{group}-{n}").into_bytes();
                node.write(group, payload.clone()).await.expect("write");
                acked.push(payload);
            }
            acked
        }));
    }
    for (group, task) in groups.iter().zip(tasks) {
        let acked = task.await.unwrap();
        assert_replicas_hold(&cluster, *group, &acked).await;
    }
    // The meta group agrees too.
    let directory = cluster.node(1).directory();
    for id in cluster.running() {
        eventually("meta replicas to agree", || {
            let same = cluster.node(id).directory() == directory;
            async move { same }
        })
        .await;
    }
    assert_eq!(directory.locations.len(), 3);

    // Their hash chains and state digests agree too.
    for group in groups.iter().copied().chain([META_GROUP]) {
        let applied = cluster
            .node(1)
            .consistency(group, None)
            .unwrap()
            .applied_index;
        cluster.wait_applied(group, applied).await;
        let reports: Vec<_> = cluster
            .running()
            .iter()
            .map(|id| cluster.node(*id).consistency(group, Some(applied)).unwrap())
            .collect();
        assert!(reports[0].chain.is_some());
        for r in &reports {
            assert_eq!(
                r.chain, reports[0].chain,
                "group {group} chains differ at {applied}"
            );
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_any_node_see_every_acknowledged_write() {
    use garrison_raft::ReadConsistency;
    let cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    // Replicated on nodes 1 and 2 only, so node 3 must forward its reads.
    let record = cluster
        .node(1)
        .create_location("outpost", &[1, 2])
        .await
        .unwrap();
    let group = record.group;
    eventually("nodes 1 and 2 to open the group", || {
        let open = [1, 2]
            .iter()
            .all(|id| cluster.node(*id).groups().contains(&group));
        async move { open }
    })
    .await;
    assert!(!cluster.node(3).groups().contains(&group));
    for n in 1..=5u64 {
        let written = cluster
            .node(3)
            .write(group, format!("w{n}").into_bytes())
            .await
            .unwrap();
        for via in [1, 2, 3] {
            let read = cluster
                .node(via)
                .read(group, Vec::new(), ReadConsistency::Linearizable)
                .await
                .unwrap();
            let count: u64 = garrison_raft::codec::decode(&read.reply).unwrap();
            assert!(
                read.index >= written.index,
                "node {via} read at {} before write at {}",
                read.index,
                written.index
            );
            assert!(
                count >= n,
                "node {via} saw {count} writes after {n} were acknowledged"
            );
            let stale = cluster
                .node(via)
                .read(
                    group,
                    Vec::new(),
                    ReadConsistency::Stale {
                        min_index: written.index,
                    },
                )
                .await
                .unwrap();
            assert!(stale.index >= written.index);
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_disagree_are_told_apart_by_their_chains() {
    // Two groups fed different payloads must report different chain values
    // at the same index: the chain covers the entries' contents.
    let cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    let a = location_on_all(&cluster, "twin-a").await;
    let b = location_on_all(&cluster, "twin-b").await;
    let wa = cluster.node(1).write(a, b"same".to_vec()).await.unwrap();
    let wb = cluster
        .node(1)
        .write(b, b"different".to_vec())
        .await
        .unwrap();
    cluster.wait_applied(a, wa.index).await;
    cluster.wait_applied(b, wb.index).await;
    let index = wa.index.min(wb.index);
    let ca = cluster.node(1).consistency(a, Some(index)).unwrap();
    let cb = cluster.node(1).consistency(b, Some(index)).unwrap();
    assert!(ca.chain.is_some() && cb.chain.is_some());
    assert_ne!(ca.state_digest, cb.state_digest);
    let wa2 = cluster.node(1).write(a, b"x".to_vec()).await.unwrap();
    let wb2 = cluster.node(1).write(b, b"y".to_vec()).await.unwrap();
    cluster.wait_applied(a, wa2.index).await;
    cluster.wait_applied(b, wb2.index).await;
    let common = wa2.index.min(wb2.index);
    assert_ne!(
        cluster.node(1).consistency(a, Some(common)).unwrap().chain,
        cluster.node(1).consistency(b, Some(common)).unwrap().chain
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_is_elected_after_the_leader_dies_and_no_committed_entry_is_lost() {
    let mut cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    let group = location_on_all(&cluster, "bridge").await;
    let old_leader = cluster.leader(group).await;
    let survivor = other_than(&cluster, old_leader);
    let mut acked = write_all(&cluster, survivor, group, "before", 30).await;

    let killed_at = Instant::now();
    cluster.stop(old_leader).await;
    let new_leader = cluster.leader(group).await;
    assert_ne!(new_leader, old_leader);
    acked.extend(write_all(&cluster, survivor, group, "after", 30).await);
    eprintln!(
        "leader {old_leader} stopped; {new_leader} leads and accepted writes after {:?}",
        killed_at.elapsed()
    );

    assert_replicas_hold(&cluster, group, &acked).await;
    cluster.shutdown().await;
}

/// Every replica of an idle location group goes quiet (the leader stops
/// heartbeating, the followers stop timing out), the group still takes
/// writes, and when the leader's node dies the others notice by its
/// silence to pings, elect a new leader and lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_group_takes_writes_and_fails_over_when_its_leader_dies() {
    // Location followers never tick, and leaders heartbeat at the longest
    // interval allowed: every election here (the group's first, the
    // failover) is the quiet pass's doing.
    let config = RaftConfig {
        location_heartbeat_interval_ms: garrison_raft::MAX_LOCATION_HEARTBEAT_INTERVAL_MS,
        ..test_config()
    };
    let mut cluster = Cluster::start(3, config).await;
    cluster.leader(META_GROUP).await;
    let group = location_on_all(&cluster, "marsh").await;
    let all_quiet = |cluster: &Cluster| {
        cluster.running().iter().all(|id| {
            cluster
                .node(*id)
                .group_status(group)
                .is_some_and(|s| s.quiet)
        })
    };
    eventually("every replica of the idle group to go quiet", || {
        let quiet = all_quiet(&cluster);
        async move { quiet }
    })
    .await;
    assert!(
        cluster
            .node(1)
            .group_status(META_GROUP)
            .is_some_and(|s| !s.quiet),
        "the meta group is never quiet"
    );
    let old_leader = cluster.leader(group).await;
    let survivor = other_than(&cluster, old_leader);
    let mut acked = write_all(&cluster, survivor, group, "quiet", 10).await;
    eventually("the group to go quiet again after the writes", || {
        let quiet = all_quiet(&cluster);
        async move { quiet }
    })
    .await;

    // A follower of the quiet group restarts. It knows its leader from the
    // vote it stored and must not stand: once writes through it have
    // committed, no replica's term has moved.
    let term_before = cluster.node(old_leader).group_status(group).unwrap().term;
    cluster.stop(survivor).await;
    cluster.restart(survivor).await;
    acked.extend(write_all(&cluster, survivor, group, "restarted", 10).await);
    for id in cluster.running() {
        let status = cluster.node(id).group_status(group).unwrap();
        assert_eq!(
            status.term, term_before,
            "node {id}: the restarted follower stood for election"
        );
    }
    eventually("the group to go quiet after the restart", || {
        let quiet = all_quiet(&cluster);
        async move { quiet }
    })
    .await;

    cluster.stop(old_leader).await;
    let new_leader = cluster.leader(group).await;
    assert_ne!(new_leader, old_leader);
    acked.extend(write_all(&cluster, survivor, group, "after", 10).await);

    // The old leader comes back knowing no leader (a leader's stored vote
    // is not committed), with a shorter log: it follows, and takes writes.
    cluster.restart(old_leader).await;
    eventually("the returning node to follow a leader", || {
        let follows = cluster
            .node(old_leader)
            .group_status(group)
            .is_some_and(|s| s.leader.is_some_and(|l| l != old_leader));
        async move { follows }
    })
    .await;
    acked.extend(write_all(&cluster, old_leader, group, "back", 10).await);
    assert_replicas_hold(&cluster, group, &acked).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_from_its_own_log() {
    let mut cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    let group = location_on_all(&cluster, "depot").await;
    let mut acked = write_all(&cluster, 1, group, "first", 20).await;
    assert_replicas_hold(&cluster, group, &acked).await;

    cluster.stop(3).await;
    acked.extend(write_all(&cluster, 1, group, "while-down", 20).await);
    cluster.restart(3).await;
    acked.extend(write_all(&cluster, 2, group, "after", 5).await);
    assert_replicas_hold(&cluster, group, &acked).await;
    // It caught up by replication: nothing was purged, so no snapshot.
    assert_eq!(
        cluster
            .node(3)
            .read_local(group, |s| s.last_applied.map(|l| l.index))
            .unwrap(),
        cluster
            .node(1)
            .read_local(group, |s| s.last_applied.map(|l| l.index))
            .unwrap()
    );
    cluster.shutdown().await;
}

/// A leader keeps the entries a down follower still needs (openraft does not
/// purge a range it is replicating), but a follower purges freely. So: node 3
/// goes down, the others move on and compact, the leader dies, and the
/// follower that purged becomes leader when node 3 returns. Node 3 can then
/// only catch up by snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_a_log_purge_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    let group = location_on_all(&cluster, "quarry").await;
    let mut acked = write_all(&cluster, 1, group, "first", 10).await;
    assert_replicas_hold(&cluster, group, &acked).await;

    cluster.stop(3).await;
    acked.extend(write_all(&cluster, 1, group, "missed", 50).await);
    let leader = cluster.leader(group).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let mut purged_to = 0;
    for id in [1, 2] {
        let compacted = cluster
            .node(id)
            .compact(group, WAIT)
            .await
            .expect("compact");
        if id == follower {
            purged_to = compacted;
        }
    }
    eventually("the follower to purge its log", || {
        let purged = cluster.node(follower).purged_index(group) >= Some(purged_to);
        async move { purged }
    })
    .await;

    cluster.stop(leader).await;
    cluster.restart(3).await;
    assert_eq!(
        cluster.leader(group).await,
        follower,
        "only the purged follower's log is complete"
    );
    acked.extend(write_all(&cluster, 3, group, "after", 5).await);
    assert_replicas_hold(&cluster, group, &acked).await;
    let snapshot_index = cluster.node(3).snapshot_index(group);
    assert!(
        snapshot_index >= Some(purged_to),
        "node 3 installed no snapshot covering {purged_to}: {snapshot_index:?}"
    );

    cluster.restart(leader).await;
    assert_replicas_hold(&cluster, group, &acked).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_location_is_idempotent_and_survives_a_full_restart() {
    let mut cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    let first = cluster.node(2).create_location("keep", &[]).await.unwrap();
    let again = cluster.node(3).create_location("keep", &[1]).await.unwrap();
    assert_eq!(first, again);
    let group = location_on_all(&cluster, "keep").await;
    let acked = write_all(&cluster, 1, group, "x", 10).await;
    assert_replicas_hold(&cluster, group, &acked).await;

    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
    for id in [1, 2, 3] {
        cluster.restart(id).await;
    }
    assert!(
        cluster.node(1).groups().contains(&group),
        "group reopened from sled at start-up"
    );
    assert_replicas_hold(&cluster, group, &acked).await;
    assert_eq!(
        cluster.node(1).create_location("keep", &[]).await.unwrap(),
        first
    );
    let more = write_all(&cluster, 3, group, "y", 3).await;
    assert_replicas_hold(&cluster, group, &[acked, more].concat()).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_location_deletes_its_group_everywhere() {
    let cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    let group = location_on_all(&cluster, "ruins").await;
    write_all(&cluster, 1, group, "x", 3).await;
    cluster.node(2).remove_location("ruins").await.unwrap();
    eventually("every node to drop the group", || {
        let gone = cluster
            .running()
            .iter()
            .all(|id| !cluster.node(*id).groups().contains(&group));
        async move { gone }
    })
    .await;
    assert!(matches!(
        cluster.node(1).remove_location("ruins").await,
        Err(Error::Meta(_))
    ));
    assert!(matches!(
        cluster.node(1).write(group, b"late".to_vec()).await,
        Err(Error::UnknownGroup(_))
    ));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    let node = cluster.node(1);
    let before = node.directory();
    assert!(matches!(
        node.create_location("bad name!", &[]).await,
        Err(Error::Meta(_))
    ));
    assert!(matches!(
        node.create_location("x", &[1, 7]).await,
        Err(Error::Meta(_))
    ));
    assert!(matches!(
        node.write(999, b"x".to_vec()).await,
        Err(Error::UnknownGroup(999))
    ));
    let limit = RaftConfig::default().max_proposal_bytes;
    let err = node
        .write(META_GROUP, vec![0; limit as usize + 1])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ProposalTooLarge { .. }), "{err}");
    assert_eq!(node.directory(), before);
    cluster.shutdown().await;
}

/// Set in the child process of the abort test: where to put its cluster.
const ABORT_CHILD: &str = "GARRISON_TEST_ABORT_CHILD";

/// The two-thread runtime the abort test's child and parent each run in.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Every node dies at once (the process aborts: no shutdown, no flush, no
/// destructor) right after a write is acknowledged; after a restart from
/// their directories, every acknowledged write is there. This is what a
/// follower answering append-entries before its flush would break.
#[test]
fn a_committed_write_survives_an_abort_of_every_node() {
    if std::env::var(ABORT_CHILD).is_ok() {
        let runtime = runtime();
        runtime.block_on(async {
            let cluster = Cluster::start(3, test_config()).await;
            cluster.leader(META_GROUP).await;
            let group = location_on_all(&cluster, "vault").await;
            let dirs: Vec<String> = cluster
                .dirs
                .values()
                .map(|d| d.display().to_string())
                .collect();
            let addrs: Vec<String> = cluster.addrs.values().map(|a| a.to_string()).collect();
            println!("cluster {} {}", dirs.join(","), addrs.join(","));
            for i in 0..40 {
                let via = (i % 3) + 1;
                cluster
                    .node(via)
                    .write(group, format!("w{i}").into_bytes())
                    .await
                    .expect("write");
                println!("acked w{i}");
            }
            std::process::abort();
        });
    }
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_committed_write_survives_an_abort_of_every_node",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ABORT_CHILD, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The child's panics and logs, to say why if it never got going.
    let mut stderr = child.stderr.take().unwrap();
    let child_log = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut bytes).ok();
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let mut spec = None;
    let mut acked = Vec::new();
    let mut out = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        out.push(line.clone());
        // libtest may print "test NAME ... " on the same line first.
        let line = match line.find("cluster /") {
            Some(at) => line[at..].to_string(),
            None => line,
        };
        if let Some(rest) = line.strip_prefix("cluster ") {
            spec = Some(rest.to_string());
        } else if let Some(w) = line.strip_prefix("acked ") {
            acked.push(w.as_bytes().to_vec());
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must have aborted");
    let child_log = child_log.join().unwrap();
    let tail: Vec<&str> = child_log.lines().rev().take(20).collect();
    let spec = spec.unwrap_or_else(|| {
        panic!(
            "the child ({status}) never printed its cluster; its output:\n{}\nits last log lines:\n{}",
            out.join("\n"),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    });
    let (dirs, addrs) = spec.split_once(' ').unwrap();
    let dirs: Vec<std::path::PathBuf> = dirs.split(',').map(Into::into).collect();
    let addrs: Vec<std::net::SocketAddr> = addrs.split(',').map(|a| a.parse().unwrap()).collect();
    assert_eq!(
        acked.len(),
        40,
        "the child acknowledged every write before aborting"
    );
    let runtime = runtime();
    runtime.block_on(async {
        let cluster = Cluster::resume(dirs.clone(), addrs, test_config()).await;
        cluster.leader(META_GROUP).await;
        let group = cluster.node(1).directory().locations["vault"].group;
        // A write in the new term commits everything before it.
        let extra = cluster
            .node(1)
            .write(group, b"after".to_vec())
            .await
            .unwrap();
        cluster.wait_applied(group, extra.index).await;
        let mut expected = acked.clone();
        expected.push(b"after".to_vec());
        assert_replicas_hold(&cluster, group, &expected).await;
        cluster.shutdown().await;
    });
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_routes_to_a_location_created_through_another_node_at_once() {
    use garrison_raft::ReadConsistency;
    // Node 3 holds no replica of these groups and learns of them from its
    // meta replica, which may not have applied the creation yet when node 1
    // acknowledges it. A write through node 3 straight after must still land.
    let cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    for n in 0..40 {
        let record = cluster
            .node(1)
            .create_location(&format!("fresh-{n}"), &[1, 2])
            .await
            .unwrap();
        // Even rounds write first, odd rounds read first: both paths look
        // the group up.
        if n % 2 == 1 {
            cluster
                .node(3)
                .read(record.group, Vec::new(), ReadConsistency::Linearizable)
                .await
                .unwrap_or_else(|e| panic!("read of fresh-{n} through node 3: {e}"));
        }
        let written = cluster
            .node(3)
            .write(record.group, b"first".to_vec())
            .await
            .unwrap_or_else(|e| panic!("write to fresh-{n} through node 3: {e}"));
        assert!(written.index > 0);
    }
    cluster.shutdown().await;
}
