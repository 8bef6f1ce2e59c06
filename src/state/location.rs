//! The location group's application: signed transactions against a state
//! fragment, with per-player sequence numbers for replay protection and
//! exactly-once outcomes.
//!
//! Apply trusts that ingress verified the signature (every node does before
//! it proposes) and re-checks everything that depends on state or on the
//! log: canonical decoding, location, sequence number ([`crate::security::sequence`]),
//! and then, operation by operation, the signer's permission under the
//! location's copy of the access policy ([`crate::security::access`]). The outcome is
//! remembered for resubmissions and appended to the audit trail
//! ([`crate::security::audit`]).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use garrison_client::api::{Entity, Outcome, Rejection, TxReceipt, BAN_PREFIX, BAN_UNTIL_FIELD};
use garrison_client::events::{Cursor, EventBody, EventFilter, StartAt};
use garrison_client::plugins::{plugin_identity, PluginFailure, PluginSet};
use garrison_client::policy::{Action, Reader};
use garrison_client::rules::{LocationRules, RuleSet, RuleStatus};
use garrison_client::tx::{PlayerKey, SignedTransaction, Transaction};
use garrison_raft::{codec, ApplyContext, GroupApp, GroupId};
use serde::{Deserialize, Serialize};

use crate::cache::EntityCache;
use crate::cep::engine::CepState;
use crate::cep::ticks::Deadlines;
use crate::events::consumers::Consumers;
use crate::events::log::{EventLog, Found, ReadLimits, RetainedEvent, Trimmed};
use crate::events::observers::EventHub;
use crate::events::outcome_event;
#[cfg(feature = "plugins")]
use crate::plugins::host::{EntryAt, PluginHost};
use crate::plugins::outbox::Outboxes;
use crate::plugins::state::{Delivery, DeliveryReply, PluginState};
use crate::security::access::Policy;
use crate::security::audit::AuditLog;
use crate::security::sequence::{self, Admission, Players};
use crate::state::fragment::Fragment;

/// Most bytes of entities one location read returns (below the client
/// port's default frame limit of 1 MiB); the reply says when it stopped.
pub const MAX_READ_REPLY_BYTES: usize = 512 * 1024;

/// Version of [`LocationImage`].
pub const LOCATION_FORMAT_VERSION: u16 = 5;

/// What a location group's log entries carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocationCommand {
    /// A signed transaction that passed ingress checks. Its reply is a [`TxReceipt`].
    Submit(SignedTransaction),
    /// The cluster's access policy as of meta index `policy.version`,
    /// proposed by a node (never by a client). Applied only if newer than
    /// the location's; the reply is the location's policy version after it.
    Policy(Policy),
    /// The cluster's rules as of meta index `rules.version`, proposed by a
    /// node like the policy; taken only if newer than the location's. The
    /// reply is the location's rule set version after it.
    Rules(RuleSet),
    /// The cluster's plugins as of meta index `plugins.version`, proposed
    /// by a node like the policy; taken only if newer than the location's.
    /// A plugin bound here sees the events of later entries. The reply is
    /// the location's plugin set version after it.
    Plugins(PluginSet),
    /// A plugin's transaction from another location's outbox, proposed by
    /// the node that leads that location. Taken once per key; the reply
    /// is a [`DeliveryReply`].
    Deliver(Delivery),
    /// The target took this location's oldest outbox item (key `seq`),
    /// proposed by the node that delivered it; the reply is `bool` (the
    /// item was still there and is dropped).
    Delivered {
        /// The item's key.
        seq: u64,
        /// Why the target refused its operations, if it did.
        refused: Option<PluginFailure>,
    },
    /// Lets log time pass: proposed by the leader when a rule's deadline
    /// (a window's end, an absence's `within`) has passed on its clock and
    /// no entry came. The reply is how many matches it made (`u32`).
    Tick,
    /// Saves a named consumer's cursor, proposed by the node that checked
    /// the player's session token. The reply is `Result<(), String>`.
    SaveCursor {
        /// The token's player.
        player: PlayerKey,
        /// The consumer's name.
        consumer: String,
        /// The cursor.
        cursor: Cursor,
    },
}

/// Reads of a location's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocationQuery {
    /// One entity, if `reader` may read it; the reply is
    /// `Result<Option<Entity>, Rejection>`.
    Entity {
        /// The entity's key.
        key: String,
        /// Who asks (from a verified session token).
        reader: PlayerKey,
    },
    /// Up to `max` of the entities `reader` may read, in key order; the reply
    /// is `(BTreeMap<String, Entity>, bool truncated)`.
    Entities {
        /// How many at most.
        max: u32,
        /// Who asks (from a verified session token).
        reader: PlayerKey,
    },
    /// A player's next sequence number; the reply is `u64`.
    NextSequence(PlayerKey),
    /// The location's copy of the access policy; the reply is [`Policy`].
    Policy,
    /// Audit trail entries; the reply is `Result<(Vec<AuditEntry>, bool
    /// more, Option<u64> rolled_off_through), Rejection>`.
    Audit {
        /// Who asks (from a verified session token): anyone may read its
        /// own entries; others' need the audit permission.
        reader: PlayerKey,
        /// Only this player's, if given.
        player: Option<PlayerKey>,
        /// Entries at or after this index.
        from_index: u64,
        /// How many at most.
        max: u32,
    },
    /// Up to `max` retained events after `start` that pass `filter` and
    /// that `reader` may read; the reply is `Result<EventsReply, Trimmed>`.
    Events {
        /// Who asks (from a verified session token).
        reader: PlayerKey,
        /// Where to start.
        start: StartAt,
        /// Which events.
        filter: EventFilter,
        /// How many at most.
        max: u32,
        /// How many bytes at most (each event counted as its encoding plus
        /// the location's name and 16), but at least one event.
        max_bytes: u32,
    },
    /// The rules at work here; the reply is [`LocationRules`] (its
    /// `index` left 0 for the caller to fill in).
    Rules,
    /// The plugins at work here; the reply is
    /// [`garrison_client::plugins::LocationPlugins`] (its `index` left 0).
    Plugins,
    /// A named consumer's saved cursor; the reply is `Option<Cursor>`.
    Consumer {
        /// Its player.
        player: PlayerKey,
        /// Its name.
        consumer: String,
    },
}

/// The answer to [`LocationQuery::Events`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsReply {
    /// The cursor the read started after (`StartAt` resolved).
    pub start: Cursor,
    /// What it found.
    pub found: Found,
    /// The events it found, packed (as in `PackedEvents::encoded`).
    #[serde(with = "garrison_wire::byte_run")]
    pub encoded: Vec<u8>,
}

/// A location's whole replicated state, as snapshots store it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationImage {
    /// [`LOCATION_FORMAT_VERSION`].
    pub format_version: u16,
    /// The entities.
    pub fragment: Fragment,
    /// Every player that has acted here.
    pub players: Players,
    /// The access policy as of the last policy entry (version 0: none yet).
    pub policy: Policy,
    /// The transactions carried out here, newest last.
    pub audit: AuditLog,
    /// The most recent events, oldest first.
    pub events: EventLog,
    /// Named consumers' saved cursors.
    pub consumers: Consumers,
    /// The deployed rules that apply here, with their partial matches and
    /// open windows.
    pub cep: CepState,
    /// The deployed plugins that run here, with their records.
    pub plugins: PluginState,
}

/// The [`GroupApp`] of a location group.
pub struct LocationApp {
    location: String,
    state: LocationImage,
    /// The node's entity cache and this location's group, told of every
    /// change; never read here.
    cache: Option<(GroupId, Arc<EntityCache>)>,
    /// The node's event hub, told after each entry's events are retained;
    /// never read here.
    hub: Option<(GroupId, Arc<EventHub>)>,
    /// The node's pending rule deadlines, told this location's after each
    /// entry; never read here.
    deadlines: Option<(GroupId, Arc<Deadlines>)>,
    /// The node's plugin host, which runs this location's plugins.
    #[cfg(feature = "plugins")]
    plugin_host: Option<Arc<PluginHost>>,
    /// The node's outbox registry, told whether this location's outbox
    /// holds items (and what it was last told); never read here.
    outboxes: Option<(GroupId, Arc<Outboxes>, bool)>,
}

impl Drop for LocationApp {
    fn drop(&mut self) {
        if let Some((group, cache)) = &self.cache {
            cache.closed(*group);
        }
        if let Some((group, hub)) = &self.hub {
            hub.closed(*group);
        }
        if let Some((group, deadlines)) = &self.deadlines {
            deadlines.set(*group, None);
        }
        if let Some((group, outboxes, _)) = &self.outboxes {
            outboxes.set(*group, false);
        }
    }
}

/// May `reader` read `key` (owned by `owner`; `None`: it does not exist) in
/// `location` under `policy`?
pub fn may_read(
    policy: &Policy,
    location: &str,
    reader: &PlayerKey,
    key: &str,
    owner: Option<&PlayerKey>,
) -> Result<(), Rejection> {
    policy.check(reader, Some(location), Action::Read, Some(key), owner)
}

impl LocationApp {
    /// An empty location `location`. (The cluster's name is checked at
    /// ingress; it is a local setting, which apply must not depend on.)
    pub fn new(location: &str) -> Self {
        Self {
            location: location.to_string(),
            state: LocationImage {
                format_version: LOCATION_FORMAT_VERSION,
                ..Default::default()
            },
            cache: None,
            hub: None,
            deadlines: None,
            #[cfg(feature = "plugins")]
            plugin_host: None,
            outboxes: None,
        }
    }

    /// Tells `outboxes`, as group `group`, when this location's outbox
    /// holds items.
    pub fn with_outboxes(mut self, group: GroupId, outboxes: Arc<Outboxes>) -> Self {
        self.outboxes = Some((group, outboxes, false));
        self
    }

    /// Tells the node's outbox registry, if what it knows changed.
    fn tell_outbox(&mut self) {
        let holds = !self.state.plugins.outbox.is_empty();
        if let Some((group, outboxes, told)) = &mut self.outboxes {
            if *told != holds {
                outboxes.set(*group, holds);
                *told = holds;
            }
        }
    }

    /// Applies a delivery from another location's outbox: once per key,
    /// under the plugin's identity and the role it carries. Its events (the
    /// entity events, then an [`EventBody::Delivered`]) are not offered to
    /// this location's plugins, so plugins cannot bounce transactions
    /// between locations for ever.
    fn deliver(&mut self, index: u64, log_time_ms: u64, d: Delivery) -> DeliveryReply {
        if !self.state.plugins.take_delivery(&d) {
            self.after_entry(index, log_time_ms, None, Vec::new());
            return DeliveryReply {
                duplicate: true,
                refused: None,
            };
        }
        let me = plugin_identity(&d.plugin);
        let (refused, mut events) = if self.state.policy.version == 0 {
            let reason = Rejection::PolicyPending;
            (
                Some(PluginFailure::Refused { op: None, reason }),
                Vec::new(),
            )
        } else {
            let policy = &self.state.policy;
            let role = [d.role.as_str()];
            let applied =
                self.state
                    .fragment
                    .apply(&self.location, &me, &d.ops, index, &|op, owner| {
                        policy.check_as(&role, &me, op.action(), op.subject(), owner)
                    });
            match applied.outcome {
                Outcome::Committed { events, .. } => {
                    if let Some((group, cache)) = &self.cache {
                        cache.changed(*group, index, events.iter().map(|e| e.entity.as_str()));
                    }
                    (None, applied.events)
                }
                Outcome::Rejected { op, reason } => {
                    (Some(PluginFailure::Refused { op, reason }), Vec::new())
                }
            }
        };
        events.push(EventBody::Delivered {
            plugin: d.plugin,
            version: d.version,
            source: d.cause,
            seq: d.seq,
            refused: refused.clone().map(Box::new),
        });
        self.entry_events(index, log_time_ms, None, events, false);
        DeliveryReply {
            duplicate: false,
            refused,
        }
    }

    /// Runs this location's plugins on `host`.
    #[cfg(feature = "plugins")]
    pub fn with_plugin_host(mut self, host: Arc<PluginHost>) -> Self {
        self.plugin_host = Some(host);
        self
    }

    /// The plugins here.
    pub fn plugins(&self) -> &PluginState {
        &self.state.plugins
    }

    /// The fingerprint of the engine this replica runs plugins on (`None`:
    /// it has none).
    fn engine(&self) -> Option<&str> {
        #[cfg(feature = "plugins")]
        if let Some(host) = &self.plugin_host {
            return Some(host.fingerprint());
        }
        None
    }

    /// Tells `deadlines`, as group `group`, when this location's rules next
    /// need log time to pass.
    pub fn with_deadlines(mut self, group: GroupId, deadlines: Arc<Deadlines>) -> Self {
        self.deadlines = Some((group, deadlines));
        self
    }

    /// The complex event processor's state here.
    pub fn cep(&self) -> &CepState {
        &self.state.cep
    }

    /// Tells `hub`, as group `group`, whenever events are retained.
    pub fn with_hub(mut self, group: GroupId, hub: Arc<EventHub>) -> Self {
        self.hub = Some((group, hub));
        self
    }

    /// The location's retained events.
    pub fn events(&self) -> &EventLog {
        &self.state.events
    }

    /// Reports this location's changes, as group `group`, to `cache`.
    pub fn with_cache(mut self, group: GroupId, cache: Arc<EntityCache>) -> Self {
        cache.opened(group);
        self.cache = Some((group, cache));
        self
    }

    /// The location's entities.
    pub fn fragment(&self) -> &Fragment {
        &self.state.fragment
    }

    /// The location's copy of the access policy.
    pub fn policy(&self) -> &Policy {
        &self.state.policy
    }

    /// The player's next sequence number here.
    pub fn next_sequence(&self, player: &PlayerKey) -> u64 {
        sequence::next_sequence(&self.state.players, player)
    }

    /// Carries out a signed transaction at log `index` and `log_time_ms`;
    /// the receipt is the reply. Its events (and its outcome's) are
    /// retained, after the rules saw them, except for a duplicate, which
    /// changes nothing.
    pub fn submit(
        &mut self,
        index: u64,
        log_time_ms: u64,
        signed: &SignedTransaction,
    ) -> TxReceipt {
        let (receipt, player, events) = self.decide(index, log_time_ms, signed);
        self.after_entry(index, log_time_ms, player, events);
        receipt
    }

    /// The receipt of a signed transaction and the events to retain (none
    /// for a duplicate or a stranger's refusal), with their player.
    fn decide(
        &mut self,
        index: u64,
        log_time_ms: u64,
        signed: &SignedTransaction,
    ) -> (TxReceipt, Option<PlayerKey>, Vec<EventBody>) {
        let fresh = match sequence::admit(&self.state.players, &self.location, index, signed) {
            Admission::Done(receipt) => {
                // Refused by its sequence number (a replay, a gap) or its
                // location: player behaviour too. A duplicate changes
                // nothing, and neither does what ingress would have
                // refused (only a forged proposal gets that far).
                let malformed = matches!(
                    receipt.outcome,
                    Outcome::Rejected {
                        reason: Rejection::Malformed(_),
                        ..
                    }
                );
                if !(receipt.duplicate || malformed) {
                    // Decoded again on this rare path.
                    let player = Transaction::from_canonical_bytes(&signed.transaction)
                        .ok()
                        .map(|tx| tx.player);
                    if player.is_some_and(|p| self.holds_a_role(&p)) {
                        return (receipt.clone(), player, vec![outcome_event(&receipt)]);
                    }
                }
                return (receipt, None, Vec::new());
            }
            Admission::Fresh(fresh) => fresh,
        };
        let tx = &fresh.tx;
        let player = tx.player;
        let (outcome, mut events) = if self.state.policy.version == 0 {
            let pending = Outcome::Rejected {
                op: None,
                reason: Rejection::PolicyPending,
            };
            (pending, Vec::new())
        } else if let Some(until_ms) = self.banned(&player, log_time_ms) {
            let banned = Outcome::Rejected {
                op: None,
                reason: Rejection::Banned { until_ms },
            };
            (banned, Vec::new())
        } else {
            let policy = &self.state.policy;
            let location = self.location.as_str();
            let applied =
                self.state
                    .fragment
                    .apply(location, &player, &tx.ops, index, &|op, owner| {
                        policy.check(&player, Some(location), op.action(), op.subject(), owner)
                    });
            (applied.outcome, applied.events)
        };
        if let (Some((group, cache)), Outcome::Committed { events, .. }) = (&self.cache, &outcome) {
            cache.changed(*group, index, events.iter().map(|e| e.entity.as_str()));
        }
        let receipt = fresh.decide(
            &mut self.state.players,
            &mut self.state.audit,
            log_time_ms,
            signed,
            outcome,
        );
        // A stranger's refusals leave no event, so that players without a
        // role here cannot push the others' events out of retention.
        let committed = matches!(receipt.outcome, Outcome::Committed { .. });
        if committed || self.holds_a_role(&player) {
            events.push(outcome_event(&receipt));
            (receipt, Some(player), events)
        } else {
            (receipt, Some(player), Vec::new())
        }
    }

    /// Until when `player` is banned here, if a ban entity
    /// (`ban/<key hex>`) holds an end later than `log_time_ms`.
    fn banned(&self, player: &PlayerKey, log_time_ms: u64) -> Option<u64> {
        let entities = &self.state.fragment.entities;
        // Most locations hold no ban at all: one range probe decides.
        let mut bans = entities.range::<str, _>((
            std::ops::Bound::Included(BAN_PREFIX),
            std::ops::Bound::Unbounded,
        ));
        if !bans.next().is_some_and(|(k, _)| k.starts_with(BAN_PREFIX)) {
            return None;
        }
        let key = format!("{BAN_PREFIX}{}", hex::encode(player));
        match entities.get(&key)?.fields.get(BAN_UNTIL_FIELD)? {
            garrison_client::Value::Int(until) if *until > 0 && *until as u64 > log_time_ms => {
                Some(*until as u64)
            }
            _ => None,
        }
    }

    /// After every entry: the rules see its events (and log time passing)
    /// and append their matches; then the events are retained and the
    /// location's next deadline is told.
    fn after_entry(
        &mut self,
        index: u64,
        log_time_ms: u64,
        player: Option<PlayerKey>,
        events: Vec<EventBody>,
    ) -> usize {
        self.entry_events(index, log_time_ms, player, events, true)
    }

    /// [`Self::after_entry`], offering the events to the plugins or not.
    fn entry_events(
        &mut self,
        index: u64,
        log_time_ms: u64,
        player: Option<PlayerKey>,
        mut events: Vec<EventBody>,
        to_plugins: bool,
    ) -> usize {
        if self.state.cep.rules.is_empty() && events.is_empty() {
            return 0;
        }
        let matches = self
            .state
            .cep
            .entry(index, log_time_ms, player, &mut events);
        if to_plugins && !events.is_empty() && self.state.plugins.active() {
            self.run_plugins(index, log_time_ms, player, &mut events);
            self.tell_outbox();
        }
        if !events.is_empty() {
            self.retain(index, log_time_ms, player, events);
        }
        self.tell_deadline();
        matches
    }

    /// Offers the entry's events to the plugins, which append theirs.
    /// (Apply refuses the entry before this on a node without the engine
    /// the plugins name: see [`GroupApp::refusal`].)
    #[cfg(feature = "plugins")]
    fn run_plugins(
        &mut self,
        index: u64,
        log_time_ms: u64,
        player: Option<PlayerKey>,
        events: &mut Vec<EventBody>,
    ) {
        let Some(host) = &self.plugin_host else {
            return;
        };
        let at = EntryAt {
            location: &self.location,
            index,
            log_time_ms,
            player,
        };
        let state = &mut self.state;
        let effects = host.run_entry(
            &at,
            &mut state.plugins,
            &mut state.fragment,
            &state.policy,
            events,
        );
        if let (Some((group, cache)), false) = (&self.cache, effects.changed.is_empty()) {
            cache.changed(*group, index, effects.changed.iter().map(String::as_str));
        }
    }

    #[cfg(not(feature = "plugins"))]
    fn run_plugins(&mut self, _: u64, _: u64, _: Option<PlayerKey>, _: &mut Vec<EventBody>) {}

    /// Tells the node's deadlines when this location's rules next need
    /// log time to pass.
    fn tell_deadline(&self) {
        if let Some((group, deadlines)) = &self.deadlines {
            deadlines.set(*group, self.state.cep.next_deadline());
        }
    }

    /// Does `player` hold a role here (its own, or the default role)?
    fn holds_a_role(&self, player: &PlayerKey) -> bool {
        !self
            .state
            .policy
            .roles_of(player, Some(&self.location))
            .is_empty()
    }

    /// Retains the events of the entry at `index` and tells the hub.
    fn retain(
        &mut self,
        index: u64,
        log_time_ms: u64,
        player: Option<PlayerKey>,
        events: Vec<EventBody>,
    ) {
        let retention = self.state.policy.events;
        self.state
            .events
            .append(index, log_time_ms, player, events, &retention);
        if let Some((group, hub)) = &self.hub {
            hub.notify_observers(*group, &self.location, index);
        }
    }

    /// May the reader see `event` here, as of this state? Entity events as
    /// the entity could be read; other events by their own player, and by
    /// whoever may read every entity of that player.
    fn may_see(reader: &Reader<'_>, who: &PlayerKey, event: &RetainedEvent) -> bool {
        match event.body.entity() {
            Some((entity, owner)) => reader.may_read(Some(entity), Some(owner)),
            None => {
                event.player.as_ref() == Some(who) || reader.may_read(None, event.player.as_ref())
            }
        }
    }

    /// The events after `start` that pass `filter` and `reader` may see
    /// (what [`LocationQuery::Events`] answers).
    pub fn read_events(
        &self,
        reader: &PlayerKey,
        start: StartAt,
        filter: &EventFilter,
        max: u32,
        max_bytes: u32,
    ) -> Result<EventsReply, Trimmed> {
        let log = &self.state.events;
        let start = match start {
            StartAt::After(cursor) => cursor,
            StartAt::Oldest => log.oldest_start(),
            StartAt::Latest => log.newest().unwrap_or(log.oldest_start()),
        };
        let limits = ReadLimits {
            max_events: max as usize,
            max_bytes: max_bytes as usize,
            per_event_bytes: self.location.len() + 16,
        };
        let view = self.state.policy.reader(reader, &self.location);
        let mut encoded = Vec::new();
        let found = log.read(
            start,
            filter,
            limits,
            |e| Self::may_see(&view, reader, e),
            |_, bytes| encoded.extend_from_slice(bytes),
        )?;
        Ok(EventsReply {
            start,
            found,
            encoded,
        })
    }

    /// Takes `policy` if it is newer than the location's; returns the
    /// location's policy version after.
    pub fn set_policy(&mut self, policy: Policy) -> u64 {
        if policy.version > self.state.policy.version {
            self.state.policy = policy;
        }
        self.state.policy.version
    }

    /// May `reader` read `key` (owned by `owner`; `None`: it does not
    /// exist) here, as of this state?
    fn may_read(
        &self,
        reader: &PlayerKey,
        key: &str,
        owner: Option<&PlayerKey>,
    ) -> Result<(), Rejection> {
        may_read(&self.state.policy, &self.location, reader, key, owner)
    }

    fn query_reply(&self, query: LocationQuery) -> Vec<u8> {
        match query {
            LocationQuery::Entity { key, reader } => {
                let entity = self.state.fragment.entities.get(&key);
                let allowed = self.may_read(&reader, &key, entity.map(|e| &e.owner));
                codec::encode(&allowed.map(|()| entity))
            }
            LocationQuery::Entities { max, reader } => {
                // Only what the reader may read; stop at `max` and at a byte
                // budget, so the reply fits in a frame.
                let mut entities: BTreeMap<String, Entity> = BTreeMap::new();
                let mut bytes = 0;
                let mut truncated = false;
                for (k, v) in &self.state.fragment.entities {
                    if self.may_read(&reader, k, Some(&v.owner)).is_err() {
                        continue;
                    }
                    bytes += k.len() + codec::encode(v).len();
                    if entities.len() == max as usize
                        || (bytes > MAX_READ_REPLY_BYTES && !entities.is_empty())
                    {
                        truncated = true;
                        break;
                    }
                    entities.insert(k.clone(), v.clone());
                }
                codec::encode(&(entities, truncated))
            }
            LocationQuery::NextSequence(player) => codec::encode(&self.next_sequence(&player)),
            LocationQuery::Policy => codec::encode(&self.state.policy),
            LocationQuery::Audit {
                reader,
                player,
                from_index,
                max,
            } => {
                // Anyone may read their own trail; the whole trail, or
                // another player's, needs the audit permission here.
                if player != Some(reader) {
                    let allowed = self.state.policy.check(
                        &reader,
                        Some(&self.location),
                        Action::Audit,
                        None,
                        None,
                    );
                    if let Err(denied) = allowed {
                        return codec::encode(&Err::<(), _>(denied));
                    }
                }
                self.state.audit.reply(player.as_ref(), from_index, max)
            }
            LocationQuery::Events {
                reader,
                start,
                filter,
                max,
                max_bytes,
            } => codec::encode(&self.read_events(&reader, start, &filter, max, max_bytes)),
            LocationQuery::Rules => {
                let cep = &self.state.cep;
                codec::encode(&LocationRules {
                    index: 0,
                    version: cep.version,
                    rules: cep
                        .rules
                        .iter()
                        .map(|(name, run)| RuleStatus {
                            name: name.clone(),
                            version: run.version,
                            pending: run.pending() as u64,
                            matches: run.matches,
                            dropped: run.dropped(),
                        })
                        .collect(),
                    dropped_matches: cep.dropped_matches,
                    next_deadline_ms: cep.next_deadline(),
                })
            }
            LocationQuery::Plugins => codec::encode(&self.state.plugins.status()),
            LocationQuery::Consumer { player, consumer } => {
                codec::encode(&self.state.consumers.load(&player, &consumer))
            }
        }
    }
}

impl GroupApp for LocationApp {
    fn apply(&mut self, ctx: &ApplyContext<'_>, payload: &[u8]) -> Vec<u8> {
        match codec::decode::<LocationCommand>(payload) {
            Ok(LocationCommand::Submit(signed)) => {
                codec::encode(&self.submit(ctx.index, ctx.log_time_ms, &signed))
            }
            Ok(LocationCommand::Policy(policy)) => {
                let before = self.state.policy.version;
                let after = self.set_policy(policy);
                if let Some((group, cache)) = &self.cache {
                    if after != before {
                        cache.policy_changed(*group, ctx.index, &self.state.policy);
                    }
                }
                self.after_entry(ctx.index, ctx.log_time_ms, None, Vec::new());
                codec::encode(&after)
            }
            Ok(LocationCommand::Rules(rules)) => {
                // The rules take effect after this entry: time passes for
                // the old ones first.
                self.after_entry(ctx.index, ctx.log_time_ms, None, Vec::new());
                self.state.cep.set_rules(&rules, &self.location);
                self.tell_deadline();
                codec::encode(&self.state.cep.version)
            }
            Ok(LocationCommand::Plugins(plugins)) => {
                // Like rules, from the next entry on.
                self.after_entry(ctx.index, ctx.log_time_ms, None, Vec::new());
                let version = self.state.plugins.take(&plugins, &self.location, ctx.index);
                codec::encode(&version)
            }
            Ok(LocationCommand::Deliver(delivery)) => {
                codec::encode(&self.deliver(ctx.index, ctx.log_time_ms, delivery))
            }
            Ok(LocationCommand::Delivered { seq, refused }) => {
                let dropped = self.state.plugins.delivered(seq, refused);
                self.after_entry(ctx.index, ctx.log_time_ms, None, Vec::new());
                self.tell_outbox();
                codec::encode(&dropped)
            }
            Ok(LocationCommand::Tick) => {
                let matches = self.after_entry(ctx.index, ctx.log_time_ms, None, Vec::new());
                codec::encode(&(matches as u32))
            }
            Ok(LocationCommand::SaveCursor {
                player,
                consumer,
                cursor,
            }) => {
                let saved = self
                    .state
                    .consumers
                    .save(player, &consumer, cursor, ctx.index);
                self.after_entry(ctx.index, ctx.log_time_ms, None, Vec::new());
                codec::encode(&saved)
            }
            Err(e) => {
                self.after_entry(ctx.index, ctx.log_time_ms, None, Vec::new());
                codec::encode(&sequence::rejected(
                    &self.location,
                    ctx.index,
                    0,
                    Rejection::Malformed(e.to_string()),
                ))
            }
        }
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        match codec::decode::<LocationQuery>(query) {
            Ok(query) => self.query_reply(query),
            Err(_) => Vec::new(),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        codec::encode(&self.state)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        self.state = decode_image(
            snapshot,
            "location",
            LOCATION_FORMAT_VERSION,
            |i: &LocationImage| i.format_version,
        )?;
        self.state.events.encode_all();
        self.state.cep.compile();
        Ok(())
    }

    fn restored_at(&mut self, index: u64) {
        self.tell_outbox();
        if let Some((group, cache)) = &self.cache {
            cache.restored(*group, index, &self.state.policy);
        }
        if let Some((group, hub)) = &self.hub {
            hub.notify_observers(*group, &self.location, index);
        }
        self.tell_deadline();
    }

    fn refusal(&self) -> Option<String> {
        self.state.plugins.refusal(self.engine())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Decodes a snapshot image of `what`, refusing another format version.
pub(crate) fn decode_image<T: serde::de::DeserializeOwned>(
    snapshot: &[u8],
    what: &str,
    supported: u16,
    version: impl Fn(&T) -> u16,
) -> Result<T, String> {
    let image: T = codec::decode_stored(snapshot).map_err(|e| e.to_string())?;
    if version(&image) != supported {
        return Err(format!(
            "{what} format version {} is not supported",
            version(&image)
        ));
    }
    Ok(image)
}

/// Makes [`LocationApp`]s, each reporting to the node's entity cache if
/// it has one, and to its event hub.
pub struct LocationFactory {
    /// The node's entity cache.
    pub cache: Option<Arc<EntityCache>>,
    /// The node's event hub.
    pub hub: Arc<EventHub>,
    /// The node's pending rule deadlines.
    pub deadlines: Arc<Deadlines>,
    /// The node's plugin host.
    #[cfg(feature = "plugins")]
    pub plugins: Arc<PluginHost>,
    /// The node's outbox registry.
    pub outboxes: Arc<Outboxes>,
}

impl garrison_raft::AppFactory for LocationFactory {
    fn create(&self, group: GroupId, location: &str) -> Box<dyn GroupApp> {
        let app = LocationApp::new(location)
            .with_hub(group, self.hub.clone())
            .with_deadlines(group, self.deadlines.clone())
            .with_outboxes(group, self.outboxes.clone());
        #[cfg(feature = "plugins")]
        let app = app.with_plugin_host(self.plugins.clone());
        Box::new(match &self.cache {
            Some(cache) => app.with_cache(group, cache.clone()),
            None => app,
        })
    }

    fn meta_extension(&self) -> Box<dyn garrison_raft::MetaExtension> {
        Box::new(crate::security::admin::AdminApp::default())
    }
}
