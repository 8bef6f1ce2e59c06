//! `garrison bench --mode apply`: the cost of applying transactions in
//! one location, in this process (no cluster, no network, no disk), with
//! no rules, with the given rules, and with ten copies of each; what the
//! complex event processor adds to apply, per entry and per event. With
//! plugins: the cost of one call of each on a sample event, and of apply
//! with each subscribed to every event.

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
/// time apart) under `rules`, and with `plugin` (a module, subscribed to
/// every event) if given, and measures.
pub fn measure(
    rules: &[Rule],
    plugin: Option<&[u8]>,
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
    let app = LocationApp::new("bench-0");
    #[cfg(feature = "plugins")]
    let app = match plugin {
        Some(_) => app.with_plugin_host(std::sync::Arc::new(
            crate::plugins::host::PluginHost::new().map_err(anyhow::Error::msg)?,
        )),
        None => app,
    };
    let mut app = app;
    app.apply(
        &context(&membership, 1, 1_000),
        &codec::encode(&LocationCommand::Policy(policy)),
    );
    let set = rule_set(rules, 2);
    app.apply(
        &context(&membership, 2, 1_000),
        &codec::encode(&LocationCommand::Rules(set)),
    );
    if let Some(module) = plugin {
        app.apply(
            &context(&membership, 3, 1_000),
            &codec::encode(&LocationCommand::Plugins(plugin_set(module)?)),
        );
    }
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
        let index = 4 + i as u64;
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

/// A plugin set of `module` alone, subscribed to every event, as the
/// validating engine records it.
fn plugin_set(module: &[u8]) -> anyhow::Result<garrison_client::plugins::PluginSet> {
    #[cfg(feature = "plugins")]
    {
        let spec = garrison_client::plugins::PluginSpec::new("bench", module.to_vec(), "admin");
        let deployed = garrison_client::plugins::DeployedPlugin { version: 3, spec };
        Ok(garrison_client::plugins::PluginSet {
            version: 3,
            engine: crate::plugins::runtime::engine_fingerprint(),
            plugins: [("bench".to_string(), deployed)].into_iter().collect(),
        })
    }
    #[cfg(not(feature = "plugins"))]
    {
        let _ = module;
        anyhow::bail!("this build has no plugin engine")
    }
}

/// Microseconds per call of each plugin on a sample event (a `resupply`
/// game event naming a depot and a killer), and per entry with each
/// subscribed to every event.
#[cfg(feature = "plugins")]
pub fn plugins(
    files: &[PathBuf],
    players: u32,
    count: u64,
    value_size: usize,
) -> anyhow::Result<i32> {
    use crate::plugins::runtime::PluginRuntime;
    use crate::state::fragment::Fragment;
    use garrison_client::events::{EventBody, EventId, StreamEvent};
    let runtime = PluginRuntime::new().map_err(anyhow::Error::msg)?;
    let event = StreamEvent {
        id: EventId {
            location: "bench-0".into(),
            index: 7,
            position: 0,
        },
        log_time_ms: 1_000_000,
        player: Some([3; 32]),
        body: EventBody::Emitted {
            kind: "resupply".into(),
            fields: vec![
                ("by".into(), Value::Str("erin".into())),
                ("depot".into(), Value::Str("depot/1".into())),
            ],
        },
    };
    let none = measure(&[], None, players, count, value_size)?;
    println!(
        "apply in one location, {count} puts of {players} players: {:.2} us per entry without plugins",
        none.us_per_entry
    );
    for file in files {
        let module = super::plugin::module_bytes(file)?;
        let plugin = runtime
            .load(&module)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let calls = 2_000u32;
        let mut fuel = 0;
        let started = Instant::now();
        for _ in 0..calls {
            let (result, _, _) = runtime.run(&plugin, &event, 1_000_000, Fragment::default());
            fuel = result.map(|o| o.fuel_used).unwrap_or(0);
        }
        let per_call = started.elapsed().as_secs_f64() * 1e6 / f64::from(calls);
        let cost = measure(&[], Some(&module), players, count, value_size)?;
        println!(
            "  {}: {per_call:.1} us and {fuel} fuel per call on a resupply event; \
             on every event: {:.2} us per entry, {:.2} us per event ({:.2}x)",
            file.display(),
            cost.us_per_entry,
            cost.us_per_event,
            cost.us_per_entry / none.us_per_entry
        );
    }
    Ok(0)
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
        let cost = measure(&set, None, players, count, value_size)?;
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
