//! [`Client`]: talks to a garrison cluster through any of its nodes.
//!
//! Every node accepts every request and forwards it where it must go, so any
//! endpoint works. The client still learns each location's leader from the
//! nodes' status and sends transactions there first, to save the forwarding
//! hop; when a node cannot be reached, or answers that the cluster is
//! unavailable, the client moves on to the next endpoint.
//!
//! Submitting is exactly-once: a signed transaction whose outcome was not
//! learned (timeout, lost connection) is resubmitted byte for byte, and the
//! cluster answers a resubmission with the original outcome. A request the
//! node refuses as rate limited is sent again after the wait it names.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tarpc::client::RpcError;
use tarpc::{context, serde_transport};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::api::{
    ApiError, AuditQuery, AuditRead, EntityRead, GarrisonClient, GroupConsistency, LocationInfo,
    LocationRead, NodeStatus, Outcome, ReadMode, Rejection, TxReceipt, API_VERSION,
};
use crate::error::ClientError;
use crate::events::{Cursor, EventBatch, EventFilter, EventQuery, StartAt, StreamEvent};
use crate::keys::Keypair;
use crate::policy::{AdminOp, ADMIN_LOCATION};
use crate::tls::ClientTls;
use crate::token::{SessionToken, TokenClaims, TokenError};
use crate::tx::{Op, SignedTransaction, Transaction};

/// Largest frame the client sends or accepts.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
/// How long one request may take before the client tries elsewhere.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Client::submit`] keeps resubmitting before it gives up.
pub const SUBMIT_DEADLINE: Duration = Duration::from_secs(30);
/// How many times a request is sent before the client gives up.
pub const MAX_ATTEMPTS: u32 = 30;
/// How long to wait for a TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How a [`Client`] waits and retries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one request may take before the client tries elsewhere.
    pub request_timeout: Duration,
    /// How long a call keeps retrying before it gives up.
    pub deadline: Duration,
    /// How many times a call is sent before it gives up.
    pub max_attempts: u32,
    /// Learn the other nodes' addresses from the first that answers (off:
    /// use only the endpoints given, e.g. to pin a test client to a node).
    pub discover: bool,
    /// Speak TLS to the client ports, trusting this CA (for a cluster whose
    /// nodes have `api_tls`); `None`: plaintext.
    pub tls: Option<ClientTls>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            request_timeout: REQUEST_TIMEOUT,
            deadline: SUBMIT_DEADLINE,
            max_attempts: MAX_ATTEMPTS,
            discover: true,
            tls: None,
        }
    }
}

/// A connection pool to one cluster.
pub struct Client {
    options: ClientOptions,
    endpoints: Vec<String>,
    connections: Mutex<HashMap<String, GarrisonClient>>,
    /// Index in `endpoints` of the endpoint that answered last.
    preferred: Mutex<usize>,
    cluster: String,
    /// Location → API address of its leader, as last learned.
    leaders: Mutex<HashMap<String, String>>,
    /// The key reads log in with, and the token they show.
    session: Mutex<Option<Session>>,
}

/// A logged-in session: the key (to log in again when the token expires or
/// is revoked) and the current token.
struct Session {
    seed: [u8; 32],
    token: SessionToken,
}

/// Connects to the client port at `addr`, over TLS if `tls` is given;
/// [`CONNECT_TIMEOUT`] bounds the TCP connect and the handshake together.
async fn connect(addr: &str, tls: Option<&ClientTls>) -> Result<GarrisonClient, String> {
    let open = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(match tls {
            None => spawn_client(stream),
            Some(tls) => spawn_client(tls.connect(addr, stream).await?),
        })
    };
    let what = if tls.is_some() { " (TCP and TLS)" } else { "" };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .map_err(|_| format!("connecting to {addr}{what} timed out"))?
}

fn spawn_client<S>(stream: S) -> GarrisonClient
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let transport = serde_transport::new(
        Framed::new(stream, garrison_wire::frame_codec(MAX_FRAME_BYTES)),
        garrison_wire::Bincode2::default(),
    );
    GarrisonClient::new(tarpc::client::Config::default(), transport).spawn()
}

fn ctx_for(timeout: Duration) -> context::Context {
    let mut ctx = context::current();
    ctx.deadline = Instant::now() + timeout;
    ctx
}

/// What one attempt at an endpoint came to.
enum Attempt<T> {
    Done(Result<T, ApiError>),
    /// Try another endpoint (transport failure or an `Unavailable`/`Timeout` answer).
    Elsewhere(String),
    /// Try the same endpoint again after this long (rate limited).
    Later(String, Duration),
}

impl Client {
    /// Connects to the cluster behind `endpoints` (client API addresses) and
    /// learns its name and its other nodes from the first that answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self, ClientError> {
        Self::connect_with(endpoints, ClientOptions::default()).await
    }

    /// Like [`Client::connect`], with explicit timeouts and retries.
    pub async fn connect_with(
        endpoints: &[String],
        options: ClientOptions,
    ) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints given".into()));
        }
        let mut client = Client {
            options,
            endpoints: endpoints.to_vec(),
            connections: Mutex::new(HashMap::new()),
            preferred: Mutex::new(0),
            cluster: String::new(),
            leaders: Mutex::new(HashMap::new()),
            session: Mutex::new(None),
        };
        let status = client.status().await?;
        client.cluster = status.cluster.clone();
        for addr in status
            .api_addrs
            .values()
            .filter(|_| client.options.discover)
        {
            if !client.endpoints.contains(addr) {
                client.endpoints.push(addr.clone());
            }
        }
        Ok(client)
    }

    fn ctx(&self) -> context::Context {
        ctx_for(self.options.request_timeout)
    }

    /// The cluster's name, which transactions must carry.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The endpoints the client knows.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    async fn connection(&self, addr: &str) -> Result<GarrisonClient, String> {
        if let Some(c) = self.connections.lock().expect("connection table").get(addr) {
            return Ok(c.clone());
        }
        let c = connect(addr, self.options.tls.as_ref()).await?;
        self.connections
            .lock()
            .expect("connection table")
            .insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn drop_connection(&self, addr: &str) {
        self.connections
            .lock()
            .expect("connection table")
            .remove(addr);
    }

    /// Runs `call` against `first` (if given), then the endpoints in turn,
    /// until one gives a definite answer.
    async fn with_retries<T, F, Fut>(
        &self,
        first: Option<String>,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(GarrisonClient) -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, ApiError>, RpcError>>,
    {
        self.with_retries_from(first, call)
            .await
            .map(|(value, _)| value)
    }

    /// Like `with_retries`, also saying which endpoint answered.
    async fn with_retries_from<T, F, Fut>(
        &self,
        first: Option<String>,
        mut call: F,
    ) -> Result<(T, String), ClientError>
    where
        F: FnMut(GarrisonClient) -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, ApiError>, RpcError>>,
    {
        let started = Instant::now();
        let mut last = String::from("no attempt made");
        let mut backoff = Duration::from_millis(20);
        let start = *self.preferred.lock().expect("preferred endpoint");
        let mut order: Vec<String> = first.into_iter().collect();
        let mut attempts = 0;
        for attempt in 0..self.options.max_attempts {
            if started.elapsed() > self.options.deadline {
                break;
            }
            attempts += 1;
            let addr = if order.is_empty() {
                self.endpoints[(start + attempt as usize) % self.endpoints.len()].clone()
            } else {
                order.remove(0)
            };
            let outcome = match self.connection(&addr).await {
                Err(e) => Attempt::Elsewhere(e),
                Ok(client) => match call(client).await {
                    Ok(Err(ApiError::Unavailable(why))) => {
                        Attempt::Elsewhere(format!("{addr}: unavailable: {why}"))
                    }
                    Ok(Err(ApiError::Timeout)) => Attempt::Elsewhere(format!("{addr}: timed out")),
                    // Nothing was done: wait as told and send the same
                    // request again (for a resubmission, giving up here
                    // would lose an outcome that may already exist).
                    Ok(Err(ApiError::RateLimited {
                        what,
                        retry_after_ms,
                    })) => Attempt::Later(
                        format!("{addr}: rate limited ({what})"),
                        Duration::from_millis(retry_after_ms.clamp(1, 5_000)),
                    ),
                    Ok(answer) => Attempt::Done(answer),
                    Err(e) => {
                        self.drop_connection(&addr);
                        Attempt::Elsewhere(format!("{addr}: {e}"))
                    }
                },
            };
            match outcome {
                Attempt::Done(answer) => {
                    if let Some(i) = self.endpoints.iter().position(|e| *e == addr) {
                        *self.preferred.lock().expect("preferred endpoint") = i;
                    }
                    return answer.map(|v| (v, addr)).map_err(ClientError::Api);
                }
                Attempt::Later(why, wait) => {
                    last = why;
                    order.insert(0, addr);
                    tokio::time::sleep(wait).await;
                }
                Attempt::Elsewhere(why) => {
                    tracing::debug!(%why, "trying another endpoint");
                    last = why;
                    // After a full round without an answer, wait a little:
                    // an election or a restart is under way.
                    if (attempt as usize + 1).is_multiple_of(self.endpoints.len()) {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
        }
        Err(ClientError::OutcomeUnknown { attempts, last })
    }

    /// Submits a signed transaction, resubmitting the same bytes until a node
    /// gives its outcome. Safe to call again with the same transaction.
    pub async fn submit(&self, signed: &SignedTransaction) -> Result<TxReceipt, ClientError> {
        let location = Transaction::from_canonical_bytes(&signed.transaction)
            .map(|t| t.location)
            .ok();
        let leader = match &location {
            Some(l) => self.leaders.lock().expect("leader table").get(l).cloned(),
            None => None,
        };
        let result = self
            .with_retries_from(leader.clone(), |c| {
                let signed = signed.clone();
                async move { c.submit(self.ctx(), API_VERSION, signed).await }
            })
            .await;
        if let Some(location) = location {
            let answered_by_leader =
                matches!((&result, &leader), (Ok((_, by)), Some(l)) if by == l);
            if !answered_by_leader {
                // Unknown, or it did not answer: learn the leader again (best effort).
                self.leaders.lock().expect("leader table").remove(&location);
                if let Ok(addr) = self.find_leader(&location).await {
                    self.leaders
                        .lock()
                        .expect("leader table")
                        .insert(location, addr);
                }
            }
        }
        result.map(|(receipt, _)| receipt)
    }

    /// The API address of the node that leads `location`, from the nodes' status.
    pub async fn find_leader(&self, location: &str) -> Result<String, ClientError> {
        let status = self.status().await?;
        let group = status
            .groups
            .iter()
            .find(|g| g.location.as_deref() == Some(location));
        let leader = group
            .and_then(|g| g.leader)
            .ok_or_else(|| ApiError::Unavailable(format!("no known leader for {location}")))?;
        status.api_addrs.get(&leader).cloned().ok_or_else(|| {
            ClientError::Api(ApiError::Unavailable(format!(
                "no address for node {leader}"
            )))
        })
    }

    /// Reads one entity.
    pub async fn get_entity(
        &self,
        location: &str,
        entity: &str,
        mode: ReadMode,
    ) -> Result<EntityRead, ClientError> {
        self.with_session(|c, token| {
            let (location, entity) = (location.to_string(), entity.to_string());
            async move {
                c.get_entity(self.ctx(), API_VERSION, token, location, entity, mode)
                    .await
            }
        })
        .await
    }

    /// Logs `key`'s player in: reads from now on show its session token, and
    /// the client logs in again by itself when the token expires or is revoked.
    pub async fn login(&self, key: &Keypair) -> Result<SessionToken, ClientError> {
        let challenge = self
            .with_retries(None, |c| async move {
                c.challenge(self.ctx(), API_VERSION).await
            })
            .await?;
        let answer = challenge.answer(key);
        let player = key.public();
        let token = self
            .with_retries(None, |c| {
                let (challenge, answer) = (challenge.clone(), answer.clone());
                async move {
                    c.login(self.ctx(), API_VERSION, player, challenge, answer)
                        .await
                }
            })
            .await?;
        *self.session.lock().expect("session") = Some(Session {
            seed: key.signing_key().to_bytes(),
            token: token.clone(),
        });
        Ok(token)
    }

    /// The current session token, if logged in.
    pub fn token(&self) -> Option<SessionToken> {
        self.session
            .lock()
            .expect("session")
            .as_ref()
            .map(|s| s.token.clone())
    }

    /// Checks a token with the cluster: whose it is and until when.
    pub async fn verify_token(&self, token: &SessionToken) -> Result<TokenClaims, ClientError> {
        self.with_retries(None, |c| {
            let token = token.clone();
            async move { c.verify_token(self.ctx(), API_VERSION, token).await }
        })
        .await
    }

    /// Runs a request that needs the session token; logs in again once if
    /// the token expired or was revoked.
    async fn with_session<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(GarrisonClient, SessionToken) -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, ApiError>, RpcError>>,
    {
        let token = self
            .token()
            .ok_or(ClientError::Api(ApiError::Token(TokenError::Missing)))?;
        let first = self.with_retries(None, |c| call(c, token.clone())).await;
        match first {
            Err(ClientError::Api(ApiError::Token(
                TokenError::Expired { .. } | TokenError::Revoked { .. },
            ))) => {
                let seed = self
                    .session
                    .lock()
                    .expect("session")
                    .as_ref()
                    .map(|s| s.seed);
                let Some(seed) = seed else { return first };
                let token = self.login(&Keypair::from_seed(seed)).await?;
                self.with_retries(None, |c| call(c, token.clone())).await
            }
            other => other,
        }
    }

    /// One read of events (a long poll of up to `query.wait_ms`); see
    /// [`Client::subscribe`] for a stream that keeps its cursors.
    pub async fn read_events(&self, query: &EventQuery) -> Result<EventBatch, ClientError> {
        let timeout = self.options.request_timeout + Duration::from_millis(query.wait_ms);
        self.with_session(|c, token| {
            let query = query.clone();
            async move {
                c.read_events(ctx_for(timeout), API_VERSION, token, query)
                    .await
            }
        })
        .await?
        .unpack()
        .map_err(ClientError::Malformed)
    }

    /// One read of events at the node `addr`, with no retry elsewhere or
    /// later (a rate limit is returned, not waited out).
    pub async fn read_events_at(
        &self,
        addr: &str,
        query: &EventQuery,
    ) -> Result<EventBatch, ClientError> {
        let token = self
            .token()
            .ok_or(ClientError::Api(ApiError::Token(TokenError::Missing)))?;
        let timeout = self.options.request_timeout + Duration::from_millis(query.wait_ms);
        self.call_one(addr, |c| {
            let query = query.clone();
            async move {
                c.read_events(ctx_for(timeout), API_VERSION, token, query)
                    .await
            }
        })
        .await?
        .unpack()
        .map_err(ClientError::Malformed)
    }

    /// Follows the events of `locations` (each from where its [`StartAt`]
    /// says) that pass `filter`: see [`Subscription`].
    pub fn subscribe(
        &self,
        locations: Vec<(String, StartAt)>,
        filter: EventFilter,
    ) -> Subscription<'_> {
        Subscription::new(self, locations, filter)
    }

    /// Saves the cursor of this session's consumer `consumer` at
    /// `location`, in the location's log; returns the entry's index.
    pub async fn save_cursor(
        &self,
        location: &str,
        consumer: &str,
        cursor: Cursor,
    ) -> Result<u64, ClientError> {
        self.with_session(|c, token| {
            let (location, consumer) = (location.to_string(), consumer.to_string());
            async move {
                c.save_cursor(self.ctx(), API_VERSION, token, location, consumer, cursor)
                    .await
            }
        })
        .await
    }

    /// The cursor this session's consumer `consumer` saved last at
    /// `location` (`None`: never), linearizable.
    pub async fn load_cursor(
        &self,
        location: &str,
        consumer: &str,
    ) -> Result<Option<Cursor>, ClientError> {
        self.with_session(|c, token| {
            let (location, consumer) = (location.to_string(), consumer.to_string());
            async move {
                c.load_cursor(
                    self.ctx(),
                    API_VERSION,
                    token,
                    location,
                    consumer,
                    ReadMode::Linearizable,
                )
                .await
            }
        })
        .await
    }

    /// Audit trail entries of `location` (`@cluster` for administrative
    /// transactions) from `from_index`, of `player` only if given; needs a
    /// session (a player may read its own entries, others need the audit
    /// permission).
    pub async fn audit(
        &self,
        location: &str,
        player: Option<crate::tx::PlayerKey>,
        from_index: u64,
        max_entries: u32,
    ) -> Result<AuditRead, ClientError> {
        let query = AuditQuery {
            location: location.to_string(),
            player,
            from_index,
            max_entries,
        };
        self.with_session(|c, token| {
            let query = query.clone();
            async move { c.audit(self.ctx(), API_VERSION, token, query).await }
        })
        .await
    }

    /// Reads up to `max_entities` entities of a location.
    pub async fn get_location(
        &self,
        location: &str,
        mode: ReadMode,
        max_entities: u32,
    ) -> Result<LocationRead, ClientError> {
        self.with_session(|c, token| {
            let location = location.to_string();
            async move {
                c.get_location(self.ctx(), API_VERSION, token, location, mode, max_entities)
                    .await
            }
        })
        .await
    }

    /// The player's next sequence number at `location`.
    pub async fn next_sequence(
        &self,
        location: &str,
        player: crate::tx::PlayerKey,
    ) -> Result<u64, ClientError> {
        self.with_retries(None, |c| {
            let location = location.to_string();
            async move {
                c.next_sequence(
                    self.ctx(),
                    API_VERSION,
                    location,
                    player,
                    ReadMode::Linearizable,
                )
                .await
            }
        })
        .await
    }

    /// The rules of the complex event processor deployed in the cluster
    /// (linearizable).
    pub async fn rules(&self) -> Result<crate::rules::RuleSet, ClientError> {
        self.with_retries(None, |c| async move {
            c.rules(self.ctx(), API_VERSION, ReadMode::Linearizable)
                .await
        })
        .await
    }

    /// The rules at work in `location` (linearizable).
    pub async fn location_rules(
        &self,
        location: &str,
    ) -> Result<crate::rules::LocationRules, ClientError> {
        self.with_retries(None, |c| async move {
            c.location_rules(
                self.ctx(),
                API_VERSION,
                location.to_string(),
                ReadMode::Linearizable,
            )
            .await
        })
        .await
    }

    /// The plugins deployed in the cluster (linearizable).
    pub async fn plugins(&self) -> Result<crate::plugins::PluginSet, ClientError> {
        self.with_retries(None, |c| async move {
            c.plugins(self.ctx(), API_VERSION, ReadMode::Linearizable)
                .await
        })
        .await
    }

    /// The plugins at work in `location` (linearizable).
    pub async fn location_plugins(
        &self,
        location: &str,
    ) -> Result<crate::plugins::LocationPlugins, ClientError> {
        self.with_retries(None, |c| async move {
            c.location_plugins(
                self.ctx(),
                API_VERSION,
                location.to_string(),
                ReadMode::Linearizable,
            )
            .await
        })
        .await
    }

    /// The plugin log lines kept by whichever node answers, after `after`.
    pub async fn plugin_logs(
        &self,
        plugin: Option<&str>,
        after: u64,
        max: u32,
    ) -> Result<Vec<crate::plugins::PluginLogLine>, ClientError> {
        self.with_retries(None, |c| async move {
            c.plugin_logs(
                self.ctx(),
                API_VERSION,
                plugin.map(str::to_string),
                after,
                max,
            )
            .await
        })
        .await
    }

    /// Every location.
    pub async fn locations(&self) -> Result<Vec<LocationInfo>, ClientError> {
        self.with_retries(None, |c| async move {
            c.locations(self.ctx(), API_VERSION).await
        })
        .await
    }

    /// The status of whichever node answers.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.with_retries(
            None,
            |c| async move { c.status(self.ctx(), API_VERSION).await },
        )
        .await
    }

    /// The status of one node, without retrying elsewhere.
    pub async fn status_of(&self, addr: &str) -> Result<NodeStatus, ClientError> {
        self.call_one(
            addr,
            |c| async move { c.status(self.ctx(), API_VERSION).await },
        )
        .await
    }

    /// One request to the node at `addr`, without retrying elsewhere; a
    /// broken connection is dropped.
    async fn call_one<T, F, Fut>(&self, addr: &str, call: F) -> Result<T, ClientError>
    where
        F: FnOnce(GarrisonClient) -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, ApiError>, RpcError>>,
    {
        let c = self
            .connection(addr)
            .await
            .map_err(|last| ClientError::Unreachable {
                endpoints: addr.into(),
                last,
            })?;
        match call(c).await {
            Ok(answer) => answer.map_err(ClientError::Api),
            Err(e) => {
                self.drop_connection(addr);
                Err(ClientError::Unreachable {
                    endpoints: addr.into(),
                    last: e.to_string(),
                })
            }
        }
    }

    /// One node's consistency reports, without retrying elsewhere.
    pub async fn consistency_of(
        &self,
        addr: &str,
        group: Option<u64>,
        at: Option<u64>,
    ) -> Result<Vec<GroupConsistency>, ClientError> {
        self.call_one(addr, |c| async move {
            c.consistency(self.ctx(), API_VERSION, group, at).await
        })
        .await
    }
}

/// A player: a key and the next sequence number at each location it acts in.
#[derive(Debug)]
pub struct Player {
    key: Keypair,
    next: HashMap<String, u64>,
    /// Per location, a signed transaction whose outcome is unknown: it is
    /// resubmitted (the same bytes) before the next one is signed, so its
    /// sequence number is never given to different operations.
    pending: HashMap<String, SignedTransaction>,
}

impl Player {
    /// A player with `key`; sequence numbers are fetched from the cluster
    /// the first time the player acts at a location.
    pub fn new(key: Keypair) -> Self {
        Self {
            key,
            next: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// The player's key.
    pub fn key(&self) -> &Keypair {
        &self.key
    }

    /// The sequence number the player's next transaction at `location`
    /// will carry (asked of the cluster the first time).
    pub async fn next_sequence(
        &mut self,
        client: &Client,
        location: &str,
    ) -> Result<u64, ClientError> {
        if let Some(n) = self.next.get(location) {
            return Ok(*n);
        }
        let n = client.next_sequence(location, self.key.public()).await?;
        self.next.insert(location.to_string(), n);
        Ok(n)
    }

    /// Builds and signs the player's next transaction at `location`.
    pub async fn sign(
        &mut self,
        client: &Client,
        location: &str,
        ops: Vec<Op>,
    ) -> Result<SignedTransaction, ClientError> {
        let sequence = self.next_sequence(client, location).await?;
        let tx = Transaction {
            cluster: client.cluster().to_string(),
            location: location.to_string(),
            player: self.key.public(),
            sequence,
            ops,
        };
        tx.check_limits().map_err(ApiError::from)?;
        Ok(tx.sign(self.key.signing_key()))
    }

    /// Signs and submits a transaction, exactly once, and tracks the
    /// sequence number. A rejection is an `Ok` receipt: inspect its outcome.
    pub async fn transact(
        &mut self,
        client: &Client,
        location: &str,
        ops: Vec<Op>,
    ) -> Result<TxReceipt, ClientError> {
        if let Some(earlier) = self.pending.get(location).cloned() {
            let receipt = client.submit(&earlier).await?;
            self.pending.remove(location);
            self.record(location, &receipt);
        }
        let signed = self.sign(client, location, ops).await?;
        match client.submit(&signed).await {
            Ok(receipt) => {
                self.record(location, &receipt);
                Ok(receipt)
            }
            Err(e) => {
                if e.outcome_unknown() {
                    self.pending.insert(location.to_string(), signed);
                }
                Err(e)
            }
        }
    }

    /// Signs and submits an administrative transaction (see
    /// [`crate::policy`]); the player needs a role that allows each operation.
    pub async fn admin(
        &mut self,
        client: &Client,
        ops: Vec<AdminOp>,
    ) -> Result<TxReceipt, ClientError> {
        let ops = ops.into_iter().map(Op::Admin).collect();
        self.transact(client, ADMIN_LOCATION, ops).await
    }

    /// Creates a location (nothing happens if it exists) and waits until it
    /// can take transactions; a refusal (no permission) is an error.
    pub async fn create_location(
        &mut self,
        client: &Client,
        name: &str,
    ) -> Result<(), ClientError> {
        let op = AdminOp::CreateLocation {
            name: name.to_string(),
        };
        let receipt = self.admin(client, vec![op]).await?;
        match receipt.outcome {
            Outcome::Committed { .. } => Ok(()),
            Outcome::Rejected { reason, .. } => Err(ClientError::Rejected(reason)),
        }
    }

    /// Updates the sequence tracking after a receipt for this player.
    pub fn record(&mut self, location: &str, receipt: &TxReceipt) {
        match &receipt.outcome {
            Outcome::Rejected {
                reason: Rejection::SequenceGap { .. } | Rejection::SequenceReused { .. },
                ..
            } => {
                // Out of step with the cluster: ask again next time.
                self.next.remove(location);
            }
            // Refused before the rules ran: the sequence number was not used.
            Outcome::Rejected {
                op: None,
                reason:
                    Rejection::Malformed(_)
                    | Rejection::WrongCluster { .. }
                    | Rejection::WrongLocation { .. },
            } => {}
            _ => {
                self.next.insert(location.to_string(), receipt.sequence + 1);
            }
        }
    }
}

/// How long a [`Subscription`] waits before it polls again after a failed
/// poll (the client's own retries have already tried every node).
pub const FAILED_POLL_PAUSE: Duration = Duration::from_millis(200);

/// A subscription to the events of one or more locations: a sequence of
/// long polls ([`Client::read_events`]) that carries each location's
/// cursor from one to the next. A failed node or a leader change only
/// moves the next poll to another node (the client's usual retries), which
/// resumes after the same cursors: events have the same ids on every
/// replica, so nothing is missed and nothing comes twice. An error (all
/// nodes unreachable for the client's deadline, events trimmed past the
/// cursor) is returned and the subscription stays where it was: calling
/// [`Subscription::next`] again retries.
pub struct Subscription<'a> {
    client: &'a Client,
    /// Each location, where the next poll starts.
    places: Vec<(String, StartAt)>,
    filter: EventFilter,
    /// Events fetched and not yet handed out.
    buffered: std::collections::VecDeque<StreamEvent>,
    /// The last event handed out, per location.
    delivered: HashMap<String, Cursor>,
    /// The last poll failed: the next one waits a little first.
    failed: bool,
    /// Events per poll (1 to `MAX_EVENTS_PER_READ`).
    pub max_events: u32,
    /// How long one poll waits for a new event, in milliseconds.
    pub wait_ms: u64,
    /// How long a poll that has found events waits for more, in
    /// milliseconds (0: it answers at once).
    pub linger_ms: u64,
}

impl<'a> Subscription<'a> {
    fn new(client: &'a Client, places: Vec<(String, StartAt)>, filter: EventFilter) -> Self {
        let delivered = places
            .iter()
            .filter_map(|(l, s)| match s {
                StartAt::After(c) => Some((l.clone(), *c)),
                _ => None,
            })
            .collect();
        Self {
            client,
            places,
            filter,
            buffered: Default::default(),
            delivered,
            failed: false,
            max_events: 256,
            wait_ms: 10_000,
            linger_ms: 0,
        }
    }

    /// The next event, waiting as long as it takes.
    pub async fn next(&mut self) -> Result<StreamEvent, ClientError> {
        loop {
            if let Some(event) = self.next_buffered() {
                return Ok(event);
            }
            self.poll().await?;
        }
    }

    /// The next event already fetched, if any.
    pub fn next_buffered(&mut self) -> Option<StreamEvent> {
        let event = self.buffered.pop_front()?;
        self.delivered
            .insert(event.id.location.clone(), event.id.cursor());
        Some(event)
    }

    /// One poll: fetches what is there (waiting up to `wait_ms` if nothing
    /// is), and returns how many events it fetched.
    pub async fn poll(&mut self) -> Result<usize, ClientError> {
        let query = EventQuery {
            locations: self.places.clone(),
            filter: self.filter.clone(),
            max_events: self.max_events,
            wait_ms: self.wait_ms,
            linger_ms: self.linger_ms,
        };
        if std::mem::take(&mut self.failed) {
            tokio::time::sleep(FAILED_POLL_PAUSE).await;
        }
        let batch = match self.client.read_events(&query).await {
            Ok(batch) => batch,
            Err(e) => {
                self.failed = true;
                return Err(e);
            }
        };
        for (location, start) in &mut self.places {
            if let Some(cursor) = batch.cursor(location) {
                *start = StartAt::After(cursor);
            }
        }
        let n = batch.events.len();
        self.buffered.extend(batch.events);
        Ok(n)
    }

    /// Where a reader that has handled every event handed out so far
    /// resumes in `location` (what a named consumer saves): past every
    /// event examined if none is waiting in the buffer, else after the last
    /// one handed out. `None`: nothing is known yet.
    pub fn cursor(&self, location: &str) -> Option<Cursor> {
        if self.buffered.iter().any(|e| e.id.location == location) {
            return self.delivered.get(location).copied();
        }
        self.places
            .iter()
            .find(|(l, _)| l == location)
            .and_then(|(_, s)| match s {
                StartAt::After(c) => Some(*c),
                _ => None,
            })
    }

    /// Accepts the loss that `error` (an `ApiError::EventsTrimmed` this
    /// subscription's poll returned) reported: the subscription goes on
    /// after the newest event the location no longer holds. If more are
    /// trimmed before the next poll, that poll says so again. Returns
    /// false (and changes nothing) for any other error.
    pub fn skip_trimmed(&mut self, error: &ClientError) -> bool {
        let ClientError::Api(ApiError::EventsTrimmed {
            location,
            resume_after,
            ..
        }) = error
        else {
            return false;
        };
        let mut skipped = false;
        for (l, start) in &mut self.places {
            if l == location {
                *start = StartAt::After(*resume_after);
                skipped = true;
            }
        }
        skipped
    }

    /// The subscription as a [`futures::Stream`]; an error is an item, and
    /// the stream goes on after it (from the same cursors, after
    /// [`FAILED_POLL_PAUSE`]).
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<StreamEvent, ClientError>> + 'a {
        futures::stream::unfold(self, |mut s| async move {
            let item = s.next().await;
            Some((item, s))
        })
    }
}
