//! TLS on the client port (`api_tls`): clients that trust the cluster's CA
//! are served; plaintext clients, clients trusting another CA, a
//! certificate that does not name the host dialled, and a connection that
//! never finishes its handshake are turned away.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Servers, WAIT};
use garrison::server::ApiTlsFiles;
use garrison_client::api::{Outcome, ReadMode};
use garrison_client::tls::ClientTls;
use garrison_client::{Client, ClientOptions, Keypair, Op, Player, Value};
use tokio::io::AsyncReadExt;

/// Three nodes whose client ports speak TLS with `api_tls(node's cert dir, id)`.
async fn tls_cluster(
    api_tls: impl Fn(&Path, u64) -> ApiTlsFiles,
    handshake_timeout_ms: u64,
) -> Servers {
    Servers::start_edited(3, "tls-test", |c| {
        let dir = c.tls.ca_cert.parent().expect("certificates directory");
        c.api_tls = Some(api_tls(dir, c.node_id));
        c.api.handshake_timeout_ms = handshake_timeout_ms;
    })
    .await
}

/// Client options trusting the CA of `servers`' certificates.
fn trusting(servers: &Servers, node: usize) -> ClientOptions {
    let ca = Path::new(&servers.config(node).tls.ca_cert).to_path_buf();
    ClientOptions {
        tls: Some(ClientTls::load(&ca).expect("the test CA loads")),
        ..Default::default()
    }
}

fn quick(options: ClientOptions) -> ClientOptions {
    ClientOptions {
        deadline: Duration::from_secs(2),
        max_attempts: 3,
        ..options
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_trust_the_cluster_ca_are_served_over_tls() {
    let servers = tls_cluster(ApiTlsFiles::in_dir, 10_000).await;
    let client = servers.client_with(trusting(&servers, 0)).await;
    servers.create_location(&client, "keep").await;
    let mut player = Player::new(Keypair::generate());
    let op = Op::Put {
        entity: "unit/1".into(),
        fields: vec![("hp".into(), Value::Int(10))],
    };
    let receipt = player.transact(&client, "keep", vec![op]).await.unwrap();
    assert!(
        matches!(receipt.outcome, Outcome::Committed { .. }),
        "{receipt:?}"
    );
    let read = client
        .get_entity("keep", "unit/1", ReadMode::Linearizable)
        .await
        .unwrap();
    assert_eq!(read.entity.unwrap().fields["hp"], Value::Int(10));
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_and_clients_of_another_ca_are_turned_away() {
    let servers = tls_cluster(ApiTlsFiles::in_dir, 10_000).await;
    // Wait until the cluster serves a client that does trust it.
    drop(servers.client_with(trusting(&servers, 0)).await);

    let plaintext = Client::connect_with(&servers.endpoints, quick(Default::default())).await;
    assert!(plaintext.is_err(), "a plaintext client was served");

    let other = tempfile::tempdir().unwrap();
    garrison_raft::certs::ensure_dev_certs(other.path(), &[1]).unwrap();
    let stranger = ClientOptions {
        tls: Some(ClientTls::load(&other.path().join("ca.pem")).unwrap()),
        ..quick(Default::default())
    };
    let err = Client::connect_with(&servers.endpoints, stranger)
        .await
        .err()
        .expect("a client trusting another CA was served")
        .to_string();
    assert!(err.contains("TLS handshake"), "{err}");
    assert!(err.contains("certificate"), "{err}");
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_does_not_name_the_host_dialled_is_refused() {
    // The peer-port certificate names only node-<id>.garrison, not 127.0.0.1.
    let servers = tls_cluster(
        |dir, id| {
            let peer = garrison_raft::network::TlsFiles::in_dir(dir, id);
            ApiTlsFiles {
                cert: peer.node_cert,
                key: peer.node_key,
            }
        },
        10_000,
    )
    .await;
    let started = Instant::now();
    let err = loop {
        let err = Client::connect_with(&servers.endpoints, quick(trusting(&servers, 0)))
            .await
            .err()
            .expect("a certificate for another name was accepted")
            .to_string();
        // Until the listeners are up, connecting may fail for other reasons.
        if err.contains("TLS handshake") || started.elapsed() > WAIT {
            break err;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(err.contains("not valid for name"), "{err}");
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_finishes_its_handshake_is_closed() {
    let servers = tls_cluster(ApiTlsFiles::in_dir, 300).await;
    drop(servers.client_with(trusting(&servers, 0)).await);
    let mut silent = tokio::net::TcpStream::connect(&servers.endpoints[0])
        .await
        .unwrap();
    // The node closes it: the read ends (0 bytes or a reset), long before
    // the test's own bound.
    // With a 300 ms limit, ten seconds is generous; without the limit the
    // connection would stay open.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection was kept open: {read:?}"
    );
    servers.shutdown().await;
}
