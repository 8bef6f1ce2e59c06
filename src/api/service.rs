//! The client API a node serves: ingress checks on transactions, routing of
//! submissions to the location's leader and of reads to a replica.
//!
//! Ingress runs the cheap checks first (version, size, canonical decoding,
//! static limits, cluster, known location) and `verify_strict` last, and
//! proposes nothing that fails any of them. Everything after ingress is
//! decided in apply, identically on every replica.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use garrison_client::api::{
    ApiError, EntityRead, EventStats, Garrison, GroupConsistency, GroupInfo, LocationInfo,
    LocationRead, NodeStatus, ReadMode, TxReceipt, API_VERSION, MAX_ENTITIES_PER_READ,
};
use garrison_client::api::{
    AuditEntry, AuditQuery, AuditRead, Rejection, MAX_AUDIT_ENTRIES_PER_READ,
};
use garrison_client::events::{Cursor, EventQuery, PackedBatch};
use garrison_client::plugins::{LocationPlugins, PluginLogLine, PluginSet};
use garrison_client::policy::{AdminOp, ADMIN_LOCATION};
use garrison_client::rules::{LocationRules, RuleSet};
use garrison_client::token::{Challenge, SessionToken, TokenClaims};
use garrison_client::tx::{KeyCache, Op};
use garrison_client::tx::{
    PlayerKey, SignedTransaction, Transaction, TxError, MAX_TRANSACTION_BYTES, SIGNATURE_BYTES,
};
use garrison_client::Entity;
use garrison_client::Outcome;
use garrison_raft::meta::{Directory, LocationRecord, MetaQuery};
use garrison_raft::{codec, Error, GroupId, Node, ReadConsistency, META_GROUP};
use tarpc::context;

/// An audit query's reply: entries, more follow, the newest index rolled off.
type AuditReply = Result<(Vec<AuditEntry>, bool, Option<u64>), Rejection>;

/// How long an administrative transaction waits for the local meta replica.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

use crate::api::limits::{Connection, PlayerLimiter};
use crate::cache::EntityCache;
use crate::events::consumers;
use crate::events::log::Trimmed;
use crate::events::observers::EventHub;
use crate::events::serve::{self, EventSource};
use crate::security::admin::{AdminCommand, AdminQuery, AdminReply};
use crate::security::propagate;
use crate::security::session::Sessions;
use crate::server::ApiLimits;
use crate::state::location::{EventsReply, LocationApp, LocationCommand, LocationQuery};

/// Most plugin log lines one read returns.
pub const MAX_PLUGIN_LOG_LINES_PER_READ: usize = 1_000;

/// Serves one client connection's requests against this node.
#[derive(Clone)]
pub struct ApiService {
    /// The local node.
    pub node: Node,
    /// The cluster's name.
    pub cluster: String,
    /// Client API address of every node, by id.
    pub api_addrs: BTreeMap<u64, String>,
    /// HTTP API address of every node that serves one, by id.
    pub http_addrs: BTreeMap<u64, String>,
    players: Arc<PlayerLimiter>,
    connection: Arc<Connection>,
    sessions: Arc<Sessions>,
    cache: Option<Arc<EntityCache>>,
    /// Player keys already checked at ingress (shared by every connection).
    keys: Arc<KeyCache>,
    /// The node's event hub: long polls wait on it.
    hub: Arc<EventHub>,
    /// Event reads waiting on this node, and the most allowed.
    polls: Arc<AtomicU32>,
    max_polls: u32,
    /// Event reads waiting on this connection, and the most allowed.
    connection_polls: Arc<AtomicU32>,
    max_connection_polls: u32,
    /// The node's plugin host: deploys are validated here.
    plugins: crate::plugins::NodePlugins,
}

/// Maps the consensus layer's errors to what a client can act on.
pub fn api_error(e: Error) -> ApiError {
    match e {
        Error::Timeout(_) => ApiError::Timeout,
        Error::UnknownLocation(name) => ApiError::UnknownLocation(name),
        Error::ProposalTooLarge { bytes, max } => {
            ApiError::InvalidRequest(format!("request of {bytes} bytes exceeds {max}"))
        }
        Error::Meta(why) => ApiError::InvalidRequest(why),
        e @ (Error::NoLeader { .. }
        | Error::NotLeader { .. }
        | Error::Unreachable { .. }
        | Error::Remote { .. }
        | Error::Behind { .. }
        | Error::UnknownGroup(_)
        | Error::Raft(_)
        | Error::ShuttingDown) => ApiError::Unavailable(e.to_string()),
        e @ (Error::Config(_) | Error::Storage(_) | Error::Decode(_)) => {
            ApiError::Internal(e.to_string())
        }
    }
}

fn consistency(mode: ReadMode) -> ReadConsistency {
    match mode {
        ReadMode::Linearizable => ReadConsistency::Linearizable,
        ReadMode::Stale { min_index } => ReadConsistency::Stale { min_index },
    }
}

fn check_version(version: u16) -> Result<(), ApiError> {
    if version != API_VERSION {
        return Err(ApiError::Version {
            got: version,
            supported: API_VERSION,
        });
    }
    Ok(())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    codec::decode(bytes).map_err(|e| ApiError::Internal(format!("undecodable reply: {e}")))
}

fn info(record: &LocationRecord) -> LocationInfo {
    LocationInfo {
        name: record.name.clone(),
        group: record.group,
        replicas: record.replicas.iter().copied().collect(),
    }
}

impl ApiService {
    /// The service of a node, before any connection.
    #[allow(clippy::too_many_arguments)] // the node's parts, each kept as it is
    pub fn new(
        node: Node,
        cluster: String,
        api_addrs: BTreeMap<u64, String>,
        http_addrs: BTreeMap<u64, String>,
        limits: &ApiLimits,
        sessions: Arc<Sessions>,
        cache: Option<Arc<EntityCache>>,
        hub: Arc<EventHub>,
    ) -> Self {
        let service = Self {
            node,
            cluster,
            api_addrs,
            http_addrs,
            players: Arc::new(PlayerLimiter::new(
                limits.player_transactions_per_s,
                limits.player_burst,
            )),
            connection: Arc::new(Connection::new(0, 0, Duration::ZERO, Duration::ZERO)),
            sessions,
            cache,
            keys: Arc::new(KeyCache::new()),
            hub,
            polls: Arc::new(AtomicU32::new(0)),
            max_polls: limits.max_event_polls,
            connection_polls: Arc::new(AtomicU32::new(0)),
            max_connection_polls: limits.max_event_polls_per_connection,
            plugins: Default::default(),
        };
        service.for_connection(limits)
    }

    /// Validates plugin deploys, and serves plugin log lines, with `plugins`.
    pub fn with_plugins(mut self, plugins: crate::plugins::NodePlugins) -> Self {
        self.plugins = plugins;
        self
    }

    /// A copy for a new connection, with its own bucket and activity clock.
    pub fn for_connection(&self, limits: &ApiLimits) -> Self {
        let connection = Connection::new(
            limits.connection_requests_per_s,
            limits.connection_burst,
            Duration::from_millis(limits.handshake_timeout_ms),
            Duration::from_millis(limits.idle_timeout_ms),
        );
        Self {
            connection: Arc::new(connection),
            connection_polls: Arc::new(AtomicU32::new(0)),
            ..self.clone()
        }
    }

    /// This connection's state.
    pub fn connection(&self) -> Arc<Connection> {
        self.connection.clone()
    }

    /// Every request's first step: the API version and the connection's rate.
    fn admit_request(&self, version: u16) -> Result<(), ApiError> {
        self.connection.admit()?;
        check_version(version)
    }

    /// The group holding `location`: from the local directory, or, if this
    /// node's meta replica has not seen it yet, from a linearizable read.
    async fn group_of(&self, location: &str) -> Result<GroupId, ApiError> {
        if location == ADMIN_LOCATION {
            return Ok(META_GROUP);
        }
        if let Some(record) = self.node.location(location) {
            return Ok(record.group);
        }
        let query = codec::encode(&MetaQuery::Location(location.to_string()));
        let reply = self
            .node
            .read(META_GROUP, query, ReadConsistency::Linearizable)
            .await
            .map_err(api_error)?;
        let record: Option<LocationRecord> = decode(&reply.reply)?;
        record
            .map(|r| r.group)
            .ok_or_else(|| ApiError::UnknownLocation(location.to_string()))
    }

    async fn query<T: serde::de::DeserializeOwned>(
        &self,
        location: &str,
        query: LocationQuery,
        mode: ReadMode,
    ) -> Result<(u64, T), ApiError> {
        if location == ADMIN_LOCATION {
            return Err(ApiError::InvalidRequest(format!(
                "{ADMIN_LOCATION} holds no entities; its audit trail is read with `audit`"
            )));
        }
        let group = self.group_of(location).await?;
        self.read_group(group, &query, mode).await
    }

    /// Reads `group` with `query`; the decoded answer and the index it
    /// reflects.
    async fn read_group<Q: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        group: GroupId,
        query: &Q,
        mode: ReadMode,
    ) -> Result<(u64, T), ApiError> {
        let reply = self
            .node
            .read(group, codec::encode(query), consistency(mode))
            .await
            .map_err(api_error)?;
        Ok((reply.index, decode(&reply.reply)?))
    }

    /// One entity, as `reader` may see it: from the node's cache when this
    /// node holds a replica of the location, else from a replica.
    async fn read_entity(
        &self,
        location: &str,
        key: String,
        reader: PlayerKey,
        mode: ReadMode,
    ) -> Result<(u64, Result<Option<Entity>, Rejection>), ApiError> {
        let query = LocationQuery::Entity {
            key: key.clone(),
            reader,
        };
        if location == ADMIN_LOCATION {
            return self.query(location, query, mode).await;
        }
        let group = self.group_of(location).await?;
        let cache = match &self.cache {
            Some(cache) if self.node.hosts(group) => cache,
            _ => return self.read_group(group, &query, mode).await,
        };
        let applied = self
            .node
            .catch_up(group, consistency(mode))
            .await
            .map_err(api_error)?;
        if let Some(hit) = cache.get(group, &key, applied) {
            let owner = hit.entity.as_ref().map(|e| &e.owner);
            let allowed =
                crate::state::location::may_read(&hit.policy, location, &reader, &key, owner);
            return Ok((hit.index, allowed.map(|()| hit.entity)));
        }
        // The replica has applied `applied` already: no second read index.
        let mode = ReadMode::Stale { min_index: applied };
        let (index, entity): (u64, Result<Option<Entity>, Rejection>) =
            self.read_group(group, &query, mode).await?;
        if let Ok(entity) = &entity {
            cache.fill(group, &key, index, entity.clone());
        }
        Ok((index, entity))
    }

    /// Refuses, before it costs a meta write, an administrative transaction
    /// whose signer holds no permission for one of its operations under this
    /// node's copy of the policy. Apply decides for real; this keeps players
    /// without rights from filling the meta group's records.
    fn precheck_admin(&self, tx: &Transaction) -> Result<(), ApiError> {
        let policy = propagate::meta_policy(&self.node);
        if policy.version == 0 {
            return Ok(());
        }
        for op in &tx.ops {
            if let Op::Admin(op) = op {
                policy
                    .check_admin(&tx.player, op)
                    .map_err(ApiError::Forbidden)?;
            }
        }
        Ok(())
    }

    /// Proposes an administrative transaction to the meta group; if it
    /// changed the policy or created locations, carries the policy into
    /// every location concerned before answering.
    async fn submit_admin(
        &self,
        signed: SignedTransaction,
        tx: &Transaction,
    ) -> Result<TxReceipt, ApiError> {
        // Modules are validated here, by this node's engine, which the
        // plugin set then names; apply checks only what is deterministic.
        let mut engine = None;
        for (i, op) in tx.ops.iter().enumerate() {
            if let Op::Admin(AdminOp::DeployPlugin { spec }) = op {
                let validated = self.plugins.validate(&spec.module).map_err(|why| {
                    ApiError::InvalidRequest(format!(
                        "operation {i}: plugin {:?} is refused: {why}",
                        spec.name
                    ))
                })?;
                engine = Some(validated);
            }
        }
        let command = codec::encode(&match engine {
            Some(engine) => AdminCommand::SubmitValidated { signed, engine },
            None => AdminCommand::Submit(signed),
        });
        let reply = self
            .node
            .extension_command(command)
            .await
            .map_err(api_error)?;
        let (receipt, changed, rules_changed, plugins_changed, created) =
            match decode::<AdminReply>(&reply)? {
                AdminReply::Submitted {
                    receipt,
                    policy,
                    rules,
                    plugins,
                    created,
                } => (
                    receipt,
                    policy.is_some(),
                    rules.is_some(),
                    plugins.is_some(),
                    created,
                ),
                AdminReply::Refused(why) => return Err(ApiError::InvalidRequest(why)),
                other => return Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
            };
        // A committed duplicate may be the retry of a submission whose push
        // failed: push again (a location ignores a policy it already has).
        let committed = matches!(receipt.outcome, Outcome::Committed { .. });
        let repush = receipt.duplicate && committed;
        if !(changed || rules_changed || plugins_changed || repush || !created.is_empty()) {
            return Ok(receipt);
        }
        self.node
            .wait_applied(META_GROUP, receipt.index, REQUEST_TIMEOUT)
            .await
            .map_err(api_error)?;
        let directory = self.node.directory();
        // Every location if it changed (or this may be a retry), else the
        // new ones.
        let to = |all: bool| -> Vec<GroupId> {
            directory
                .locations
                .values()
                .filter(|l| all || repush || created.contains(&l.name))
                .map(|l| l.group)
                .collect()
        };
        let (groups, rules_to, plugins_to) = (to(changed), to(rules_changed), to(plugins_changed));
        let mut failed =
            propagate::push(&self.node, &propagate::meta_policy(&self.node), groups).await;
        let rules = propagate::meta_rules(&self.node);
        if rules.version > 0 {
            failed.extend(propagate::push_rules(&self.node, &rules, rules_to).await);
        }
        let plugins = propagate::meta_plugins(&self.node);
        if plugins.version > 0 {
            failed.extend(propagate::push_plugins(&self.node, &plugins, plugins_to).await);
        }
        if let Some((group, e)) = failed.first() {
            return Err(ApiError::Unavailable(format!(
                "committed at meta index {}, but {} location(s) have not applied the policy, \
                 the rules or the plugins yet (group {group}: {e}); resubmit the same transaction to wait for them",
                receipt.index,
                failed.len()
            )));
        }
        Ok(receipt)
    }

    /// Asks the meta group's extension; the answer and the index it reflects.
    async fn admin_query<T: serde::de::DeserializeOwned>(
        &self,
        query: &AdminQuery,
        mode: ReadMode,
    ) -> Result<(u64, T), ApiError> {
        let query = MetaQuery::Extension(codec::encode(query));
        self.read_group(META_GROUP, &query, mode).await
    }

    /// Ingress: every check that needs no state, then the signature.
    async fn admit(&self, signed: &SignedTransaction) -> Result<(GroupId, Transaction), ApiError> {
        let bytes = signed.transaction.len();
        if bytes > MAX_TRANSACTION_BYTES {
            return Err(TxError::TooLarge {
                bytes: bytes as u64,
                max: MAX_TRANSACTION_BYTES as u64,
            }
            .into());
        }
        if signed.signature.len() != SIGNATURE_BYTES {
            return Err(TxError::BadSignature.into());
        }
        let tx = Transaction::from_canonical_bytes(&signed.transaction)?;
        tx.check_limits()?;
        if tx.cluster != self.cluster {
            return Err(ApiError::WrongCluster {
                expected: self.cluster.clone(),
                got: tx.cluster,
            });
        }
        let group = self.group_of(&tx.location).await?;
        signed.verify_cached(&self.keys)?;
        self.players.admit(&tx.player)?;
        Ok((group, tx))
    }
}

impl EventSource for ApiService {
    async fn group(&self, location: &str) -> Result<(GroupId, bool), ApiError> {
        if location == ADMIN_LOCATION {
            return Err(ApiError::InvalidRequest(format!(
                "{ADMIN_LOCATION} has no event stream; its audit trail is read with `audit`"
            )));
        }
        let group = self.group_of(location).await?;
        Ok((group, self.node.hosts(group)))
    }

    async fn read(
        &self,
        group: GroupId,
        query: &LocationQuery,
        mode: ReadMode,
    ) -> Result<(u64, Result<EventsReply, Trimmed>), ApiError> {
        // A cursor beyond what this replica applied: either the replica is
        // behind, or the cursor is past the log (made up, or from another
        // cluster). Ask the leader's read index which, rather than wait
        // out a stale read that can never be served.
        if let ReadMode::Stale { min_index } = mode {
            // The replica's own applied index: asking the group's status
            // would copy its record and metrics, on every poll.
            let applied = self
                .node
                .read_local(group, |s| s.applied_index())
                .unwrap_or(0);
            if self.node.hosts(group) && min_index > applied {
                let committed = self
                    .node
                    .catch_up(group, ReadConsistency::Linearizable)
                    .await
                    .map_err(api_error)?;
                if min_index > committed {
                    return Err(ApiError::InvalidRequest(format!(
                        "the cursor's index {min_index} is past the location's log (index {committed})"
                    )));
                }
            }
        }
        // Hosted: read the replica's events directly, without encoding
        // them for the app's query and decoding them again here.
        if let (
            true,
            LocationQuery::Events {
                reader,
                start,
                filter,
                max,
                max_bytes,
            },
        ) = (self.node.hosts(group), query)
        {
            self.node
                .catch_up(group, consistency(mode))
                .await
                .map_err(api_error)?;
            let read = self.node.read_local(group, |s| {
                let app = s.app.as_any().downcast_ref::<LocationApp>()?;
                let reply = app.read_events(reader, start.clone(), filter, *max, *max_bytes);
                Some((s.applied_index(), reply))
            });
            return read
                .map_err(api_error)?
                .ok_or_else(|| ApiError::Internal(format!("group {group} is not a location")));
        }
        self.read_group(group, query, mode).await
    }
}

impl Garrison for ApiService {
    async fn submit(
        self,
        _: context::Context,
        version: u16,
        signed: SignedTransaction,
    ) -> Result<TxReceipt, ApiError> {
        self.admit_request(version)?;
        let (group, tx) = self.admit(&signed).await?;
        if group == META_GROUP {
            self.precheck_admin(&tx)?;
            return self.submit_admin(signed, &tx).await;
        }
        let written = self
            .node
            .write(group, codec::encode(&LocationCommand::Submit(signed)))
            .await
            .map_err(api_error)?;
        decode(&written.reply)
    }

    async fn challenge(self, _: context::Context, version: u16) -> Result<Challenge, ApiError> {
        self.admit_request(version)?;
        Ok(self.sessions.challenge())
    }

    async fn login(
        self,
        _: context::Context,
        version: u16,
        player: PlayerKey,
        challenge: Challenge,
        answer: Vec<u8>,
    ) -> Result<SessionToken, ApiError> {
        self.admit_request(version)?;
        self.sessions.check_login(&player, &challenge, &answer)?;
        // Charged like a transaction, after the signatures verified.
        self.players.admit(&player)?;
        self.sessions.issue(&self.node, player)
    }

    async fn verify_token(
        self,
        _: context::Context,
        version: u16,
        token: SessionToken,
    ) -> Result<TokenClaims, ApiError> {
        self.admit_request(version)?;
        self.sessions.verify(&self.node, &token)
    }

    async fn get_entity(
        self,
        _: context::Context,
        version: u16,
        token: SessionToken,
        location: String,
        entity: String,
        mode: ReadMode,
    ) -> Result<EntityRead, ApiError> {
        self.admit_request(version)?;
        let reader = self.sessions.verify(&self.node, &token)?.player;
        let (index, entity) = self.read_entity(&location, entity, reader, mode).await?;
        Ok(EntityRead {
            index,
            entity: entity.map_err(ApiError::Forbidden)?,
        })
    }

    async fn audit(
        self,
        _: context::Context,
        version: u16,
        token: SessionToken,
        query: AuditQuery,
    ) -> Result<AuditRead, ApiError> {
        self.admit_request(version)?;
        let AuditQuery {
            location,
            player,
            from_index,
            max_entries,
        } = query;
        if max_entries > MAX_AUDIT_ENTRIES_PER_READ {
            return Err(ApiError::InvalidRequest(format!(
                "max_entries {max_entries} exceeds {MAX_AUDIT_ENTRIES_PER_READ}"
            )));
        }
        let reader = self.sessions.verify(&self.node, &token)?.player;
        let mode = ReadMode::Linearizable;
        let (index, reply): (u64, AuditReply) = if location == ADMIN_LOCATION {
            let query = AdminQuery::Audit {
                reader,
                player,
                from_index,
                max: max_entries,
            };
            self.admin_query(&query, mode).await?
        } else {
            let query = LocationQuery::Audit {
                reader,
                player,
                from_index,
                max: max_entries,
            };
            self.query(&location, query, mode).await?
        };
        let (entries, more, rolled_off_through) = reply.map_err(ApiError::Forbidden)?;
        Ok(AuditRead {
            index,
            entries,
            more,
            rolled_off_through,
        })
    }

    async fn get_location(
        self,
        _: context::Context,
        version: u16,
        token: SessionToken,
        location: String,
        mode: ReadMode,
        max_entities: u32,
    ) -> Result<LocationRead, ApiError> {
        self.admit_request(version)?;
        let reader = self.sessions.verify(&self.node, &token)?.player;
        if max_entities > MAX_ENTITIES_PER_READ {
            return Err(ApiError::InvalidRequest(format!(
                "max_entities {max_entities} exceeds {MAX_ENTITIES_PER_READ}"
            )));
        }
        let (index, (entities, truncated)) = self
            .query(
                &location,
                LocationQuery::Entities {
                    max: max_entities,
                    reader,
                },
                mode,
            )
            .await?;
        Ok(LocationRead {
            index,
            entities,
            truncated,
        })
    }

    async fn next_sequence(
        self,
        _: context::Context,
        version: u16,
        location: String,
        player: PlayerKey,
        mode: ReadMode,
    ) -> Result<u64, ApiError> {
        self.admit_request(version)?;
        if location == ADMIN_LOCATION {
            let (_, next) = self
                .admin_query(&AdminQuery::NextSequence(player), mode)
                .await?;
            return Ok(next);
        }
        let (_, next) = self
            .query(&location, LocationQuery::NextSequence(player), mode)
            .await?;
        Ok(next)
    }

    async fn locations(
        self,
        _: context::Context,
        version: u16,
    ) -> Result<Vec<LocationInfo>, ApiError> {
        self.admit_request(version)?;
        let query = codec::encode(&MetaQuery::Directory);
        let reply = self
            .node
            .read(META_GROUP, query, ReadConsistency::Linearizable)
            .await
            .map_err(api_error)?;
        let directory: Option<Directory> = decode(&reply.reply)?;
        Ok(directory
            .unwrap_or_default()
            .locations
            .values()
            .map(info)
            .collect())
    }

    async fn status(self, _: context::Context, version: u16) -> Result<NodeStatus, ApiError> {
        self.admit_request(version)?;
        let groups = self
            .node
            .status()
            .into_iter()
            .map(|s| GroupInfo {
                group: s.group,
                location: s.location,
                leader: s.leader,
                term: s.term,
                last_log_index: s.last_log_index.unwrap_or(0),
                applied_index: s.applied_index.unwrap_or(0),
                voters: s.voters.into_iter().collect(),
                quiet: s.quiet,
            })
            .collect();
        Ok(NodeStatus {
            cluster: self.cluster.clone(),
            node: self.node.id(),
            api_addrs: self.api_addrs.clone(),
            http_addrs: self.http_addrs.clone(),
            groups,
            cache: self.cache.as_ref().map(|c| c.stats()).unwrap_or_default(),
            events: EventStats {
                observers: self.hub.observer_count(),
                waiting_polls: u64::from(self.polls.load(Ordering::Relaxed)),
                delivered: self.hub.delivered(),
            },
        })
    }

    async fn consistency(
        self,
        _: context::Context,
        version: u16,
        group: Option<u64>,
        at: Option<u64>,
    ) -> Result<Vec<GroupConsistency>, ApiError> {
        self.admit_request(version)?;
        let groups = match group {
            Some(g) => vec![g],
            None => self.node.groups(),
        };
        let mut reports = Vec::new();
        for g in groups {
            let location = self.node.group_status(g).and_then(|s| s.location);
            let r = self.node.consistency(g, at).map_err(api_error)?;
            reports.push(GroupConsistency {
                group: g,
                location,
                applied_index: r.applied_index,
                index: r.index,
                chain: r.chain,
                state_digest: r.state_digest,
            });
        }
        Ok(reports)
    }

    async fn read_events(
        self,
        _: context::Context,
        version: u16,
        token: SessionToken,
        query: EventQuery,
    ) -> Result<PackedBatch, ApiError> {
        self.admit_request(version)?;
        let reader = self.sessions.verify(&self.node, &token)?.player;
        serve::check_query(&query)?;
        let _connection = serve::take_poll(
            &self.connection_polls,
            self.max_connection_polls,
            "this connection",
        )?;
        let _node = serve::take_poll(&self.polls, self.max_polls, "this node")?;
        serve::read_events(&self, &self.hub, reader, query).await
    }

    async fn save_cursor(
        self,
        _: context::Context,
        version: u16,
        token: SessionToken,
        location: String,
        consumer: String,
        cursor: Cursor,
    ) -> Result<u64, ApiError> {
        self.admit_request(version)?;
        let player = self.sessions.verify(&self.node, &token)?.player;
        consumers::check_name(&consumer).map_err(ApiError::InvalidRequest)?;
        // A save costs a log entry: charged like a transaction.
        self.players.admit(&player)?;
        let (group, _) = EventSource::group(&self, &location).await?;
        let command = LocationCommand::SaveCursor {
            player,
            consumer,
            cursor,
        };
        let written = self
            .node
            .write(group, codec::encode(&command))
            .await
            .map_err(api_error)?;
        let saved: Result<(), String> = decode(&written.reply)?;
        saved.map_err(ApiError::InvalidRequest)?;
        Ok(written.index)
    }

    async fn load_cursor(
        self,
        _: context::Context,
        version: u16,
        token: SessionToken,
        location: String,
        consumer: String,
        mode: ReadMode,
    ) -> Result<Option<Cursor>, ApiError> {
        self.admit_request(version)?;
        let player = self.sessions.verify(&self.node, &token)?.player;
        consumers::check_name(&consumer).map_err(ApiError::InvalidRequest)?;
        let (_, cursor) = self
            .query(
                &location,
                LocationQuery::Consumer { player, consumer },
                mode,
            )
            .await?;
        Ok(cursor)
    }

    async fn rules(
        self,
        _: context::Context,
        version: u16,
        mode: ReadMode,
    ) -> Result<RuleSet, ApiError> {
        self.admit_request(version)?;
        let (_, rules) = self.admin_query(&AdminQuery::Rules, mode).await?;
        Ok(rules)
    }

    async fn location_rules(
        self,
        _: context::Context,
        version: u16,
        location: String,
        mode: ReadMode,
    ) -> Result<LocationRules, ApiError> {
        self.admit_request(version)?;
        let (index, mut rules): (u64, LocationRules) =
            self.query(&location, LocationQuery::Rules, mode).await?;
        rules.index = index;
        Ok(rules)
    }

    async fn plugins(
        self,
        _: context::Context,
        version: u16,
        mode: ReadMode,
    ) -> Result<PluginSet, ApiError> {
        self.admit_request(version)?;
        let (_, plugins) = self.admin_query(&AdminQuery::Plugins, mode).await?;
        Ok(plugins)
    }

    async fn location_plugins(
        self,
        _: context::Context,
        version: u16,
        location: String,
        mode: ReadMode,
    ) -> Result<LocationPlugins, ApiError> {
        self.admit_request(version)?;
        let (index, mut plugins): (u64, LocationPlugins) =
            self.query(&location, LocationQuery::Plugins, mode).await?;
        plugins.index = index;
        Ok(plugins)
    }

    async fn plugin_logs(
        self,
        _: context::Context,
        version: u16,
        plugin: Option<String>,
        after: u64,
        max: u32,
    ) -> Result<Vec<PluginLogLine>, ApiError> {
        self.admit_request(version)?;
        let max = (max as usize).min(MAX_PLUGIN_LOG_LINES_PER_READ);
        Ok(self.plugins.logs(plugin.as_deref(), after, max))
    }
}
