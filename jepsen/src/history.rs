//! The recorded history: every operation as an invocation and a completion
//! (ok, fail, or info when the outcome is unknown), with monotonic
//! timestamps, written as JSON lines.
//!
//! A completion of an operation that signed a transaction also says which
//! one ([`Submitted`]: location, signer, sequence number) and, when a node
//! answered, what its receipt said (log index, committed or rejected). The
//! event checkers ([`crate::checker::events`]) hold the event streams
//! against these: the history is the harness's own account of what it
//! asked for and what it was told, independent of what the cluster keeps.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What an operation was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", rename_all = "snake_case")]
pub enum Op {
    /// Read register `key`; the completion carries the value seen.
    Read { key: u64, value: Option<i64> },
    /// Write `value` to register `key`.
    Write { key: u64, value: i64 },
    /// Set register `key` to `new` if it holds `old`.
    Cas {
        key: u64,
        old: Option<i64>,
        new: i64,
    },
    /// A signed game transaction: player `player` (hex), sequence `sequence`.
    Tx { player: String, sequence: u64 },
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The operation began.
    Invoke,
    /// It happened.
    Ok,
    /// It certainly did not happen.
    Fail,
    /// Unknown: it may or may not have happened (a timeout).
    Info,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The worker that ran the operation.
    pub process: u32,
    /// Invoke, ok, fail or info.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The operation (on completion, with what was observed).
    #[serde(flatten)]
    pub op: Op,
    /// Nanoseconds since the run began (monotonic clock).
    pub time_ns: u64,
    /// Free text: the error, the log index, the node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// On a completion: the signed transaction the operation submitted, if
    /// it got as far as signing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<Submitted>,
}

/// A signed transaction an operation submitted, and its receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The location it was for.
    pub location: String,
    /// Its signer, in hex.
    pub player: String,
    /// Its sequence number.
    pub sequence: u64,
    /// What a node answered (`None`: no answer, or a refusal at ingress,
    /// which the completion's kind tells apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// What a receipt said about a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The log index at which its outcome was decided.
    pub index: u64,
    /// Committed (true) or rejected (false).
    pub committed: bool,
    /// The remembered outcome of an earlier submission of the same bytes.
    #[serde(default)]
    pub duplicate: bool,
}

/// A history being recorded: kept in memory for the checkers, and appended
/// to a file as it happens.
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
    file: Mutex<Option<std::io::BufWriter<std::fs::File>>>,
}

impl Recorder {
    /// A recorder writing to `path` (created).
    pub fn new(path: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let file = match path {
            Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p)?)),
            None => None,
        };
        Ok(Self {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
            file: Mutex::new(file),
        })
    }

    /// Nanoseconds since the recorder began.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records one event.
    pub fn record(&self, process: u32, kind: Kind, op: Op, note: String) {
        self.record_tx(process, kind, op, note, None);
    }

    /// Records one event, with the transaction the operation submitted.
    pub fn record_tx(&self, process: u32, kind: Kind, op: Op, note: String, tx: Option<Submitted>) {
        let event = Event {
            process,
            kind,
            op,
            time_ns: self.now_ns(),
            note,
            tx,
        };
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            let _ = writeln!(
                f,
                "{}",
                serde_json::to_string(&event).expect("events serialize")
            );
        }
        self.events.lock().unwrap().push(event);
    }

    /// Every event so far, in order.
    pub fn events(&self) -> Vec<Event> {
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            let _ = f.flush();
        }
        self.events.lock().unwrap().clone()
    }
}

/// Reads a history file written by a [`Recorder`].
pub fn load(path: &std::path::Path) -> anyhow::Result<Vec<Event>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}
