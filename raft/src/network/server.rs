//! The receiving side: a TCP listener that serves the [`Peer`] RPCs and
//! dispatches each request to the group its header names.
//!
//! Every connection starts with a mutual TLS handshake ([`super::tls`]); one
//! that fails (no certificate, another CA, plaintext) or takes over
//! `handshake_timeout_ms` is closed. The peer's node id comes from its
//! certificate, and every request's `Header.from` must be that node.
//!
//! Limits enforced here: `max_peer_connections` open connections, handshakes
//! included (more are closed at once), `max_frame_bytes` per frame and
//! `max_in_flight_requests_per_connection` concurrent requests per
//! connection (tarpc answers further ones with an error). A frame that is too
//! long or does not decode ends that connection only.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use tarpc::server::{self, BaseChannel, Channel};
use tarpc::{context, serde_transport};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use garrison_wire::within;

use super::client::frame_codec;
use super::{
    Header, Peer, PeerError, PeerTls, ReadConsistency, ReadReply, WriteReply, PEER_PROTOCOL_VERSION,
};
use crate::codec::Bincode2;
use crate::config::RaftConfig;
use crate::typ::{
    AppendEntriesRequest, AppendEntriesResponse, GroupId, InstallSnapshotRequest,
    InstallSnapshotResponse, NodeId, Raft, VoteRequest, VoteResponse,
};

/// What the listener needs from the node: its groups, and a way to propose.
pub trait Dispatch: Send + Sync + 'static {
    /// The local Raft of `group`, if this node hosts it.
    fn raft(&self, group: GroupId) -> Option<Raft>;

    /// Proposes `payload` to `group` if this node leads it (no further forwarding).
    fn write_as_leader(
        &self,
        group: GroupId,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<WriteReply, PeerError>> + Send;

    /// The read index of `group` if this node leads it.
    fn read_index_as_leader(
        &self,
        group: GroupId,
    ) -> impl Future<Output = Result<u64, PeerError>> + Send;

    /// This run of the node: a number that grows when it restarts; `None`
    /// until the node has opened its groups.
    fn boot_id(&self) -> Option<u64>;

    /// Answers a query from the local replica of `group`.
    fn read_here(
        &self,
        group: GroupId,
        query: Vec<u8>,
        consistency: ReadConsistency,
    ) -> impl Future<Output = Result<ReadReply, PeerError>> + Send;
}

/// A running peer listener; it stops when cancelled through its token.
pub struct PeerListener {
    local_addr: SocketAddr,
}

impl PeerListener {
    /// Binds `addr` and serves peers, over TLS as `tls`'s node, until
    /// `stop` is cancelled.
    pub async fn start<D: Dispatch>(
        addr: SocketAddr,
        config: Arc<RaftConfig>,
        tls: PeerTls,
        dispatch: Arc<D>,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        Self::start_on(TcpListener::bind(addr).await?, config, tls, dispatch, stop)
    }

    /// Serves peers on an already bound listener until `stop` is cancelled.
    pub fn start_on<D: Dispatch>(
        listener: TcpListener,
        config: Arc<RaftConfig>,
        tls: PeerTls,
        dispatch: Arc<D>,
        stop: CancellationToken,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let limit = config.max_peer_connections;
        tokio::spawn(garrison_wire::accept_connections(
            listener,
            limit,
            "peer",
            stop.clone(),
            move |stream, addr, permit| {
                let serve =
                    serve_connection(stream, addr, tls.clone(), config.clone(), dispatch.clone());
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = serve => {}
                    }
                    drop(permit);
                });
            },
        ));
        Ok(Self { local_addr })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// One inbound connection: the TLS handshake (bounded by
/// `handshake_timeout_ms`), then the peer's requests until it closes.
async fn serve_connection<D: Dispatch>(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    tls: PeerTls,
    config: Arc<RaftConfig>,
    dispatch: Arc<D>,
) {
    let what = format!("the TLS handshake with {addr}");
    let (stream, peer) = match within(config.handshake_timeout_ms, what, tls.accept(stream)).await {
        Ok(accepted) => accepted,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "refusing a peer connection: TLS handshake failed");
            return;
        }
    };
    let transport = serde_transport::new(
        Framed::new(stream, frame_codec(&config)),
        Bincode2::default(),
    );
    let channel = BaseChannel::new(server::Config::default(), transport)
        .max_concurrent_requests(config.max_in_flight_requests_per_connection);
    let server = PeerServer {
        dispatch,
        config,
        peer,
    };
    channel
        .execute(server.serve())
        .for_each(|request| async {
            tokio::spawn(request);
        })
        .await;
    tracing::debug!(%addr, peer, "peer connection closed");
}

/// Serves one connection's requests.
struct PeerServer<D> {
    dispatch: Arc<D>,
    config: Arc<RaftConfig>,
    /// The node the connection's certificate identifies.
    peer: NodeId,
}

impl<D> Clone for PeerServer<D> {
    fn clone(&self) -> Self {
        Self {
            dispatch: self.dispatch.clone(),
            config: self.config.clone(),
            peer: self.peer,
        }
    }
}

impl<D: Dispatch> PeerServer<D> {
    /// The group's Raft, for a Raft message: the sender must be a member of
    /// that group (a removed member is refused and logged).
    fn group(&self, header: &Header) -> Result<Raft, PeerError> {
        let raft = self.any_member(header)?;
        check_member(&raft, header, header.group)?;
        Ok(raft)
    }

    /// The group's Raft, for a forwarded request: the sender must be the
    /// connection's certified node and a member of the cluster (the meta
    /// group), not necessarily of the group.
    fn any_member(&self, header: &Header) -> Result<Raft, PeerError> {
        if header.version != PEER_PROTOCOL_VERSION {
            return Err(PeerError::Version {
                got: header.version,
                supported: PEER_PROTOCOL_VERSION,
            });
        }
        if header.from != self.peer {
            tracing::warn!(
                claimed = header.from,
                certified = self.peer,
                group = header.group,
                "refusing a peer request that names another sender than its certificate"
            );
            return Err(PeerError::ForgedSender {
                claimed: header.from,
                certified: self.peer,
            });
        }
        let raft = self
            .dispatch
            .raft(header.group)
            .ok_or(PeerError::UnknownGroup(header.group))?;
        if let Some(meta) = self.dispatch.raft(crate::typ::META_GROUP) {
            check_member(&meta, header, crate::typ::META_GROUP)?;
        }
        Ok(raft)
    }
}

/// Refuses `header.from` unless it is in `raft`'s membership (voter or
/// learner). A group that has no membership yet (being created) accepts
/// anyone, so that it can be initialized and elect.
fn check_member(raft: &Raft, header: &Header, group: crate::typ::GroupId) -> Result<(), PeerError> {
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    if membership.nodes().next().is_some() && membership.get_node(&header.from).is_none() {
        tracing::warn!(
            from = header.from,
            group,
            "refusing a peer request from a node that is not a member"
        );
        return Err(PeerError::NotAMember {
            node: header.from,
            group,
        });
    }
    Ok(())
}

impl<D: Dispatch> Peer for PeerServer<D> {
    async fn append_entries(
        self,
        _: context::Context,
        header: Header,
        rpc: AppendEntriesRequest,
    ) -> Result<AppendEntriesResponse, PeerError> {
        let raft = self.group(&header)?;
        let entries = rpc.entries.len() as u64;
        if entries > self.config.max_entries_per_append {
            return Err(PeerError::TooManyEntries {
                entries,
                max: self.config.max_entries_per_append,
            });
        }
        raft.append_entries(rpc)
            .await
            .map_err(|e| PeerError::Raft(Box::new(e)))
    }

    async fn vote(
        self,
        _: context::Context,
        header: Header,
        rpc: VoteRequest,
    ) -> Result<VoteResponse, PeerError> {
        self.group(&header)?
            .vote(rpc)
            .await
            .map_err(|e| PeerError::Raft(Box::new(e)))
    }

    async fn install_snapshot(
        self,
        _: context::Context,
        header: Header,
        rpc: InstallSnapshotRequest,
    ) -> Result<InstallSnapshotResponse, PeerError> {
        self.group(&header)?
            .install_snapshot(rpc)
            .await
            .map_err(|e| PeerError::InstallSnapshot(Box::new(e)))
    }

    async fn forward_write(
        self,
        _: context::Context,
        header: Header,
        payload: Vec<u8>,
    ) -> Result<WriteReply, PeerError> {
        self.any_member(&header)?;
        let bytes = payload.len() as u64;
        if bytes > self.config.max_proposal_bytes {
            return Err(PeerError::ProposalTooLarge {
                bytes,
                max: self.config.max_proposal_bytes,
            });
        }
        self.dispatch.write_as_leader(header.group, payload).await
    }

    async fn read_index(self, _: context::Context, header: Header) -> Result<u64, PeerError> {
        self.any_member(&header)?;
        self.dispatch.read_index_as_leader(header.group).await
    }

    async fn ping(self, _: context::Context, header: Header) -> Result<u64, PeerError> {
        self.any_member(&header)?;
        self.dispatch.boot_id().ok_or(PeerError::Starting)
    }

    async fn forward_read(
        self,
        _: context::Context,
        header: Header,
        query: Vec<u8>,
        consistency: ReadConsistency,
    ) -> Result<ReadReply, PeerError> {
        self.any_member(&header)?;
        let bytes = query.len() as u64;
        if bytes > self.config.max_proposal_bytes {
            return Err(PeerError::ProposalTooLarge {
                bytes,
                max: self.config.max_proposal_bytes,
            });
        }
        self.dispatch
            .read_here(header.group, query, consistency)
            .await
    }
}
