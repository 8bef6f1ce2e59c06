//! The entity cache (CacheManager) never answers with data older than a
//! read asks for: apply invalidates what it changes on every replica, a
//! read at `min_index` N gets an entity as of N or later, linearizable reads
//! see every acknowledged write while writes race with them, and a failover
//! leaves no replica serving what it cached under the old leader. Each test
//! also checks that the cache answered some reads, so it cannot pass with
//! the cache bypassed.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::{eventually, Servers, WAIT};
use garrison::cache::EntityCache;
use garrison::security::access::{RolesFile, DEFAULT_ROLES_TOML};
use garrison::state::location::{LocationApp, LocationCommand};
use garrison_client::api::{ApiError, EntityRead, ReadMode};
use garrison_client::policy::{Action, AdminOp, Owner, Permission, Scope};
use garrison_client::{Client, ClientError, Keypair, Op, Outcome, Player, Value};
use garrison_raft::typ::{Membership, Node};
use garrison_raft::{codec, ApplyContext, GroupApp};

const LOCATION: &str = "ford";
const UNIT: &str = "unit/1";

fn put(hp: i64) -> Vec<Op> {
    vec![Op::Put {
        entity: UNIT.into(),
        fields: vec![("hp".into(), Value::Int(hp))],
    }]
}

/// Writes `hp` and returns the index it was committed at.
async fn write(player: &mut Player, client: &Client, hp: i64) -> u64 {
    let receipt = player.transact(client, LOCATION, put(hp)).await.unwrap();
    assert!(
        matches!(receipt.outcome, Outcome::Committed { .. }),
        "{receipt:?}"
    );
    receipt.index
}

fn hp(read: &EntityRead) -> i64 {
    let entity = read.entity.as_ref().expect("the unit exists");
    match entity.fields.get("hp") {
        Some(Value::Int(hp)) => *hp,
        other => panic!("hp is {other:?}"),
    }
}

/// The entity's version and hp, after checking the read is as of `at_least`.
fn check(read: &EntityRead, at_least: u64) -> (u64, i64) {
    assert!(
        read.index >= at_least,
        "read at {} < {at_least}",
        read.index
    );
    let version = read.entity.as_ref().expect("the unit exists").version;
    assert!(version <= read.index, "{read:?}");
    (version, hp(read))
}

async fn hits(client: &Client) -> u64 {
    client.status().await.unwrap().cache.hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_drops_what_a_write_changed() {
    let servers = Servers::start(3, "cache-inval").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let pinned = [
        servers.pinned_client(0).await,
        servers.pinned_client(1).await,
        servers.pinned_client(2).await,
    ];
    let mut player = Player::new(Keypair::from_seed([0x51; 32]));
    for round in 1..=8 {
        let index = write(&mut player, &client, round).await;
        for node in &pinned {
            // Twice at the write's index (the second from the cache), then
            // linearizable: each sees this round's write, never an earlier one.
            let before = hits(node).await;
            for mode in [
                ReadMode::Stale { min_index: index },
                ReadMode::Stale { min_index: index },
                ReadMode::Linearizable,
            ] {
                let read = node.get_entity(LOCATION, UNIT, mode).await.unwrap();
                assert_eq!(check(&read, index), (index, round), "{mode:?}");
            }
            assert!(hits(node).await >= before + 2, "the cache answered");
        }
    }
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_writes_never_see_less_than_was_acknowledged() {
    let servers = Servers::start(3, "cache-race").await;
    let client = Arc::new(servers.client().await);
    servers.create_location(&client, LOCATION).await;
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, acked, done) = (client.clone(), acked.clone(), done.clone());
        tokio::spawn(async move {
            let mut player = Player::new(Keypair::from_seed([0x52; 32]));
            for hp in 1..=150 {
                let index = write(&mut player, &client, hp).await;
                acked.store(index, Ordering::SeqCst);
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    eventually("the first write", || async {
        acked.load(Ordering::SeqCst) > 0
    })
    .await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let node = servers.pinned_client(i).await;
        let (acked, done) = (acked.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) {
                // Whatever was acknowledged before the read began, the read
                // reflects: its index and the entity's version.
                let floor = acked.load(Ordering::SeqCst);
                let mode = if reads % 2 == 0 {
                    ReadMode::Linearizable
                } else {
                    ReadMode::Stale { min_index: floor }
                };
                let read = node.get_entity(LOCATION, UNIT, mode).await.unwrap();
                let (version, _) = check(&read, floor);
                assert!(version >= floor, "{mode:?}: version {version} < {floor}");
                reads += 1;
            }
            (reads, hits(&node).await)
        }));
    }
    writer.await.unwrap();
    let mut total_hits = 0;
    for reader in readers {
        let (reads, hits) = reader.await.unwrap();
        assert!(reads > 0);
        total_hits += hits;
    }
    assert!(total_hits > 0, "the cache answered none of the reads");
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_replica_serves_its_cache_from_before_a_failover() {
    let mut servers = Servers::start(3, "cache-failover").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut player = Player::new(Keypair::from_seed([0x53; 32]));
    let first = write(&mut player, &client, 1).await;
    // Every node caches the first write.
    for i in 0..3 {
        let node = servers.pinned_client(i).await;
        for _ in 0..2 {
            let read = node
                .get_entity(LOCATION, UNIT, ReadMode::Linearizable)
                .await
                .unwrap();
            assert_eq!(check(&read, first), (first, 1));
        }
        assert!(hits(&node).await > 0, "node {i}'s cache answered");
    }
    let leader = client.find_leader(LOCATION).await.unwrap();
    let dead = servers.endpoints.iter().position(|e| *e == leader).unwrap();
    servers.stop(dead).await;
    let second = write(&mut player, &client, 2).await;
    for i in (0..3).filter(|i| *i != dead) {
        let node = servers.pinned_client(i).await;
        for mode in [
            ReadMode::Linearizable,
            ReadMode::Stale { min_index: second },
        ] {
            let read = node.get_entity(LOCATION, UNIT, mode).await.unwrap();
            assert_eq!(check(&read, second), (second, 2), "node {i}, {mode:?}");
        }
    }
    servers.restart(dead).await;
    let node = servers.pinned_client(dead).await;
    let read = node
        .get_entity(LOCATION, UNIT, ReadMode::Linearizable)
        .await
        .unwrap();
    assert_eq!(check(&read, second), (second, 2));
    servers.shutdown().await;
}

/// A hit is checked against the policy in force at the index it answers
/// at: a reader the policy denies is refused what the cache holds, and a
/// change of roles after the entity was cached binds at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hit_is_held_to_the_readers_roles_as_they_change() {
    let servers = Servers::start(3, "cache-roles").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut owner = Player::new(Keypair::from_seed([0x55; 32]));
    write(&mut owner, &client, 1).await;
    let snoop = Keypair::from_seed([0x56; 32]);
    let blind = |assign: bool| {
        let (player, role, scope) = (
            snoop.public(),
            "blind".to_string(),
            Scope::Location(LOCATION.into()),
        );
        if assign {
            AdminOp::AssignRole {
                player,
                role,
                scope,
            }
        } else {
            AdminOp::UnassignRole {
                player,
                role,
                scope,
            }
        }
    };
    let define = AdminOp::DefineRole {
        role: "blind".into(),
        permissions: vec![Permission {
            actions: vec![Action::Put],
            entities: "*".into(),
            owner: Owner::Own,
        }],
    };
    let mut admin = servers.admin.lock().await;
    let receipt = admin
        .admin(&client, vec![define, blind(true)])
        .await
        .unwrap();
    assert!(
        matches!(receipt.outcome, Outcome::Committed { .. }),
        "{receipt:?}"
    );
    // The admin's read fills node 0's cache; the snoop reads there.
    let node = servers.pinned_client(0).await;
    node.get_entity(LOCATION, UNIT, ReadMode::Linearizable)
        .await
        .unwrap();
    let reader = servers.pinned_client_as(0, &snoop).await;
    for (assign, allowed) in [(None, false), (Some(false), true), (Some(true), false)] {
        if let Some(assign) = assign {
            let receipt = admin.admin(&client, vec![blind(assign)]).await.unwrap();
            assert!(
                matches!(receipt.outcome, Outcome::Committed { .. }),
                "{receipt:?}"
            );
        }
        let before = hits(&node).await;
        let read = reader
            .get_entity(LOCATION, UNIT, ReadMode::Linearizable)
            .await;
        assert_eq!(hits(&node).await, before + 1, "the cache answered");
        match read {
            Ok(read) if allowed => assert_eq!(hp(&read), 1),
            Err(ClientError::Api(ApiError::Forbidden(_))) if !allowed => {}
            other => panic!("allowed {allowed}: {other:?}"),
        }
    }
    drop(admin);
    servers.shutdown().await;
}

/// A node that starts from a snapshot tells its cache the snapshot's index
/// and policy, so it answers from the cache without waiting for a new
/// policy entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_from_a_snapshot_caches_at_once() {
    let mut servers = Servers::start(3, "cache-snapshot").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut player = Player::new(Keypair::from_seed([0x57; 32]));
    let index = write(&mut player, &client, 1).await;
    let group = common::group_of(&client, LOCATION).await;
    for i in 0..3 {
        servers
            .server(i)
            .node
            .wait_applied(group, index, WAIT)
            .await
            .unwrap();
        servers.server(i).node.compact(group, WAIT).await.unwrap();
    }
    servers.stop(2).await;
    servers.restart(2).await;
    let node = servers.pinned_client(2).await;
    for _ in 0..2 {
        let read = node
            .get_entity(LOCATION, UNIT, ReadMode::Stale { min_index: index })
            .await
            .unwrap();
        assert_eq!(check(&read, index), (index, 1));
    }
    assert_eq!(hits(&node).await, 1, "the second read came from the cache");
    servers.shutdown().await;
}

fn context(index: u64, membership: &Membership) -> ApplyContext<'_> {
    ApplyContext {
        group: GROUP,
        index,
        term: 1,
        leader: 1,
        log_time_ms: index,
        membership,
    }
}

const GROUP: u64 = 9;

/// The location app reports to the cache: a committed change, a new
/// policy, a restored snapshot (which hides everything cached before it).
#[test]
fn the_location_app_reports_changes_policies_and_restores() {
    let nodes: std::collections::BTreeMap<u64, Node> =
        [(1u64, Node::new("x"))].into_iter().collect();
    let membership = Membership::new(vec![[1u64].into_iter().collect()], nodes);
    let cache = Arc::new(EntityCache::new(1 << 20));
    let mut app = LocationApp::new(LOCATION).with_cache(GROUP, cache.clone());
    let mut policy = RolesFile::parse(DEFAULT_ROLES_TOML).unwrap().policy();
    policy.version = 1;
    let payload = codec::encode(&LocationCommand::Policy(policy));
    app.apply(&context(1, &membership), &payload);
    assert!(cache.fill(GROUP, UNIT, 1, None));
    assert_eq!(cache.get(GROUP, UNIT, 1).unwrap().policy.version, 1);

    let key = Keypair::from_seed([0x54; 32]);
    let submit = |sequence: u64, hp: i64| {
        let tx = garrison_client::Transaction {
            cluster: "c".into(),
            location: LOCATION.into(),
            player: key.public(),
            sequence,
            ops: put(hp),
        };
        codec::encode(&LocationCommand::Submit(tx.sign(key.signing_key())))
    };
    let snapshot_before = app.snapshot();
    app.apply(&context(2, &membership), &submit(1, 7));
    assert!(cache.get(GROUP, UNIT, 2).is_none(), "the write invalidated");
    assert!(!cache.fill(GROUP, UNIT, 1, None), "a fill read before it");
    assert!(cache.fill(GROUP, UNIT, 2, app.fragment().entities.get(UNIT).cloned()));
    assert_eq!(
        cache.get(GROUP, UNIT, 2).unwrap().entity.unwrap().version,
        2
    );

    // A snapshot from before the write is installed at index 5.
    app.restore(&snapshot_before).unwrap();
    app.restored_at(5);
    assert!(cache.get(GROUP, UNIT, 5).is_none(), "restore hid the entry");
    assert!(!cache.fill(GROUP, UNIT, 4, None));
    assert!(cache.fill(GROUP, UNIT, 5, None));
    assert_eq!(cache.get(GROUP, UNIT, 5).unwrap().index, 5);
}
