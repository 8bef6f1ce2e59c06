//! The workload: concurrent workers, each pinned to one node and acting as
//! its own player, doing register reads, writes and compare-and-sets on a
//! small rotating set of keys, and signed game transactions on the player's
//! own ledger entity. Every operation goes into the history.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use garrison_client::api::ReadMode;
use garrison_client::tx::Transaction;
use garrison_client::{Client, ClientOptions, Keypair, Op as TxOp, Outcome, Player, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checker::Ledger;
use crate::history::{Kind, Op, Recorder};

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
            let mut player = Player::new(worker_key(process));
            let mut client: Option<Client> = None;
            while !stop.load(Ordering::Relaxed) {
                let Some(c) = client.as_ref() else {
                    // Reads need a session: log in as this worker.
                    match Client::connect_with(&[endpoint.clone()], options(true)).await {
                        Ok(c) if c.login(&worker_key(process)).await.is_ok() => client = Some(c),
                        _ => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                    continue;
                };
                let n = ops.fetch_add(1, Ordering::Relaxed);
                if rng.gen_ratio(1, 4) {
                    game_tx(c, &mut player, &recorder, process).await;
                } else {
                    let key =
                        (n / OPS_PER_ROUND) * KEYS_PER_ROUND + rng.gen_range(0..KEYS_PER_ROUND);
                    max_key.fetch_max(key, Ordering::Relaxed);
                    register_op(c, &mut player, &recorder, process, key, &mut rng).await;
                }
            }
        })
    }
}

async fn register_op(
    client: &Client,
    player: &mut Player,
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
            finish(
                player.transact(client, location, ops).await,
                recorder,
                process,
                op,
            );
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
            finish(
                player.transact(client, location, ops).await,
                recorder,
                process,
                op,
            );
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

fn finish(
    result: Result<garrison_client::TxReceipt, garrison_client::ClientError>,
    recorder: &Recorder,
    process: u32,
    op: Op,
) {
    match result {
        Ok(r) => match r.outcome {
            Outcome::Committed { .. } => {
                recorder.record(process, Kind::Ok, op, format!("index {}", r.index))
            }
            Outcome::Rejected { reason, .. } => {
                recorder.record(process, Kind::Fail, op, reason.to_string())
            }
        },
        // Refused at ingress: nothing was proposed.
        Err(garrison_client::ClientError::Api(e))
            if !matches!(
                e,
                garrison_client::ApiError::Timeout | garrison_client::ApiError::Unavailable(_)
            ) =>
        {
            recorder.record(process, Kind::Fail, op, e.to_string())
        }
        Err(e) => recorder.record(process, Kind::Info, op, e.to_string()),
    }
}

/// One signed game transaction: `last = sequence`, `count += 1` on the
/// player's ledger entity.
pub async fn game_tx(client: &Client, player: &mut Player, recorder: &Recorder, process: u32) {
    let entity = ledger(player.key());
    let Ok(sequence) = player.next_sequence(client, LEDGER_LOCATION).await else {
        return;
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
    finish(result, recorder, process, op);
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
