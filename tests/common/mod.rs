//! Shared by the service tests: in-process garrison servers (real sled in
//! temporary directories, real tarpc on loopback) and polling helpers.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use garrison::server::{Member, Server, ServerConfig};
use garrison_client::Client;
use tokio::net::TcpListener;

/// Generous bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `check` every 20 ms until it returns true, panicking after `WAIT`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < WAIT, "timed out after {WAIT:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three servers of one cluster, in this process.
pub struct Servers {
    pub servers: Vec<Server>,
    pub endpoints: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Servers {
    pub async fn start(n: u64, cluster: &str) -> Self {
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn,openraft=error").try_init();
        let mut listeners = Vec::new();
        let mut members = Vec::new();
        for id in 1..=n {
            let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
            members.push(Member { id, peer_addr: peer.local_addr().unwrap().to_string(), api_addr: api.local_addr().unwrap().to_string() });
            listeners.push((peer, api));
        }
        let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut servers = Vec::new();
        for (i, (peer, api)) in listeners.into_iter().enumerate() {
            let config = ServerConfig {
                node_id: i as u64 + 1,
                cluster: cluster.into(),
                data_dir: dirs[i].path().to_path_buf(),
                members: members.clone(),
                raft: Default::default(),
                api: Default::default(),
            };
            servers.push(Server::start_with_listeners(config, peer, api).await.expect("server starts"));
        }
        let endpoints = members.iter().map(|m| m.api_addr.clone()).collect();
        Servers { servers, endpoints, _dirs: dirs }
    }

    /// A client, once the cluster answers.
    pub async fn client(&self) -> Client {
        let started = Instant::now();
        loop {
            if let Ok(client) = Client::connect(&self.endpoints).await {
                if client.locations().await.is_ok() {
                    return client;
                }
            }
            assert!(started.elapsed() < WAIT, "the cluster never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(self) {
        for s in &self.servers {
            s.shutdown().await;
        }
    }
}
