//! The workload: concurrent workers, each pinned to one node and acting as
//! its own player, doing register reads, writes and compare-and-sets on a
//! small rotating set of keys, and signed game transactions on the player's
//! own ledger entity. Every operation goes into the history, and so does
//! each signed transaction's sequence number and receipt, which the event
//! checkers match against the event streams.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use garrison_client::api::ReadMode;
use garrison_client::tx::Transaction;
use garrison_client::{
    Client, ClientError, ClientOptions, Keypair, Op as TxOp, Outcome, Player, SignedTransaction,
    TxReceipt, Value,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checker::Ledger;
use crate::history::{Kind, Op, Receipt, Recorder, Submitted};

/// Locations holding the registers (key k lives in location k mod 3).
pub const REGISTER_LOCATIONS: [&str; 3] = ["jepsen-r0", "jepsen-r1", "jepsen-r2"];
/// The location of the players' ledgers.
pub const LEDGER_LOCATION: &str = "jepsen-ledger";
/// Keys in use at once.
pub const KEYS_PER_ROUND: u64 = 3;
/// Operations on one set of keys before moving to fresh ones.
pub const OPS_PER_ROUND: u64 = 300;

/// A client for the harness: short timeouts (a slow answer is recorded as
/// unknown), optionally pinned to one node.
pub fn options(pinned: bool) -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(3),
        max_attempts: 4,
        discover: !pinned,
        tls: None,
    }
}

fn location_of(key: u64) -> &'static str {
    REGISTER_LOCATIONS[(key % REGISTER_LOCATIONS.len() as u64) as usize]
}

fn register(key: u64) -> String {
    format!("reg/{key}")
}

fn ledger(player: &Keypair) -> String {
    format!("ledger/{}", hex::encode(player.public()))
}

/// Shared state of the workers.
pub struct Workload {
    /// The history.
    pub recorder: Arc<Recorder>,
    /// Set to stop the workers.
    pub stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    /// Highest register key used.
    pub max_key: Arc<AtomicU64>,
}

/// Worker `process`'s key. The harness makes every worker a game master
/// everywhere, so workers may write each other's registers.
pub fn worker_key(process: u32) -> Keypair {
    let mut seed = [0x77; 32];
    seed[..4].copy_from_slice(&process.to_le_bytes());
    Keypair::from_seed(seed)
}

impl Workload {
    /// A workload recording into `recorder`.
    pub fn new(recorder: Arc<Recorder>) -> Self {
        Self {
            recorder,
            stop: Arc::new(AtomicBool::new(false)),
            ops: Arc::new(AtomicU64::new(0)),
            max_key: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Starts worker `process`, pinned to `endpoint`.
    pub fn spawn(&self, process: u32, endpoint: String, seed: u64) -> tokio::task::JoinHandle<()> {
        let (recorder, stop, ops, max_key) = (
            self.recorder.clone(),
            self.stop.clone(),
            self.ops.clone(),
            self.max_key.clone(),
        );
        tokio::spawn(async move {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (process as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut signer = Signer::new(worker_key(process));
            let mut client: Option<Client> = None;
            while !stop.load(Ordering::Relaxed) {
                let Some(c) = client.as_ref() else {
                    // Reads need a session: log in as this worker.
                    match Client::connect_with(std::slice::from_ref(&endpoint), options(true)).await
                    {
                        Ok(c) if c.login(&worker_key(process)).await.is_ok() => client = Some(c),
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                    continue;
                };
                let n = ops.fetch_add(1, Ordering::Relaxed);
                if rng.gen_ratio(1, 4) {
                    game_tx(c, &mut signer.player, &recorder, process).await;
                } else {
                    let key =
                        (n / OPS_PER_ROUND) * KEYS_PER_ROUND + rng.gen_range(0..KEYS_PER_ROUND);
                    max_key.fetch_max(key, Ordering::Relaxed);
                    register_op(c, &mut signer, &recorder, process, key, &mut rng).await;
                }
            }
        })
    }
}

/// A worker's player for its register transactions, which says which
/// sequence number each one carried. Like `Player::transact`, it resubmits
/// a transaction whose outcome is unknown (the same bytes) before it signs
/// the next one at that location, so a sequence number is never given to
/// two different operations.
pub struct Signer {
    /// The player (its game transactions sign through it directly).
    pub player: Player,
    /// Per location, the signed transaction whose outcome is unknown.
    pending: HashMap<String, SignedTransaction>,
}

impl Signer {
    /// A signer for `key`.
    pub fn new(key: Keypair) -> Self {
        Self {
            player: Player::new(key),
            pending: HashMap::new(),
        }
    }

    /// Signs and submits `ops` at `location`: the sequence number of the
    /// transaction signed for them (`None`: it failed before one was), and
    /// the result of submitting it.
    async fn transact(
        &mut self,
        client: &Client,
        location: &str,
        ops: Vec<TxOp>,
    ) -> (Option<u64>, Result<TxReceipt, ClientError>) {
        if let Some(earlier) = self.pending.get(location).cloned() {
            match client.submit(&earlier).await {
                Ok(receipt) => {
                    self.pending.remove(location);
                    self.player.record(location, &receipt);
                }
                Err(e) => return (None, Err(e)),
            }
        }
        let signed = match self.player.sign(client, location, ops).await {
            Ok(signed) => signed,
            Err(e) => return (None, Err(e)),
        };
        let sequence = Transaction::from_canonical_bytes(&signed.transaction)
            .expect("a transaction just signed decodes")
            .sequence;
        let result = client.submit(&signed).await;
        match &result {
            Ok(receipt) => self.player.record(location, receipt),
            Err(e) if e.outcome_unknown() => {
                self.pending.insert(location.to_string(), signed);
            }
            Err(_) => {}
        }
        (Some(sequence), result)
    }
}

async fn register_op(
    client: &Client,
    signer: &mut Signer,
    recorder: &Recorder,
    process: u32,
    key: u64,
    rng: &mut StdRng,
) {
    let location = location_of(key);
    match rng.gen_range(0..5) {
        0 | 1 => {
            recorder.record(
                process,
                Kind::Invoke,
                Op::Read { key, value: None },
                String::new(),
            );
            read(client, recorder, process, key).await;
        }
        2 | 3 => {
            let value = rng.gen_range(0..5);
            let op = Op::Write { key, value };
            recorder.record(process, Kind::Invoke, op.clone(), String::new());
            let ops = vec![TxOp::Put {
                entity: register(key),
                fields: vec![("v".into(), Value::Int(value))],
            }];
            let (sequence, result) = signer.transact(client, location, ops).await;
            let tx = sequence.map(|s| submitted(location, signer.player.key(), s));
            finish(result, recorder, process, op, tx);
        }
        _ => {
            let (old, new) = (rng.gen_range(0..5), rng.gen_range(0..5));
            let op = Op::Cas {
                key,
                old: Some(old),
                new,
            };
            recorder.record(process, Kind::Invoke, op.clone(), String::new());
            let ops = vec![
                TxOp::ExpectField {
                    entity: register(key),
                    field: "v".into(),
                    value: Some(Value::Int(old)),
                },
                TxOp::Put {
                    entity: register(key),
                    fields: vec![("v".into(), Value::Int(new))],
                },
            ];
            let (sequence, result) = signer.transact(client, location, ops).await;
            let tx = sequence.map(|s| submitted(location, signer.player.key(), s));
            finish(result, recorder, process, op, tx);
        }
    }
}

/// A linearizable read of register `key`, recorded as ok or fail.
pub async fn read(client: &Client, recorder: &Recorder, process: u32, key: u64) {
    match client
        .get_entity(location_of(key), &register(key), ReadMode::Linearizable)
        .await
    {
        Ok(read) => {
            let value = read.entity.and_then(|e| match e.fields.get("v") {
                Some(Value::Int(v)) => Some(*v),
                _ => None,
            });
            recorder.record(
                process,
                Kind::Ok,
                Op::Read { key, value },
                format!("index {}", read.index),
            );
        }
        // A read has no effect: one that failed certainly did not happen.
        Err(e) => recorder.record(
            process,
            Kind::Fail,
            Op::Read { key, value: None },
            e.to_string(),
        ),
    }
}

fn submitted(location: &str, player: &Keypair, sequence: u64) -> Submitted {
    Submitted {
        location: location.to_string(),
        player: hex::encode(player.public()),
        sequence,
        receipt: None,
    }
}

/// Records how `op` ended, with its transaction `tx` (if one was signed)
/// and the receipt's index and outcome; returns whether it committed.
fn finish(
    result: Result<TxReceipt, ClientError>,
    recorder: &Recorder,
    process: u32,
    op: Op,
    mut tx: Option<Submitted>,
) -> bool {
    if let (Some(tx), Ok(r)) = (&mut tx, &result) {
        tx.receipt = Some(Receipt {
            index: r.index,
            committed: matches!(r.outcome, Outcome::Committed { .. }),
            duplicate: r.duplicate,
        });
    }
    let (kind, note) = match result {
        Ok(r) => match r.outcome {
            Outcome::Committed { .. } => (Kind::Ok, format!("index {}", r.index)),
            Outcome::Rejected { reason, .. } => (Kind::Fail, reason.to_string()),
        },
        // Refused at ingress: nothing was proposed.
        Err(ClientError::Api(e))
            if !matches!(
                e,
                garrison_client::ApiError::Timeout | garrison_client::ApiError::Unavailable(_)
            ) =>
        {
            (Kind::Fail, e.to_string())
        }
        Err(e) => (Kind::Info, e.to_string()),
    };
    recorder.record_tx(process, kind, op, note, tx);
    kind == Kind::Ok
}

/// One signed game transaction: `last = sequence`, `count += 1` on the
/// player's ledger entity; returns whether it committed. After an unknown
/// outcome the next one carries the same sequence number and so the same
/// bytes: a resubmission, never a second transaction.
pub async fn game_tx(
    client: &Client,
    player: &mut Player,
    recorder: &Recorder,
    process: u32,
) -> bool {
    let entity = ledger(player.key());
    let Ok(sequence) = player.next_sequence(client, LEDGER_LOCATION).await else {
        return false;
    };
    let ops = vec![
        TxOp::Put {
            entity: entity.clone(),
            fields: vec![("last".into(), Value::Int(sequence as i64))],
        },
        TxOp::Increment {
            entity,
            field: "count".into(),
            by: 1,
            min: None,
            max: None,
        },
    ];
    let tx = Transaction {
        cluster: client.cluster().to_string(),
        location: LEDGER_LOCATION.into(),
        player: player.key().public(),
        sequence,
        ops,
    };
    let signed = tx.sign(player.key().signing_key());
    let op = Op::Tx {
        player: hex::encode(player.key().public()),
        sequence,
    };
    recorder.record(process, Kind::Invoke, op.clone(), String::new());
    let result = client.submit(&signed).await;
    if let Ok(receipt) = &result {
        player.record(LEDGER_LOCATION, receipt);
    }
    let tx = submitted(LEDGER_LOCATION, player.key(), sequence);
    finish(result, recorder, process, op, Some(tx))
}

/// Every ledger as the cluster holds it (a linearizable read).
pub async fn ledgers(client: &Client) -> anyhow::Result<BTreeMap<String, Ledger>> {
    let read = client
        .get_location(
            LEDGER_LOCATION,
            ReadMode::Linearizable,
            garrison_client::api::MAX_ENTITIES_PER_READ,
        )
        .await?;
    let int = |e: &garrison_client::Entity, f: &str| match e.fields.get(f) {
        Some(Value::Int(v)) => *v as u64,
        _ => 0,
    };
    Ok(read
        .entities
        .iter()
        .filter_map(|(k, e)| {
            k.strip_prefix("ledger/").map(|p| {
                (
                    p.to_string(),
                    Ledger {
                        last: int(e, "last"),
                        count: int(e, "count"),
                    },
                )
            })
        })
        .collect())
}
