//! Events: what the applied log of a location said happened, as readers
//! see it.
//!
//! Every applied transaction produces events, at the log index of its
//! entry, numbered by position within the entry: first one per entity it
//! created, changed or deleted (in key order), then one per `Op::Emit` (in
//! operation order), then one for its outcome (committed, or rejected with
//! the reason). An [`EventId`] (location, index, position) is therefore the
//! same on every replica, and so is the event: replicas apply the same
//! entries with the same rules.
//!
//! A reader holds a [`Cursor`] per location: the id of the last event it
//! has seen there. It asks for what comes after ([`EventQuery`]); the
//! answer ([`EventBatch`]) says where to resume, past every event the
//! node examined, filtered out or not. Because ids are deterministic, a
//! reader can resume at any replica that has applied the cursor's index,
//! with no gap and no duplicate. A location keeps only its most recent
//! events (a count and a byte budget, the cluster's [`EventRetention`]); a
//! cursor older than that gets [`crate::ApiError::EventsTrimmed`], which
//! names the oldest event still held, rather than a silent skip.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::api::Rejection;
use crate::policy::pattern_matches;
use crate::tx::{PlayerKey, Value};

/// Most events one read returns.
pub const MAX_EVENTS_PER_READ: u32 = 1_000;
/// Most bytes of events one read returns (below the client port's default
/// frame limit); a read always returns at least one event if one matches.
pub const MAX_EVENT_READ_BYTES: usize = 512 * 1024;
/// Longest a read waits for new events, in milliseconds.
pub const MAX_EVENT_WAIT_MS: u64 = 30_000;
/// Longest a read that has found events waits for more, in milliseconds.
pub const MAX_EVENT_LINGER_MS: u64 = 1_000;
/// Most locations one read names.
pub const MAX_LOCATIONS_PER_EVENT_READ: usize = 64;
/// Most terms in each list of an [`EventFilter`].
pub const MAX_FILTER_TERMS: usize = 16;
/// Longest pattern of an [`EventFilter`], in bytes.
pub const MAX_FILTER_PATTERN_BYTES: usize = 128;
/// Longest consumer name, in bytes.
pub const MAX_CONSUMER_NAME_BYTES: usize = 64;
/// Most named consumers one location keeps (over all players).
pub const MAX_CONSUMERS_PER_LOCATION: usize = 4_096;
/// Most named consumers one player may keep at one location.
pub const MAX_CONSUMERS_PER_PLAYER: usize = 16;
/// Longest kind of an emitted event, in bytes.
pub const MAX_EMIT_KIND_BYTES: usize = 64;
/// Most fields one emitted event carries.
pub const MAX_FIELDS_PER_EMIT: usize = 32;

/// How many recent events each location keeps: set when the cluster is
/// bootstrapped (`[events]` in the node configuration) and carried into
/// every location's log with the access policy, so every replica trims at
/// the same event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRetention {
    /// Most events kept.
    pub max_events: u64,
    /// Most bytes of encoded events kept. The newest entry's events are kept
    /// whole even beyond it, so a reader that keeps up never loses one.
    pub max_bytes: u64,
}

impl EventRetention {
    /// The smallest budget a cluster may set, in bytes: the largest single
    /// event (a deleted entity with every field at its largest) fits.
    pub const MIN_BYTES: u64 = 512 * 1024;
    /// The largest budget, in bytes (each location holds its events in
    /// memory and in every snapshot).
    pub const MAX_BYTES: u64 = 256 * 1024 * 1024;
    /// The most events a cluster may keep per location.
    pub const MAX_EVENTS: u64 = 1_000_000;

    /// Checks the bounds; the error says which is broken.
    pub fn check(&self) -> Result<(), String> {
        if self.max_events == 0 || self.max_events > Self::MAX_EVENTS {
            return Err(format!(
                "events.max_retained_events must be 1 to {}, not {}",
                Self::MAX_EVENTS,
                self.max_events
            ));
        }
        if self.max_bytes < Self::MIN_BYTES || self.max_bytes > Self::MAX_BYTES {
            return Err(format!(
                "events.max_retained_event_bytes must be {} to {}, not {}",
                Self::MIN_BYTES,
                Self::MAX_BYTES,
                self.max_bytes
            ));
        }
        Ok(())
    }
}

impl Default for EventRetention {
    fn default() -> Self {
        Self {
            max_events: 10_000,
            max_bytes: 4 * 1024 * 1024,
        }
    }
}

/// A position in one location's event stream: just after the event
/// (`index`, `position`). Ordered as the stream is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Cursor {
    /// The log index of the last event seen (0: none yet).
    pub index: u64,
    /// Its position within the entry.
    pub position: u32,
}

impl Cursor {
    /// Before every event.
    pub const START: Cursor = Cursor {
        index: 0,
        position: 0,
    };

    /// After every event of the entries up to `index`.
    pub fn end_of(index: u64) -> Cursor {
        Cursor {
            index,
            position: u32::MAX,
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.position == u32::MAX {
            write!(f, "{}.end", self.index)
        } else {
            write!(f, "{}.{}", self.index, self.position)
        }
    }
}

impl FromStr for Cursor {
    type Err = String;

    /// `INDEX.POSITION` (as events are numbered), `INDEX.end` or `INDEX`
    /// (after every event of that entry).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a cursor: write INDEX.POSITION, INDEX.end or INDEX");
        let (index, position) = match s.split_once('.') {
            Some((i, "end")) => (i, u32::MAX),
            Some((i, p)) => (i, p.parse().map_err(|_| bad())?),
            None => (s, u32::MAX),
        };
        Ok(Cursor {
            index: index.parse().map_err(|_| bad())?,
            position,
        })
    }
}

/// Where an event is: the same on every replica.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId {
    /// The location.
    pub location: String,
    /// The log index of the entry that produced it.
    pub index: u64,
    /// Its position among the entry's events, from 0.
    pub position: u32,
}

impl EventId {
    /// The cursor just after this event.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            index: self.index,
            position: self.position,
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}.{}", self.location, self.index, self.position)
    }
}

/// One field a transaction changed, with its value before and after.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldChange {
    /// The field.
    pub field: String,
    /// Its value before (`None`: it was absent).
    pub old: Option<Value>,
    /// Its value after.
    pub new: Value,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    /// An entity was created, with these fields.
    Created {
        /// The entity's key.
        entity: String,
        /// Its owner (the signer that created it).
        owner: PlayerKey,
        /// Its version (the log index).
        version: u64,
        /// Its initial fields.
        fields: BTreeMap<String, Value>,
    },
    /// An entity's fields were set; `changes` lists each field whose value
    /// is not what it was (empty when a put rewrote the same values).
    Changed {
        /// The entity's key.
        entity: String,
        /// Its owner.
        owner: PlayerKey,
        /// Its new version (the log index).
        version: u64,
        /// The fields that changed, in field order.
        changes: Vec<FieldChange>,
    },
    /// An entity was deleted; these were its last fields.
    Deleted {
        /// The entity's key.
        entity: String,
        /// Its owner.
        owner: PlayerKey,
        /// Its last fields.
        fields: BTreeMap<String, Value>,
    },
    /// A game event declared by a transaction (`Op::Emit`).
    Emitted {
        /// Its kind (`attack`, `capture`, `unit_lost`...).
        kind: String,
        /// Its fields, as the transaction gave them.
        fields: Vec<(String, Value)>,
    },
    /// A transaction committed (after its other events).
    Committed {
        /// Its sequence number.
        sequence: u64,
    },
    /// A transaction was refused and changed nothing: by the rules, by
    /// access control, or by its sequence number (a replay, a gap).
    Rejected {
        /// Its sequence number (0: the entry did not decode).
        sequence: u64,
        /// The operation that failed, if one did.
        op: Option<u32>,
        /// Why.
        reason: Rejection,
    },
    /// A rule of the complex event processor matched: a derived event,
    /// appended after the events of the entry that completed the match (a
    /// transaction's, or a tick's when log time passed a deadline).
    Matched {
        /// The rule's name.
        rule: String,
        /// The rule's version (the meta index that deployed it).
        version: u64,
        /// The kind the rule emits.
        kind: String,
        /// The events the match took, in log order (none for an
        /// aggregate, which names its window).
        events: Vec<Cursor>,
        /// For an aggregate: the window, `[start, end)` in log time (ms).
        window: Option<(u64, u64)>,
        /// The fields the rule computed, in the rule's order (one that
        /// could not be evaluated is left out).
        fields: Vec<(String, Value)>,
        /// Its generation within the entry: 1 when the event that
        /// completed the match was not itself a match, else one more than
        /// that event's.
        depth: u8,
    },
    /// A plugin derived an event from an event of the same entry (through
    /// the host API's `emit`).
    Derived {
        /// The plugin's name.
        plugin: String,
        /// Its version (the meta index that deployed it).
        version: u64,
        /// The position, in this entry, of the event it was called for.
        cause: u32,
        /// The kind it gave.
        kind: String,
        /// The fields it gave.
        fields: Vec<(String, Value)>,
    },
    /// A plugin's call on an event of the same entry failed: nothing it
    /// asked for happened.
    PluginFailed {
        /// The plugin's name.
        plugin: String,
        /// Its version.
        version: u64,
        /// The position, in this entry, of the event it was called for.
        cause: u32,
        /// Why (boxed: rare, and large beside the other events).
        failure: Box<crate::plugins::PluginFailure>,
        /// This failure suspended it (it had failed `suspend_after` times
        /// in a row).
        suspended: bool,
    },
    /// A plugin's transaction for this location arrived from another
    /// location's outbox (after the entity events it made, if any).
    Delivered {
        /// The plugin's name.
        plugin: String,
        /// Its version.
        version: u64,
        /// The event in the other location its call was for.
        source: EventId,
        /// Its idempotency key in the source's outbox (with the source's
        /// name).
        seq: u64,
        /// Why it was refused, if it was (then it changed nothing).
        refused: Option<Box<crate::plugins::PluginFailure>>,
    },
}

impl EventBody {
    /// The body's type, as filters name it.
    pub fn event_type(&self) -> EventType {
        match self {
            EventBody::Created { .. } => EventType::Created,
            EventBody::Changed { .. } => EventType::Changed,
            EventBody::Deleted { .. } => EventType::Deleted,
            EventBody::Emitted { .. } => EventType::Emitted,
            EventBody::Committed { .. } => EventType::Committed,
            EventBody::Rejected { .. } => EventType::Rejected,
            EventBody::Matched { .. } => EventType::Matched,
            EventBody::Derived { .. } => EventType::Derived,
            EventBody::PluginFailed { .. } => EventType::PluginFailed,
            EventBody::Delivered { .. } => EventType::Delivered,
        }
    }

    /// Its kind, as plugin subscriptions name it: a game event's, a
    /// match's or a derived event's own kind, else its type's name.
    pub fn kind(&self) -> &str {
        match self {
            EventBody::Emitted { kind, .. }
            | EventBody::Matched { kind, .. }
            | EventBody::Derived { kind, .. } => kind,
            body => body.event_type().name(),
        }
    }

    /// The entity it is about, if it is an entity event, and its owner.
    pub fn entity(&self) -> Option<(&str, &PlayerKey)> {
        match self {
            EventBody::Created { entity, owner, .. }
            | EventBody::Changed { entity, owner, .. }
            | EventBody::Deleted { entity, owner, .. } => Some((entity, owner)),
            _ => None,
        }
    }
}

/// The types of events, as filters name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// [`EventBody::Created`].
    Created,
    /// [`EventBody::Changed`].
    Changed,
    /// [`EventBody::Deleted`].
    Deleted,
    /// [`EventBody::Emitted`].
    Emitted,
    /// [`EventBody::Committed`].
    Committed,
    /// [`EventBody::Rejected`].
    Rejected,
    /// [`EventBody::Matched`].
    Matched,
    /// [`EventBody::Derived`].
    Derived,
    /// [`EventBody::PluginFailed`].
    PluginFailed,
    /// [`EventBody::Delivered`].
    Delivered,
}

impl EventType {
    /// Every type, in order.
    pub const ALL: [EventType; 10] = [
        EventType::Created,
        EventType::Changed,
        EventType::Deleted,
        EventType::Emitted,
        EventType::Committed,
        EventType::Rejected,
        EventType::Matched,
        EventType::Derived,
        EventType::PluginFailed,
        EventType::Delivered,
    ];

    /// The lower-case name filters and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            EventType::Created => "created",
            EventType::Changed => "changed",
            EventType::Deleted => "deleted",
            EventType::Emitted => "emitted",
            EventType::Committed => "committed",
            EventType::Rejected => "rejected",
            EventType::Matched => "matched",
            EventType::Derived => "derived",
            EventType::PluginFailed => "plugin_failed",
            EventType::Delivered => "delivered",
        }
    }
}

impl FromStr for EventType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        EventType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
                format!(
                    "{s:?} is not an event type: use one of {}",
                    names.join(", ")
                )
            })
    }
}

/// One event of a location's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEvent {
    /// Where it is.
    pub id: EventId,
    /// The log time of its entry, in milliseconds since the Unix epoch.
    pub log_time_ms: u64,
    /// The signer of the transaction that produced it (`None`: the entry
    /// did not decode).
    pub player: Option<PlayerKey>,
    /// What happened.
    pub body: EventBody,
}

/// An event as its location holds it and a node sends it: a
/// [`StreamEvent`] without the location's name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationEvent {
    /// Its log index.
    pub index: u64,
    /// Its position within the entry.
    pub position: u32,
    /// The entry's log time.
    pub log_time_ms: u64,
    /// The transaction's signer (`None`: the entry did not decode).
    pub player: Option<PlayerKey>,
    /// What happened.
    pub body: EventBody,
}

impl LocationEvent {
    /// Its place in the stream.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            index: self.index,
            position: self.position,
        }
    }

    /// The event as readers get it, taking its body.
    pub fn into_stream(self, location: &str) -> StreamEvent {
        StreamEvent {
            id: EventId {
                location: location.to_string(),
                index: self.index,
                position: self.position,
            },
            log_time_ms: self.log_time_ms,
            player: self.player,
            body: self.body,
        }
    }
}

/// Which events a reader wants. Every non-empty list must be met; empty
/// lists ask for nothing in particular.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Only these types.
    pub types: Vec<EventType>,
    /// Only events of these signers.
    pub players: Vec<PlayerKey>,
    /// Only entity events whose key matches one of these patterns (`*`
    /// matches any run of characters: `unit/*` is a prefix), or emitted
    /// events whose kind matches one of `emitted`. With either list
    /// non-empty, outcome events do not pass.
    pub entities: Vec<String>,
    /// See `entities`: only emitted events (and rule matches) whose kind
    /// matches one of these patterns, or entity events matching `entities`.
    pub emitted: Vec<String>,
}

impl EventFilter {
    /// Checks the filter's size; the error says what is too large.
    pub fn check(&self) -> Result<(), String> {
        let lists = [
            ("types", self.types.len()),
            ("players", self.players.len()),
            ("entities", self.entities.len()),
            ("emitted", self.emitted.len()),
        ];
        for (name, len) in lists {
            if len > MAX_FILTER_TERMS {
                return Err(format!(
                    "the filter's {name} list has {len} terms; the limit is {MAX_FILTER_TERMS}"
                ));
            }
        }
        for pattern in self.entities.iter().chain(&self.emitted) {
            if pattern.is_empty() || pattern.len() > MAX_FILTER_PATTERN_BYTES {
                return Err(format!(
                    "a filter pattern must be 1 to {MAX_FILTER_PATTERN_BYTES} bytes"
                ));
            }
        }
        Ok(())
    }

    /// Does the event (with body `body`, signed by `player`) pass?
    pub fn matches(&self, player: Option<&PlayerKey>, body: &EventBody) -> bool {
        if !self.types.is_empty() && !self.types.contains(&body.event_type()) {
            return false;
        }
        if !self.players.is_empty() && !player.is_some_and(|p| self.players.contains(p)) {
            return false;
        }
        if self.entities.is_empty() && self.emitted.is_empty() {
            return true;
        }
        let any = |patterns: &[String], subject: &str| {
            patterns.iter().any(|p| pattern_matches(p, subject))
        };
        match body {
            EventBody::Emitted { kind, .. }
            | EventBody::Matched { kind, .. }
            | EventBody::Derived { kind, .. } => any(&self.emitted, kind),
            body => body
                .entity()
                .is_some_and(|(entity, _)| any(&self.entities, entity)),
        }
    }
}

/// Where to start reading one location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartAt {
    /// After this cursor; refused with `EventsTrimmed` if events after it
    /// are no longer held.
    After(Cursor),
    /// From the oldest event the location still holds.
    Oldest,
    /// From the events applied after the read arrives.
    Latest,
}

/// A read of events: of one location or many, after a cursor each, long
/// polled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventQuery {
    /// The locations (1 to [`MAX_LOCATIONS_PER_EVENT_READ`], each once) and
    /// where to start in each.
    pub locations: Vec<(String, StartAt)>,
    /// Which events.
    pub filter: EventFilter,
    /// At most this many events (1 to [`MAX_EVENTS_PER_READ`]).
    pub max_events: u32,
    /// If no event matches yet, wait up to this long for one (0 to
    /// [`MAX_EVENT_WAIT_MS`]).
    pub wait_ms: u64,
    /// Once an event matches, wait up to this long more (within `wait_ms`)
    /// for the batch to fill (0 to [`MAX_EVENT_LINGER_MS`]; 0: answer at
    /// once). Fewer, fuller batches cost the node less, at that much lag.
    pub linger_ms: u64,
}

/// The answer to an [`EventQuery`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBatch {
    /// The matching events, in log order per location.
    pub events: Vec<StreamEvent>,
    /// Where to resume in each location: past every event examined,
    /// including those filtered out.
    pub cursors: Vec<(String, Cursor)>,
}

/// Events of one location in a [`PackedBatch`]: `count` encodings of a
/// [`LocationEvent`], one after another. A node encodes each event once,
/// when it is applied, and copies those bytes to every reader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedEvents {
    /// The location.
    pub location: String,
    /// How many events `encoded` holds.
    pub count: u32,
    /// The events' encodings.
    #[serde(with = "garrison_wire::byte_run")]
    pub encoded: Vec<u8>,
}

/// An [`EventBatch`] as it is sent: its events packed per location, in
/// order (a location may have more than one part; its parts are in log
/// order).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBatch {
    /// The events.
    pub parts: Vec<PackedEvents>,
    /// As [`EventBatch::cursors`].
    pub cursors: Vec<(String, Cursor)>,
}

impl PackedBatch {
    /// The batch with its events decoded; an error says which part did
    /// not decode.
    pub fn unpack(self) -> Result<EventBatch, String> {
        let total: usize = self.parts.iter().map(|p| p.count as usize).sum();
        let mut events = Vec::with_capacity(total.min(MAX_EVENTS_PER_READ as usize));
        for part in self.parts {
            let mut at = 0;
            for n in 0..part.count {
                let (event, used) =
                    garrison_wire::decode_prefix::<LocationEvent>(&part.encoded[at..])
                        .map_err(|e| format!("event {n} of {:?}'s part: {e}", part.location))?;
                at += used;
                events.push(event.into_stream(&part.location));
            }
            if at != part.encoded.len() {
                return Err(format!(
                    "{:?}'s part has {} bytes after its {} events",
                    part.location,
                    part.encoded.len() - at,
                    part.count
                ));
            }
        }
        Ok(EventBatch {
            events,
            cursors: self.cursors,
        })
    }
}

impl EventBatch {
    /// The cursor to resume `location` at, if the batch names it.
    pub fn cursor(&self, location: &str) -> Option<Cursor> {
        self.cursors
            .iter()
            .find(|(l, _)| l == location)
            .map(|(_, c)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(index: u64, kind: &str) -> LocationEvent {
        LocationEvent {
            index,
            position: 0,
            log_time_ms: 1_700_000_000_000 + index,
            player: Some([7; 32]),
            body: EventBody::Emitted {
                kind: kind.into(),
                fields: vec![("n".into(), Value::Int(index as i64))],
            },
        }
    }

    fn packed(location: &str, events: &[LocationEvent]) -> PackedEvents {
        let mut encoded = Vec::new();
        for e in events {
            garrison_wire::encode_into(e, &mut encoded);
        }
        PackedEvents {
            location: location.into(),
            count: events.len() as u32,
            encoded,
        }
    }

    #[test]
    fn a_packed_batch_unpacks_to_its_events_in_order() {
        let (a, b) = ([event(3, "x"), event(4, "y")], [event(9, "z")]);
        let batch = PackedBatch {
            parts: vec![packed("a", &a[..1]), packed("b", &b), packed("a", &a[1..])],
            cursors: vec![("a".into(), a[1].cursor()), ("b".into(), b[0].cursor())],
        };
        // Sent as any value is: through the wire encoding.
        let sent: PackedBatch = garrison_wire::decode(&garrison_wire::encode(&batch)).unwrap();
        let unpacked = sent.unpack().unwrap();
        let ids: Vec<String> = unpacked.events.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["a@3.0", "b@9.0", "a@4.0"]);
        assert_eq!(unpacked.events[1], b[0].clone().into_stream("b"));
        assert_eq!(unpacked.cursor("a"), Some(a[1].cursor()));
    }

    #[test]
    fn a_packed_part_that_does_not_hold_its_count_is_refused() {
        let mut short = packed("a", &[event(1, "x"), event(2, "x")]);
        short.count = 3;
        let err = PackedBatch {
            parts: vec![short],
            cursors: vec![],
        }
        .unpack()
        .unwrap_err();
        assert!(err.contains("event 2 of \"a\"'s part"), "{err}");
        let mut long = packed("a", &[event(1, "x"), event(2, "x")]);
        long.count = 1;
        let err = PackedBatch {
            parts: vec![long],
            cursors: vec![],
        }
        .unpack()
        .unwrap_err();
        assert!(err.contains("bytes after its 1 events"), "{err}");
    }

    #[test]
    fn packed_bytes_encode_as_a_byte_vector_does() {
        let part = packed("a", &[event(1, "x")]);
        #[derive(Serialize)]
        struct Plain<'a> {
            location: &'a str,
            count: u32,
            encoded: &'a Vec<u8>,
        }
        let plain = Plain {
            location: &part.location,
            count: part.count,
            encoded: &part.encoded,
        };
        assert_eq!(garrison_wire::encode(&part), garrison_wire::encode(&plain));
    }

    #[test]
    fn cursors_read_and_print_as_documented() {
        for (text, cursor) in [
            (
                "12.3",
                Cursor {
                    index: 12,
                    position: 3,
                },
            ),
            ("12.end", Cursor::end_of(12)),
            ("12", Cursor::end_of(12)),
            ("0.0", Cursor::START),
        ] {
            assert_eq!(text.parse::<Cursor>(), Ok(cursor), "{text}");
        }
        assert_eq!(Cursor::end_of(7).to_string(), "7.end");
        assert_eq!(
            Cursor {
                index: 7,
                position: 2
            }
            .to_string(),
            "7.2"
        );
        for bad in ["", "x", "1.x", "-1", "1.2.3"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
        assert!(
            Cursor {
                index: 3,
                position: 9
            } < Cursor::end_of(3)
        );
        assert!(
            Cursor::end_of(3)
                < Cursor {
                    index: 4,
                    position: 0
                }
        );
    }

    #[test]
    fn filters_meet_every_list() {
        let alice = [1; 32];
        let unit = EventBody::Created {
            entity: "unit/1".into(),
            owner: alice,
            version: 3,
            fields: BTreeMap::new(),
        };
        let attack = EventBody::Emitted {
            kind: "attack".into(),
            fields: vec![],
        };
        let done = EventBody::Committed { sequence: 1 };
        let everything = EventFilter::default();
        for body in [&unit, &attack, &done] {
            assert!(everything.matches(Some(&alice), body));
        }
        let units = EventFilter {
            entities: vec!["unit/*".into()],
            ..Default::default()
        };
        assert!(units.matches(Some(&alice), &unit));
        assert!(!units.matches(Some(&alice), &attack));
        assert!(!units.matches(Some(&alice), &done));
        let attacks = EventFilter {
            emitted: vec!["att*".into()],
            ..Default::default()
        };
        assert!(attacks.matches(Some(&alice), &attack));
        assert!(!attacks.matches(Some(&alice), &unit));
        let bob = EventFilter {
            players: vec![[2; 32]],
            ..Default::default()
        };
        assert!(!bob.matches(Some(&alice), &unit));
        assert!(!bob.matches(None, &unit));
        let outcomes = EventFilter {
            types: vec![EventType::Committed, EventType::Rejected],
            ..Default::default()
        };
        assert!(outcomes.matches(Some(&alice), &done));
        assert!(!outcomes.matches(Some(&alice), &unit));
    }

    #[test]
    fn oversized_filters_are_refused_with_the_limit() {
        let too_many = EventFilter {
            entities: vec!["a".into(); MAX_FILTER_TERMS + 1],
            ..Default::default()
        };
        assert!(too_many.check().unwrap_err().contains("entities"));
        let too_long = EventFilter {
            emitted: vec!["a".repeat(MAX_FILTER_PATTERN_BYTES + 1)],
            ..Default::default()
        };
        assert!(too_long.check().is_err());
        assert!(EventFilter::default().check().is_ok());
    }

    #[test]
    fn event_types_parse_by_name() {
        for t in EventType::ALL {
            assert_eq!(t.name().parse::<EventType>(), Ok(t));
        }
        assert!("made".parse::<EventType>().unwrap_err().contains("created"));
    }
}
