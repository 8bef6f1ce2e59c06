//! Shared by the service tests: in-process garrison servers (real sled in
//! temporary directories, real tarpc on loopback, mutual TLS between the
//! nodes with a CA made for each cluster) and polling helpers.

#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use garrison::server::{Member, Server, ServerConfig};
use garrison_client::{Client, Keypair, Player};

use garrison_raft::network::TlsFiles;
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
        assert!(
            started.elapsed() < WAIT,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The group that holds `location`.
pub async fn group_of(client: &Client, location: &str) -> u64 {
    client
        .locations()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.name == location)
        .unwrap_or_else(|| panic!("no location {location}"))
        .group
}

/// The test clusters' admin key (bootstrapped from the configuration).
pub fn admin_key() -> Keypair {
    Keypair::from_seed([0xad; 32])
}

/// The test clusters' session-token key.
pub fn token_key() -> Keypair {
    Keypair::from_seed([0x70; 32])
}

/// Three servers of one cluster, in this process.
pub struct Servers {
    pub servers: Vec<Option<Server>>,
    /// The cluster's admin, for administrative transactions.
    pub admin: tokio::sync::Mutex<Player>,
    configs: Vec<ServerConfig>,
    pub endpoints: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
    _certs: tempfile::TempDir,
}

impl Servers {
    pub async fn start(n: u64, cluster: &str) -> Self {
        Self::start_with(n, cluster, Default::default(), Default::default()).await
    }

    pub async fn start_with(
        n: u64,
        cluster: &str,
        api: garrison::server::ApiLimits,
        raft: garrison_raft::RaftConfig,
    ) -> Self {
        Self::start_edited(n, cluster, |c| {
            c.api = api.clone();
            c.raft = raft.clone();
        })
        .await
    }

    /// Starts `n` servers whose configurations `edit` changes first.
    pub async fn start_edited(n: u64, cluster: &str, edit: impl Fn(&mut ServerConfig)) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("warn,openraft=error")
            .try_init();
        let mut listeners = Vec::new();
        let mut members = Vec::new();
        for id in 1..=n {
            let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
            members.push(Member {
                id,
                peer_addr: peer.local_addr().unwrap().to_string(),
                api_addr: api.local_addr().unwrap().to_string(),
                http_addr: Some(http.local_addr().unwrap().to_string()),
            });
            listeners.push((peer, api, http));
        }
        let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let certs = tempfile::tempdir().unwrap();
        let ids: Vec<u64> = (1..=n).collect();
        garrison_raft::certs::ensure_dev_certs(certs.path(), &ids).expect("test certificates");
        token_key().save(&certs.path().join("token.key")).unwrap();
        let mut servers = Vec::new();
        let mut configs = Vec::new();
        for (i, (peer, api_listener, http_listener)) in listeners.into_iter().enumerate() {
            let mut config = ServerConfig {
                node_id: i as u64 + 1,
                cluster: cluster.into(),
                data_dir: dirs[i].path().to_path_buf(),
                members: members.clone(),
                raft: Default::default(),
                api: Default::default(),
                admin_keys: vec![hex::encode(admin_key().public())],
                roles_file: None,
                events: Default::default(),
                tls: TlsFiles::in_dir(certs.path(), i as u64 + 1),
                token_key: certs.path().join("token.key"),
                token_ttl_ms: garrison::server::default_token_ttl_ms(),
                cache_bytes: garrison::server::default_cache_bytes(),
                api_tls: None,
            };
            edit(&mut config);
            configs.push(config.clone());
            servers.push(Some(
                Server::start_with_all_listeners(config, peer, api_listener, Some(http_listener))
                    .await
                    .expect("server starts"),
            ));
        }
        let endpoints = members.iter().map(|m| m.api_addr.clone()).collect();
        Servers {
            servers,
            admin: tokio::sync::Mutex::new(Player::new(admin_key())),
            configs,
            endpoints,
            _dirs: dirs,
            _certs: certs,
        }
    }

    /// The configuration of the server at position `i`.
    pub fn config(&self, i: usize) -> &ServerConfig {
        &self.configs[i]
    }

    /// The running server at position `i`.
    pub fn server(&self, i: usize) -> &Server {
        self.servers[i].as_ref().expect("server is running")
    }

    /// Stops server `i` (its data stays).
    pub async fn stop(&mut self, i: usize) {
        let server = self.servers[i].take().expect("server is running");
        server.shutdown().await;
    }

    /// Restarts server `i` from its data, on its old addresses, retrying
    /// while the old instance's ports and database lock are released.
    pub async fn restart(&mut self, i: usize) {
        let started = Instant::now();
        loop {
            match Server::start(self.configs[i].clone()).await {
                Ok(server) => {
                    self.servers[i] = Some(server);
                    return;
                }
                Err(e) => {
                    assert!(
                        started.elapsed() < WAIT,
                        "server {i} did not restart: {e:#}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A client, once the cluster answers, logged in as the admin (who may
    /// read everything).
    pub async fn client(&self) -> Client {
        self.client_with(Default::default()).await
    }

    /// Like [`Servers::client`], connecting with `options` (e.g. TLS).
    pub async fn client_with(&self, options: garrison_client::ClientOptions) -> Client {
        let started = Instant::now();
        loop {
            if let Ok(client) = Client::connect_with(&self.endpoints, options.clone()).await {
                if client.login(&admin_key()).await.is_ok() {
                    return client;
                }
            }
            assert!(started.elapsed() < WAIT, "the cluster never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Creates `name` with the admin key; it can take transactions when
    /// this returns.
    pub async fn create_location(&self, client: &Client, name: &str) {
        self.admin
            .lock()
            .await
            .create_location(client, name)
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    }

    /// A client that talks to node `i` only, logged in as the admin.
    pub async fn pinned_client(&self, i: usize) -> Client {
        self.pinned_client_as(i, &admin_key()).await
    }

    /// A client that talks to node `i` only, logged in as `key`.
    pub async fn pinned_client_as(&self, i: usize, key: &Keypair) -> Client {
        let options = garrison_client::ClientOptions {
            discover: false,
            ..Default::default()
        };
        let endpoints = [self.endpoints[i].clone()];
        let started = Instant::now();
        loop {
            if let Ok(client) = Client::connect_with(&endpoints, options.clone()).await {
                if client.login(key).await.is_ok() {
                    return client;
                }
            }
            assert!(started.elapsed() < WAIT, "node {i} never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(self) {
        for s in self.servers.iter().flatten() {
            s.shutdown().await;
        }
    }
}
