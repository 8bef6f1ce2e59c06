//! The client API: the tarpc service every node serves on its client port,
//! and the types it sends. Framing and encoding are `garrison-wire`'s
//! (4-byte big-endian length, bincode 2); `docs/formats.md` lists them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::events::{Cursor, EventQuery, PackedBatch};
use crate::policy::Action;
use crate::token::{Challenge, SessionToken, TokenClaims, TokenError};
use crate::tx::{PlayerKey, SignedTransaction, TxError, Value};

/// Version of the client API; a node refuses clients of another version.
pub const API_VERSION: u16 = 8;

/// Most entities one location read returns.
pub const MAX_ENTITIES_PER_READ: u32 = 10_000;
/// Most entries one audit read returns.
pub const MAX_AUDIT_ENTRIES_PER_READ: u32 = 1_000;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadMode {
    /// Reflects every transaction acknowledged before the read began.
    Linearizable,
    /// Served by the replica that answers, once it has applied `min_index`
    /// (0: whatever it has); the reply says which index it reflects.
    Stale {
        /// The lowest log index the answer may reflect.
        min_index: u64,
    },
}

/// One entity of a location's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// The player that created it.
    pub owner: PlayerKey,
    /// The log index of its last change: it changes on every write.
    pub version: u64,
    /// Its fields.
    pub fields: BTreeMap<String, Value>,
}

/// What a committed transaction did to one entity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The entity did not exist before.
    Created,
    /// The entity existed and was changed.
    Changed,
    /// The entity was deleted.
    Deleted,
}

/// An event derived from a committed transaction, tagged with where and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The location.
    pub location: String,
    /// The log index of the transaction.
    pub index: u64,
    /// The entity.
    pub entity: String,
    /// What happened to it.
    pub kind: EventKind,
}

/// Why apply refused a transaction; nothing changed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Rejection {
    /// The sequence number skips ahead.
    #[error("sequence {got} skips ahead; the player's next sequence here is {expected}")]
    SequenceGap {
        /// The next expected sequence number.
        expected: u64,
        /// The transaction's.
        got: u64,
    },
    /// The sequence number was already used by another transaction (a replay
    /// or a reuse).
    #[error("sequence {got} was already used by another transaction; the next is {next}")]
    SequenceReused {
        /// The transaction's.
        got: u64,
        /// The player's next sequence number here.
        next: u64,
    },
    /// The transaction names another cluster.
    #[error("the transaction is for cluster {got:?}, this is {expected:?}")]
    WrongCluster {
        /// This cluster.
        expected: String,
        /// The transaction's.
        got: String,
    },
    /// The transaction names another location.
    #[error("the transaction is for location {got:?}, this group holds {expected:?}")]
    WrongLocation {
        /// This group's location.
        expected: String,
        /// The transaction's.
        got: String,
    },
    /// The entity does not exist.
    #[error("entity {entity:?} does not exist")]
    NotFound {
        /// The entity.
        entity: String,
    },
    /// The entity's version is not the expected one.
    #[error("entity {entity:?} is at version {actual}, not {expected}")]
    VersionMismatch {
        /// The entity.
        entity: String,
        /// The expected version.
        expected: u64,
        /// Its version (0: absent).
        actual: u64,
    },
    /// A field does not hold the expected value.
    #[error("field {field:?} of {entity:?} is {actual:?}, not {expected:?}")]
    FieldMismatch {
        /// The entity.
        entity: String,
        /// The field.
        field: String,
        /// The expected value.
        expected: Option<Value>,
        /// Its value.
        actual: Option<Value>,
    },
    /// An increment on a field that is not an integer.
    #[error("field {field:?} of {entity:?} is not an integer")]
    NotAnInteger {
        /// The entity.
        entity: String,
        /// The field.
        field: String,
    },
    /// An increment would leave its bounds (or overflow i64).
    #[error(
        "field {field:?} of {entity:?} would become {result}, outside [{}, {}]",
        bound(min),
        bound(max)
    )]
    OutOfBounds {
        /// The entity.
        entity: String,
        /// The field.
        field: String,
        /// The value it would have had.
        result: i128,
        /// The lower bound.
        min: Option<i64>,
        /// The upper bound.
        max: Option<i64>,
    },
    /// The entity would have more fields than allowed.
    #[error("entity {entity:?} would have more than {max} fields")]
    TooManyFields {
        /// The entity.
        entity: String,
        /// The limit.
        max: u64,
    },
    /// The location would have more entities than allowed.
    #[error("the location would have more than {max} entities")]
    TooManyEntities {
        /// The limit.
        max: u64,
    },
    /// The logged command does not decode (a bug or a newer format).
    #[error("malformed command: {0}")]
    Malformed(String),
    /// The signer's roles do not allow this; the reason says what is missing.
    #[error("permission denied: {reason}")]
    Denied {
        /// The action that was refused.
        action: Action,
        /// The entity it was refused on, if any.
        entity: Option<String>,
        /// What is missing: no role granting the action, or the entity
        /// belongs to another player.
        reason: String,
    },
    /// The location has not yet received the cluster's access policy (it
    /// was just created); retry shortly with the next sequence number.
    #[error("this location has not received the cluster's access policy yet; retry shortly")]
    PolicyPending,
    /// An administrative operation cannot be carried out in the current
    /// state (an unknown role, a missing assignment...); the text says why.
    #[error("administrative operation refused: {0}")]
    AdminRefused(String),
    /// The player is banned here until this log time: the location holds
    /// the entity `ban/<player's key in hex>` with an integer field
    /// `until_ms` later than the transaction's entry (see [`BAN_PREFIX`]).
    #[error("the player is banned here until log time {until_ms} ms")]
    Banned {
        /// When the ban ends, in log time (ms since the Unix epoch).
        until_ms: u64,
    },
}

/// Entities under this prefix, named by a player's key in hex, ban that
/// player from acting in their location while their integer field
/// [`BAN_UNTIL_FIELD`] is later than the log time. Whoever may put them
/// (a game master, a moderation plugin) may ban.
pub const BAN_PREFIX: &str = "ban/";
/// The field of a ban entity that holds its end, in log time (ms).
pub const BAN_UNTIL_FIELD: &str = "until_ms";

fn bound(b: &Option<i64>) -> String {
    b.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// What became of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every operation applied.
    Committed {
        /// What changed.
        events: Vec<Event>,
        /// The kinds of the game events it emitted (`Op::Emit`), in
        /// operation order; their fields are in the event stream.
        emitted: Vec<String>,
    },
    /// Nothing changed: the operation `op` (if the failure was in one) failed for `reason`.
    Rejected {
        /// Index of the failing operation; `None` for sequence, cluster and location checks.
        op: Option<u32>,
        /// Why.
        reason: Rejection,
    },
}

/// A node's answer to a submitted transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxReceipt {
    /// The location.
    pub location: String,
    /// The log index at which the outcome was decided.
    pub index: u64,
    /// The transaction's sequence number.
    pub sequence: u64,
    /// The outcome.
    pub outcome: Outcome,
    /// True when this is the remembered outcome of an earlier submission of
    /// the same signed transaction (nothing was applied again).
    pub duplicate: bool,
}

/// One transaction in a location's audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// The log index it was carried out at.
    pub index: u64,
    /// The log time of that entry, in milliseconds since the Unix epoch.
    pub log_time_ms: u64,
    /// The signer.
    pub player: PlayerKey,
    /// Its sequence number.
    pub sequence: u64,
    /// SHA-256 of the canonical transaction bytes.
    pub digest: [u8; 32],
    /// The signed transaction, exactly as submitted (its signature can be
    /// checked); `None` for a transaction refused by access control, which
    /// is kept by digest only.
    pub transaction: Option<SignedTransaction>,
    /// What became of it.
    pub outcome: Outcome,
}

/// What an audit read asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditQuery {
    /// The location (`@cluster`: administrative transactions).
    pub location: String,
    /// Only this player's entries, if given.
    pub player: Option<PlayerKey>,
    /// Entries at or after this log index.
    pub from_index: u64,
    /// At most this many ([`MAX_AUDIT_ENTRIES_PER_READ`]).
    pub max_entries: u32,
}

/// A read of an audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRead {
    /// The log index the answer reflects.
    pub index: u64,
    /// The matching entries, oldest first.
    pub entries: Vec<AuditEntry>,
    /// True when more matching entries follow the last one returned.
    pub more: bool,
    /// Entries up to this index are no longer held (the trail is bounded);
    /// `None`: nothing rolled off.
    pub rolled_off_through: Option<u64>,
}

/// One entity read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityRead {
    /// The log index the answer reflects.
    pub index: u64,
    /// The entity, if it exists.
    pub entity: Option<Entity>,
}

/// A whole location read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationRead {
    /// The log index the answer reflects.
    pub index: u64,
    /// The entities, by key (at most the requested number).
    pub entities: BTreeMap<String, Entity>,
    /// True when more entities exist than were returned.
    pub truncated: bool,
}

/// A location and where it lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationInfo {
    /// Its name.
    pub name: String,
    /// Its Raft group.
    pub group: u64,
    /// The nodes that replicate it.
    pub replicas: Vec<u64>,
}

/// One group as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group.
    pub group: u64,
    /// Its location (`None`: the meta group).
    pub location: Option<String>,
    /// The leader this replica knows.
    pub leader: Option<u64>,
    /// This replica's term.
    pub term: u64,
    /// Index of this replica's last log entry.
    pub last_log_index: u64,
    /// Index this replica has applied.
    pub applied_index: u64,
    /// The group's voters.
    pub voters: Vec<u64>,
    /// Quiet on this node: as leader, sending no heartbeats; as follower,
    /// not timing out while the leader's node answers pings.
    pub quiet: bool,
}

/// One node's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The cluster's name (transactions must carry it).
    pub cluster: String,
    /// The node's id.
    pub node: u64,
    /// Client API address of every node, by id.
    pub api_addrs: BTreeMap<u64, String>,
    /// HTTP API address of every node that serves one, by id.
    pub http_addrs: BTreeMap<u64, String>,
    /// The groups this node holds.
    pub groups: Vec<GroupInfo>,
    /// The node's entity cache.
    pub cache: CacheStats,
    /// The node's event readers.
    pub events: EventStats,
}

/// What a node's event readers (EventManager) are doing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventStats {
    /// Observers registered inside the node.
    pub observers: u64,
    /// Event reads (long polls) waiting now.
    pub waiting_polls: u64,
    /// Events handed to observers and readers since the node started.
    pub delivered: u64,
}

/// What a node's entity cache (CacheManager) did and holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Entity reads answered from the cache.
    pub hits: u64,
    /// Entity reads the cache could not answer (the replica did).
    pub misses: u64,
    /// Entities cached now.
    pub entries: u64,
    /// Bytes they weigh (keys and encoded entities).
    pub bytes: u64,
    /// Most bytes the cache holds (0: no cache).
    pub capacity_bytes: u64,
}

/// One replica's consistency report of one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConsistency {
    /// The group.
    pub group: u64,
    /// Its location (`None`: the meta group).
    pub location: Option<String>,
    /// The replica's applied index.
    pub applied_index: u64,
    /// The index `chain` is for.
    pub index: u64,
    /// The hash chain after `index`, if the replica holds that index.
    pub chain: Option<[u8; 32]>,
    /// SHA-256 of the replica's state at `applied_index`.
    pub state_digest: [u8; 32],
}

/// Why a request failed. Every variant says what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    /// The client speaks another API version.
    #[error("client API version {got} is not supported; this node speaks {supported}")]
    Version {
        /// The client's.
        got: u16,
        /// The node's.
        supported: u16,
    },
    /// The transaction failed an ingress check; fix it, nothing was proposed.
    #[error(transparent)]
    Transaction(#[from] TxError),
    /// The transaction is for another cluster; nothing was proposed.
    #[error("the transaction is for cluster {got:?}, this is {expected:?}")]
    WrongCluster {
        /// This cluster.
        expected: String,
        /// The transaction's.
        got: String,
    },
    /// No such location; create it first.
    #[error("location {0:?} does not exist; create it first")]
    UnknownLocation(String),
    /// A request argument is invalid; the message says which.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The cluster cannot serve this now (no leader, peers unreachable);
    /// retry, the same signed transaction if it was one.
    #[error("unavailable, retry: {0}")]
    Unavailable(String),
    /// The outcome is unknown: the transaction may or may not commit;
    /// resubmit the same signed transaction to learn it.
    #[error("timed out; the outcome is unknown: resubmit the same signed transaction")]
    Timeout,
    /// Something failed inside the node; the message says what.
    #[error("internal error: {0}")]
    Internal(String),
    /// The session token is missing, forged, expired or revoked; the inner
    /// error says which. Log in again (a missing or expired token), or stop.
    #[error("session token refused: {0}")]
    Token(TokenError),
    /// The token's player may not do this; the rejection says what is missing.
    #[error("{0}")]
    Forbidden(Rejection),
    /// The location no longer holds events right after the reader's
    /// cursor (it keeps only its most recent ones); nothing was skipped.
    /// Go on after `resume_after`, knowing that the events between were
    /// missed (`Subscription::skip_trimmed`), or from a fresh read of the
    /// state.
    #[error(
        "events of {location:?} after {after} are no longer held; the oldest held is {}",
        oldest.map_or("none (no event held yet)".to_string(), |c| format!("{location}@{}.{}", c.index, c.position))
    )]
    EventsTrimmed {
        /// The location.
        location: String,
        /// The reader's cursor.
        after: Cursor,
        /// The oldest event the location holds (`None`: none yet).
        oldest: Option<Cursor>,
        /// The newest event no longer held: a reader that accepts the loss
        /// goes on after it (should more be trimmed meanwhile, it is told
        /// again, never moved on in silence).
        resume_after: Cursor,
    },
    /// Too many requests from this connection, or transactions from this
    /// player; retry after the given time. Nothing was done.
    #[error("rate limited ({what}); retry in {retry_after_ms} ms")]
    RateLimited {
        /// Which limit: the connection's or the player's.
        what: String,
        /// When a retry will be admitted.
        retry_after_ms: u64,
    },
}

/// The service each node serves on its client port.
#[tarpc::service]
pub trait Garrison {
    /// Checks, proposes and waits for a signed transaction; from any node.
    async fn submit(version: u16, tx: SignedTransaction) -> Result<TxReceipt, ApiError>;
    /// A login challenge, valid for 30 s on any node.
    async fn challenge(version: u16) -> Result<Challenge, ApiError>;
    /// Logs `player` in with its answer to `challenge` (see
    /// [`crate::token`]); the token is for every node of the cluster.
    async fn login(
        version: u16,
        player: PlayerKey,
        challenge: Challenge,
        answer: Vec<u8>,
    ) -> Result<SessionToken, ApiError>;
    /// Checks a token as reads do, and says whose it is and until when.
    async fn verify_token(version: u16, token: SessionToken) -> Result<TokenClaims, ApiError>;
    /// Reads one entity, if the token's player may read it.
    async fn get_entity(
        version: u16,
        token: SessionToken,
        location: String,
        entity: String,
        mode: ReadMode,
    ) -> Result<EntityRead, ApiError>;
    /// Reads up to `max_entities` of the entities of a location the token's
    /// player may read, in key order.
    async fn get_location(
        version: u16,
        token: SessionToken,
        location: String,
        mode: ReadMode,
        max_entities: u32,
    ) -> Result<LocationRead, ApiError>;
    /// The player's next sequence number at a location.
    async fn next_sequence(
        version: u16,
        location: String,
        player: PlayerKey,
        mode: ReadMode,
    ) -> Result<u64, ApiError>;
    /// Audit trail entries of a location (`@cluster`: administrative
    /// transactions) at or after `from_index`, of `player` only if given.
    /// A player may read its own; others' need the audit permission.
    async fn audit(
        version: u16,
        token: SessionToken,
        query: AuditQuery,
    ) -> Result<AuditRead, ApiError>;
    /// Every location.
    async fn locations(version: u16) -> Result<Vec<LocationInfo>, ApiError>;
    /// This node's status.
    async fn status(version: u16) -> Result<NodeStatus, ApiError>;
    /// This node's consistency reports for its groups; `at` asks for the
    /// chain at that index in `group`.
    async fn consistency(
        version: u16,
        group: Option<u64>,
        at: Option<u64>,
    ) -> Result<Vec<GroupConsistency>, ApiError>;
    /// Events of one or more locations after a cursor each, that the
    /// token's player may read, waiting up to `query.wait_ms` for one (a
    /// long poll: tarpc has no streams). Served by a replica that has
    /// applied each cursor's index (see [`crate::events`]).
    async fn read_events(
        version: u16,
        token: SessionToken,
        query: EventQuery,
    ) -> Result<PackedBatch, ApiError>;
    /// Saves the cursor of the token's player's consumer `consumer` at
    /// `location`, in the location's log; returns the entry's index.
    async fn save_cursor(
        version: u16,
        token: SessionToken,
        location: String,
        consumer: String,
        cursor: Cursor,
    ) -> Result<u64, ApiError>;
    /// The last cursor the token's player's consumer `consumer` saved at
    /// `location` (`None`: never).
    async fn load_cursor(
        version: u16,
        token: SessionToken,
        location: String,
        consumer: String,
        mode: ReadMode,
    ) -> Result<Option<Cursor>, ApiError>;
    /// The rules of the complex event processor deployed in the cluster.
    async fn rules(version: u16, mode: ReadMode) -> Result<crate::rules::RuleSet, ApiError>;
    /// The rules at work in one location: each one's version, partial
    /// matches and matches there.
    async fn location_rules(
        version: u16,
        location: String,
        mode: ReadMode,
    ) -> Result<crate::rules::LocationRules, ApiError>;
    /// The plugins deployed in the cluster, with their modules.
    async fn plugins(version: u16, mode: ReadMode) -> Result<crate::plugins::PluginSet, ApiError>;
    /// The plugins at work in one location: each one's version, runs,
    /// failures and suspension there.
    async fn location_plugins(
        version: u16,
        location: String,
        mode: ReadMode,
    ) -> Result<crate::plugins::LocationPlugins, ApiError>;
    /// The plugin log lines the answering node kept (node-local), after
    /// `after`, of plugin `plugin` if given, at most `max`.
    async fn plugin_logs(
        version: u16,
        plugin: Option<String>,
        after: u64,
        max: u32,
    ) -> Result<Vec<crate::plugins::PluginLogLine>, ApiError>;
}
