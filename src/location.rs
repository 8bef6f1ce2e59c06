//! The location group's application: signed transactions against a state
//! fragment, with per-player sequence numbers for replay protection and
//! exactly-once outcomes.
//!
//! Apply trusts that ingress verified the signature (every node does before
//! it proposes) and re-checks everything that depends on state or on the
//! log: canonical decoding, cluster, location, sequence number. A
//! transaction whose sequence number is the player's next is applied (or
//! rejected by the rules) and its outcome is remembered; the same signed
//! transaction submitted again gets that outcome back, marked duplicate.

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};

use garrison_client::api::{Entity, Outcome, Rejection, TxReceipt};
use garrison_client::tx::{PlayerKey, SignedTransaction, Transaction};
use garrison_raft::{codec, ApplyContext, GroupApp};
use serde::{Deserialize, Serialize};

use crate::state::Fragment;

/// Outcomes remembered per player and location, for resubmissions.
pub const MAX_REMEMBERED_OUTCOMES: usize = 64;

/// Most bytes of entities one location read returns (below the client
/// port's default frame limit of 1 MiB); the reply says when it stopped.
pub const MAX_READ_REPLY_BYTES: usize = 512 * 1024;

/// Version of [`LocationImage`].
pub const LOCATION_FORMAT_VERSION: u16 = 1;

/// What a location group's log entries carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocationCommand {
    /// A signed transaction that passed ingress checks. Its reply is a [`TxReceipt`].
    Submit(SignedTransaction),
}

/// Reads of a location's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocationQuery {
    /// One entity; the reply is `Option<Entity>`.
    Entity(String),
    /// Up to `max` entities in key order; the reply is `(BTreeMap<String, Entity>, bool truncated)`.
    Entities {
        /// How many at most.
        max: u32,
    },
    /// A player's next sequence number; the reply is `u64`.
    NextSequence(PlayerKey),
}

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

/// A player's record at one location.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerRecord {
    /// The sequence number the player's next transaction must carry.
    pub next_sequence: u64,
    /// The last [`MAX_REMEMBERED_OUTCOMES`] outcomes, oldest first.
    pub recent: VecDeque<Remembered>,
}

/// A location's whole replicated state, as snapshots store it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationImage {
    /// [`LOCATION_FORMAT_VERSION`].
    pub format_version: u16,
    /// The entities.
    pub fragment: Fragment,
    /// Every player that has acted here.
    pub players: BTreeMap<PlayerKey, PlayerRecord>,
}

/// The [`GroupApp`] of a location group.
pub struct LocationApp {
    location: String,
    state: LocationImage,
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
        }
    }

    /// The location's entities.
    pub fn fragment(&self) -> &Fragment {
        &self.state.fragment
    }

    /// The player's next sequence number here.
    pub fn next_sequence(&self, player: &PlayerKey) -> u64 {
        self.state
            .players
            .get(player)
            .map(|p| p.next_sequence)
            .unwrap_or(1)
    }

    /// Applies one command at `index`; the receipt is the reply.
    pub fn submit(&mut self, index: u64, signed: &SignedTransaction) -> TxReceipt {
        let receipt = |sequence, outcome| TxReceipt {
            location: self.location.clone(),
            index,
            sequence,
            outcome,
            duplicate: false,
        };
        let refuse = |sequence, reason| receipt(sequence, Outcome::Rejected { op: None, reason });
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
        if tx.location != self.location {
            return refuse(
                tx.sequence,
                Rejection::WrongLocation {
                    expected: self.location.clone(),
                    got: tx.location,
                },
            );
        }
        let next = self.next_sequence(&tx.player);
        let digest = signed.digest();
        if tx.sequence < next {
            let seen = self.state.players.get(&tx.player).and_then(|r| {
                r.recent
                    .iter()
                    .find(|r| r.sequence == tx.sequence && r.digest == digest)
            });
            if let Some(seen) = seen {
                return TxReceipt {
                    duplicate: true,
                    ..seen.receipt.clone()
                };
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
        let outcome = self
            .state
            .fragment
            .apply(&self.location, &tx.player, &tx.ops, index);
        let done = receipt(tx.sequence, outcome);
        let record = self
            .state
            .players
            .entry(tx.player)
            .or_insert_with(|| PlayerRecord {
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
            receipt: done.clone(),
        });
        done
    }

    fn query_reply(&self, query: LocationQuery) -> Vec<u8> {
        match query {
            LocationQuery::Entity(key) => codec::encode(&self.state.fragment.entities.get(&key)),
            LocationQuery::Entities { max } => {
                // Stop at a byte budget too, so the reply fits in a frame.
                let mut entities: BTreeMap<String, Entity> = BTreeMap::new();
                let mut bytes = 0;
                for (k, v) in self.state.fragment.entities.iter().take(max as usize) {
                    bytes += k.len() + codec::encode(v).len();
                    if bytes > MAX_READ_REPLY_BYTES && !entities.is_empty() {
                        break;
                    }
                    entities.insert(k.clone(), v.clone());
                }
                let truncated = self.state.fragment.entities.len() > entities.len();
                codec::encode(&(entities, truncated))
            }
            LocationQuery::NextSequence(player) => codec::encode(&self.next_sequence(&player)),
        }
    }
}

impl GroupApp for LocationApp {
    fn apply(&mut self, ctx: &ApplyContext<'_>, payload: &[u8]) -> Vec<u8> {
        let receipt = match codec::decode::<LocationCommand>(payload) {
            Ok(LocationCommand::Submit(signed)) => self.submit(ctx.index, &signed),
            Err(e) => TxReceipt {
                location: self.location.clone(),
                index: ctx.index,
                sequence: 0,
                outcome: Outcome::Rejected {
                    op: None,
                    reason: Rejection::Malformed(e.to_string()),
                },
                duplicate: false,
            },
        };
        codec::encode(&receipt)
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
        let image: LocationImage = codec::decode_stored(snapshot).map_err(|e| e.to_string())?;
        if image.format_version != LOCATION_FORMAT_VERSION {
            return Err(format!(
                "location format version {} is not supported",
                image.format_version
            ));
        }
        self.state = image;
        Ok(())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Makes [`LocationApp`]s.
pub struct LocationFactory;

impl garrison_raft::AppFactory for LocationFactory {
    fn create(&self, _group: garrison_raft::GroupId, location: &str) -> Box<dyn GroupApp> {
        Box::new(LocationApp::new(location))
    }
}
