//! Replays and retries in the situations where a naive design forgets what
//! it has seen: after a leader failover, after every node restarted from a
//! snapshot, with sequence numbers going backwards. Each is refused (or
//! answered with the original outcome) and changes nothing.

mod common;

use common::Servers;
use garrison_client::api::{Outcome, ReadMode, Rejection};
use garrison_client::tx::{SignedTransaction, Transaction};
use garrison_client::{Client, Keypair, Op, Value};

const LOCATION: &str = "keep";

fn signed(client: &Client, key: &Keypair, sequence: u64, n: i64) -> SignedTransaction {
    let tx = Transaction {
        cluster: client.cluster().into(),
        location: LOCATION.into(),
        player: key.public(),
        sequence,
        ops: vec![Op::Increment {
            entity: "gold".into(),
            field: "n".into(),
            by: n,
            min: None,
            max: None,
        }],
    };
    tx.sign(key.signing_key())
}

async fn gold(client: &Client) -> Option<Value> {
    let read = client
        .get_entity(LOCATION, "gold", ReadMode::Linearizable)
        .await
        .unwrap();
    read.entity.and_then(|e| e.fields.get("n").cloned())
}

async fn setup(servers: &Servers, key: &Keypair) -> (Client, Vec<SignedTransaction>) {
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let create = Transaction {
        cluster: client.cluster().into(),
        location: LOCATION.into(),
        player: key.public(),
        sequence: 1,
        ops: vec![Op::Put {
            entity: "gold".into(),
            fields: vec![("n".into(), Value::Int(0))],
        }],
    }
    .sign(key.signing_key());
    let mut sent = vec![create];
    for s in 2..=4 {
        sent.push(signed(&client, key, s, 10));
    }
    for tx in &sent {
        assert!(matches!(
            client.submit(tx).await.unwrap().outcome,
            Outcome::Committed { .. }
        ));
    }
    assert_eq!(gold(&client).await, Some(Value::Int(30)));
    (client, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_a_leader_failover_applies_nothing() {
    let mut servers = Servers::start(3, "failover-replay").await;
    let key = Keypair::from_seed([11; 32]);
    let (client, sent) = setup(&servers, &key).await;
    let leader = client.find_leader(LOCATION).await.unwrap();
    let at = servers.endpoints.iter().position(|e| *e == leader).unwrap();
    servers.stop(at).await;
    for tx in &sent {
        let again = client.submit(tx).await.unwrap();
        assert!(again.duplicate, "{again:?}");
    }
    let reused = client
        .submit(&signed(&client, &key, 3, 1000))
        .await
        .unwrap();
    assert!(matches!(
        reused.outcome,
        Outcome::Rejected {
            reason: Rejection::SequenceReused { got: 3, next: 5 },
            ..
        }
    ));
    assert_eq!(gold(&client).await, Some(Value::Int(30)));
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_every_node_restarted_from_a_snapshot_applies_nothing() {
    let mut servers = Servers::start(3, "snapshot-replay").await;
    let key = Keypair::from_seed([12; 32]);
    let (client, sent) = setup(&servers, &key).await;
    let group = common::group_of(&client, LOCATION).await;
    let last = client
        .get_entity(LOCATION, "gold", ReadMode::Linearizable)
        .await
        .unwrap()
        .index;
    for i in 0..3 {
        // Every replica holds the group and has applied everything before compacting.
        let node = servers.server(i).node.clone();
        common::eventually("every node to open the location", || {
            let open = node.groups().contains(&group);
            async move { open }
        })
        .await;
        node.wait_applied(group, last, common::WAIT).await.unwrap();
        node.compact(group, common::WAIT).await.unwrap();
    }
    for i in 0..3 {
        servers.stop(i).await;
    }
    for i in 0..3 {
        servers.restart(i).await;
    }
    let client = servers.client().await;
    for tx in &sent {
        let again = client.submit(tx).await.unwrap();
        assert!(again.duplicate, "{again:?}");
    }
    assert_eq!(gold(&client).await, Some(Value::Int(30)));
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_numbers_going_backwards_are_refused() {
    let servers = Servers::start(3, "backwards").await;
    let key = Keypair::from_seed([13; 32]);
    let (client, _) = setup(&servers, &key).await;
    for (sequence, expected) in [
        (2, Rejection::SequenceReused { got: 2, next: 5 }),
        (1, Rejection::SequenceReused { got: 1, next: 5 }),
        (
            9,
            Rejection::SequenceGap {
                expected: 5,
                got: 9,
            },
        ),
    ] {
        let receipt = client
            .submit(&signed(&client, &key, sequence, 1))
            .await
            .unwrap();
        assert_eq!(
            receipt.outcome,
            Outcome::Rejected {
                op: None,
                reason: expected
            }
        );
    }
    assert_eq!(gold(&client).await, Some(Value::Int(30)));
    assert_eq!(
        client.next_sequence(LOCATION, key.public()).await.unwrap(),
        5
    );
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raft_message_on_the_client_port_is_refused() {
    use garrison_raft::network::{client::client_over, Header, PEER_PROTOCOL_VERSION};
    let servers = Servers::start(3, "wrong-port").await;
    let client = servers.client().await;
    // A peer's vote, sent to a node's client port: not a client request, so
    // the connection fails and nothing reaches Raft.
    // (The client port is plaintext; the peer port would refuse it anyway.)
    let stream = tokio::net::TcpStream::connect(&servers.endpoints[0])
        .await
        .unwrap();
    let peer = client_over(stream, &garrison_raft::RaftConfig::default());
    let header = Header {
        version: PEER_PROTOCOL_VERSION,
        from: 2,
        group: 0,
    };
    let vote = garrison_raft::typ::VoteRequest::new(garrison_raft::typ::Vote::new(99, 2), None);
    assert!(peer
        .vote(tarpc::context::current(), header, vote)
        .await
        .is_err());
    let status = client.status().await.unwrap();
    assert!(
        status.groups.iter().all(|g| g.term < 99),
        "a vote through the client port moved a term"
    );
    servers.shutdown().await;
}
