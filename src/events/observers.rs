//! Observers inside a node: components (the complex event processor,
//! plugins, analytics) that receive every event the node's replicas apply,
//! in log order per location.
//!
//! Apply does not hand events to observers: it appends them to the
//! location's retained events ([`crate::events::log`]) and then calls
//! [`EventHub::notify_observers`], which only records the group's newest
//! index and bumps a generation counter (a mutex held for an insert, and a
//! `tokio::sync::watch` send). Each [`Observer`] pulls from the replica's
//! retained events after its own cursor when it is ready. So a slow
//! observer never blocks apply and holds no more than one read of its own: it falls
//! behind and catches up from retention, or, if retention has moved past
//! it, is told that it lost its place ([`Notice::Lost`]) and where the
//! oldest event held is.
//!
//! The long polls of the client API wait on the same hub.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use garrison_client::events::{Cursor, EventFilter, StreamEvent};
use garrison_raft::{GroupId, Node};
use tokio::sync::watch;

use crate::events::log::{Found, ReadLimits};
use crate::state::location::LocationApp;

/// Most events an observer takes from one location per read, and about
/// the most it holds fetched and not yet handed out.
const OBSERVER_READ_EVENTS: usize = 256;

/// What an observer receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The next event of a location.
    Event(StreamEvent),
    /// The observer fell behind `location`'s retention: events after its
    /// cursor are gone. It goes on from `resumed_after` (every event up to
    /// it is lost to it).
    Lost {
        /// The location.
        location: String,
        /// The observer's cursor when it found out.
        after: Cursor,
        /// Where it resumes: before the oldest event held.
        resumed_after: Cursor,
    },
}

#[derive(Debug, Default)]
struct Groups {
    /// Each location group's name and the newest index it applied events at.
    newest: BTreeMap<GroupId, (String, u64)>,
}

/// The node's one point where apply tells observers that events exist.
#[derive(Debug)]
pub struct EventHub {
    groups: Mutex<Groups>,
    generation: watch::Sender<u64>,
    observers: AtomicU64,
    delivered: AtomicU64,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            groups: Mutex::default(),
            generation: watch::Sender::new(0),
            observers: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }
}

impl EventHub {
    /// A hub with no observers.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Called by apply after the events of the entry at `index` of
    /// `group` (location `location`) were appended, and after a snapshot
    /// was restored. Never blocks on an observer.
    pub fn notify_observers(&self, group: GroupId, location: &str, index: u64) {
        {
            let mut groups = self.groups.lock().expect("event hub lock");
            let entry = groups
                .newest
                .entry(group)
                .or_insert_with(|| (location.to_string(), 0));
            entry.1 = entry.1.max(index);
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// Called when a location group closes on this node.
    pub fn closed(&self, group: GroupId) {
        self.groups
            .lock()
            .expect("event hub lock")
            .newest
            .remove(&group);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The newest index `group` applied events at (0: none seen).
    pub fn newest(&self, group: GroupId) -> u64 {
        let groups = self.groups.lock().expect("event hub lock");
        groups.newest.get(&group).map_or(0, |(_, i)| *i)
    }

    /// A receiver that changes whenever any group applies events.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Registers an observer of every location group on `node`, receiving
    /// the events that pass `filter` and are applied from now on (a group
    /// that reaches this node later, created, opened or restored from a
    /// snapshot: from the oldest event it holds).
    pub fn add_observer(self: &Arc<Self>, node: Node, filter: EventFilter) -> Observer {
        let mut changes = self.changes();
        changes.mark_changed();
        let start: BTreeMap<GroupId, Cursor> = {
            let groups = self.groups.lock().expect("event hub lock");
            groups
                .newest
                .iter()
                .map(|(g, (_, i))| (*g, Cursor::end_of(*i)))
                .collect()
        };
        self.observers.fetch_add(1, Ordering::Relaxed);
        Observer {
            hub: self.clone(),
            node,
            filter,
            cursors: start,
            pending: VecDeque::new(),
            changes,
            more: false,
            next_group: 0,
        }
    }

    /// Unregisters an observer (the same as dropping it).
    pub fn remove_observer(&self, observer: Observer) {
        drop(observer);
    }

    /// Observers registered now.
    pub fn observer_count(&self) -> u64 {
        self.observers.load(Ordering::Relaxed)
    }

    /// Events handed to observers and readers since the node started.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Counts `n` events handed to a reader.
    pub fn count_delivered(&self, n: usize) {
        self.delivered.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<(GroupId, String, u64)> {
        let groups = self.groups.lock().expect("event hub lock");
        groups
            .newest
            .iter()
            .map(|(g, (l, i))| (*g, l.clone(), *i))
            .collect()
    }
}

/// One registered observer: pulls events from the node's replicas after
/// its cursors. Dropping it unregisters it.
pub struct Observer {
    hub: Arc<EventHub>,
    node: Node,
    filter: EventFilter,
    cursors: BTreeMap<GroupId, Cursor>,
    pending: VecDeque<Notice>,
    changes: watch::Receiver<u64>,
    /// Whether the last pull left events to read.
    more: bool,
    /// The group the next pull starts at (round robin).
    next_group: GroupId,
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.hub.observers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Observer {
    /// The next event (or loss of place), waiting until there is one.
    /// `None` once the hub is gone.
    pub async fn next(&mut self) -> Option<Notice> {
        loop {
            if let Some(notice) = self.pending.pop_front() {
                return Some(notice);
            }
            if !self.more {
                self.changes.changed().await.ok()?;
            }
            self.more = self.pull();
        }
    }

    /// This observer's cursor in `group` (`None`: it has seen nothing there).
    pub fn cursor(&self, group: GroupId) -> Option<Cursor> {
        self.cursors.get(&group).copied()
    }

    /// Reads one chunk from each group that holds events after this
    /// observer's cursor, round robin from where the last pull stopped, until
    /// about [`OBSERVER_READ_EVENTS`] are pending. Returns whether more may
    /// be waiting (so the next call should not wait for a change).
    fn pull(&mut self) -> bool {
        let groups = self.hub.snapshot();
        let first = groups.partition_point(|(g, _, _)| *g < self.next_group);
        let mut more = false;
        for (group, location, newest) in groups[first..].iter().chain(&groups[..first]) {
            if self.pending.len() >= OBSERVER_READ_EVENTS {
                self.next_group = *group;
                return true;
            }
            let known = self.cursors.get(group).copied();
            if known.is_some_and(|c| c >= Cursor::end_of(*newest)) {
                continue;
            }
            let limits = ReadLimits {
                max_events: OBSERVER_READ_EVENTS,
                max_bytes: usize::MAX,
                per_event_bytes: 0,
            };
            let pending = &mut self.pending;
            let read = self.node.read_local(*group, |s| {
                let log = s.app.as_any().downcast_ref::<LocationApp>()?.events();
                // A group first seen here starts with the oldest event it
                // holds: it was opened, restored or created after this
                // observer registered.
                let after = known.unwrap_or(log.oldest_start());
                let read = log.read(
                    after,
                    &self.filter,
                    limits,
                    |_| true,
                    |e, _| {
                        pending.push_back(Notice::Event(e.clone().into_stream(location)));
                    },
                );
                Some((after, read))
            });
            // A group closed or not a location: nothing to read.
            let Ok(Some((after, read))) = read else {
                continue;
            };
            let next = match read {
                Ok(Found {
                    count,
                    last,
                    stopped_at,
                    ..
                }) => {
                    self.hub.count_delivered(count);
                    match stopped_at {
                        Some(at) => {
                            more = true;
                            at
                        }
                        // Apply may have gone past `newest` since; never
                        // fall back behind a delivered event.
                        None => {
                            last.map_or(Cursor::end_of(*newest), |l| l.max(Cursor::end_of(*newest)))
                        }
                    }
                }
                Err(trimmed) => {
                    self.pending.push_back(Notice::Lost {
                        location: location.clone(),
                        after,
                        resumed_after: trimmed.resume_after,
                    });
                    more = true;
                    trimmed.resume_after
                }
            };
            self.cursors.insert(*group, next);
        }
        self.next_group = 0;
        more
    }
}
