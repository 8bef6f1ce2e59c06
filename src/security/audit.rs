//! The audit trail: who did what, at which log index, with which outcome.
//!
//! Every transaction that a location (or the meta group, for administrative
//! transactions) carries out — committed, or rejected by the rules or by
//! access control — is appended, signed bytes and all, so anyone holding the
//! trail can check the signature and see exactly what the player asked for.
//! Refusals that consume no sequence number (replays, gaps, wrong location)
//! and duplicates are not entries: nothing was carried out.
//!
//! Transactions refused by access control (denied, or before the location
//! had its policy) are kept apart, by digest only, in a ring of their own
//! ([`MAX_REFUSED_AUDIT_ENTRIES`]): a player without rights can neither push
//! the trail of what was carried out off its end nor fill it with its bytes.
//!
//! The trail is part of the replicated state (it is in snapshots, and every
//! replica holds the same one), bounded per location by
//! [`MAX_AUDIT_ENTRIES`] and [`MAX_AUDIT_BYTES`] (encoded entries): the
//! oldest entries fall off first. A deployment that must keep everything
//! exports it (reads by `from_index`) faster than it rolls over.

use std::collections::VecDeque;

use garrison_client::api::{AuditEntry, Outcome, Rejection, TxReceipt};
use garrison_client::tx::{PlayerKey, SignedTransaction};
use serde::{Deserialize, Serialize};

/// Most entries one location's trail keeps.
pub const MAX_AUDIT_ENTRIES: usize = 4096;
/// Most bytes of encoded entries one location's trail keeps.
pub const MAX_AUDIT_BYTES: usize = 1024 * 1024;
/// Most refused (access-denied) entries one location keeps, digest only.
pub const MAX_REFUSED_AUDIT_ENTRIES: usize = 1024;
/// Most bytes of entries one audit read returns (below the client port's
/// default frame limit).
pub const MAX_AUDIT_READ_BYTES: usize = 512 * 1024;

/// One place's audit trail, oldest entry first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    entries: VecDeque<AuditEntry>,
    bytes: u64,
    refused: VecDeque<AuditEntry>,
    /// The index of the newest carried-out entry dropped (0: none yet).
    rolled_off_through: u64,
}

fn weight(entry: &AuditEntry) -> u64 {
    garrison_raft::codec::encode(entry).len() as u64
}

fn is_refusal(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Rejected {
            reason: Rejection::Denied { .. } | Rejection::PolicyPending,
            ..
        }
    )
}

impl AuditLog {
    /// Appends the outcome of a transaction carried out at `receipt.index`,
    /// dropping the oldest entries beyond the limits.
    pub fn record(
        &mut self,
        log_time_ms: u64,
        player: PlayerKey,
        signed: &SignedTransaction,
        receipt: &TxReceipt,
    ) {
        let refused = is_refusal(&receipt.outcome);
        let entry = AuditEntry {
            index: receipt.index,
            log_time_ms,
            player,
            sequence: receipt.sequence,
            digest: signed.digest(),
            transaction: (!refused).then(|| signed.clone()),
            outcome: receipt.outcome.clone(),
        };
        if refused {
            self.refused.push_back(entry);
            if self.refused.len() > MAX_REFUSED_AUDIT_ENTRIES {
                self.refused.pop_front();
            }
            return;
        }
        self.bytes += weight(&entry);
        self.entries.push_back(entry);
        while self.entries.len() > MAX_AUDIT_ENTRIES || self.bytes > MAX_AUDIT_BYTES as u64 {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= weight(&old);
            self.rolled_off_through = old.index;
        }
    }

    /// Up to `max` entries (carried out and refused, merged in index order)
    /// at or after `from_index`, of `player` only if given, stopping at
    /// [`MAX_AUDIT_READ_BYTES`]; the flag is true when more matching entries
    /// follow.
    pub fn read(
        &self,
        player: Option<&PlayerKey>,
        from_index: u64,
        max: u32,
    ) -> (Vec<AuditEntry>, bool) {
        let wanted =
            |e: &&AuditEntry| e.index >= from_index && player.is_none_or(|p| *p == e.player);
        let mut done = self.entries.iter().filter(wanted).peekable();
        let mut refused = self.refused.iter().filter(wanted).peekable();
        let mut out = Vec::new();
        let mut bytes = 0;
        loop {
            let next = match (done.peek(), refused.peek()) {
                (Some(a), Some(b)) if b.index < a.index => refused.next(),
                (Some(_), _) => done.next(),
                (None, Some(_)) => refused.next(),
                (None, None) => return (out, false),
            };
            let e = next.expect("peeked");
            bytes += weight(e) as usize;
            if out.len() == max as usize || (bytes > MAX_AUDIT_READ_BYTES && !out.is_empty()) {
                return (out, true);
            }
            out.push(e.clone());
        }
    }

    /// [`AuditLog::read`] and [`AuditLog::rolled_off_through`], encoded as
    /// an allowed query's reply: `Ok((Vec<AuditEntry>, bool more,
    /// Option<u64> rolled_off_through))`.
    pub fn reply(&self, player: Option<&PlayerKey>, from_index: u64, max: u32) -> Vec<u8> {
        let (entries, more) = self.read(player, from_index, max);
        let reply: Result<_, Rejection> = Ok((entries, more, self.rolled_off_through()));
        garrison_raft::codec::encode(&reply)
    }

    /// The index of the newest carried-out entry that rolled off, if any.
    pub fn rolled_off_through(&self) -> Option<u64> {
        (self.rolled_off_through > 0).then_some(self.rolled_off_through)
    }

    /// The index of the oldest carried-out entry still held, if any.
    pub fn oldest_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use garrison_client::api::Outcome;

    fn receipt(index: u64) -> TxReceipt {
        TxReceipt {
            location: "l".into(),
            index,
            sequence: index,
            outcome: Outcome::Committed {
                events: vec![],
                emitted: vec![],
            },
            duplicate: false,
        }
    }

    fn signed(bytes: usize) -> SignedTransaction {
        SignedTransaction {
            transaction: vec![1; bytes],
            signature: vec![2; 64],
        }
    }

    fn denied(index: u64) -> TxReceipt {
        TxReceipt {
            outcome: Outcome::Rejected {
                op: Some(0),
                reason: Rejection::Denied {
                    action: garrison_client::policy::Action::Put,
                    entity: None,
                    reason: "no".into(),
                },
            },
            ..receipt(index)
        }
    }

    #[test]
    fn the_trail_keeps_the_newest_entries_within_both_limits() {
        let mut log = AuditLog::default();
        for i in 1..=(MAX_AUDIT_ENTRIES as u64 + 10) {
            log.record(i, [(i % 2) as u8; 32], &signed(10), &receipt(i));
        }
        assert_eq!(log.entries.len(), MAX_AUDIT_ENTRIES);
        assert_eq!(log.oldest_index(), Some(11));
        assert_eq!(log.rolled_off_through(), Some(10));
        let mut big = AuditLog::default();
        for i in 1..=100 {
            big.record(i, [0; 32], &signed(16 * 1024 - 200), &receipt(i));
        }
        assert!(big.bytes <= MAX_AUDIT_BYTES as u64);
        assert!(big.oldest_index().unwrap() > 30, "{:?}", big.oldest_index());
    }

    #[test]
    fn refused_transactions_cannot_push_the_trail_off_its_end() {
        let mut log = AuditLog::default();
        log.record(1, [1; 32], &signed(100), &receipt(1));
        for i in 2..5_000 {
            log.record(i, [9; 32], &signed(16 * 1024 - 200), &denied(i));
        }
        assert_eq!(log.oldest_index(), Some(1));
        assert_eq!(log.rolled_off_through(), None);
        assert_eq!(log.refused.len(), MAX_REFUSED_AUDIT_ENTRIES);
        assert!(log.refused.iter().all(|e| e.transaction.is_none()));
        // Reads merge both, in index order.
        let (first, more) = log.read(None, 0, 3);
        let indexes: Vec<u64> = first.iter().map(|e| e.index).collect();
        assert_eq!(
            indexes,
            [
                1,
                5_000 - MAX_REFUSED_AUDIT_ENTRIES as u64,
                5_001 - MAX_REFUSED_AUDIT_ENTRIES as u64
            ]
        );
        assert!(more);
    }

    #[test]
    fn reads_filter_by_player_and_index_and_say_when_more_follow() {
        let mut log = AuditLog::default();
        for i in 1..=10 {
            log.record(i, [(i % 2) as u8; 32], &signed(10), &receipt(i));
        }
        let (odd, more) = log.read(Some(&[1; 32]), 4, 100);
        assert_eq!(odd.iter().map(|e| e.index).collect::<Vec<_>>(), [5, 7, 9]);
        assert!(!more);
        let (first, more) = log.read(None, 0, 3);
        assert_eq!(first.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(more);
    }
}
