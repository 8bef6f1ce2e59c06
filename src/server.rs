//! One garrison node: its configuration file, the consensus node, and the
//! client API listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use futures::StreamExt;
use garrison_client::api::Garrison;
use garrison_client::events::EventRetention;
use garrison_client::tls::ServerTls;
use garrison_client::tx::PlayerKey;
use garrison_raft::network::TlsFiles;
use garrison_raft::{Node, NodeConfig, RaftConfig};
use serde::{Deserialize, Serialize};
use tarpc::serde_transport;
use tarpc::server::{self, BaseChannel, Channel};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::api::service::ApiService;
use crate::cache::{EntityCache, DEFAULT_CACHE_BYTES};
use crate::cep::ticks::{self, Deadlines};
use crate::events::observers::EventHub;
use crate::security::access::{Policy, RolesFile, DEFAULT_ROLES_TOML};
use crate::security::propagate;
use crate::security::session::{self, Sessions};
use crate::state::location::LocationFactory;

/// Room for the framing of a policy entry around the policy itself.
const POLICY_ENTRY_OVERHEAD_BYTES: usize = 1024;

/// One member of the cluster, as every node's configuration lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The node's id.
    pub id: u64,
    /// Its peer (Raft) address.
    pub peer_addr: String,
    /// Its client API address.
    pub api_addr: String,
    /// Its HTTP/JSON API address (`docs/http.md`), if it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<String>,
}

/// Limits of the client port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiLimits {
    /// Largest frame a client may send.
    pub max_frame_bytes: u64,
    /// Client connections open at once; more are closed at once.
    pub max_connections: usize,
    /// Requests one client connection may have in flight.
    pub max_in_flight_requests_per_connection: usize,
    /// Requests per second one connection may send, on average.
    pub connection_requests_per_s: u32,
    /// Requests one connection may send in a burst above that rate.
    pub connection_burst: u32,
    /// Transactions per second one player may submit (through any connection
    /// to this node), on average. Charged after the signature verifies, so a
    /// forger cannot spend someone else's allowance.
    pub player_transactions_per_s: u32,
    /// Transactions one player may submit in a burst above that rate.
    pub player_burst: u32,
    /// A connection that sends no request this long after it opens is
    /// closed (with `api_tls`, its TLS handshake must also end within it).
    pub handshake_timeout_ms: u64,
    /// A connection with no request for this long is closed.
    pub idle_timeout_ms: u64,
    /// Event reads (long polls) one connection may have waiting at once.
    pub max_event_polls_per_connection: u32,
    /// Event reads (long polls) this node keeps waiting at once, over every
    /// connection.
    pub max_event_polls: u32,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1024 * 1024,
            max_connections: 1024,
            max_in_flight_requests_per_connection: 256,
            connection_requests_per_s: 20_000,
            connection_burst: 40_000,
            player_transactions_per_s: 2_000,
            player_burst: 4_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            max_event_polls_per_connection: 8,
            max_event_polls: 1024,
        }
    }
}

/// How many events each location keeps: the cluster's, set when it is
/// bootstrapped (by the first node that bootstraps it; later edits change
/// nothing in a running cluster). Every replica trims at the same event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Most events a location keeps.
    pub max_retained_events: u64,
    /// Most bytes of encoded events a location keeps (the newest entry's
    /// events are kept whole beyond it).
    pub max_retained_event_bytes: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        let retention = EventRetention::default();
        Self {
            max_retained_events: retention.max_events,
            max_retained_event_bytes: retention.max_bytes,
        }
    }
}

impl EventsConfig {
    /// The retention it sets, checked.
    pub fn retention(&self) -> anyhow::Result<EventRetention> {
        let retention = EventRetention {
            max_events: self.max_retained_events,
            max_bytes: self.max_retained_event_bytes,
        };
        retention.check().map_err(|e| anyhow::anyhow!(e))?;
        Ok(retention)
    }
}

/// The default size of the entity cache.
pub fn default_cache_bytes() -> u64 {
    DEFAULT_CACHE_BYTES
}

/// The default lifetime of session tokens: an hour.
pub fn default_token_ttl_ms() -> u64 {
    60 * 60 * 1000
}

/// A node's configuration file (TOML); `garrison.example.toml` shows one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This node's id (one of `members`).
    pub node_id: u64,
    /// The cluster's name; the same on every node, and in every transaction.
    pub cluster: String,
    /// Where this node keeps its sled database.
    pub data_dir: PathBuf,
    /// Every member of the cluster, this node included.
    pub members: Vec<Member>,
    /// Raft timing and peer limits.
    #[serde(default)]
    pub raft: RaftConfig,
    /// Client port limits.
    #[serde(default)]
    pub api: ApiLimits,
    /// Public keys (hex) that hold the admin role when this node bootstraps
    /// the cluster's access policy. Used once, by the first node to start
    /// with a non-empty list; later changes go through admin transactions.
    #[serde(default)]
    pub admin_keys: Vec<String>,
    /// The roles the cluster starts with (default: the built-in
    /// `policy/roles.toml`). Read at bootstrap only.
    #[serde(default)]
    pub roles_file: Option<PathBuf>,
    /// How many events each location keeps. Read at bootstrap only.
    #[serde(default)]
    pub events: EventsConfig,
    /// The cluster's session-token key (a key file, the same on every node;
    /// `garrison certs` writes one as `token.key`). Required: reads need tokens.
    pub token_key: PathBuf,
    /// How long the session tokens this node issues last, in milliseconds
    /// of log time (at most 24 h).
    #[serde(default = "default_token_ttl_ms")]
    pub token_ttl_ms: u64,
    /// Bytes of committed entity data this node caches for reads (0: no
    /// cache; every read asks the replica's state machine).
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// Mutual TLS between nodes (required): the cluster CA, this node's
    /// certificate (naming `node-<node_id>.garrison`) and its key. Relative
    /// paths are relative to the working directory, like `data_dir`.
    pub tls: TlsFiles,
    /// TLS on the client port (optional): with it, clients connect only
    /// over TLS and check this certificate against their CA and the host
    /// they dialled. Without it the client port is plaintext.
    #[serde(default)]
    pub api_tls: Option<ApiTlsFiles>,
}

/// The client port's certificate and key (PEM files); `garrison certs`
/// writes development ones, `api-<id>.pem` and `api-<id>.key`, naming
/// `localhost`, `127.0.0.1` and `::1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsFiles {
    /// The certificate, optionally followed by intermediates.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

impl ApiTlsFiles {
    /// The layout `garrison certs` writes in `dir` for node `id`.
    pub fn in_dir(dir: &Path, id: u64) -> Self {
        let (cert, key) = garrison_raft::certs::api_cert_files(dir, id);
        Self { cert, key }
    }

    fn load(&self) -> anyhow::Result<ServerTls> {
        ServerTls::load(&self.cert, &self.key).map_err(|e| anyhow::anyhow!("api_tls: {e}"))
    }
}

impl ServerConfig {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let config: ServerConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid garrison configuration", path.display()))?;
        config.me()?;
        config.check()?;
        config.admins()?;
        config.roles()?;
        config.events.retention()?;
        if let Some(tls) = &config.api_tls {
            tls.load()?;
        }
        Ok(config)
    }

    /// Checks what the parts of the configuration demand of each other.
    fn check(&self) -> anyhow::Result<()> {
        let largest = garrison_client::policy::MAX_POLICY_BYTES
            .max(garrison_client::rules::MAX_RULE_SET_BYTES)
            .max(garrison_client::plugins::MAX_PLUGIN_SET_BYTES);
        let needed = largest + POLICY_ENTRY_OVERHEAD_BYTES;
        if (self.raft.max_proposal_bytes as usize) < needed {
            anyhow::bail!(
                "raft.max_proposal_bytes must be at least {needed}: the access policy, the rules and the plugins each travel in one entry"
            );
        }
        Ok(())
    }

    /// The decoded `admin_keys`.
    pub fn admins(&self) -> anyhow::Result<Vec<PlayerKey>> {
        self.admin_keys
            .iter()
            .map(|hex_key| {
                let bytes = hex::decode(hex_key)
                    .ok()
                    .and_then(|b| PlayerKey::try_from(b).ok())
                    .with_context(|| {
                        format!("admin key {hex_key:?} is not 64 hex digits (a 32-byte public key)")
                    })?;
                Ok(bytes)
            })
            .collect()
    }

    /// The roles file's policy (the built-in one if none is named).
    pub fn roles(&self) -> anyhow::Result<Policy> {
        let text = match &self.roles_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read roles file {}", path.display()))?,
            None => DEFAULT_ROLES_TOML.to_string(),
        };
        let file = RolesFile::parse(&text).map_err(|e| anyhow::anyhow!("roles file: {e}"))?;
        let mut policy = file.policy();
        policy.events = self.events.retention()?;
        Ok(policy)
    }

    /// This node's entry in `members`.
    pub fn me(&self) -> anyhow::Result<&Member> {
        self.members
            .iter()
            .find(|m| m.id == self.node_id)
            .with_context(|| format!("node_id {} is not among the members", self.node_id))
    }
}

/// A running node.
pub struct Server {
    /// The consensus node.
    pub node: Node,
    /// The bound client API address.
    pub api_addr: SocketAddr,
    /// The bound HTTP API address, if the node serves one.
    pub http_addr: Option<SocketAddr>,
    /// The node's event hub: components observe applied events through it.
    pub hub: Arc<EventHub>,
    stop: CancellationToken,
}

impl Server {
    /// Starts the node described by `config`.
    pub async fn start(config: ServerConfig) -> anyhow::Result<Self> {
        let me = config.me()?.clone();
        let peer_addr: SocketAddr = me
            .peer_addr
            .parse()
            .with_context(|| format!("peer_addr {:?} is not an address", me.peer_addr))?;
        let api_addr: SocketAddr = me
            .api_addr
            .parse()
            .with_context(|| format!("api_addr {:?} is not an address", me.api_addr))?;
        let api_listener = TcpListener::bind(api_addr)
            .await
            .with_context(|| format!("cannot listen on {api_addr}"))?;
        let peer_listener = TcpListener::bind(peer_addr)
            .await
            .with_context(|| format!("cannot listen on {peer_addr}"))?;
        Self::start_with_listeners(config, peer_listener, api_listener).await
    }

    /// Like [`Server::start`], on listeners the caller has bound already
    /// (the HTTP port's, if the configuration names one, it binds itself).
    pub async fn start_with_listeners(
        config: ServerConfig,
        peer_listener: TcpListener,
        api_listener: TcpListener,
    ) -> anyhow::Result<Self> {
        let http_listener = match &config.me()?.http_addr {
            None => None,
            Some(addr) => {
                let addr: SocketAddr = addr
                    .parse()
                    .with_context(|| format!("http_addr {addr:?} is not an address"))?;
                Some(
                    TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen on {addr}"))?,
                )
            }
        };
        Self::start_with_all_listeners(config, peer_listener, api_listener, http_listener).await
    }

    /// Like [`Server::start_with_listeners`], with the HTTP port's listener
    /// bound by the caller too (`None`: no HTTP port).
    pub async fn start_with_all_listeners(
        config: ServerConfig,
        peer_listener: TcpListener,
        api_listener: TcpListener,
        http_listener: Option<TcpListener>,
    ) -> anyhow::Result<Self> {
        config.me()?;
        config.check()?;
        let api_tls = config.api_tls.as_ref().map(ApiTlsFiles::load).transpose()?;
        let sessions = Arc::new(Sessions::load(
            &config.token_key,
            &config.cluster,
            config.token_ttl_ms,
        )?);
        let peer_addr = peer_listener.local_addr()?;
        let node_config = NodeConfig {
            node_id: config.node_id,
            listen_addr: peer_addr,
            data_dir: config.data_dir.clone(),
            cluster_name: config.cluster.clone(),
            members: config
                .members
                .iter()
                .map(|m| (m.id, m.peer_addr.clone()))
                .collect(),
            raft: config.raft.clone(),
            tls: config.tls.clone(),
        };
        let cache =
            (config.cache_bytes > 0).then(|| Arc::new(EntityCache::new(config.cache_bytes)));
        let hub = EventHub::new();
        let deadlines = Arc::new(Deadlines::default());
        #[cfg(feature = "plugins")]
        let plugin_host =
            Arc::new(crate::plugins::host::PluginHost::new().map_err(|e| anyhow::anyhow!(e))?);
        let outboxes = Arc::new(crate::plugins::outbox::Outboxes::default());
        let factory = Arc::new(LocationFactory {
            outboxes: outboxes.clone(),
            cache: cache.clone(),
            hub: hub.clone(),
            deadlines: deadlines.clone(),
            #[cfg(feature = "plugins")]
            plugins: plugin_host.clone(),
        });
        let node = Node::start_with_listener(node_config, peer_listener, factory).await?;
        let api_addrs: BTreeMap<u64, String> = config
            .members
            .iter()
            .map(|m| (m.id, m.api_addr.clone()))
            .collect();
        let http_addrs: BTreeMap<u64, String> = config
            .members
            .iter()
            .filter_map(|m| Some((m.id, m.http_addr.clone()?)))
            .collect();
        let service = ApiService::new(
            node.clone(),
            config.cluster.clone(),
            api_addrs,
            http_addrs,
            &config.api,
            sessions.clone(),
            cache,
            hub.clone(),
        );
        #[cfg(feature = "plugins")]
        let service = service.with_plugins(crate::plugins::NodePlugins::new(plugin_host));
        let stop = CancellationToken::new();
        tokio::spawn(propagate::sync(node.clone(), stop.clone()));
        tokio::spawn(ticks::run(node.clone(), deadlines, stop.clone()));
        tokio::spawn(crate::plugins::outbox::drain(
            node.clone(),
            outboxes,
            stop.clone(),
        ));
        tokio::spawn(session::clock(node.clone(), sessions, stop.clone()));
        tokio::spawn(propagate::bootstrap(
            node.clone(),
            config.admins()?,
            config.roles()?,
            config.raft.replication_factor as u32,
            stop.clone(),
        ));
        let api_addr = api_listener.local_addr()?;
        let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        if let Some(listener) = http_listener {
            tokio::spawn(serve_clients(
                listener,
                config.api.clone(),
                api_tls.clone(),
                service.clone(),
                Protocol::Http(crate::api::http::router()),
                stop.clone(),
            ));
        }
        tokio::spawn(serve_clients(
            api_listener,
            config.api.clone(),
            api_tls,
            service,
            Protocol::Tarpc,
            stop.clone(),
        ));
        Ok(Self {
            node,
            api_addr,
            http_addr,
            hub,
            stop,
        })
    }

    /// Stops serving clients, stops every group and flushes storage.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        self.node.shutdown().await;
    }
}

/// What a client port speaks.
#[derive(Clone)]
enum Protocol {
    /// The `Garrison` tarpc service.
    Tarpc,
    /// The same service over HTTP/JSON (`docs/http.md`).
    Http(axum::Router<ApiService>),
}

/// Accepts client connections on `listener` (with `tls`, after the
/// handshake) and serves each in `protocol`, with its own copy of
/// `service` (its own rate bucket and idle clock).
async fn serve_clients(
    listener: TcpListener,
    limits: ApiLimits,
    tls: Option<ServerTls>,
    service: ApiService,
    protocol: Protocol,
    stop: CancellationToken,
) {
    let max = limits.max_connections;
    let what = match protocol {
        Protocol::Tarpc => "client",
        Protocol::Http(_) => "HTTP client",
    };
    garrison_wire::accept_connections(
        listener,
        max,
        what,
        stop.clone(),
        move |stream, peer, permit| {
            let service = service.for_connection(&limits);
            let (limits, tls, stop) = (limits.clone(), tls.clone(), stop.clone());
            let protocol = protocol.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve_client(stream, peer, &limits, service, &protocol, &stop).await,
                    Some(tls) => {
                        let handshake = garrison_wire::within(
                            limits.handshake_timeout_ms,
                            format!("the TLS handshake with {peer}"),
                            tls.accept(stream),
                        );
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            done = handshake => match done {
                                Ok(stream) => {
                                    serve_client(stream, peer, &limits, service, &protocol, &stop)
                                        .await
                                }
                                Err(e) => tracing::info!(
                                    %peer,
                                    "closing client connection: TLS handshake failed: {e}"
                                ),
                            },
                        }
                    }
                }
                drop(permit);
            });
        },
    )
    .await;
}

/// Serves one client connection (plaintext or TLS) until it closes, goes
/// idle, or the node stops.
async fn serve_client<S>(
    stream: S,
    peer: SocketAddr,
    limits: &ApiLimits,
    service: ApiService,
    protocol: &Protocol,
    stop: &CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    if let Protocol::Http(router) = protocol {
        let connection = service.connection();
        let router = router.clone().with_state(service);
        let serve = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(
                hyper_util::rt::TokioIo::new(stream),
                hyper::service::service_fn(move |request| {
                    let router = router.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            crate::api::http::call(router, request).await,
                        )
                    }
                }),
            );
        tokio::select! {
            _ = stop.cancelled() => {}
            done = serve => match done {
                Ok(()) => tracing::debug!(%peer, "HTTP client connection closed"),
                Err(e) => tracing::debug!(%peer, "HTTP client connection failed: {e}"),
            },
            why = connection.close_when_idle() => {
                tracing::info!(%peer, "closing HTTP client connection: {why}")
            }
        }
        return;
    }
    let framed = Framed::new(
        stream,
        garrison_wire::frame_codec(limits.max_frame_bytes as usize),
    );
    let transport = serde_transport::new(framed, garrison_wire::Bincode2::default());
    let channel = BaseChannel::new(server::Config::default(), transport)
        .max_concurrent_requests(limits.max_in_flight_requests_per_connection);
    let connection = service.connection();
    let watchdog = connection.close_when_idle();
    let serve = channel.execute(service.serve()).for_each(|request| async {
        tokio::spawn(request);
    });
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = serve => tracing::debug!(%peer, "client connection closed"),
        why = watchdog => tracing::info!(%peer, "closing client connection: {why}"),
    }
}
