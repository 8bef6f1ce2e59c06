//! The node's side of event reads: checking a query, answering it from a
//! replica, and the long poll.
//!
//! A read of location L after cursor (i, p) is answered by a replica that
//! has applied i: this node's own if it hosts L (waiting for it to catch
//! up, within the read's wait), else one that the router picks
//! (`Node::read` with a stale minimum index). Such a replica holds every
//! event of i and of what it applied before, and events are the same on
//! every replica, so whichever answers, the reader sees the same stream.
//! The answer's cursor for L is past every event the replica examined: the
//! last one returned when a limit stopped the read, else the end of the
//! replica's applied index.
//!
//! A long poll re-reads when the event hub says this node applied events in
//! one of the named groups, until an event matches or the wait ends (and,
//! with `linger_ms`, a little longer, until the batch fills or the linger
//! ends: fewer, fuller batches for readers that can wait). A
//! location this node does not host is polled every
//! [`REMOTE_POLL_INTERVAL`] instead.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use garrison_client::api::{ApiError, ReadMode};
use garrison_client::events::{
    Cursor, EventQuery, PackedBatch, PackedEvents, StartAt, MAX_EVENTS_PER_READ,
    MAX_EVENT_LINGER_MS, MAX_EVENT_READ_BYTES, MAX_EVENT_WAIT_MS, MAX_LOCATIONS_PER_EVENT_READ,
};
use garrison_client::tx::PlayerKey;
use garrison_raft::GroupId;
use tokio::time::Instant;

use crate::events::log::Trimmed;
use crate::events::observers::EventHub;
use crate::state::location::{EventsReply, LocationQuery};

/// How often a long poll re-reads a location this node does not host.
pub const REMOTE_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Checks a query's size and arguments; the error says what is wrong.
pub fn check_query(query: &EventQuery) -> Result<(), ApiError> {
    let invalid = |why: String| Err(ApiError::InvalidRequest(why));
    let n = query.locations.len();
    if n == 0 || n > MAX_LOCATIONS_PER_EVENT_READ {
        return invalid(format!(
            "an event read names 1 to {MAX_LOCATIONS_PER_EVENT_READ} locations, not {n}"
        ));
    }
    for (i, (location, _)) in query.locations.iter().enumerate() {
        if query.locations[..i].iter().any(|(l, _)| l == location) {
            return invalid(format!("location {location:?} is named twice"));
        }
    }
    if query.max_events == 0 || query.max_events > MAX_EVENTS_PER_READ {
        return invalid(format!(
            "max_events must be 1 to {MAX_EVENTS_PER_READ}, not {}",
            query.max_events
        ));
    }
    if query.wait_ms > MAX_EVENT_WAIT_MS {
        return invalid(format!(
            "wait_ms must be at most {MAX_EVENT_WAIT_MS}, not {}",
            query.wait_ms
        ));
    }
    if query.linger_ms > MAX_EVENT_LINGER_MS {
        return invalid(format!(
            "linger_ms must be at most {MAX_EVENT_LINGER_MS}, not {}",
            query.linger_ms
        ));
    }
    query.filter.check().map_err(ApiError::InvalidRequest)
}

/// A place among the node's (or one connection's) waiting long polls; the
/// place is given back when dropped.
pub struct PollPermit(Arc<AtomicU32>);

impl Drop for PollPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a place among at most `max` waiting polls counted by `count`.
pub fn take_poll(count: &Arc<AtomicU32>, max: u32, what: &str) -> Result<PollPermit, ApiError> {
    let taken = count.fetch_add(1, Ordering::AcqRel);
    let permit = PollPermit(count.clone());
    if taken >= max {
        return Err(ApiError::RateLimited {
            what: format!("{what}: at most {max} event reads waiting at once"),
            retry_after_ms: 100,
        });
    }
    Ok(permit)
}

/// What the reader of one location needs from a replica.
pub(crate) trait EventSource {
    /// The group of `location`, and whether this node hosts it.
    async fn group(&self, location: &str) -> Result<(GroupId, bool), ApiError>;
    /// Answers `query` for `group` from a replica that has applied
    /// `min_index`, waiting for it at most until `deadline`; the answer and
    /// the applied index it reflects.
    async fn read(
        &self,
        group: GroupId,
        query: &LocationQuery,
        mode: ReadMode,
    ) -> Result<(u64, Result<EventsReply, Trimmed>), ApiError>;
}

struct Place {
    location: String,
    group: GroupId,
    hosted: bool,
    start: StartAt,
    /// When a location this node does not host was last read.
    read_at: Option<Instant>,
}

/// What is left of a batch.
struct Room {
    events: usize,
    bytes: usize,
}

/// Answers `query` for `reader`: at once if an event matches, else when
/// one is applied or the wait ends.
pub(crate) async fn read_events(
    source: &impl EventSource,
    hub: &EventHub,
    reader: PlayerKey,
    query: EventQuery,
) -> Result<PackedBatch, ApiError> {
    let deadline = Instant::now() + Duration::from_millis(query.wait_ms);
    let mut places = Vec::with_capacity(query.locations.len());
    for (location, start) in query.locations {
        let (group, hosted) = source.group(&location).await?;
        places.push(Place {
            location,
            group,
            hosted,
            start,
            read_at: None,
        });
    }
    let mut changes = hub.changes();
    let mut first = true;
    let mut batch = PackedBatch::default();
    let mut room = Room {
        events: query.max_events as usize,
        bytes: MAX_EVENT_READ_BYTES,
    };
    // Once an event is in the batch, how long to wait for more.
    let mut linger_until: Option<Instant> = None;
    loop {
        changes.borrow_and_update();
        batch.cursors.clear();
        for place in &mut places {
            let full = room.events == 0 || room.bytes == 0;
            let cursor = match &place.start {
                // The batch is full: this location resumes where it was.
                StartAt::After(c) if full => *c,
                // Nothing applied here after the cursor: no need to read.
                // (On the first look only a cursor exactly at the newest
                // events is trusted so: one past them, made up or from a
                // replica ahead of this one, is read, to be caught up to
                // or refused.)
                StartAt::After(c)
                    if place.hosted && {
                        let newest = Cursor::end_of(hub.newest(place.group));
                        if first {
                            *c == newest
                        } else {
                            newest <= *c
                        }
                    } =>
                {
                    *c
                }
                // Not hosted: read at most every REMOTE_POLL_INTERVAL.
                StartAt::After(c)
                    if place
                        .read_at
                        .is_some_and(|at| at.elapsed() < REMOTE_POLL_INTERVAL) =>
                {
                    *c
                }
                _ => {
                    if !place.hosted {
                        place.read_at = Some(Instant::now());
                    }
                    read_place(source, reader, &query.filter, &mut room, place, &mut batch).await?
                }
            };
            place.start = StartAt::After(cursor);
            batch.cursors.push((place.location.clone(), cursor));
        }
        first = false;
        let now = Instant::now();
        let found: usize = batch.parts.iter().map(|p| p.count as usize).sum();
        if found > 0 && linger_until.is_none() {
            linger_until = Some((now + Duration::from_millis(query.linger_ms)).min(deadline));
        }
        let full = room.events == 0 || room.bytes == 0;
        if full || linger_until.is_some_and(|l| now >= l) || now >= deadline {
            hub.count_delivered(found);
            return Ok(batch);
        }
        let hosted_only = places.iter().all(|p| p.hosted);
        let until = linger_until.unwrap_or(deadline);
        let wake = if hosted_only {
            until
        } else {
            until.min(now + REMOTE_POLL_INTERVAL)
        };
        if linger_until.is_some() {
            // Lingering: whatever is applied meanwhile is read once, when
            // the linger ends, rather than at every entry of every group.
            tokio::time::sleep_until(wake).await;
        } else {
            // Woken by any group's events; a spurious wake only re-reads.
            let _ = tokio::time::timeout_at(wake, changes.changed()).await;
        }
    }
}

/// Reads what fits in `room` of one location into `batch`; returns its
/// cursor after. With no room left it only resolves where the reader
/// starts (so `Oldest` and `Latest` become a cursor the next read goes on
/// from). Those two are resolved by a linearizable read, so that a replica
/// that has not caught up cannot place the reader behind the stream.
async fn read_place(
    source: &impl EventSource,
    reader: PlayerKey,
    filter: &garrison_client::events::EventFilter,
    room: &mut Room,
    place: &Place,
    batch: &mut PackedBatch,
) -> Result<Cursor, ApiError> {
    let mode = match &place.start {
        StartAt::After(c) => ReadMode::Stale { min_index: c.index },
        _ => ReadMode::Linearizable,
    };
    let query = LocationQuery::Events {
        reader,
        start: place.start.clone(),
        filter: filter.clone(),
        max: room.events.max(1) as u32,
        max_bytes: room.bytes.max(1) as u32,
    };
    let (applied, reply) = source.read(place.group, &query, mode).await?;
    let EventsReply {
        start,
        found,
        encoded,
    } = reply.map_err(|t| ApiError::EventsTrimmed {
        location: place.location.clone(),
        after: match &place.start {
            StartAt::After(c) => *c,
            _ => Cursor::START,
        },
        oldest: t.oldest,
        resume_after: t.resume_after,
    })?;
    if room.events == 0 || room.bytes == 0 {
        return Ok(start);
    }
    room.events = room.events.saturating_sub(found.count);
    room.bytes = room.bytes.saturating_sub(found.bytes as usize);
    let last = found.last;
    if found.count > 0 {
        batch.parts.push(PackedEvents {
            location: place.location.clone(),
            count: found.count as u32,
            encoded,
        });
    }
    Ok(match found.stopped_at {
        Some(at) => at,
        None => [Some(start), last, Some(Cursor::end_of(applied))]
            .into_iter()
            .flatten()
            .max()
            .expect("start is always there"),
    })
}
