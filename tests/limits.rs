//! Every limit of the client port, hit on purpose: the connection's request
//! rate, a player's transaction rate (other players are still served), the
//! handshake timeout, the idle timeout and the frame size.

mod common;

use common::{Servers, WAIT};
use garrison::server::ApiLimits;
use garrison_client::api::{ApiError, GarrisonClient, Outcome, API_VERSION};
use garrison_client::{Client, ClientOptions, Keypair, Op, Player, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sets `unit/1` (owned by the first player to write it).
fn put(n: i64) -> Vec<Op> {
    put_on("unit/1", n)
}

fn put_on(entity: &str, n: i64) -> Vec<Op> {
    vec![Op::Put {
        entity: entity.into(),
        fields: vec![("n".into(), Value::Int(n))],
    }]
}

/// A client that stays on one node.
async fn pinned(endpoint: &str) -> Client {
    let options = ClientOptions {
        discover: false,
        ..Default::default()
    };
    Client::connect_with(&[endpoint.to_string()], options)
        .await
        .unwrap()
}

async fn raw_client(endpoint: &str) -> GarrisonClient {
    let stream = TcpStream::connect(endpoint).await.unwrap();
    let framed = tokio_util::codec::Framed::new(stream, garrison_wire::frame_codec(1 << 20));
    let transport = tarpc::serde_transport::new(framed, garrison_wire::Bincode2::default());
    GarrisonClient::new(tarpc::client::Config::default(), transport).spawn()
}

async fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_request_rate_is_refused_until_it_slows_down() {
    let api = ApiLimits {
        connection_requests_per_s: 5,
        connection_burst: 5,
        ..Default::default()
    };
    let servers = Servers::start_with(3, "rate", api, Default::default()).await;
    let client = raw_client(&servers.endpoints[0]).await;
    let mut refused = 0;
    for _ in 0..20 {
        match client
            .status(tarpc::context::current(), API_VERSION)
            .await
            .unwrap()
        {
            Err(ApiError::RateLimited {
                what,
                retry_after_ms,
            }) => {
                assert_eq!(what, "connection_requests_per_s");
                assert!(retry_after_ms > 0);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
            Ok(_) => {}
        }
    }
    assert!(
        refused >= 10,
        "only {refused} of 20 requests refused at 5/s"
    );
    // Another connection has its own allowance.
    let other = raw_client(&servers.endpoints[0]).await;
    assert!(other
        .status(tarpc::context::current(), API_VERSION)
        .await
        .unwrap()
        .is_ok());
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_player_is_limited_and_others_are_still_served() {
    let api = ApiLimits {
        player_transactions_per_s: 1,
        player_burst: 3,
        ..Default::default()
    };
    let servers = Servers::start_with(3, "flood", api, Default::default()).await;
    let setup = servers.client().await;
    servers.create_location(&setup, "keep").await;
    let flooder = Keypair::from_seed([8; 32]);
    let tx = garrison_client::Transaction {
        cluster: setup.cluster().into(),
        location: "keep".into(),
        player: flooder.public(),
        sequence: 1,
        ops: put(1),
    }
    .sign(flooder.signing_key());
    // The same signed transaction, ten times as fast as it can go: every
    // submission is charged, and past the burst they are refused unseen.
    let raw = raw_client(&servers.endpoints[0]).await;
    let mut limited = 0;
    for _ in 0..10 {
        match raw
            .submit(tarpc::context::current(), API_VERSION, tx.clone())
            .await
            .unwrap()
        {
            Ok(r) => assert!(matches!(r.outcome, Outcome::Committed { .. }), "{r:?}"),
            Err(ApiError::RateLimited {
                what,
                retry_after_ms,
            }) => {
                assert_eq!(what, "player_transactions_per_s");
                assert!(retry_after_ms > 0);
                limited += 1;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        limited >= 5,
        "only {limited} of 10 limited at 1/s with a burst of 3"
    );
    // Another player is served at once.
    let client = pinned(&servers.endpoints[0]).await;
    let mut other = Player::new(Keypair::from_seed([9; 32]));
    let served = other
        .transact(&client, "keep", put_on("unit/2", 1))
        .await
        .unwrap();
    assert!(
        matches!(served.outcome, Outcome::Committed { .. }),
        "{served:?}"
    );
    // The client library waits as told and resubmits, instead of failing.
    let mut patient = Player::new(flooder);
    let later = patient.transact(&client, "keep", put(2)).await.unwrap();
    assert!(
        matches!(later.outcome, Outcome::Committed { .. }),
        "{later:?}"
    );
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed() {
    let api = ApiLimits {
        handshake_timeout_ms: 200,
        idle_timeout_ms: 300,
        ..Default::default()
    };
    let servers = Servers::start_with(3, "idle", api, Default::default()).await;
    // Never sends a request.
    let mut silent = TcpStream::connect(&servers.endpoints[0]).await.unwrap();
    assert_closed_by_server(&mut silent).await;
    // Sends one request, reads its answer, then falls silent: the server
    // closes the connection once idle_timeout_ms has passed.
    let mut idle = TcpStream::connect(&servers.endpoints[0]).await.unwrap();
    let request = tarpc::ClientMessage::Request(tarpc::Request {
        context: tarpc::context::current(),
        id: 1,
        message: garrison_client::api::GarrisonRequest::Status {
            version: API_VERSION,
        },
    });
    let frame = garrison_wire::encode(&request);
    idle.write_all(&(frame.len() as u32).to_be_bytes())
        .await
        .unwrap();
    idle.write_all(&frame).await.unwrap();
    let mut length = [0u8; 4];
    idle.read_exact(&mut length)
        .await
        .expect("the status answer");
    assert_closed_by_server(&mut idle).await;
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_client_limit_closes_its_connection() {
    let servers = Servers::start(3, "frames").await;
    let mut stream = TcpStream::connect(&servers.endpoints[0]).await.unwrap();
    let claimed = ApiLimits::default().max_frame_bytes as u32 + 1;
    stream.write_all(&claimed.to_be_bytes()).await.unwrap();
    stream.write_all(&[0u8; 512]).await.unwrap();
    assert_closed_by_server(&mut stream).await;
    // The node still serves.
    let client = servers.client().await;
    assert!(client.status().await.is_ok());
    servers.shutdown().await;
}
