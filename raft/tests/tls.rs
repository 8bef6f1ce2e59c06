//! Mutual TLS on the peer port: a peer's identity is its certificate.
//! Plaintext, a missing certificate and a certificate of another CA never
//! reach the protocol; a certified node cannot speak for another one; and a
//! cluster of correctly certified nodes works.
//!
//! Every refused attempt carries a vote for term 99: had the node served
//! it, its meta group's term would have jumped to 99, which each test
//! checks did not happen.

mod common;

use std::sync::Arc;

use common::{new_certs, test_config, Cluster, WAIT};
use garrison_raft::network::client::{client_over, connect_tls};
use garrison_raft::network::tls::node_name;
use garrison_raft::network::PEER_PROTOCOL_VERSION;
use garrison_raft::network::{Header, PeerClient, PeerError, PeerTls, TlsFiles};
use garrison_raft::typ::VoteRequest;
use garrison_raft::{NodeId, META_GROUP};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tarpc::context;
use tokio::net::TcpStream;

fn header(from: NodeId) -> Header {
    Header {
        version: PEER_PROTOCOL_VERSION,
        from,
        group: META_GROUP,
    }
}

/// A vote for term 99 from `from`: served, it would move the term to 99.
fn vote_99(from: NodeId) -> VoteRequest {
    VoteRequest::new(openraft::Vote::new(99, from), None)
}

/// Sends `vote_99(from)` over `client` and checks that no answer came back
/// and that node 1's term did not move.
async fn assert_not_served(cluster: &Cluster, client: PeerClient, from: NodeId) {
    let answer = tokio::time::timeout(
        WAIT,
        client.vote(context::current(), header(from), vote_99(from)),
    )
    .await
    .expect("the refused connection fails rather than hangs");
    assert!(answer.is_err(), "a refused peer was answered: {answer:?}");
    assert_term_unmoved(cluster);
}

fn assert_term_unmoved(cluster: &Cluster) {
    let term = cluster.node(1).group_status(META_GROUP).unwrap().term;
    assert!(
        term < 99,
        "node 1 served a refused peer's vote (term {term})"
    );
}

/// Opens a TCP connection to node 1 and runs `handshake` on it: a refused
/// handshake either fails outright or leaves a stream the server has
/// already given up on (TLS 1.3 clients finish before the server checks
/// their certificate); either way, nothing sent over it is served.
async fn assert_refused<S, F, Fut>(cluster: &Cluster, from: NodeId, handshake: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    F: FnOnce(TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<S>>,
{
    let tcp = TcpStream::connect(cluster.addrs[&1]).await.unwrap();
    match handshake(tcp).await {
        Err(_) => assert_term_unmoved(cluster),
        Ok(stream) => assert_not_served(cluster, client_over(stream, &test_config()), from).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_peer_is_refused() {
    let cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    assert_refused(&cluster, 2, |tcp| async { Ok(tcp) }).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_is_refused() {
    let cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    // Trusts the cluster's CA, presents no certificate of its own.
    let ca = std::fs::read(cluster.certs.path().join("ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&ca).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(node_name(1)).unwrap();
    assert_refused(&cluster, 2, |tcp| connector.connect(name, tcp)).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    let other = new_certs([2]);
    let other_files = TlsFiles::in_dir(other.path(), 2);
    // Trusts the cluster's CA (so it accepts node 1), but node 2's
    // certificate comes from another CA: node 1 must refuse it.
    let forged = PeerTls::from_pem(
        &std::fs::read(cluster.certs.path().join("ca.pem")).unwrap(),
        &std::fs::read(&other_files.node_cert).unwrap(),
        &std::fs::read(&other_files.node_key).unwrap(),
        2,
    )
    .unwrap();
    assert_refused(
        &cluster,
        2,
        |tcp| async move { forged.connect(tcp, 1).await },
    )
    .await;
    // And a node of the other CA does not trust node 1 either.
    let stranger = PeerTls::load(&other_files, 2).unwrap();
    let addr = cluster.addrs[&1].to_string();
    let refused = connect_tls(&addr, 1, &stranger, &test_config()).await;
    assert!(refused.is_err(), "a server of another CA was trusted");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reaches_only_the_node_it_meant_to() {
    let cluster = Cluster::start(3, test_config()).await;
    cluster.leader(META_GROUP).await;
    // Node 1's address, but the caller means node 3: node 1's certificate
    // does not name node 3, so the handshake fails.
    let addr = cluster.addrs[&1].to_string();
    let wrong = connect_tls(&addr, 3, &cluster.peer_tls(2), &test_config()).await;
    let error = wrong.expect_err("node 1 passed for node 3");
    assert!(
        error.to_string().contains("certificate"),
        "the error should say why: {error}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_speak_for_another_node() {
    let config = test_config();
    let cluster = Cluster::start(3, config.clone()).await;
    cluster.leader(META_GROUP).await;
    // A valid certificate of node 2, a header claiming node 3.
    let client = cluster.connect_as(1, 2, &config).await;
    let answer = client
        .vote(context::current(), header(3), vote_99(3))
        .await
        .expect("transport");
    assert!(
        matches!(
            answer,
            Err(PeerError::ForgedSender {
                claimed: 3,
                certified: 2
            })
        ),
        "{answer:?}"
    );
    let write = client
        .forward_write(context::current(), header(3), b"as 3".to_vec())
        .await
        .expect("transport");
    assert!(
        matches!(write, Err(PeerError::ForgedSender { .. })),
        "{write:?}"
    );
    assert_eq!(
        answer.unwrap_err().to_string(),
        "the request claims to come from node 3, but the connection's certificate is node 2"
    );
    assert_term_unmoved(&cluster);
    // The same connection, speaking for itself, is served.
    let own = client
        .vote(
            context::current(),
            header(2),
            VoteRequest::new(openraft::Vote::new(0, 2), None),
        )
        .await
        .expect("transport");
    assert!(own.is_ok(), "{own:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certified_nodes_form_a_cluster_and_replicate() {
    let cluster = Cluster::start(3, test_config()).await;
    let leader = cluster.leader(META_GROUP).await;
    // Written through a follower: the write is forwarded over TLS too.
    let via = cluster
        .running()
        .into_iter()
        .find(|id| *id != leader)
        .unwrap();
    let written = cluster
        .node(via)
        .write(META_GROUP, b"over tls".to_vec())
        .await
        .expect("write through a follower");
    cluster.wait_applied(META_GROUP, written.index).await;
    cluster.shutdown().await;
}
