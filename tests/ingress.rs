//! Bad input gets a clear error and changes nothing: one case per way a
//! transaction can be wrong, against a real three-node cluster.

mod common;

use common::Servers;
use garrison_client::api::{ApiError, Outcome, ReadMode, Rejection, TxReceipt};
use garrison_client::tx::{SignedTransaction, Transaction, TxError, MAX_TRANSACTION_BYTES};
use garrison_client::{Client, ClientError, Keypair, Op, Player, Value};

const LOCATION: &str = "ford";

fn put(entity: &str, field: &str, value: i64) -> Op {
    Op::Put {
        entity: entity.into(),
        fields: vec![(field.into(), Value::Int(value))],
    }
}

fn tx(client: &Client, key: &Keypair, location: &str, sequence: u64, ops: Vec<Op>) -> Transaction {
    Transaction {
        cluster: client.cluster().into(),
        location: location.into(),
        player: key.public(),
        sequence,
        ops,
    }
}

/// Everything a bad submission could have changed.
async fn snapshot(client: &Client, key: &Keypair) -> (String, u64) {
    let read = client
        .get_location(LOCATION, ReadMode::Linearizable, 1000)
        .await
        .unwrap();
    let next = client.next_sequence(LOCATION, key.public()).await.unwrap();
    (format!("{:?}", read.entities), next)
}

fn refused(result: Result<TxReceipt, ClientError>) -> ApiError {
    match result {
        Err(ClientError::Api(e)) => e,
        other => panic!("expected the node to refuse, got {other:?}"),
    }
}

fn rejected(result: Result<TxReceipt, ClientError>) -> (Option<u32>, Rejection) {
    match result {
        Ok(TxReceipt {
            outcome: Outcome::Rejected { op, reason },
            ..
        }) => (op, reason),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_transaction_gets_a_clear_error_and_changes_nothing() {
    let servers = Servers::start(3, "ingress").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    servers.create_location(&client, "elsewhere").await;
    let key = Keypair::from_seed([3; 32]);
    let mut player = Player::new(key.clone());
    let first = player
        .transact(&client, LOCATION, vec![put("depot/1", "ammo", 5)])
        .await
        .unwrap();
    assert!(matches!(first.outcome, Outcome::Committed { .. }));
    let before = snapshot(&client, &key).await;
    let good = tx(&client, &key, LOCATION, 2, vec![put("unit/1", "hp", 1)]);

    // Refused at ingress: nothing reaches the log.
    let malformed = SignedTransaction {
        transaction: vec![0xde, 0xad, 0xbe, 0xef],
        signature: vec![0; 64],
    };
    assert!(matches!(
        refused(client.submit(&malformed).await),
        ApiError::Transaction(TxError::Malformed(_))
    ));

    let oversized = SignedTransaction {
        transaction: vec![0; MAX_TRANSACTION_BYTES + 1],
        signature: vec![0; 64],
    };
    assert!(matches!(
        refused(client.submit(&oversized).await),
        ApiError::Transaction(TxError::TooLarge { .. })
    ));

    let mut bad_signature = good.sign(key.signing_key());
    bad_signature.signature[10] ^= 0x40;
    assert_eq!(
        refused(client.submit(&bad_signature).await),
        ApiError::Transaction(TxError::BadSignature)
    );

    let other_key = Keypair::from_seed([4; 32]);
    let by_other = good.sign(other_key.signing_key());
    assert_eq!(
        refused(client.submit(&by_other).await),
        ApiError::Transaction(TxError::BadSignature)
    );

    let mut weak = good.clone();
    weak.player = [0; 32];
    weak.player[0] = 1; // the identity point
    let forged = SignedTransaction {
        transaction: weak.canonical_bytes(),
        signature: vec![0; 64],
    };
    assert_eq!(
        refused(client.submit(&forged).await),
        ApiError::Transaction(TxError::WeakKey)
    );

    let mut other_cluster = good.clone();
    other_cluster.cluster = "someone-else".into();
    assert!(matches!(
        refused(client.submit(&other_cluster.sign(key.signing_key())).await),
        ApiError::WrongCluster { .. }
    ));

    let mut unknown = good.clone();
    unknown.location = "atlantis".into();
    assert_eq!(
        refused(client.submit(&unknown.sign(key.signing_key())).await),
        ApiError::UnknownLocation("atlantis".into())
    );
    assert_eq!(snapshot(&client, &key).await, before);

    // Refused in apply, identically on every replica: the log has them,
    // the state does not change.
    let replay = client
        .submit(
            &tx(&client, &key, LOCATION, 1, vec![put("depot/1", "ammo", 99)])
                .sign(key.signing_key()),
        )
        .await;
    assert_eq!(
        rejected(replay),
        (None, Rejection::SequenceReused { got: 1, next: 2 })
    );

    let skipped = client
        .submit(
            &tx(&client, &key, LOCATION, 5, vec![put("unit/1", "hp", 1)]).sign(key.signing_key()),
        )
        .await;
    assert_eq!(
        rejected(skipped),
        (
            None,
            Rejection::SequenceGap {
                expected: 2,
                got: 5
            }
        )
    );

    // A transaction for another location, sent to this one's group, is
    // refused by apply (ingress routes by the transaction's own location,
    // so this is what a forged routing would meet).
    let wrong_place = tx(&client, &key, "elsewhere", 2, vec![put("unit/1", "hp", 1)]);
    let mut app = garrison::state::location::LocationApp::new(LOCATION);
    let receipt = app.submit(7, 0, &wrong_place.sign(key.signing_key()));
    assert!(matches!(
        receipt.outcome,
        Outcome::Rejected {
            reason: Rejection::WrongLocation { .. },
            ..
        }
    ));

    let precondition = tx(
        &client,
        &key,
        LOCATION,
        2,
        vec![
            Op::ExpectVersion {
                entity: "depot/1".into(),
                version: 999,
            },
            put("unit/1", "hp", 1),
        ],
    );
    let (op, reason) = rejected(client.submit(&precondition.sign(key.signing_key())).await);
    assert_eq!(op, Some(0));
    assert!(matches!(
        reason,
        Rejection::VersionMismatch { expected: 999, .. }
    ));

    let past_bound = tx(
        &client,
        &key,
        LOCATION,
        3,
        vec![
            put("unit/1", "hp", 1),
            Op::Increment {
                entity: "depot/1".into(),
                field: "ammo".into(),
                by: -6,
                min: Some(0),
                max: None,
            },
        ],
    );
    let (op, reason) = rejected(client.submit(&past_bound.sign(key.signing_key())).await);
    assert_eq!(op, Some(1));
    assert!(matches!(
        reason,
        Rejection::OutOfBounds {
            result: -1,
            min: Some(0),
            ..
        }
    ));

    // Rule rejections use up their sequence numbers (their outcome is
    // remembered); nothing else changed.
    let (entities, next) = snapshot(&client, &key).await;
    assert_eq!(entities, before.0);
    assert_eq!(next, 4);
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_the_same_signed_transaction_returns_its_original_outcome() {
    let servers = Servers::start(3, "exactly-once").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let key = Keypair::from_seed([5; 32]);
    let signed = tx(
        &client,
        &key,
        LOCATION,
        1,
        vec![Op::Increment {
            entity: "x".into(),
            field: "n".into(),
            by: 1,
            min: None,
            max: None,
        }],
    )
    .sign(key.signing_key());
    // The entity does not exist: rejected, and remembered.
    let first = client.submit(&signed).await.unwrap();
    assert!(!first.duplicate);
    let create =
        tx(&client, &key, LOCATION, 2, vec![put("counter", "n", 0)]).sign(key.signing_key());
    let created = client.submit(&create).await.unwrap();
    let bump = tx(
        &client,
        &key,
        LOCATION,
        3,
        vec![Op::Increment {
            entity: "counter".into(),
            field: "n".into(),
            by: 1,
            min: None,
            max: None,
        }],
    )
    .sign(key.signing_key());
    let bumped = client.submit(&bump).await.unwrap();
    // Every resubmission, through any node, answers with the original
    // outcome and applies nothing again.
    for _ in 0..3 {
        for (signed, original) in [(&signed, &first), (&create, &created), (&bump, &bumped)] {
            let again = client.submit(signed).await.unwrap();
            assert!(again.duplicate);
            assert_eq!(again.index, original.index);
            assert_eq!(again.outcome, original.outcome);
        }
    }
    let counter = client
        .get_entity(LOCATION, "counter", ReadMode::Linearizable)
        .await
        .unwrap()
        .entity
        .unwrap();
    assert_eq!(counter.fields["n"], Value::Int(1));
    assert_eq!(
        client.next_sequence(LOCATION, key.public()).await.unwrap(),
        4
    );
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_say_which_index_they_reflect() {
    let servers = Servers::start(3, "reads").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut player = Player::new(Keypair::from_seed([6; 32]));
    let written = player
        .transact(&client, LOCATION, vec![put("unit/9", "hp", 3)])
        .await
        .unwrap();
    let linear = client
        .get_entity(LOCATION, "unit/9", ReadMode::Linearizable)
        .await
        .unwrap();
    assert!(linear.index >= written.index);
    assert_eq!(linear.entity.unwrap().version, written.index);
    let stale = client
        .get_entity(
            LOCATION,
            "unit/9",
            ReadMode::Stale {
                min_index: written.index,
            },
        )
        .await
        .unwrap();
    assert!(stale.index >= written.index);
    assert!(matches!(
        client
            .get_entity("nowhere", "unit/9", ReadMode::Linearizable)
            .await,
        Err(ClientError::Api(ApiError::UnknownLocation(_)))
    ));
    assert!(matches!(
        client
            .get_location(LOCATION, ReadMode::Linearizable, u32::MAX)
            .await,
        Err(ClientError::Api(ApiError::InvalidRequest(_)))
    ));
    servers.shutdown().await;
}
