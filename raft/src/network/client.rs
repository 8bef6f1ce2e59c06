//! The sending side: one tarpc connection per peer node, shared by every
//! group, over mutual TLS, reconnected with exponential backoff; and the
//! per-group [`RaftNetworkFactory`] openraft uses to reach its peers over it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use garrison_wire::within;
use openraft::error::{NetworkError, RPCError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use tarpc::client::RpcError;
use tarpc::{client, context, serde_transport};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::{
    Header, PeerClient, PeerError, PeerTls, ReadConsistency, ReadReply, WriteReply,
    PEER_PROTOCOL_VERSION,
};
use crate::codec::Bincode2;
use crate::config::RaftConfig;
use crate::error::Error;
use crate::typ::{
    AppendEntriesRequest, AppendEntriesResponse, GroupId, InstallSnapshotRequest,
    InstallSnapshotResponse, Node, NodeId, TypeConfig, VoteRequest, VoteResponse,
};

/// The connections of one node to its peers.
pub struct PeerPool {
    me: NodeId,
    config: Arc<RaftConfig>,
    tls: PeerTls,
    slots: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Slot>>>>,
}

/// One peer's connection state.
struct Slot {
    addr: String,
    client: Option<(PeerClient, u64)>,
    generation: u64,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The last attempt to connect failed: said once, at warn level, and
    /// once more when a connection succeeds again. Every group's messages
    /// to the peer fail meanwhile; openraft's per-group reports of them are
    /// left out of the default log (see the `garrison` binary's logging).
    down: bool,
}

/// Opens a tarpc connection to node `target`'s listener at `addr`, over TLS
/// as `tls`'s node, with the configured limits.
pub async fn connect(
    addr: &str,
    target: NodeId,
    tls: &PeerTls,
    config: &RaftConfig,
) -> std::io::Result<PeerClient> {
    let stream = connect_tls(addr, target, tls, config).await?;
    Ok(client_over(stream, config))
}

/// A tarpc peer client over an established byte stream (garrison's framing
/// and encoding, the configured limits). [`connect`] uses it on a TLS
/// stream; tests use it to speak the protocol over streams TLS should refuse.
pub fn client_over<S>(stream: S, config: &RaftConfig) -> PeerClient
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let framed = Framed::new(stream, frame_codec(config));
    let transport = serde_transport::new(framed, Bincode2::default());
    let mut client_config = client::Config::default();
    client_config.max_in_flight_requests = config.max_in_flight_requests_per_connection;
    PeerClient::new(client_config, transport).spawn()
}

/// A TLS stream to node `target` at `addr`: the TCP connection within
/// `connect_timeout_ms`, the handshake within `handshake_timeout_ms`.
pub async fn connect_tls(
    addr: &str,
    target: NodeId,
    tls: &PeerTls,
    config: &RaftConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = within(
        config.connect_timeout_ms,
        format!("connecting to {addr}"),
        TcpStream::connect(addr),
    )
    .await?;
    stream.set_nodelay(true)?;
    within(
        config.handshake_timeout_ms,
        format!("the TLS handshake with node {target} at {addr}"),
        tls.connect(stream, target),
    )
    .await
}

/// The length-prefix framing of peer connections, with the frame limit.
pub(crate) fn frame_codec(config: &RaftConfig) -> LengthDelimitedCodec {
    garrison_wire::frame_codec(config.max_frame_bytes as usize)
}

/// A tarpc context whose deadline is `ttl` from now.
fn deadline(ttl: Duration) -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + ttl;
    ctx
}

impl PeerPool {
    /// An empty pool for node `me`, which connects as `tls`'s node.
    pub fn new(me: NodeId, config: Arc<RaftConfig>, tls: PeerTls) -> Arc<Self> {
        assert_eq!(me, tls.me(), "a node connects with its own certificate");
        Arc::new(Self {
            me,
            config,
            tls,
            slots: Mutex::new(HashMap::new()),
        })
    }

    /// The header for a request about `group`.
    pub fn header(&self, group: GroupId) -> Header {
        Header {
            version: PEER_PROTOCOL_VERSION,
            from: self.me,
            group,
        }
    }

    fn slot(&self, node: NodeId, addr: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self.slots.lock().expect("peer table lock");
        slots
            .entry(node)
            .or_insert_with(|| {
                Arc::new(tokio::sync::Mutex::new(Slot {
                    addr: addr.to_string(),
                    client: None,
                    generation: 0,
                    retry_at: None,
                    backoff: Duration::from_millis(self.config.reconnect_backoff_min_ms),
                    down: false,
                }))
            })
            .clone()
    }

    /// The shared connection to `node` at `addr`, connecting if there is none
    /// and the backoff after the last failure has passed. Returns the client
    /// and its generation, to hand back to [`Self::forget`] on failure.
    pub async fn client(&self, node: NodeId, addr: &str) -> Result<(PeerClient, u64), Error> {
        let slot = self.slot(node, addr);
        let mut slot = slot.lock().await;
        if slot.addr != addr {
            // The peer moved: drop the old connection.
            slot.addr = addr.to_string();
            slot.client = None;
            slot.retry_at = None;
        }
        if let Some((client, generation)) = &slot.client {
            return Ok((client.clone(), *generation));
        }
        if let Some(at) = slot.retry_at {
            if Instant::now() < at {
                return Err(Error::Unreachable {
                    node,
                    reason: format!("backing off after failing to connect to {addr}"),
                });
            }
        }
        match connect(addr, node, &self.tls, &self.config).await {
            Ok(client) => {
                slot.generation += 1;
                slot.client = Some((client.clone(), slot.generation));
                slot.retry_at = None;
                slot.backoff = Duration::from_millis(self.config.reconnect_backoff_min_ms);
                if std::mem::take(&mut slot.down) {
                    tracing::info!(peer = node, addr, "peer node {node} is reachable again");
                } else {
                    tracing::debug!(peer = node, addr, "connected");
                }
                Ok((client, slot.generation))
            }
            Err(e) => {
                slot.retry_at = Some(Instant::now() + slot.backoff);
                slot.backoff = (slot.backoff * 2)
                    .min(Duration::from_millis(self.config.reconnect_backoff_max_ms));
                let reason = format!("connecting to {addr}: {e}");
                if !std::mem::replace(&mut slot.down, true) {
                    tracing::warn!(
                        peer = node,
                        addr,
                        "peer node {node} is unreachable ({reason}); retrying with backoff"
                    );
                }
                Err(Error::Unreachable { node, reason })
            }
        }
    }

    /// Drops the connection of `generation` to `node` after it failed, so the
    /// next call reconnects. A newer connection is left alone.
    pub async fn forget(&self, node: NodeId, generation: u64) {
        let slot = self
            .slots
            .lock()
            .expect("peer table lock")
            .get(&node)
            .cloned();
        if let Some(slot) = slot {
            let mut slot = slot.lock().await;
            if matches!(&slot.client, Some((_, g)) if *g == generation) {
                slot.client = None;
                tracing::debug!(peer = node, "connection dropped");
            }
        }
    }

    /// Sends a client write for `group` to `node`, which should lead it.
    pub async fn forward_write(
        &self,
        node: NodeId,
        addr: &str,
        group: GroupId,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<WriteReply, Error> {
        let (client, generation) = self.client(node, addr).await?;
        let result = client
            .forward_write(deadline(timeout), self.header(group), payload)
            .await;
        self.reply(node, generation, result).await
    }

    /// Asks `node`, which should lead `group`, for a read index.
    pub async fn read_index(
        &self,
        node: NodeId,
        addr: &str,
        group: GroupId,
        timeout: Duration,
    ) -> Result<u64, Error> {
        let (client, generation) = self.client(node, addr).await?;
        let result = client
            .read_index(deadline(timeout), self.header(group))
            .await;
        self.reply(node, generation, result).await
    }

    /// Pings `node`: its boot id, if it answered within `timeout`.
    pub async fn ping(&self, node: NodeId, addr: &str, timeout: Duration) -> Result<u64, Error> {
        let (client, generation) = self.client(node, addr).await?;
        let result = client
            .ping(deadline(timeout), self.header(crate::typ::META_GROUP))
            .await;
        self.reply(node, generation, result).await
    }

    /// Asks `node`, a replica of `group`, to answer a query.
    pub async fn forward_read(
        &self,
        node: NodeId,
        addr: &str,
        group: GroupId,
        query: Vec<u8>,
        consistency: ReadConsistency,
        timeout: Duration,
    ) -> Result<ReadReply, Error> {
        let (client, generation) = self.client(node, addr).await?;
        let result = client
            .forward_read(deadline(timeout), self.header(group), query, consistency)
            .await;
        self.reply(node, generation, result).await
    }

    /// Maps a forwarded request's outcome to the crate's errors, dropping
    /// the connection when the transport failed.
    async fn reply<T>(
        &self,
        node: NodeId,
        generation: u64,
        result: Result<Result<T, PeerError>, RpcError>,
    ) -> Result<T, Error> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(PeerError::NotLeader { group, leader })) => {
                Err(Error::NotLeader { group, leader })
            }
            Ok(Err(PeerError::UnknownGroup(group))) => Err(Error::UnknownGroup(group)),
            Ok(Err(PeerError::Behind {
                group,
                applied,
                wanted,
            })) => Err(Error::Behind {
                group,
                applied,
                wanted,
            }),
            Ok(Err(error)) => Err(Error::Remote {
                node,
                error: Box::new(error),
            }),
            Err(RpcError::DeadlineExceeded) => {
                Err(Error::Timeout(format!("request forwarded to node {node}")))
            }
            Err(e) => {
                self.forget(node, generation).await;
                Err(Error::Unreachable {
                    node,
                    reason: e.to_string(),
                })
            }
        }
    }
}

/// Makes openraft's per-peer clients for one group.
#[derive(Clone)]
pub struct GroupNetworkFactory {
    pool: Arc<PeerPool>,
    group: GroupId,
}

impl GroupNetworkFactory {
    /// A factory for `group`'s traffic over `pool`.
    pub fn new(pool: Arc<PeerPool>, group: GroupId) -> Self {
        Self { pool, group }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = GroupNetwork;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> GroupNetwork {
        GroupNetwork {
            pool: self.pool.clone(),
            group: self.group,
            target,
            addr: node.addr.clone(),
        }
    }
}

/// openraft's view of one peer of one group.
pub struct GroupNetwork {
    pool: Arc<PeerPool>,
    group: GroupId,
    target: NodeId,
    addr: String,
}

type Rpc<T, E> = Result<T, RPCError<NodeId, Node, E>>;

impl GroupNetwork {
    /// Maps a tarpc outcome to what openraft expects: transport failures are
    /// `Unreachable` (openraft backs off), a missing group too (the peer has
    /// not created it yet), and the remote Raft's own refusals are
    /// `RemoteError`.
    async fn outcome<T, E: std::error::Error>(
        &self,
        generation: u64,
        result: Result<Result<T, PeerError>, RpcError>,
        remote: impl FnOnce(PeerError) -> Result<E, PeerError>,
    ) -> Rpc<T, E> {
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => match remote(error) {
                Ok(e) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
                Err(e @ PeerError::UnknownGroup(_)) => {
                    Err(RPCError::Unreachable(Unreachable::new(&e)))
                }
                Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
            },
            // A deadline, or the peer refusing one request (busy): the
            // connection itself is fine.
            Err(e @ (RpcError::DeadlineExceeded | RpcError::Server(_))) => {
                Err(RPCError::Network(NetworkError::new(&e)))
            }
            Err(e) => {
                self.pool.forget(self.target, generation).await;
                Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
        }
    }

    async fn connection<E: std::error::Error>(&self) -> Rpc<(PeerClient, u64), E> {
        self.pool
            .client(self.target, &self.addr)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))
    }
}

impl RaftNetwork<TypeConfig> for GroupNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse, crate::typ::RaftError> {
        let (client, generation) = self.connection().await?;
        let result = client
            .append_entries(
                deadline(option.hard_ttl()),
                self.pool.header(self.group),
                rpc,
            )
            .await;
        self.outcome(generation, result, |e| match e {
            PeerError::Raft(e) => Ok(*e),
            other => Err(other),
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse, crate::typ::InstallSnapshotError> {
        let (client, generation) = self.connection().await?;
        let result = client
            .install_snapshot(
                deadline(option.hard_ttl()),
                self.pool.header(self.group),
                rpc,
            )
            .await;
        self.outcome(generation, result, |e| match e {
            PeerError::InstallSnapshot(e) => Ok(*e),
            other => Err(other),
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest,
        option: RPCOption,
    ) -> Rpc<VoteResponse, crate::typ::RaftError> {
        let (client, generation) = self.connection().await?;
        let result = client
            .vote(
                deadline(option.hard_ttl()),
                self.pool.header(self.group),
                rpc,
            )
            .await;
        self.outcome(generation, result, |e| match e {
            PeerError::Raft(e) => Ok(*e),
            other => Err(other),
        })
        .await
    }

    fn backoff(&self) -> Backoff {
        // openraft pauses replication to the peer this long after
        // `Unreachable` (and logs each failure). Well under the election
        // timeout, so one dropped connection does not starve a follower of
        // heartbeats into an election; the pool's own backoff already
        // spaces out the reconnection attempts.
        let wait = Duration::from_millis((self.pool.config.election_timeout_min_ms / 3).max(1));
        Backoff::new(std::iter::repeat(wait))
    }
}
