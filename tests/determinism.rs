//! Apply is deterministic and total: the same transactions give the same
//! state (byte for byte) on every replica, a replica restored from a
//! snapshot continues identically, and no input makes apply panic. The
//! replicas hold an access policy under which some transactions are denied,
//! and it changes halfway (a revocation), so access checks are covered too.

use garrison::security::access::{RolesFile, DEFAULT_ROLES_TOML};
use garrison::state::location::{LocationApp, LocationCommand};
use garrison_client::policy::Scope;
use garrison_client::tx::{Op, Transaction, Value};
use garrison_client::Keypair;
use garrison_raft::typ::{Membership, Node};
use garrison_raft::{codec, ApplyContext, GroupApp};
use proptest::prelude::*;

const CLUSTER: &str = "prop";
const LOCATION: &str = "field";

fn keys() -> Vec<Keypair> {
    (1..=3u8).map(|s| Keypair::from_seed([s; 32])).collect()
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-5i64..5).prop_map(Value::Int),
        Just(Value::Int(i64::MAX)),
        "[a-c]{0,3}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..3).prop_map(Value::Bytes),
    ]
}

fn entity() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("unit/1".to_string()),
        Just("unit/2".to_string()),
        Just("depot/1".to_string())
    ]
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![Just("hp".to_string()), Just("ammo".to_string())]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            entity(),
            proptest::collection::vec((field(), value()), 1..3)
        )
            .prop_map(|(entity, mut fields)| {
                fields.sort();
                fields.dedup_by(|a, b| a.0 == b.0);
                Op::Put { entity, fields }
            }),
        entity().prop_map(|entity| Op::Delete { entity }),
        (
            entity(),
            field(),
            -3i64..3,
            proptest::option::of(-2i64..0),
            proptest::option::of(0i64..4)
        )
            .prop_map(|(entity, field, by, min, max)| Op::Increment {
                entity,
                field,
                by,
                min,
                max
            }),
        (entity(), 0u64..6).prop_map(|(entity, version)| Op::ExpectVersion { entity, version }),
        (entity(), field(), proptest::option::of(value())).prop_map(|(entity, field, value)| {
            Op::ExpectField {
                entity,
                field,
                value,
            }
        }),
    ]
}

/// (player index, sequence offset from the expected one, operations, resubmit an earlier one?)
fn step() -> impl Strategy<Value = (usize, i8, Vec<Op>, bool)> {
    (
        0usize..3,
        prop_oneof![8 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)],
        proptest::collection::vec(op(), 1..4),
        any::<bool>(),
    )
}

fn membership() -> Membership {
    let nodes: std::collections::BTreeMap<u64, Node> =
        [(1u64, Node::new("x"))].into_iter().collect();
    Membership::new(vec![[1u64].into_iter().collect()], nodes)
}

/// The policy entry of `version`: player 0 is a game master until version
/// 2 revokes it, player 2 an observer, player 1 holds the default role.
fn policy(version: u64, keys: &[Keypair]) -> Vec<u8> {
    let mut p = RolesFile::parse(DEFAULT_ROLES_TOML).unwrap().policy();
    p.version = version;
    let mut assign = |k: &Keypair, role: &str| {
        let scope = Scope::Location(LOCATION.into());
        p.assignments
            .entry(k.public())
            .or_default()
            .insert((role.to_string(), scope));
    };
    if version == 1 {
        assign(&keys[0], "game_master");
    }
    assign(&keys[2], "observer");
    codec::encode(&LocationCommand::Policy(p))
}

/// Applies `payload` at `index` to every app, returning the replies.
fn apply_all(apps: &mut [LocationApp], index: u64, payload: &[u8]) -> Vec<Vec<u8>> {
    let m = membership();
    let ctx = ApplyContext {
        group: 1,
        index,
        term: 1,
        leader: 1,
        log_time_ms: index * 10,
        membership: &m,
    };
    apps.iter_mut().map(|a| a.apply(&ctx, payload)).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn replicas_applying_the_same_transactions_end_byte_for_byte_equal(steps in proptest::collection::vec(step(), 1..40)) {
        let keys = keys();
        let mut apps = vec![LocationApp::new(LOCATION), LocationApp::new(LOCATION)];
        let mut next = [1u64; 3];
        let mut sent: Vec<Vec<u8>> = Vec::new();
        let mut restored: Option<LocationApp> = None;
        apply_all(&mut apps, 1, &policy(1, &keys));
        for (i, (p, offset, ops, resubmit)) in steps.into_iter().enumerate() {
            let index = 2 * i as u64 + 2;
            if i == 20 {
                let revoke = policy(2, &keys);
                apply_all(&mut apps, index - 1, &revoke);
                if let Some(r) = restored.as_mut() {
                    apply_all(std::slice::from_mut(r), index - 1, &revoke);
                }
            }
            let payload = if resubmit && !sent.is_empty() {
                sent[i % sent.len()].clone()
            } else {
                let sequence = (next[p] as i64 + offset as i64).max(1) as u64;
                let tx = Transaction { cluster: CLUSTER.into(), location: LOCATION.into(), player: keys[p].public(), sequence, ops };
                codec::encode(&LocationCommand::Submit(tx.sign(keys[p].signing_key())))
            };
            let replies = apply_all(&mut apps, index, &payload);
            prop_assert_eq!(&replies[0], &replies[1]);
            prop_assert_eq!(apps[0].snapshot(), apps[1].snapshot());
            for (k, key) in keys.iter().enumerate() {
                next[k] = apps[0].next_sequence(&key.public());
            }
            sent.push(payload.clone());
            // Halfway, a third replica joins from a snapshot and must keep up.
            if i == 10 {
                let mut r = LocationApp::new(LOCATION);
                r.restore(&apps[0].snapshot()).unwrap();
                restored = Some(r);
            } else if let Some(r) = restored.as_mut() {
                let reply = apply_all(std::slice::from_mut(r), index, &payload);
                prop_assert_eq!(&reply[0], &replies[0]);
                prop_assert_eq!(r.snapshot(), apps[0].snapshot());
            }
        }
    }

    #[test]
    fn apply_and_query_never_panic_on_arbitrary_bytes(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut apps = vec![LocationApp::new(LOCATION)];
        let before = apps[0].snapshot();
        let reply = apply_all(&mut apps, 1, &payload);
        // Undecodable commands are answered, and change nothing.
        prop_assert!(!reply[0].is_empty());
        prop_assert_eq!(&apps[0].snapshot(), &before);
        let _ = apps[0].query(&payload);
        if apps[0].restore(&payload).is_err() {
            prop_assert_eq!(apps[0].snapshot(), before);
        }
    }
}

/// A transaction that ingress would refuse (sequence 0, no operations), if a
/// forged peer proposed it anyway, is refused by apply on every replica
/// alike, without a panic and without changing anything.
#[test]
fn apply_refuses_what_ingress_would_refuse() {
    let key = Keypair::from_seed([1; 32]);
    for (sequence, ops) in [(0, vec![Op::Delete { entity: "x".into() }]), (1, vec![])] {
        let tx = Transaction {
            cluster: CLUSTER.into(),
            location: LOCATION.into(),
            player: key.public(),
            sequence,
            ops,
        };
        let payload = codec::encode(&LocationCommand::Submit(tx.sign(key.signing_key())));
        let mut apps = vec![LocationApp::new(LOCATION)];
        let before = apps[0].snapshot();
        let reply: garrison_client::TxReceipt =
            codec::decode(&apply_all(&mut apps, 1, &payload)[0]).unwrap();
        assert!(
            matches!(
                reply.outcome,
                garrison_client::Outcome::Rejected {
                    reason: garrison_client::Rejection::Malformed(_),
                    ..
                }
            ),
            "{reply:?}"
        );
        assert_eq!(apps[0].snapshot(), before);
    }
}
