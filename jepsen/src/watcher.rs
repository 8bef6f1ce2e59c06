//! Event watchers, and the final read of every log's events they are
//! judged against.
//!
//! A watcher is a reader of the event stream as a game server would run
//! one: a [`Subscription`] of every location the workload writes, from the
//! very start ([`Cursor::START`]), logged in as the harness's admin (who
//! may see every event). It records each event in the order it arrives, and
//! keeps going through every fault of the run. The run has [`WATCHERS`] of
//! them, each preferring a different node: the first is pinned to node 1
//! (its only endpoint, so it sees that node's replica cut off, killed,
//! restarted and caught up by snapshot), the second prefers the last node
//! and fails over to the others, as the client does, resuming at another
//! replica after the same cursors.
//!
//! A watcher polls with a short wait ([`POLL_WAIT_MS`]) so that it notices
//! quickly when it is told where the logs end. After the final phase (every
//! fault healed, every worker stopped), the harness reads each location's
//! complete list of events once more ([`reference`]): a linearizable read
//! says where each log ends, and events are read from the oldest held until
//! the reader's cursor passes that end. Those ends are the watchers'
//! targets: each drains until its cursors reach them, within
//! [`DRAIN_BOUND`]. What the watchers saw, the reference and the history
//! then go to the checkers in [`crate::checker::events`].
//!
//! A location keeps only its most recent events (10,000 by default). A
//! watcher that falls that far behind is told so (`EventsTrimmed`, never a
//! silent skip): it records the loss and goes on at the oldest event held,
//! named in the error (from just before it, so that anything trimmed in
//! the meantime is announced in turn). The reference read, likewise, notes that the log was trimmed and
//! starts at the oldest event held; the checkers compare only what both
//! hold.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use garrison_client::client::Subscription;
use garrison_client::events::{
    Cursor, EventFilter, EventQuery, StartAt, StreamEvent, MAX_EVENTS_PER_READ,
};
use garrison_client::{ApiError, Client, ClientError, ReadMode};
use tokio::sync::watch;

use crate::checker::events::{LocationLog, Lost, Reference, Watch};

/// Watchers per run.
pub const WATCHERS: usize = 2;
/// How long one watcher poll waits for a new event, in milliseconds: short,
/// so that a watcher sees its targets soon after they are set.
pub const POLL_WAIT_MS: u64 = 500;
/// How long watchers may take to reach the ends of the logs once told them.
pub const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// How long the final read of every log's events may take.
pub const REFERENCE_BOUND: Duration = Duration::from_secs(30);
/// How long one poll of the final read waits for a replica to catch up,
/// in milliseconds.
const REFERENCE_WAIT_MS: u64 = 200;
/// The first and the longest pause after a failed poll or connection.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// A running watcher. Dropping it stops it.
pub struct Watcher {
    handle: tokio::task::JoinHandle<()>,
    record: Arc<Mutex<Watch>>,
    targets: watch::Sender<Option<BTreeMap<String, Cursor>>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts the run's watchers on `locations`: watcher `w` prefers node
/// `w * (n - 1) / (WATCHERS - 1) + 1` of the `n` in `endpoints`; the first
/// is pinned to its node, the others fail over.
pub fn start(endpoints: &[String], locations: &[&str]) -> Vec<Watcher> {
    let n = endpoints.len();
    (0..WATCHERS)
        .map(|w| {
            let preferred = w * (n - 1) / (WATCHERS - 1).max(1);
            let (name, mine) = if w == 0 {
                (
                    format!("w{} (pinned to n{})", w + 1, preferred + 1),
                    vec![endpoints[preferred].clone()],
                )
            } else {
                let mut all = endpoints.to_vec();
                all.rotate_left(preferred);
                (
                    format!("w{} (prefers n{}, fails over)", w + 1, preferred + 1),
                    all,
                )
            };
            spawn(name, mine, locations)
        })
        .collect()
}

fn spawn(name: String, endpoints: Vec<String>, locations: &[&str]) -> Watcher {
    let record = Arc::new(Mutex::new(Watch {
        name,
        ..Default::default()
    }));
    let (targets, told) = watch::channel(None);
    let locations: Vec<String> = locations.iter().map(|l| l.to_string()).collect();
    let handle = tokio::spawn(run(endpoints, locations, record.clone(), told));
    Watcher {
        handle,
        record,
        targets,
    }
}

/// Where each location's subscription resumes: after its cursor, or from
/// the oldest event held when it has none (after a loss).
fn places(sub: Option<&Subscription<'_>>, locations: &[String]) -> Vec<(String, StartAt)> {
    locations
        .iter()
        .map(|l| {
            let start = match sub {
                None => StartAt::After(Cursor::START),
                Some(s) => s.cursor(l).map_or(StartAt::Oldest, StartAt::After),
            };
            (l.clone(), start)
        })
        .collect()
}

fn subscribe<'a>(client: &'a Client, places: Vec<(String, StartAt)>) -> Subscription<'a> {
    let mut sub = client.subscribe(places, EventFilter::default());
    sub.max_events = MAX_EVENTS_PER_READ;
    sub.wait_ms = POLL_WAIT_MS;
    sub
}

/// Has `sub` read past every target?
fn reached(sub: &Subscription<'_>, targets: &BTreeMap<String, Cursor>) -> bool {
    targets
        .iter()
        .all(|(l, end)| sub.cursor(l).is_some_and(|c| c >= *end))
}

async fn run(
    endpoints: Vec<String>,
    locations: Vec<String>,
    record: Arc<Mutex<Watch>>,
    told: watch::Receiver<Option<BTreeMap<String, Cursor>>>,
) {
    let mut pause = RETRY_MIN;
    let failed = |record: &Mutex<Watch>, e: &dyn std::fmt::Display| {
        let mut r = record.lock().expect("watcher record");
        r.errors += 1;
        r.last_error = e.to_string();
    };
    let client = loop {
        match Client::connect_with(&endpoints, crate::workload::options(true)).await {
            Ok(c) => match c.login(&crate::cluster::admin_key()).await {
                Ok(_) => break c,
                Err(e) => failed(&record, &e),
            },
            Err(e) => failed(&record, &e),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    };
    let mut sub = subscribe(&client, places(None, &locations));
    loop {
        if let Some(targets) = told.borrow().as_ref() {
            if reached(&sub, targets) {
                record.lock().expect("watcher record").drained = true;
                return;
            }
        }
        match sub.poll().await {
            Ok(_) => {
                pause = RETRY_MIN;
                let mut r = record.lock().expect("watcher record");
                while let Some(event) = sub.next_buffered() {
                    r.events.push(event);
                }
                for l in &locations {
                    if let Some(c) = sub.cursor(l) {
                        r.end.insert(l.clone(), c);
                    }
                }
            }
            Err(ClientError::Api(ApiError::EventsTrimmed {
                location,
                after,
                oldest,
                ..
            })) => {
                // Announced, not silent: note the loss and go on at the
                // oldest event held there. Not `StartAt::Oldest`: while the
                // workers write, more may be trimmed before the next poll,
                // and that read would skip them without a word; from just
                // before `oldest`, a further loss is announced in turn.
                record.lock().expect("watcher record").lost.push(Lost {
                    location: location.clone(),
                    after,
                    oldest,
                });
                let mut next = places(Some(&sub), &locations);
                for (l, start) in &mut next {
                    if *l == location {
                        *start = oldest.map_or(StartAt::Oldest, |o| StartAt::After(just_before(o)));
                    }
                }
                sub = subscribe(&client, next);
            }
            Err(e) => {
                failed(&record, &e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The cursor right before the event at `c`: a read after it starts with
/// that event.
fn just_before(c: Cursor) -> Cursor {
    match c.position {
        0 => Cursor::end_of(c.index.saturating_sub(1)),
        p => Cursor {
            index: c.index,
            position: p - 1,
        },
    }
}

/// Tells every watcher where the logs end, waits (within `bound` in all)
/// until each has read that far, and returns what each saw. A watcher that
/// did not get there is stopped; its record says so (`drained` false).
pub async fn finish(
    watchers: Vec<Watcher>,
    ends: &BTreeMap<String, Cursor>,
    bound: Duration,
) -> Vec<Watch> {
    for w in &watchers {
        w.targets.send_replace(Some(ends.clone()));
    }
    let deadline = tokio::time::Instant::now() + bound;
    let mut seen = Vec::new();
    for mut w in watchers {
        let _ = tokio::time::timeout_at(deadline, &mut w.handle).await;
        w.handle.abort();
        seen.push(w.record.lock().expect("watcher record").clone());
    }
    seen
}

/// Every event each of `locations` holds at the end of the run, read
/// through `client` until the cursors pass where a linearizable read says
/// each log ends, within `bound`.
pub async fn reference(
    client: &Client,
    locations: &[&str],
    bound: Duration,
) -> anyhow::Result<Reference> {
    let started = Instant::now();
    let mut ends = BTreeMap::new();
    for l in locations {
        let read = client.get_location(l, ReadMode::Linearizable, 1).await?;
        ends.insert(l.to_string(), Cursor::end_of(read.index));
    }
    let mut logs: BTreeMap<String, LocationLog> = BTreeMap::new();
    let mut places: BTreeMap<String, StartAt> = locations
        .iter()
        .map(|l| (l.to_string(), StartAt::After(Cursor::START)))
        .collect();
    let mut last_error = String::from("none");
    loop {
        let behind: Vec<(String, StartAt)> = places
            .iter()
            .filter(|(l, s)| !matches!(s, StartAt::After(c) if *c >= ends[*l]))
            .map(|(l, s)| (l.clone(), s.clone()))
            .collect();
        if behind.is_empty() {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < bound,
            "the final read of the events did not reach the ends of the logs within {bound:?} \
             (still behind: {:?}; last error: {last_error})",
            behind
        );
        let query = EventQuery {
            locations: behind,
            filter: EventFilter::default(),
            max_events: MAX_EVENTS_PER_READ,
            wait_ms: REFERENCE_WAIT_MS,
            linger_ms: 0,
        };
        match client.read_events(&query).await {
            Ok(batch) => {
                for event in batch.events {
                    logs.entry(event.id.location.clone())
                        .or_default()
                        .events
                        .push(event);
                }
                for (l, c) in batch.cursors {
                    places.insert(l, StartAt::After(c));
                }
            }
            Err(ClientError::Api(ApiError::EventsTrimmed { location, .. })) => {
                // Older events are gone: the reference starts at the oldest
                // one held, and says so.
                let log = logs.entry(location.clone()).or_default();
                log.events.clear();
                log.trimmed = true;
                places.insert(location, StartAt::Oldest);
            }
            Err(e) => {
                last_error = e.to_string();
                tokio::time::sleep(RETRY_MIN).await;
            }
        }
    }
    for (l, start) in places {
        let log = logs.entry(l).or_default();
        if let StartAt::After(c) = start {
            log.end = c;
        }
    }
    Ok(Reference { logs })
}

/// Writes what a watcher (or the reference) saw to `path`, one line per
/// event: id, type, signer (first 8 hex digits), sequence.
pub fn write_events<'a>(
    path: &std::path::Path,
    events: impl Iterator<Item = &'a StreamEvent>,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for e in events {
        let c = crate::checker::events::Compact::of(e);
        writeln!(
            out,
            "{}",
            serde_json::to_string(&c).expect("compact events serialize")
        )?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watcher_resumes_at_the_oldest_event_held_not_after_it() {
        let at = |index, position| Cursor { index, position };
        assert_eq!(just_before(at(68, 1)), at(68, 0));
        assert_eq!(just_before(at(68, 0)), Cursor::end_of(67));
        assert!(Cursor::end_of(67) < at(68, 0));
    }
}
