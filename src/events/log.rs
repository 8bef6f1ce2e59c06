//! A location's retained events: the most recent ones, in log order, as
//! part of its replicated state.
//!
//! Apply appends each entry's events and then trims the oldest beyond the
//! cluster's [`EventRetention`] (a count and a byte budget of encoded
//! events). Trimming is part of apply, so every replica holds the same
//! events and snapshots carry them. The newest entry's events are never
//! trimmed, even beyond the budget (one entry's events are bounded by the
//! transaction and entity limits), so a reader that keeps up never loses
//! one. The log remembers the newest event it trimmed, and a read from a
//! cursor before it is refused ([`Trimmed`]) rather than silently skipped.

use std::collections::VecDeque;

use garrison_client::events::{Cursor, EventBody, EventFilter, EventRetention};
use garrison_client::tx::PlayerKey;
use serde::{Deserialize, Serialize};

/// One event as a location keeps it (the location is the log's own): the
/// same record a node sends readers.
pub use garrison_client::events::LocationEvent as RetainedEvent;

fn encoding(event: &RetainedEvent) -> Box<[u8]> {
    garrison_raft::codec::encode(event).into_boxed_slice()
}

/// Most events one read examines, matching or not: a read whose filter
/// passes little stops there (saying where) rather than hold the state's
/// lock for a scan of the whole retention.
pub const MAX_EVENTS_SCANNED_PER_READ: usize = 4_096;

/// What a read may return: a count and a byte budget.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Most events.
    pub max_events: usize,
    /// Most bytes of events, each counted as its encoding plus
    /// `per_event_bytes`; at least one event is returned if one matches.
    pub max_bytes: usize,
    /// What each event costs beyond its encoding (the location's name, when
    /// it is sent).
    pub per_event_bytes: usize,
}

/// A read from before the oldest retained event: the events right after
/// the cursor are gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trimmed {
    /// The oldest event still held (`None`: none).
    pub oldest: Option<Cursor>,
    /// The newest event trimmed: a reader that accepts the loss goes on
    /// after it.
    pub resume_after: Cursor,
}

/// What a read found (the events themselves went to its `take`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// How many matching, visible events were taken, oldest first.
    pub count: usize,
    /// The last one taken.
    pub last: Option<Cursor>,
    /// Where the scan stopped, if it stopped before the newest event (a
    /// count, byte or scan limit): the last event it returned or examined;
    /// `None`: it examined every event held.
    pub stopped_at: Option<Cursor>,
    /// The bytes the returned events count for.
    pub bytes: u64,
}

/// The retained events of one location, oldest first.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventLog {
    events: VecDeque<RetainedEvent>,
    /// Bytes of the encoded events held.
    bytes: u64,
    /// The newest event trimmed (`None`: none yet).
    trimmed_through: Option<Cursor>,
    /// Each event's encoding, beside it: its weight against the budget,
    /// and the bytes sent to every reader, made once. Not stored: a
    /// restore encodes the events again ([`EventLog::encode_all`]); until
    /// then an append does it first, and a read encodes what it sends.
    #[serde(skip)]
    encoded: VecDeque<Box<[u8]>>,
}

impl PartialEq for EventLog {
    fn eq(&self, other: &Self) -> bool {
        (&self.events, self.bytes, self.trimmed_through)
            == (&other.events, other.bytes, other.trimmed_through)
    }
}

impl Eq for EventLog {}

impl EventLog {
    /// The events held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &RetainedEvent> {
        self.events.iter()
    }

    /// Encodes every event held again (after a restore).
    pub fn encode_all(&mut self) {
        self.encoded = self.events.iter().map(encoding).collect();
    }

    /// True when every event held has its encoding beside it.
    fn encoded(&self) -> bool {
        self.encoded.len() == self.events.len()
    }

    /// Appends the events of the entry at `index`, numbered from 0 in
    /// order, then trims to `retention`.
    pub fn append(
        &mut self,
        index: u64,
        log_time_ms: u64,
        player: Option<PlayerKey>,
        bodies: Vec<EventBody>,
        retention: &EventRetention,
    ) {
        debug_assert!(
            self.events.back().is_none_or(|e| e.index < index),
            "events are appended in log order"
        );
        if !self.encoded() {
            self.encode_all();
        }
        for (position, body) in bodies.into_iter().enumerate() {
            let event = RetainedEvent {
                index,
                position: position as u32,
                log_time_ms,
                player,
                body,
            };
            let encoded = encoding(&event);
            self.bytes += encoded.len() as u64;
            self.encoded.push_back(encoded);
            self.events.push_back(event);
        }
        self.trim(retention);
    }

    fn trim(&mut self, retention: &EventRetention) {
        let newest = self.events.back().map(|e| e.index);
        while self.events.len() as u64 > retention.max_events || self.bytes > retention.max_bytes {
            match self.events.front() {
                Some(oldest) if Some(oldest.index) != newest => {}
                _ => break,
            }
            let gone = self.events.pop_front().expect("checked above");
            let encoded = self.encoded.pop_front().expect("encoded beside the events");
            self.bytes -= encoded.len() as u64;
            self.trimmed_through = Some(gone.cursor());
        }
    }

    /// The oldest event held.
    pub fn oldest(&self) -> Option<Cursor> {
        self.events.front().map(RetainedEvent::cursor)
    }

    /// The newest event held.
    pub fn newest(&self) -> Option<Cursor> {
        self.events.back().map(RetainedEvent::cursor)
    }

    /// How many events are held.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when no event is held.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The cursor that reads from the oldest event held: every trimmed
    /// event counts as seen.
    pub fn oldest_start(&self) -> Cursor {
        self.trimmed_through.unwrap_or(Cursor::START)
    }

    /// Hands `take` each event after `after` that passes `filter` and
    /// `visible` (with its encoding), within `limits` (at least one, if any
    /// matches), examining at most [`MAX_EVENTS_SCANNED_PER_READ`].
    pub fn read(
        &self,
        after: Cursor,
        filter: &EventFilter,
        limits: ReadLimits,
        visible: impl Fn(&RetainedEvent) -> bool,
        mut take: impl FnMut(&RetainedEvent, &[u8]),
    ) -> Result<Found, Trimmed> {
        if let Some(trimmed) = self.trimmed_through.filter(|t| after < *t) {
            return Err(Trimmed {
                oldest: self.oldest(),
                resume_after: trimmed,
            });
        }
        // Most reads of a reader that keeps up find nothing new.
        if self.events.back().is_none_or(|e| e.cursor() <= after) {
            return Ok(Found::default());
        }
        let start = self.events.partition_point(|e| e.cursor() <= after);
        // A restored log not yet appended to encodes what it sends.
        let encoded = self.encoded();
        let mut found = Found::default();
        for (examined, event) in self.events.range(start..).enumerate() {
            if examined == MAX_EVENTS_SCANNED_PER_READ {
                // The previous event is the last one examined.
                found.stopped_at = Some(self.events[start + examined - 1].cursor());
                break;
            }
            if !(filter.matches(event.player.as_ref(), &event.body) && visible(event)) {
                continue;
            }
            let fresh;
            let bytes: &[u8] = if encoded {
                &self.encoded[start + examined]
            } else {
                fresh = encoding(event);
                &fresh
            };
            let size = (bytes.len() + limits.per_event_bytes) as u64;
            if found.count >= limits.max_events
                || (found.count > 0 && found.bytes + size > limits.max_bytes as u64)
            {
                found.stopped_at = found.last;
                break;
            }
            found.bytes += size;
            found.count += 1;
            found.last = Some(event.cursor());
            take(event, bytes);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use garrison_client::events::EventType;

    fn emitted(n: i64) -> EventBody {
        EventBody::Emitted {
            kind: "attack".into(),
            fields: vec![("n".into(), garrison_client::Value::Int(n))],
        }
    }

    fn limits(max_events: usize) -> ReadLimits {
        ReadLimits {
            max_events,
            max_bytes: 512 * 1024,
            per_event_bytes: 0,
        }
    }

    fn cursor(index: u64, position: u32) -> Cursor {
        Cursor { index, position }
    }

    fn small(max_events: u64) -> EventRetention {
        EventRetention {
            max_events,
            max_bytes: EventRetention::MIN_BYTES,
        }
    }

    /// A read, and the cursors of what it took.
    fn read(
        log: &EventLog,
        after: Cursor,
        filter: &EventFilter,
        limits: ReadLimits,
        visible: impl Fn(&RetainedEvent) -> bool,
    ) -> Result<(Found, Vec<Cursor>), Trimmed> {
        let mut taken = Vec::new();
        let found = log.read(after, filter, limits, visible, |e, bytes| {
            assert_eq!(bytes, &encoding(e)[..], "the encoding beside the event");
            taken.push(e.cursor());
        })?;
        assert_eq!(found.count, taken.len());
        assert_eq!(found.last, taken.last().copied());
        Ok((found, taken))
    }

    fn all(log: &EventLog, after: Cursor) -> Result<Vec<Cursor>, Trimmed> {
        let (_, taken) = read(log, after, &EventFilter::default(), limits(1000), |_| true)?;
        Ok(taken)
    }

    #[test]
    fn events_are_numbered_within_their_entry_and_read_after_a_cursor() {
        let mut log = EventLog::default();
        let r = small(100);
        log.append(3, 10, None, vec![emitted(0), emitted(1)], &r);
        log.append(5, 11, None, vec![emitted(2)], &r);
        assert_eq!(
            all(&log, Cursor::START).unwrap(),
            [cursor(3, 0), cursor(3, 1), cursor(5, 0)]
        );
        assert_eq!(
            all(&log, cursor(3, 0)).unwrap(),
            [cursor(3, 1), cursor(5, 0)]
        );
        assert_eq!(all(&log, Cursor::end_of(3)).unwrap(), [cursor(5, 0)]);
        assert_eq!(all(&log, cursor(4, 7)).unwrap(), [cursor(5, 0)]);
        assert!(all(&log, Cursor::end_of(5)).unwrap().is_empty());
    }

    #[test]
    fn a_reader_behind_retention_is_told_the_oldest_held_event() {
        let mut log = EventLog::default();
        let r = small(3);
        for index in 1..=5 {
            log.append(index, 0, None, vec![emitted(index as i64)], &r);
        }
        assert_eq!(log.len(), 3);
        assert_eq!(log.oldest(), Some(cursor(3, 0)));
        let trimmed = Trimmed {
            oldest: Some(cursor(3, 0)),
            resume_after: cursor(2, 0),
        };
        assert_eq!(all(&log, Cursor::START), Err(trimmed.clone()));
        assert_eq!(all(&log, cursor(1, 0)), Err(trimmed));
        // Exactly at the last trimmed event: nothing was missed.
        assert_eq!(
            all(&log, cursor(2, 0)).unwrap(),
            [cursor(3, 0), cursor(4, 0), cursor(5, 0)]
        );
        assert_eq!(log.oldest_start(), cursor(2, 0));
    }

    #[test]
    fn the_newest_entry_is_kept_whole_beyond_the_budget() {
        let mut log = EventLog::default();
        let r = small(2);
        log.append(1, 0, None, vec![emitted(0)], &r);
        log.append(2, 0, None, (0..5).map(emitted).collect(), &r);
        assert_eq!(log.len(), 5, "entry 2 stays whole");
        assert_eq!(log.oldest(), Some(cursor(2, 0)));
        log.append(3, 0, None, vec![emitted(9)], &r);
        assert_eq!(log.len(), 2);
        assert_eq!(log.oldest(), Some(cursor(2, 4)));
    }

    #[test]
    fn the_byte_budget_trims_too() {
        let mut log = EventLog::default();
        let big = |i: u64| EventBody::Emitted {
            kind: "blob".into(),
            fields: vec![(
                "b".into(),
                garrison_client::Value::Bytes(vec![i as u8; 4000]),
            )],
        };
        let r = small(1_000_000);
        for index in 1..=200 {
            log.append(index, 0, None, vec![big(index)], &r);
        }
        assert!(log.bytes <= r.max_bytes, "{} bytes held", log.bytes);
        assert!(log.len() < 200);
        assert_eq!(log.oldest(), Some(cursor(201 - log.len() as u64, 0)));
    }

    #[test]
    fn reads_stop_at_the_count_and_say_where() {
        let mut log = EventLog::default();
        let r = small(100);
        for index in 1..=10 {
            log.append(index, 0, None, vec![emitted(0)], &r);
        }
        let (found, _) = read(
            &log,
            Cursor::START,
            &EventFilter::default(),
            limits(4),
            |_| true,
        )
        .unwrap();
        assert_eq!(found.count, 4);
        assert_eq!(found.stopped_at, Some(cursor(4, 0)));
        let none = EventFilter {
            types: vec![EventType::Created],
            ..Default::default()
        };
        let (found, _) = read(&log, Cursor::START, &none, limits(4), |_| true).unwrap();
        assert_eq!(found.count, 0);
        assert_eq!(found.stopped_at, None, "examined everything");
        let (hidden, _) = read(
            &log,
            Cursor::START,
            &EventFilter::default(),
            limits(4),
            |e| e.index > 8,
        )
        .unwrap();
        assert_eq!(hidden.count, 2);
    }

    #[test]
    fn a_read_examines_a_bounded_number_of_events_and_says_where_it_stopped() {
        let mut log = EventLog::default();
        let r = small(100_000);
        for index in 1..=(MAX_EVENTS_SCANNED_PER_READ as u64 + 10) {
            log.append(index, 0, None, vec![emitted(0)], &r);
        }
        let none = EventFilter {
            types: vec![EventType::Created],
            ..Default::default()
        };
        let (found, _) = read(&log, Cursor::START, &none, limits(4), |_| true).unwrap();
        assert_eq!(found.count, 0);
        let at = found.stopped_at.expect("the scan stopped early");
        assert_eq!(at, cursor(MAX_EVENTS_SCANNED_PER_READ as u64, 0));
        let (rest, _) = read(&log, at, &none, limits(4), |_| true).unwrap();
        assert_eq!(
            rest.stopped_at, None,
            "the rest is examined in one more read"
        );
    }

    #[test]
    fn the_byte_budget_of_a_read_counts_what_is_sent() {
        let mut log = EventLog::default();
        let r = small(100);
        for index in 1..=10 {
            log.append(index, 0, None, vec![emitted(0)], &r);
        }
        let one = encoding(&log.events[0]).len();
        let budget = ReadLimits {
            max_events: 100,
            max_bytes: 3 * (one + 100),
            per_event_bytes: 100,
        };
        let (found, _) = read(&log, Cursor::START, &EventFilter::default(), budget, |_| {
            true
        })
        .unwrap();
        assert_eq!(found.count, 3);
        assert_eq!(found.bytes as usize, 3 * (one + 100));
        assert_eq!(found.stopped_at, Some(cursor(3, 0)));
    }

    #[test]
    fn a_restored_log_reads_and_trims_as_the_original() {
        let mut log = EventLog::default();
        let r = small(5);
        for index in 1..=4 {
            log.append(index, 0, None, vec![emitted(index as i64)], &r);
        }
        let bytes = garrison_raft::codec::encode(&log);
        let mut restored: EventLog = garrison_raft::codec::decode(&bytes).unwrap();
        assert!(restored.encoded.is_empty(), "encodings are not stored");
        assert_eq!(restored, log);
        // Read before it is encoded again: it encodes what it sends.
        assert_eq!(all(&restored, Cursor::START), all(&log, Cursor::START));
        restored.encode_all();
        for index in 5..=9 {
            log.append(index, 0, None, vec![emitted(index as i64)], &r);
            restored.append(index, 0, None, vec![emitted(index as i64)], &r);
        }
        assert_eq!(restored, log);
        assert_eq!(restored.encoded, log.encoded);
        // Appending to a log never encoded encodes it first.
        let mut unencoded: EventLog = garrison_raft::codec::decode(&bytes).unwrap();
        unencoded.append(5, 0, None, vec![emitted(5)], &r);
        assert_eq!(unencoded.encoded.len(), unencoded.events.len());
    }
}
