//! garrison's fault-injection harness. See `jepsen/README.md`.
//!
//! A run: build the network and start the nodes, create the locations,
//! start the event watchers and the workers, then for the run's duration
//! inject the nemesis's fault, hold it, heal, stay quiet; then heal
//! everything, wait for the cluster to accept writes again (liveness), read
//! every register and every ledger, run `garrison check`, read every log's
//! events and let the watchers drain to their ends, and judge the history
//! and the event streams.

mod checker;
mod cluster;
mod history;
mod nemesis;
mod proxy;
mod watcher;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use garrison_client::{Client, Keypair, Player};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use checker::Check;
use cluster::Cluster;
use history::{Event, Kind, Op, Recorder};
use nemesis::Injection;

/// How long the cluster may take to accept writes after healing.
const LIVENESS_BOUND: Duration = Duration::from_secs(30);
/// The history's process of the final reads.
const FINAL_READ_PROCESS: u32 = 1000;
/// The history's process of the liveness probe's writes.
const PROBE_PROCESS: u32 = 1001;

#[derive(Debug, Parser)]
#[command(
    name = "garrison-jepsen",
    about = "Run garrison under faults and check what it did"
)]
struct Args {
    /// A nemesis name, or `all`.
    #[arg(long, default_value = "partition-leader")]
    nemesis: String,
    /// Seconds of faults per nemesis.
    #[arg(long, default_value_t = 20)]
    time: u64,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    nodes: u64,
    /// Seed of the workload's and nemeses' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Concurrent workers.
    #[arg(long, default_value_t = 6)]
    workers: u32,
    /// Seconds each fault is held.
    #[arg(long, default_value_t = 4)]
    inject_secs: u64,
    /// Seconds of quiet after healing.
    #[arg(long, default_value_t = 3)]
    quiet_secs: u64,
    /// The garrison binary to test.
    #[arg(long, required_unless_present = "recheck")]
    bin: Option<PathBuf>,
    /// Check a recorded history file (history.jsonl) again, without a cluster.
    #[arg(long)]
    recheck: Option<PathBuf>,
    /// Where results go (a folder per nemesis).
    #[arg(long, default_value = "jepsen/results")]
    results: PathBuf,
    /// Succeed only if a violation is found (for deliberately broken builds).
    #[arg(long)]
    expect_violation: bool,
}

#[derive(Serialize)]
struct Summary {
    nemesis: String,
    nodes: u64,
    seed: u64,
    seconds: f64,
    ok: usize,
    fail: usize,
    info: usize,
    injections: Vec<Injection>,
    failover_ms: Vec<Option<u64>>,
    checks: Vec<Check>,
    watchers: Vec<WatcherSummary>,
    /// Milliseconds from the start of the final read of the logs' events
    /// to the last watcher's reaching their ends.
    events_read_ms: u64,
    valid: bool,
}

/// What one event watcher did, for the summary.
#[derive(Serialize)]
struct WatcherSummary {
    name: String,
    events: usize,
    drained: bool,
    lost: Vec<checker::events::Lost>,
    failed_polls: u64,
    last_error: String,
}

impl WatcherSummary {
    fn of(w: &checker::events::Watch) -> Self {
        Self {
            name: w.name.clone(),
            events: w.events.len(),
            drained: w.drained,
            lost: w.lost.clone(),
            failed_polls: w.errors,
            last_error: w.last_error.clone(),
        }
    }
}

fn counts(events: &[Event]) -> (usize, usize, usize) {
    let n = |k| events.iter().filter(|e| e.kind == k).count();
    (n(Kind::Ok), n(Kind::Fail), n(Kind::Info))
}

/// For each fault that can take a leader away: the time from injecting it to
/// the next acknowledged write to the group the nemesis aims at (the first
/// register location, whose leader it targets).
fn failovers(events: &[Event], injections: &[Injection]) -> Vec<Option<u64>> {
    let targeted = |op: &Op| match op {
        Op::Write { key, .. } | Op::Cas { key, .. } => {
            key % workload::REGISTER_LOCATIONS.len() as u64 == 0
        }
        _ => false,
    };
    // Only writes invoked after the fault count: one already in flight may
    // have been committed before it.
    let mut invoked = std::collections::BTreeMap::new();
    let mut done = Vec::new();
    for e in events {
        match e.kind {
            Kind::Invoke => {
                invoked.insert(e.process, e.time_ns);
            }
            Kind::Ok if targeted(&e.op) => {
                done.push((invoked.get(&e.process).copied().unwrap_or(0), e.time_ns))
            }
            _ => {}
        }
    }
    injections
        .iter()
        .filter(|i| i.hits_leader)
        .map(|i| {
            done.iter()
                .filter(|(invoke, _)| *invoke > i.at_ns)
                .map(|(_, ok)| (ok - i.at_ns) / 1_000_000)
                .min()
        })
        .collect()
}

async fn connect(endpoints: &[String], within: Duration) -> Option<Client> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok(c) = Client::connect_with(endpoints, workload::options(false)).await {
            // Logged in as the admin, who may read every ledger.
            if c.login(&cluster::admin_key()).await.is_ok() {
                return Some(c);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// A burst of acknowledged writes from a process of its own, then kill -9 of
/// every node at once: what was acknowledged must survive.
async fn burst_then_kill(cluster: &mut Cluster, recorder: &Recorder, client: &Client) -> String {
    let mut player = Player::new(Keypair::generate());
    let mut acked = 0;
    for _ in 0..30 {
        workload::game_tx(client, &mut player, recorder, 999).await;
        acked += 1;
    }
    for id in 1..=cluster.nodes.len() as u64 {
        cluster.kill(id);
    }
    format!("{acked} writes by process 999, then kill -9 of every node")
}

async fn run_one(args: &Args, name: &str, dir: &std::path::Path) -> anyhow::Result<bool> {
    // Each run starts from empty nodes: a previous run's data would mix
    // its players and registers into this history.
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    let bin = args.bin.clone().expect("--bin is required to run");
    let mut cluster = Cluster::create(args.nodes, dir, &bin)?;
    if name == "slow-links" {
        cluster.proxy_peer_links().await?;
    }
    for id in 1..=args.nodes {
        cluster.start(id)?;
    }
    let endpoints = cluster.endpoints();
    let admin = connect(&endpoints, Duration::from_secs(60))
        .await
        .context("the cluster did not come up")?;
    let mut admin_player = garrison_client::Player::new(cluster::admin_key());
    for location in workload::REGISTER_LOCATIONS
        .iter()
        .chain([&workload::LEDGER_LOCATION])
    {
        admin_player.create_location(&admin, location).await?;
    }
    let grants: Vec<garrison_client::policy::AdminOp> = (0..args.workers)
        .map(|p| garrison_client::policy::AdminOp::AssignRole {
            player: workload::worker_key(p).public(),
            role: "game_master".into(),
            scope: garrison_client::policy::Scope::Everywhere,
        })
        .collect();
    for chunk in grants.chunks(64) {
        let receipt = admin_player.admin(&admin, chunk.to_vec()).await?;
        anyhow::ensure!(
            matches!(receipt.outcome, garrison_client::Outcome::Committed { .. }),
            "granting the workers their role: {:?}",
            receipt.outcome
        );
    }
    // The rules whose matches `checker::cep` checks, in one transaction:
    // one version, bound in the ledger's log before any game transaction.
    let deploy: Vec<garrison_client::policy::AdminOp> =
        [checker::cep::PAIR_RULE, checker::cep::QUIET_RULE]
            .iter()
            .map(|text| garrison_client::policy::AdminOp::DeployRule {
                text: text.to_string(),
            })
            .collect();
    let receipt = admin_player.admin(&admin, deploy).await?;
    anyhow::ensure!(
        matches!(receipt.outcome, garrison_client::Outcome::Committed { .. }),
        "deploying the rules: {:?}",
        receipt.outcome
    );
    let rules_version = receipt.index;
    // The watchers start before any worker, from the start of every log.
    let watched: Vec<&str> = workload::REGISTER_LOCATIONS
        .iter()
        .copied()
        .chain([workload::LEDGER_LOCATION])
        .collect();
    let watchers = watcher::start(&endpoints, &watched);
    let recorder = Arc::new(Recorder::new(Some(&dir.join("history.jsonl")))?);
    let work = workload::Workload::new(recorder.clone());
    let workers: Vec<_> = (0..args.workers)
        .map(|p| {
            work.spawn(
                p,
                endpoints[p as usize % endpoints.len()].clone(),
                args.seed,
            )
        })
        .collect();

    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut injections = Vec::new();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.quiet_secs)).await;
    while started.elapsed() < Duration::from_secs(args.time) {
        let chosen = if name == "mix" {
            nemesis::MIX[rng.gen_range(0..nemesis::MIX.len())]
        } else {
            name
        };
        let (what, hits_leader) = if chosen == "kill-after-burst" {
            (burst_then_kill(&mut cluster, &recorder, &admin).await, true)
        } else {
            nemesis::inject(chosen, &mut cluster, &mut rng).await?
        };
        // The fault is in place from here (a burst, or a snapshot set-up,
        // comes before it).
        let at_ns = recorder.now_ns();
        eprintln!(
            "[{:>5.1}s] {chosen}: {what}",
            started.elapsed().as_secs_f64()
        );
        injections.push(Injection {
            at_ns,
            what: format!("{chosen}: {what}"),
            hits_leader,
        });
        let hold = if chosen == "pause-leader" {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(args.inject_secs)
        };
        tokio::time::sleep(hold).await;
        cluster.heal_all()?;
        eprintln!("[{:>5.1}s] healed", started.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(args.quiet_secs)).await;
    }

    // Heal, and time how long until writes are accepted again.
    cluster.heal_all()?;
    let healed = Instant::now();
    let mut recovered = None;
    // The probe is a player of its own, in the history like the workers.
    let mut probe = Player::new(Keypair::generate());
    while healed.elapsed() < LIVENESS_BOUND {
        if let Some(c) = connect(&endpoints, Duration::from_secs(2)).await {
            if workload::game_tx(&c, &mut probe, &recorder, PROBE_PROCESS).await {
                recovered = Some(healed.elapsed().as_millis() as u64);
                break;
            }
        }
    }
    work.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }

    // Final reads: every register, every ledger.
    let mut checks = Vec::new();
    let client = connect(&endpoints, LIVENESS_BOUND).await;
    let ledgers = match &client {
        Some(c) => {
            for key in 0..=work.max_key.load(Ordering::Relaxed) {
                recorder.record(
                    FINAL_READ_PROCESS,
                    Kind::Invoke,
                    Op::Read { key, value: None },
                    "final read".into(),
                );
                workload::read(c, &recorder, FINAL_READ_PROCESS, key).await;
            }
            workload::ledgers(c).await.unwrap_or_default()
        }
        None => Default::default(),
    };
    let events = recorder.events();
    checks.push(checker::linearizability(&events));
    checks.push(checker::no_lost_writes(&events, &ledgers));
    checks.push(checker::exactly_once(&events, &ledgers));
    let out = std::process::Command::new(&bin)
        .args(["check", "--cluster", &endpoints.join(",")])
        .output()
        .context("running garrison check")?;
    checks.push(checker::replicas_identical(
        out.status.success(),
        &String::from_utf8_lossy(&out.stdout),
    ));
    checks.push(checker::liveness(
        recovered,
        LIVENESS_BOUND.as_millis() as u64,
    ));

    // The absences still pending are judged by ticks once log time passes
    // them: wait for that before the final read.
    let judged = match &client {
        Some(c) => absences_judged(c).await,
        None => Err("no node answered after healing".to_string()),
    };
    // The event streams: every log's events as the cluster holds them now
    // (the replicas are identical, events included), then the watchers
    // read on to those ends.
    let events_read = Instant::now();
    let reference = match &client {
        Some(c) => watcher::reference(c, &watched, watcher::REFERENCE_BOUND)
            .await
            .map_err(|e| format!("{e:#}")),
        None => Err("no node answered after healing".to_string()),
    };
    let ends = reference
        .as_ref()
        .map(|r| r.logs.iter().map(|(l, log)| (l.clone(), log.end)).collect())
        .unwrap_or_default();
    let watches = watcher::finish(watchers, &ends, watcher::DRAIN_BOUND).await;
    let events_read_ms = events_read.elapsed().as_millis() as u64;
    for w in &watches {
        let file = format!("events-{}.jsonl", w.name.split(' ').next().unwrap_or("w"));
        watcher::write_events(&dir.join(file), w.events.iter())?;
    }
    if let Ok(r) = &reference {
        let held = r.logs.values().flat_map(|l| &l.events);
        watcher::write_events(&dir.join("events-log.jsonl"), held)?;
    }
    checks.extend(checker::events::all(
        &events,
        &watches,
        reference.as_ref().map_err(String::as_str),
    ));
    checks.push(match &reference {
        Ok(r) => match r.logs.get(workload::LEDGER_LOCATION) {
            Some(log) => checker::cep::matches(log, rules_version, judged),
            None => checker::Check::failed("cep-matches", "the final read has no ledger log"),
        },
        Err(why) => checker::Check::failed("cep-matches", &format!("no final read: {why}")),
    });

    let (ok, fail, info) = counts(&events);
    let valid = checks.iter().all(|c| c.valid);
    let summary = Summary {
        nemesis: name.to_string(),
        nodes: args.nodes,
        seed: args.seed,
        seconds: started.elapsed().as_secs_f64(),
        ok,
        fail,
        info,
        failover_ms: failovers(&events, &injections),
        injections,
        checks,
        watchers: watches.iter().map(WatcherSummary::of).collect(),
        events_read_ms,
        valid,
    };
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    println!(
        "== {name} ({} nodes, seed {}, {:.0}s): {ok} ok, {fail} fail, {info} unknown",
        args.nodes, args.seed, summary.seconds
    );
    for c in &summary.checks {
        println!(
            "   {:<20} {}  {}",
            c.name,
            if c.valid { "ok  " } else { "FAIL" },
            c.detail
        );
    }
    let times: Vec<String> = summary
        .failover_ms
        .iter()
        .map(|t| {
            t.map(|t| format!("{t} ms"))
                .unwrap_or_else(|| "none".into())
        })
        .collect();
    println!(
        "   failovers (fault to next acknowledged write): [{}]",
        times.join(", ")
    );
    println!(
        "   event streams: final read of the logs and watchers drained in {} ms",
        summary.events_read_ms
    );
    for w in &summary.watchers {
        println!(
            "   watcher {}: {} events, {} losses announced, {} failed polls{}{}",
            w.name,
            w.events,
            w.lost.len(),
            w.failed_polls,
            if w.drained { "" } else { ", NOT drained" },
            if w.failed_polls > 0 {
                format!(" (last: {})", w.last_error)
            } else {
                String::new()
            }
        );
    }
    cluster.destroy();
    Ok(valid)
}

/// Waits until the ledger location has no rule deadline pending (its
/// absences judged, by ticks if no traffic comes): `Ok(true)`; `Ok(false)`
/// if its log time is ahead of the clocks (a clock fault moved it: the
/// deadlines pass only when the clocks catch up); `Err` if neither came
/// within [`LIVENESS_BOUND`].
async fn absences_judged(client: &Client) -> Result<bool, String> {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < LIVENESS_BOUND {
        match client.location_rules(workload::LEDGER_LOCATION).await {
            Ok(r) => match r.next_deadline_ms {
                None => return Ok(true),
                Some(d) => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |t| t.as_millis() as u64);
                    if d > now + 10_000 {
                        return Ok(false);
                    }
                    last = format!("a deadline at log time {d} still pending at {now}");
                }
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("error,tarpc=off")
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(path) = &args.recheck {
        let check = checker::linearizability(&history::load(path)?);
        println!("{}: {}", check.name, check.detail);
        if !check.valid {
            std::process::exit(1);
        }
        return Ok(());
    }
    let names: Vec<&str> = if args.nemesis == "all" {
        nemesis::ALL
            .iter()
            .copied()
            .filter(|n| *n != "none")
            .collect()
    } else {
        vec![args.nemesis.as_str()]
    };
    // Leave nothing behind when interrupted.
    tokio::spawn(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("interrupted: removing the test network and nodes");
        Cluster::teardown();
        std::process::exit(130);
    });
    let mut all_valid = true;
    let mut failed = Vec::new();
    for name in &names {
        let dir = args
            .results
            .join(format!("{name}-n{}-s{}", args.nodes, args.seed));
        let valid = match run_one(&args, name, &dir).await {
            Ok(v) => v,
            Err(e) => {
                Cluster::teardown();
                eprintln!("{name}: the run itself failed: {e:#}");
                false
            }
        };
        if !valid {
            failed.push(*name);
        }
        all_valid &= valid;
    }
    Cluster::teardown();
    if args.expect_violation {
        if all_valid {
            anyhow::bail!(
                "expected the harness to find a violation in this build, and it found none"
            );
        }
        println!(
            "violation found, as expected for this build: {}",
            failed.join(", ")
        );
        return Ok(());
    }
    if !all_valid {
        anyhow::bail!("violations or failures in: {}", failed.join(", "));
    }
    println!("all {} runs valid", names.len());
    Ok(())
}
