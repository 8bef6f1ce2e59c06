//! `garrison bench --mode apply`: the cost of applying transactions in
//! one location, in this process (no cluster, no network, no disk), with
//! no rules, with the given rules, and with ten copies of each; what the
//! complex event processor adds to apply, per entry and per event.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use garrison_client::tx::Transaction;
use garrison_client::{Keypair, Op, Value};
use garrison_raft::typ::{Membership, Node};
use garrison_raft::{codec, ApplyContext, GroupApp};

use crate::cep::lang::{parse, Rule};
use crate::cep::script::rule_set;
use crate::security::access::{Policy, RolesFile, DEFAULT_ROLES_TOML};
use crate::state::location::{LocationApp, LocationCommand};

/// One configuration's figures.
#[derive(Clone, Debug)]
pub struct ApplyCost {
    /// Rules deployed.
    pub rules: usize,
    /// Entries applied.
    pub entries: u64,
    /// Events they produced (matches included).
    pub events: u64,
    /// Matches among them.
    pub matches: u64,
    /// Microseconds per entry.
    pub us_per_entry: f64,
    /// Microseconds per event.
    pub us_per_event: f64,
}

fn context(membership: &Membership, index: u64, log_time_ms: u64) -> ApplyContext<'_> {
    ApplyContext {
        group: 1,
        index,
        term: 1,
        leader: 1,
        log_time_ms,
        membership,
    }
}

/// Applies `count` puts of `players` players (one entry each, 1 ms of log
/// time apart) under `rules`, and measures.
pub fn measure(
    rules: &[Rule],
    players: u32,
    count: u64,
    value_size: usize,
) -> anyhow::Result<ApplyCost> {
    let nodes: std::collections::BTreeMap<u64, Node> =
        [(1u64, Node::new("x"))].into_iter().collect();
    let membership = Membership::new(vec![[1u64].into_iter().collect()], nodes);
    let keys: Vec<Keypair> = (0..players.max(1))
        .map(|p| {
            let mut seed = [7u8; 32];
            seed[..4].copy_from_slice(&p.to_le_bytes());
            Keypair::from_seed(seed)
        })
        .collect();
    let roles = RolesFile::parse(DEFAULT_ROLES_TOML).map_err(anyhow::Error::msg)?;
    let policy =
        Policy::bootstrap(&roles.policy(), &[keys[0].public()], 1).map_err(anyhow::Error::msg)?;
    let mut app = LocationApp::new("bench-0");
    app.apply(
        &context(&membership, 1, 1_000),
        &codec::encode(&LocationCommand::Policy(policy)),
    );
    let set = rule_set(rules, 2);
    app.apply(
        &context(&membership, 2, 1_000),
        &codec::encode(&LocationCommand::Rules(set)),
    );
    let payload = "x".repeat(value_size);
    let mut sequences = vec![0u64; keys.len()];
    // Signed before the clock starts: apply trusts ingress's check.
    let entries: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let p = (i % keys.len() as u64) as usize;
            sequences[p] += 1;
            let tx = Transaction {
                cluster: "bench".into(),
                location: "bench-0".into(),
                player: keys[p].public(),
                sequence: sequences[p],
                ops: vec![Op::Put {
                    entity: format!("unit/{p}"),
                    fields: vec![
                        ("n".into(), Value::Int(i as i64)),
                        ("payload".into(), Value::Str(payload.clone())),
                    ],
                }],
            };
            codec::encode(&LocationCommand::Submit(tx.sign(keys[p].signing_key())))
        })
        .collect();
    let mut events = 0u64;
    let mut matches = 0u64;
    let started = Instant::now();
    for (i, entry) in entries.iter().enumerate() {
        let index = 3 + i as u64;
        app.apply(&context(&membership, index, 2_000 + i as u64), entry);
        if let Some(newest) = app.events().newest().filter(|c| c.index == index) {
            events += newest.position as u64 + 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    for run in app.cep().rules.values() {
        matches += run.matches;
    }
    Ok(ApplyCost {
        rules: rules.len(),
        entries: count,
        events,
        matches,
        us_per_entry: elapsed * 1e6 / count.max(1) as f64,
        us_per_event: elapsed * 1e6 / events.max(1) as f64,
    })
}

/// Copies of `rules`, renamed `NAME_k`, `copies` of each.
fn copies(rules: &[Rule], copies: usize) -> Vec<Rule> {
    (0..copies)
        .flat_map(|k| {
            rules.iter().map(move |r| {
                let mut r = r.clone();
                r.name = format!("{}_{k}", r.name);
                r
            })
        })
        .collect()
}

/// Runs the measurement for no rules, `files`, and ten copies of them.
pub fn run(files: &[PathBuf], players: u32, count: u64, value_size: usize) -> anyhow::Result<i32> {
    let mut rules = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        rules.push(parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?);
    }
    println!("apply in one location, {count} puts of {players} players, 1 ms of log time apart:");
    let mut base = None;
    for set in [Vec::new(), rules.clone(), copies(&rules, 10)] {
        if set.is_empty() && !rules.is_empty() && base.is_some() {
            continue;
        }
        let cost = measure(&set, players, count, value_size)?;
        let slower = base.map_or(String::new(), |b: f64| {
            format!("  ({:.2}x the cost with none)", cost.us_per_entry / b)
        });
        base.get_or_insert(cost.us_per_entry);
        println!(
            "  {:>3} rules: {:>6.2} us per entry, {:>5.2} us per event ({} events, {} matches){slower}",
            cost.rules, cost.us_per_entry, cost.us_per_event, cost.events, cost.matches
        );
    }
    Ok(0)
}
