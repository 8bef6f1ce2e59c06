//! Shared by the integration tests: a recording test app and an in-process
//! cluster of real nodes (real sled in temporary directories, real tarpc
//! over real mutual TLS on loopback, with a CA made for each cluster).

#![allow(dead_code)]

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use garrison_raft::certs::ensure_dev_certs;
use garrison_raft::codec;
use garrison_raft::network::{PeerClient, PeerTls, TlsFiles};
use garrison_raft::storage::state::AppliedState;
use garrison_raft::{
    AppFactory, ApplyContext, GroupApp, GroupId, Node, NodeConfig, NodeId, RaftConfig,
};
use serde::{Deserialize, Serialize};

/// Generous bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(30);

/// An app that records every payload it applied, with its index and log
/// time, so replicas can be compared entry by entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordApp {
    pub applied: Vec<(u64, u64, Vec<u8>)>,
}

impl GroupApp for RecordApp {
    fn apply(&mut self, ctx: &ApplyContext<'_>, payload: &[u8]) -> Vec<u8> {
        self.applied
            .push((ctx.index, ctx.log_time_ms, payload.to_vec()));
        codec::encode(&(self.applied.len() as u64))
    }
    fn query(&self, _query: &[u8]) -> Vec<u8> {
        codec::encode(&(self.applied.len() as u64))
    }
    fn snapshot(&self) -> Vec<u8> {
        codec::encode(self)
    }
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        *self = codec::decode(snapshot).map_err(|e| e.to_string())?;
        Ok(())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub struct RecordFactory;

impl AppFactory for RecordFactory {
    fn create(&self, _group: GroupId, _location: &str) -> Box<dyn GroupApp> {
        Box::new(RecordApp::default())
    }
}

/// The payloads a replica applied, in order.
pub fn payloads(state: &AppliedState) -> Vec<Vec<u8>> {
    let app = state
        .app
        .as_any()
        .downcast_ref::<RecordApp>()
        .expect("a RecordApp group");
    app.applied.iter().map(|(_, _, p)| p.clone()).collect()
}

/// The full recorded state of a replica.
pub fn record(state: &AppliedState) -> RecordApp {
    state
        .app
        .as_any()
        .downcast_ref::<RecordApp>()
        .expect("a RecordApp group")
        .clone()
}

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

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Timing for tests: the defaults, but snapshots only when a test asks.
pub fn test_config() -> RaftConfig {
    RaftConfig {
        snapshot_logs_since_last: 1_000_000,
        snapshot_logs_to_keep: 0,
        ..RaftConfig::default()
    }
}

/// Real nodes in one process, each with its own sled directory and port.
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Option<Node>>,
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    pub dirs: BTreeMap<NodeId, std::path::PathBuf>,
    _temp: Vec<tempfile::TempDir>,
    /// The cluster's CA and node certificates.
    pub certs: tempfile::TempDir,
    config: RaftConfig,
}

/// A certificate directory with a new CA and certificates for `nodes`.
pub fn new_certs(nodes: impl IntoIterator<Item = NodeId>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let nodes: Vec<NodeId> = nodes.into_iter().collect();
    ensure_dev_certs(dir.path(), &nodes).expect("test certificates");
    dir
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) that bootstrap one cluster.
    pub async fn start(n: u64, config: RaftConfig) -> Self {
        init_tracing();
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for id in 1..=n {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            addrs.insert(id, listener.local_addr().unwrap());
            listeners.insert(id, listener);
        }
        let temp: Vec<tempfile::TempDir> = (1..=n).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            addrs,
            dirs: (1..=n)
                .map(|id| (id, temp[id as usize - 1].path().to_path_buf()))
                .collect(),
            _temp: temp,
            certs: new_certs(1..=n),
            config,
        };
        for (id, listener) in listeners {
            let node = Node::start_with_listener(
                cluster.node_config(id),
                listener,
                Arc::new(RecordFactory),
            )
            .await
            .expect("node starts");
            cluster.nodes.insert(id, Some(node));
        }
        cluster
    }

    fn node_config(&self, id: NodeId) -> NodeConfig {
        NodeConfig {
            node_id: id,
            listen_addr: self.addrs[&id],
            data_dir: self.dirs[&id].clone(),
            cluster_name: "test".into(),
            members: self
                .addrs
                .iter()
                .map(|(id, a)| (*id, a.to_string()))
                .collect(),
            raft: self.config.clone(),
            tls: TlsFiles::in_dir(self.certs.path(), id),
        }
    }

    /// A peer connection to node `target` as node `from` (with `from`'s
    /// certificate), to send it requests of our choosing.
    pub async fn connect_as(
        &self,
        target: NodeId,
        from: NodeId,
        config: &RaftConfig,
    ) -> PeerClient {
        garrison_raft::network::client::connect(
            &self.addrs[&target].to_string(),
            target,
            &self.peer_tls(from),
            config,
        )
        .await
        .expect("connect over TLS")
    }

    /// The TLS identity of node `id` (any id: a certificate is issued by the
    /// cluster's CA if there is none), to talk to the cluster as that node.
    pub fn peer_tls(&self, id: NodeId) -> PeerTls {
        ensure_dev_certs(self.certs.path(), &[id]).expect("test certificate");
        PeerTls::load(&TlsFiles::in_dir(self.certs.path(), id), id).expect("test identity")
    }

    /// Starts nodes on directories and addresses a previous cluster left
    /// (the caller owns the directories).
    pub async fn resume(
        dirs: Vec<std::path::PathBuf>,
        addrs: Vec<SocketAddr>,
        config: RaftConfig,
    ) -> Self {
        init_tracing();
        let ids: Vec<NodeId> = (1..=dirs.len() as NodeId).collect();
        let mut cluster = Cluster {
            nodes: ids.iter().map(|id| (*id, None)).collect(),
            addrs: ids.iter().copied().zip(addrs).collect(),
            dirs: ids.iter().copied().zip(dirs).collect(),
            _temp: Vec::new(),
            certs: new_certs(ids.iter().copied()),
            config,
        };
        for id in ids {
            cluster.restart(id).await;
        }
        cluster
    }

    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes[&id].as_ref().expect("node is running")
    }

    pub fn running(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Stops a node the way a crash would, as far as its peers can tell: its
    /// groups and listener stop at once.
    pub async fn stop(&mut self, id: NodeId) {
        let node = self
            .nodes
            .get_mut(&id)
            .unwrap()
            .take()
            .expect("node is running");
        node.shutdown().await;
    }

    /// Restarts a stopped node from its directory on its old port, retrying
    /// while the old instance's database lock and port are released.
    pub async fn restart(&mut self, id: NodeId) {
        let started = Instant::now();
        let node = loop {
            match Node::start(self.node_config(id), Arc::new(RecordFactory)).await {
                Ok(node) => break node,
                Err(e) => {
                    assert!(started.elapsed() < WAIT, "node {id} did not restart: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.nodes.insert(id, Some(node));
    }

    /// Waits until every running node agrees on one leader of `group`.
    pub async fn leader(&self, group: GroupId) -> NodeId {
        let mut leader = 0;
        eventually(&format!("a leader of group {group}"), || {
            let views: Vec<Option<NodeId>> = self
                .running()
                .iter()
                .filter(|id| self.node(**id).groups().contains(&group))
                .map(|id| self.node(*id).leader(group))
                .collect();
            let agreed = !views.is_empty()
                && views.iter().all(|v| v.is_some() && *v == views[0])
                && self.running().contains(&views[0].unwrap());
            if agreed {
                leader = views[0].unwrap();
            }
            async move { agreed }
        })
        .await;
        leader
    }

    /// Waits until every running replica of `group` has applied `index`.
    pub async fn wait_applied(&self, group: GroupId, index: u64) {
        for id in self.running() {
            self.node(id)
                .wait_applied(group, index, WAIT)
                .await
                .expect("replica catches up");
        }
    }

    pub async fn shutdown(mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }
}
