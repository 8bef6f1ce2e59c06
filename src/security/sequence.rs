//! Per-player sequence numbers and remembered outcomes: replay protection and
//! exactly-once submission, shared by location groups and the meta group's
//! administrative transactions.
//!
//! A transaction whose sequence number is the player's next is carried out
//! (committed or rejected by the rules) and its outcome remembered; the same
//! signed transaction submitted again gets that outcome back, marked
//! duplicate; any other sequence number is refused without being remembered.

use std::collections::{BTreeMap, VecDeque};

use garrison_client::api::{Outcome, Rejection, TxReceipt};
use garrison_client::tx::{PlayerKey, SignedTransaction, Transaction};
use serde::{Deserialize, Serialize};

use crate::security::audit::AuditLog;

/// Outcomes remembered per player (and location), for resubmissions.
pub const MAX_REMEMBERED_OUTCOMES: usize = 64;

/// One remembered outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// The transaction's sequence number.
    pub sequence: u64,
    /// SHA-256 of its canonical bytes.
    pub digest: [u8; 32],
    /// The receipt it got.
    pub receipt: TxReceipt,
}

/// A player's record at one location (or at the meta group).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerRecord {
    /// The sequence number the player's next transaction must carry.
    pub next_sequence: u64,
    /// The last [`MAX_REMEMBERED_OUTCOMES`] outcomes, oldest first.
    pub recent: VecDeque<Remembered>,
}

/// Every player's record at one place, by key.
pub type Players = BTreeMap<PlayerKey, PlayerRecord>;

/// What to do with a submitted transaction.
#[derive(Debug)]
pub enum Admission {
    /// Carry it out, then [`Fresh::decide`] its outcome.
    Fresh(Fresh),
    /// Answer with this receipt and change nothing.
    Done(TxReceipt),
}

/// A transaction whose sequence number is its player's next.
#[derive(Debug)]
pub struct Fresh {
    /// The decoded transaction.
    pub tx: Transaction,
    /// SHA-256 of its canonical bytes.
    digest: [u8; 32],
    /// Where it is carried out.
    location: String,
    /// The log index it is carried out at.
    index: u64,
}

impl Fresh {
    /// Records the transaction's `outcome`: the player's sequence moves
    /// past it, the receipt is remembered for resubmissions, and the audit
    /// trail gets an entry. Returns the receipt.
    pub fn decide(
        self,
        players: &mut Players,
        audit: &mut AuditLog,
        log_time_ms: u64,
        signed: &SignedTransaction,
        outcome: Outcome,
    ) -> TxReceipt {
        let receipt = TxReceipt {
            location: self.location,
            index: self.index,
            sequence: self.tx.sequence,
            outcome,
            duplicate: false,
        };
        remember(players, &self.tx, self.digest, &receipt);
        audit.record(log_time_ms, self.tx.player, signed, &receipt);
        receipt
    }
}

/// The player's next sequence number (1 for a player never seen).
pub fn next_sequence(players: &Players, player: &PlayerKey) -> u64 {
    players.get(player).map(|p| p.next_sequence).unwrap_or(1)
}

/// Decodes and checks `signed` for `location` at log `index`: canonical
/// bytes, static limits, location, sequence number.
pub fn admit(
    players: &Players,
    location: &str,
    index: u64,
    signed: &SignedTransaction,
) -> Admission {
    let refuse = |sequence, reason| Admission::Done(rejected(location, index, sequence, reason));
    let tx = match Transaction::from_canonical_bytes(&signed.transaction) {
        Ok(tx) => tx,
        Err(e) => return refuse(0, Rejection::Malformed(e.to_string())),
    };
    // Ingress checked these; a forged forward must not get past apply
    // either (sequence 0 or an empty transaction included).
    if let Err(e) = tx.check_limits() {
        return refuse(tx.sequence, Rejection::Malformed(e.to_string()));
    }
    // The cluster name is checked at ingress only: it comes from each
    // node's configuration, and apply may depend on nothing local.
    if tx.location != location {
        return refuse(
            tx.sequence,
            Rejection::WrongLocation {
                expected: location.to_string(),
                got: tx.location,
            },
        );
    }
    let next = next_sequence(players, &tx.player);
    let digest = signed.digest();
    if tx.sequence < next {
        let seen = players.get(&tx.player).and_then(|r| {
            r.recent
                .iter()
                .find(|r| r.sequence == tx.sequence && r.digest == digest)
        });
        if let Some(seen) = seen {
            return Admission::Done(TxReceipt {
                duplicate: true,
                ..seen.receipt.clone()
            });
        }
        return refuse(
            tx.sequence,
            Rejection::SequenceReused {
                got: tx.sequence,
                next,
            },
        );
    }
    if tx.sequence > next {
        return refuse(
            tx.sequence,
            Rejection::SequenceGap {
                expected: next,
                got: tx.sequence,
            },
        );
    }
    Admission::Fresh(Fresh {
        tx,
        digest,
        location: location.to_string(),
        index,
    })
}

/// Advances the player's sequence past `tx` and remembers its receipt.
fn remember(players: &mut Players, tx: &Transaction, digest: [u8; 32], receipt: &TxReceipt) {
    let record = players.entry(tx.player).or_insert_with(|| PlayerRecord {
        next_sequence: 1,
        recent: VecDeque::new(),
    });
    record.next_sequence = tx.sequence + 1;
    if record.recent.len() == MAX_REMEMBERED_OUTCOMES {
        record.recent.pop_front();
    }
    record.recent.push_back(Remembered {
        sequence: tx.sequence,
        digest,
        receipt: receipt.clone(),
    });
}

/// A receipt for a transaction refused before any of its operations ran.
pub fn rejected(location: &str, index: u64, sequence: u64, reason: Rejection) -> TxReceipt {
    TxReceipt {
        location: location.to_string(),
        index,
        sequence,
        outcome: Outcome::Rejected { op: None, reason },
        duplicate: false,
    }
}
