//! EventManager: events derived from the applied log, retained in each
//! location's replicated state, read by clients after a cursor and pulled
//! by observers inside the node.
//!
//! # What an event is
//!
//! Events come only from applied entries, so only from committed ones. A
//! location's apply ([`crate::state::location`]) turns each transaction
//! it carries out into events at the entry's log index, numbered by
//! position within the entry: one per entity created, changed (with each
//! changed field's old and new value) or deleted (with its last fields),
//! in key order; one per `Op::Emit`, in operation order (game events such
//! as `attack` or `unit_lost`, declared by the transaction); and last its
//! outcome, committed or rejected with the reason. A transaction refused
//! for its sequence number (a replay, a gap) is a rejection event too; a
//! resubmission of the same signed bytes, answered with the remembered
//! receipt, is not (nothing happened again). Policy entries and cursor
//! saves produce no events. The id (location, index, position) and the
//! event itself are the same on every replica, and so is what each
//! location retains, which is part of the state `garrison check`
//! compares.
//!
//! # Where events live
//!
//! - [`log`]: each location's most recent events, bounded by the cluster's
//!   retention (count and bytes), in its state and its snapshots. A read
//!   from before the oldest one held is refused, naming it; nothing is
//!   skipped silently.
//! - [`consumers`]: named consumers' saved cursors, in the location's log.
//! - [`observers`]: the node's [`observers::EventHub`]; apply notifies it,
//!   observers and long polls pull from retention, so nothing that reads
//!   events can slow apply.
//!
//! # How clients read them
//!
//! tarpc has no streams, so a subscription is a sequence of long polls
//! (`read_events`): the reader names each location and its cursor, a
//! filter and a wait; the node answers as soon as a matching event is
//! applied, or when the wait ends, with the events and a cursor per
//! location past everything it examined. Any replica that has applied a
//! cursor's index may answer, since ids are deterministic: the Rust
//! client's `Client::subscribe` resumes at another node after a failure
//! with no gap and no duplicate. [`serve`] is the node's side.

pub mod consumers;
pub mod json;
pub mod log;
pub mod observers;
pub mod serve;

use garrison_client::api::{Outcome, TxReceipt};
use garrison_client::events::EventBody;

/// The outcome event that closes a transaction's events.
pub fn outcome_event(receipt: &TxReceipt) -> EventBody {
    match &receipt.outcome {
        Outcome::Committed { .. } => EventBody::Committed {
            sequence: receipt.sequence,
        },
        Outcome::Rejected { op, reason } => EventBody::Rejected {
            sequence: receipt.sequence,
            op: *op,
            reason: reason.clone(),
        },
    }
}
