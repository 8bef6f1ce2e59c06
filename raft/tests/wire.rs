//! The peer port under bad input: every malformed or unwelcome request gets
//! an error (or its connection closed) and the node keeps serving. The bad
//! input comes over an authenticated TLS connection (as node 2, a member,
//! unless a test says otherwise): what TLS itself refuses is in `tls.rs`.

mod common;

use std::time::Duration;

use common::{test_config, Cluster, WAIT};
use garrison_raft::network::client::connect_tls;
use garrison_raft::network::{Header, PeerError, PEER_PROTOCOL_VERSION};
use garrison_raft::typ::{AppendEntriesRequest, Entry, VoteRequest};
use garrison_raft::{RaftConfig, META_GROUP};
use openraft::entry::RaftEntry;
use tarpc::context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A header as node 2, a member, would send it.
fn header(group: u64) -> Header {
    Header {
        version: PEER_PROTOCOL_VERSION,
        from: 2,
        group,
    }
}

fn vote() -> VoteRequest {
    VoteRequest::new(openraft::Vote::new(0, 2), None)
}

/// The node still answers a well-formed request and still commits writes.
async fn assert_node_serves(cluster: &Cluster, config: &RaftConfig) {
    let client = cluster.connect_as(1, 2, config).await;
    let answer = client
        .vote(context::current(), header(META_GROUP), vote())
        .await
        .expect("transport");
    assert!(answer.is_ok(), "{answer:?}");
    cluster
        .node(1)
        .write(META_GROUP, b"still alive".to_vec())
        .await
        .expect("write after bad input");
}

/// A raw TLS stream to node 1 as node 2, to send it bytes of our choosing.
async fn tls_as_node_2(
    cluster: &Cluster,
    config: &RaftConfig,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    connect_tls(
        &cluster.addrs[&1].to_string(),
        1,
        &cluster.peer_tls(2),
        config,
    )
    .await
    .expect("TLS handshake as node 2")
}

/// Reads until the server closes the connection; fails if it stays open.
async fn assert_closed(stream: &mut (impl AsyncRead + Unpin)) {
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_an_unknown_group_gets_a_clear_error() {
    let config = test_config();
    let cluster = Cluster::start(3, config.clone()).await;
    cluster.leader(META_GROUP).await;
    let client = cluster.connect_as(1, 2, &config).await;
    let answer = client
        .vote(context::current(), header(4242), vote())
        .await
        .unwrap();
    assert!(
        matches!(answer, Err(PeerError::UnknownGroup(4242))),
        "{answer:?}"
    );
    let write = client
        .forward_write(context::current(), header(4242), b"x".to_vec())
        .await
        .unwrap();
    assert!(
        matches!(write, Err(PeerError::UnknownGroup(4242))),
        "{write:?}"
    );
    assert_eq!(
        answer.unwrap_err().to_string(),
        "group 4242 is not hosted on this node"
    );
    assert_node_serves(&cluster, &config).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_another_protocol_version_is_refused() {
    let config = test_config();
    let cluster = Cluster::start(3, config.clone()).await;
    cluster.leader(META_GROUP).await;
    let client = cluster.connect_as(1, 2, &config).await;
    let old = Header {
        version: PEER_PROTOCOL_VERSION + 1,
        ..header(META_GROUP)
    };
    let answer = client.vote(context::current(), old, vote()).await.unwrap();
    assert!(
        matches!(answer, Err(PeerError::Version { .. })),
        "{answer:?}"
    );
    assert_node_serves(&cluster, &config).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_over_max_entries_per_append_is_refused() {
    let config = test_config();
    let cluster = Cluster::start(3, config.clone()).await;
    cluster.leader(META_GROUP).await;
    let client = cluster.connect_as(1, 2, &config).await;
    let too_many = config.max_entries_per_append + 1;
    let entries: Vec<Entry> = (1..=too_many)
        .map(|i| Entry::new_blank(openraft::testing::log_id(1, 2, i)))
        .collect();
    let rpc = AppendEntriesRequest {
        vote: openraft::Vote::new(1, 2),
        prev_log_id: None,
        entries,
        leader_commit: None,
    };
    let answer = client
        .append_entries(context::current(), header(META_GROUP), rpc)
        .await
        .unwrap();
    assert!(
        matches!(answer, Err(PeerError::TooManyEntries { entries, max }) if entries == too_many && max == config.max_entries_per_append),
        "{answer:?}"
    );
    assert_node_serves(&cluster, &config).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_closes_only_its_connection() {
    let config = test_config();
    let cluster = Cluster::start(3, config.clone()).await;
    cluster.leader(META_GROUP).await;
    let mut stream = tls_as_node_2(&cluster, &config).await;
    let claimed = (config.max_frame_bytes + 1) as u32;
    stream.write_all(&claimed.to_be_bytes()).await.unwrap();
    stream.write_all(&[0u8; 1024]).await.unwrap();
    assert_closed(&mut stream).await;
    assert_node_serves(&cluster, &config).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_frame_closes_only_its_connection() {
    let config = test_config();
    let cluster = Cluster::start(3, config.clone()).await;
    cluster.leader(META_GROUP).await;
    for garbage in [
        vec![0xFFu8; 32],
        vec![0u8; 3],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
    ] {
        let mut stream = tls_as_node_2(&cluster, &config).await;
        stream
            .write_all(&(garbage.len() as u32).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&garbage).await.unwrap();
        assert_closed(&mut stream).await;
    }
    assert_node_serves(&cluster, &config).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_peer_connections_are_closed() {
    // The three nodes use one connection to each peer: 2 inbound each.
    let config = RaftConfig {
        max_peer_connections: 3,
        ..test_config()
    };
    let cluster = Cluster::start(3, config.clone()).await;
    cluster.leader(META_GROUP).await;
    // Fill the remaining slot, then one more.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..4 {
        let mut stream = TcpStream::connect(cluster.addrs[&1]).await.unwrap();
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => refused += 1,
            _ => held.push(stream),
        }
    }
    assert!(refused >= 1, "no connection was refused");
    drop(held);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_in_flight_per_connection_are_refused() {
    let config = RaftConfig {
        max_in_flight_requests_per_connection: 4,
        ..test_config()
    };
    let cluster = Cluster::start(3, config.clone()).await;
    let leader = cluster.leader(META_GROUP).await;
    // A client that itself allows many in flight, to reach the server's limit.
    let client_config = RaftConfig {
        max_in_flight_requests_per_connection: 1000,
        ..test_config()
    };
    let client = cluster.connect_as(leader, 2, &client_config).await;
    let calls = (0..200).map(|i| {
        let client = client.clone();
        async move {
            client
                .forward_write(
                    context::current(),
                    header(META_GROUP),
                    format!("w{i}").into_bytes(),
                )
                .await
        }
    });
    let results = futures::future::join_all(calls).await;
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(tarpc::client::RpcError::Server(_))))
        .count();
    let served = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    assert!(refused > 0, "no request was refused by the in-flight limit");
    assert!(served > 0, "no request was served");
    assert_node_serves(&cluster, &config).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_membership_is_refused() {
    let config = test_config();
    let cluster = Cluster::start(3, config.clone()).await;
    cluster.leader(META_GROUP).await;
    // Node 77 holds a valid certificate of the cluster's CA, but is no member.
    let client = cluster.connect_as(1, 77, &config).await;
    let stranger = Header {
        from: 77,
        ..header(META_GROUP)
    };
    let answer = client
        .vote(
            context::current(),
            stranger,
            VoteRequest::new(openraft::Vote::new(99, 77), None),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            Err(PeerError::NotAMember {
                node: 77,
                group: META_GROUP
            })
        ),
        "{answer:?}"
    );
    let write = client
        .forward_write(context::current(), stranger, b"x".to_vec())
        .await
        .unwrap();
    assert!(
        matches!(write, Err(PeerError::NotAMember { node: 77, .. })),
        "{write:?}"
    );
    // The stranger's vote for term 99 changed nothing.
    assert!(cluster.node(1).group_status(META_GROUP).unwrap().term < 99);
    assert_node_serves(&cluster, &config).await;
    cluster.shutdown().await;
}
