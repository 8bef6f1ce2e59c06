//! `garrison bench`: load against a cluster, reported the way
//! `../shared/peerbench`'s etcd load generator reports, so the two compare
//! line for line (`bench/compare-etcd.sh`).
//!
//! - `--mode put` (default): C concurrent clients over L locations, every
//!   transaction signed by its player and verified by the cluster.
//! - `--mode get`: C clients, each logged in, reading its own entity
//!   linearizably (each first writes it once).
//! - `--mode failover`: one client writes every 5 ms to `bench-0`; after a
//!   second it kills the location's leader with SIGKILL (the pid file of a
//!   `garrison dev` node) and reports the time from the kill to the first
//!   acknowledged write.
//! - `--mode idle`: creates L locations (64 to an administrative
//!   transaction), waits until every node holds them all with a leader,
//!   then measures each `garrison dev` node's CPU and resident memory over
//!   D idle seconds (from `/proc`, via the nodes' pid files).
//!
//! With `--watchers N` (put mode), N more clients each follow every bench
//! location's events (a [`garrison_client::client::Subscription`] from the
//! start of the run) and report how many they received and their lag: from
//! the entry's log time (stamped by the leader when it proposed, on this
//! machine's clock) to delivery.
//!
//! Progress is printed each second; then operations/s and latency percentiles.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use garrison_client::api::ReadMode;
use garrison_client::policy::AdminOp;
use garrison_client::{Client, Keypair, Op, Outcome, Player, Value};

use super::admin::default_admin_key;
use super::{connect, home, Cli};

/// What the benchmark does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Signed transactions (a Put of two fields).
    Put,
    /// Linearizable reads of one entity.
    Get,
    /// Leader kill -9 to the first acknowledged write.
    Failover,
    /// CPU and memory of the nodes holding many idle locations.
    Idle,
    /// Apply in this process, with no rules, `--rules`, and ten copies of
    /// them: what the complex event processor costs per event.
    Apply,
}

/// Arguments of `garrison bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Put)]
    pub mode: Mode,
    /// Concurrent clients, each its own player.
    #[arg(long, short, default_value_t = 64)]
    pub clients: u32,
    /// Locations the clients spread over (bench-0, bench-1, ...).
    #[arg(long, short, default_value_t = 16)]
    pub locations: u32,
    /// Run for this many seconds...
    #[arg(long, short, default_value_t = 10)]
    pub duration: u64,
    /// ...or stop after this many operations in all.
    #[arg(long)]
    pub count: Option<u64>,
    /// Bytes of payload per transaction (a string field).
    #[arg(long, default_value_t = 200)]
    pub value_size: usize,
    /// The admin key that creates the bench locations (default: the dev
    /// cluster's).
    #[arg(long)]
    pub admin_key: Option<PathBuf>,
    /// With `--mode put`: this many more clients follow every bench
    /// location's events meanwhile, and their lag is reported.
    #[arg(long, default_value_t = 0)]
    pub watchers: u32,
    /// With `--watchers`: only the events of these types (created, changed,
    /// deleted, emitted, committed, rejected; default: all).
    #[arg(long)]
    pub watch_kind: Vec<String>,
    /// With `--watchers`: how long a watcher's poll that has found events
    /// waits for more, in milliseconds (0: it answers at once).
    #[arg(long, default_value_t = 0)]
    pub watch_linger_ms: u64,
    /// Rule files to deploy before the run (`--mode put`), or to measure
    /// apply with (`--mode apply`).
    #[arg(long, num_args = 1..)]
    pub rules: Vec<PathBuf>,
    /// Plugin modules (WAT or .wasm) to deploy before the run, each
    /// subscribed to every event (`--mode put`), or to measure (`--mode
    /// apply`: one call on a sample event, and apply with each).
    #[arg(long, num_args = 1..)]
    pub plugins: Vec<PathBuf>,
    /// With `--mode failover` or `idle`: the `garrison dev` directory whose
    /// `node-N/pid` files name the processes (default: $GARRISON_HOME/dev).
    #[arg(long)]
    pub dev_dir: Option<PathBuf>,
}

/// Latency percentile `p` (0..=100) of sorted microsecond samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Counters shared by the workers and the progress printer.
#[derive(Default)]
struct Tally {
    done: AtomicU64,
    failed: AtomicU64,
}

/// Runs the benchmark.
pub async fn run(cli: &Cli, args: &BenchArgs) -> anyhow::Result<i32> {
    if args.clients == 0 || args.locations == 0 {
        bail!("--clients and --locations must be positive");
    }
    if args.mode == Mode::Apply {
        let count = args.count.unwrap_or(20_000);
        #[cfg(feature = "plugins")]
        if !args.plugins.is_empty() {
            return super::apply_bench::plugins(
                &args.plugins,
                args.clients,
                count,
                args.value_size,
            );
        }
        return super::apply_bench::run(&args.rules, args.clients, count, args.value_size);
    }
    let client = Arc::new(connect(cli).await?);
    let admin_key = args.admin_key.clone().unwrap_or_else(default_admin_key);
    let mut admin = Player::new(
        Keypair::load(&admin_key).context("the bench creates its locations with an admin key")?,
    );
    if args.mode == Mode::Idle {
        let dir = args.dev_dir.clone().unwrap_or_else(|| home().join("dev"));
        return idle(&client, &mut admin, args, &dir).await;
    }
    for l in 0..args.locations {
        admin
            .create_location(&client, &format!("bench-{l}"))
            .await
            .context("creating the bench locations")?;
    }
    if args.mode == Mode::Failover {
        let dir = args.dev_dir.clone().unwrap_or_else(|| home().join("dev"));
        return failover(&client, &dir).await;
    }
    for file in &args.rules {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let rule = crate::cep::lang::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let op = AdminOp::DeployRule {
            text: rule.to_string(),
        };
        let receipt = admin.admin(&client, vec![op]).await?;
        if !matches!(receipt.outcome, Outcome::Committed { .. }) {
            bail!("deploying {}: {:?}", file.display(), receipt.outcome);
        }
    }
    if !args.rules.is_empty() {
        println!("deployed {} rules", args.rules.len());
    }
    for file in &args.plugins {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("bench")
            .to_string();
        let spec = garrison_client::plugins::PluginSpec::new(
            &name,
            super::plugin::module_bytes(file)?,
            "game_master",
        );
        let receipt = admin
            .admin(&client, vec![AdminOp::DeployPlugin { spec }])
            .await?;
        if !matches!(receipt.outcome, Outcome::Committed { .. }) {
            bail!("deploying {}: {:?}", file.display(), receipt.outcome);
        }
    }
    if !args.plugins.is_empty() {
        println!(
            "deployed {} plugins, each on every event",
            args.plugins.len()
        );
    }
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let value = "x".repeat(args.value_size);
    let endpoints = super::endpoints(cli)?;
    let options = super::client_options(cli)?;
    let mut workers = Vec::new();
    for c in 0..args.clients {
        let (endpoints, options) = (endpoints.clone(), options.clone());
        let (tally, value, mode, count) = (tally.clone(), value.clone(), args.mode, args.count);
        let location = format!("bench-{}", c % args.locations);
        let shared = client.clone();
        workers.push(tokio::spawn(async move {
            // Readers need a session of their own; writers share one client.
            let mut player = Player::new(Keypair::generate());
            let own;
            let client: &Client = if mode == Mode::Get {
                own = Client::connect_with(&endpoints, options).await?;
                own.login(player.key()).await?;
                &own
            } else {
                &shared
            };
            // Named after the player, so a later run's clients (new keys)
            // do not meet entities an earlier run's players own.
            let entity = format!("unit/{}", hex::encode(&player.key().public()[..8]));
            let put = |n: i64| Op::Put {
                entity: entity.clone(),
                fields: vec![
                    ("n".into(), Value::Int(n)),
                    ("payload".into(), Value::Str(value.clone())),
                ],
            };
            if mode == Mode::Get {
                player.transact(client, &location, vec![put(0)]).await?;
            }
            let mut latencies = Vec::new();
            let mut n: i64 = 0;
            loop {
                if Instant::now() >= deadline && count.is_none() {
                    break;
                }
                if let Some(limit) = count {
                    if tally.done.fetch_add(1, Ordering::Relaxed) >= limit {
                        break;
                    }
                }
                n += 1;
                let t0 = Instant::now();
                let ok = match mode {
                    Mode::Get => client
                        .get_entity(&location, &entity, ReadMode::Linearizable)
                        .await
                        .is_ok_and(|r| r.entity.is_some()),
                    _ => matches!(
                        player.transact(client, &location, vec![put(n)]).await,
                        Ok(r) if matches!(r.outcome, Outcome::Committed { .. })
                    ),
                };
                if ok {
                    latencies.push(t0.elapsed().as_micros() as u64);
                    if count.is_none() {
                        tally.done.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let watchers = spawn_watchers(args, &endpoints, &options, deadline).await?;
    let progress = tokio::spawn(print_progress(tally.clone(), started));
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await??);
    }
    progress.abort();
    report_watchers(watchers).await?;
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let what = match args.mode {
        Mode::Get => "linearizable reads",
        _ => "signed transactions",
    };
    println!(
        "{} clients, {} locations: {} {what} in {elapsed:.1}s = {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} failed",
        args.clients,
        args.locations,
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 50.0) as f64 / 1000.0,
        percentile(&latencies, 99.0) as f64 / 1000.0,
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
        tally.failed.load(Ordering::Relaxed),
    );
    // The same line peerbench's etcdload prints, for bench/compare-etcd.sh.
    println!(
        "RESULT label=garrison mode={:?} clients={} locations={} ops={} errs={} secs={elapsed:.2} ops_per_s={:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
        args.mode,
        args.clients,
        args.locations,
        latencies.len(),
        tally.failed.load(Ordering::Relaxed),
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 50.0) as f64 / 1000.0,
        percentile(&latencies, 99.0) as f64 / 1000.0,
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    Ok(0)
}

/// What one watcher saw: events received, and each commit's lag in
/// microseconds.
/// What one watcher saw: events, polls, and each commit's lag in µs.
type Watched = (u64, u64, Vec<u64>);

/// Starts `--watchers` followers of every bench location, each with its
/// own connection and session, from the events applied after now, until
/// `deadline`.
async fn spawn_watchers(
    args: &BenchArgs,
    endpoints: &[String],
    options: &garrison_client::ClientOptions,
    deadline: Instant,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<Watched>>>> {
    use garrison_client::events::{EventFilter, EventType, StartAt};
    let types = args
        .watch_kind
        .iter()
        .map(|k| k.parse::<EventType>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut handles = Vec::new();
    for _ in 0..args.watchers {
        let client = Client::connect_with(endpoints, options.clone()).await?;
        client.login(&Keypair::generate()).await?;
        let places: Vec<(String, StartAt)> = (0..args.locations)
            .map(|l| (format!("bench-{l}"), StartAt::Latest))
            .collect();
        let filter = EventFilter {
            types: types.clone(),
            ..Default::default()
        };
        let linger_ms = args.watch_linger_ms;
        handles.push(tokio::spawn(async move {
            let mut subscription = client.subscribe(places, filter);
            subscription.wait_ms = 500;
            subscription.linger_ms = linger_ms;
            let (mut received, mut polls, mut lags) = (0u64, 0u64, Vec::new());
            while Instant::now() < deadline {
                subscription.poll().await?;
                polls += 1;
                let now_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64);
                while let Some(e) = subscription.next_buffered() {
                    received += 1;
                    if e.body.event_type() == EventType::Committed {
                        lags.push(now_us.saturating_sub(e.log_time_ms * 1000));
                    }
                }
            }
            anyhow::Ok((received, polls, lags))
        }));
    }
    Ok(handles)
}

/// Prints what the watchers received and their lag percentiles.
async fn report_watchers(
    watchers: Vec<tokio::task::JoinHandle<anyhow::Result<Watched>>>,
) -> anyhow::Result<()> {
    if watchers.is_empty() {
        return Ok(());
    }
    let n = watchers.len();
    let (mut received, mut polls, mut lags) = (0, 0, Vec::new());
    for w in watchers {
        let (r, p, l) = w.await??;
        received += r;
        polls += p;
        lags.extend(l);
    }
    lags.sort_unstable();
    println!(
        "{n} watchers: {received} events received in {polls} polls, {} commits; lag from log time p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lags.len(),
        percentile(&lags, 50.0) as f64 / 1000.0,
        percentile(&lags, 99.0) as f64 / 1000.0,
        lags.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    Ok(())
}

async fn print_progress(tally: Arc<Tally>, started: Instant) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = tally.done.load(Ordering::Relaxed);
        eprintln!(
            "  {:>5.1}s  {now:>8} ops  {:>7} ops/s  {} failed",
            started.elapsed().as_secs_f64(),
            now - last,
            tally.failed.load(Ordering::Relaxed)
        );
        last = now;
    }
}

/// The pid of `garrison dev` node `node`, from its pid file in `dev_dir`.
fn dev_pid(dev_dir: &Path, node: u64) -> anyhow::Result<i32> {
    let pid_file = dev_dir.join(format!("node-{node}/pid"));
    std::fs::read_to_string(&pid_file)
        .with_context(|| format!("cannot read {}", pid_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", pid_file.display()))
}

/// CPU seconds (user and system) a process has used, and its resident
/// memory in bytes, from `/proc`.
fn cpu_and_rss(pid: i32) -> anyhow::Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| -> u64 { fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0) };
    // SAFETY: sysconf with a valid name has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    // utime and stime are fields 14 and 15 of stat, rss field 24 (pages).
    let cpu = (ticks(11) + ticks(12)) as f64 / hz;
    Ok((cpu, ticks(21) * page))
}

/// Creates `--locations` locations, waits for every node to hold them
/// with a leader, then measures the nodes over `--duration` idle seconds.
async fn idle(
    client: &Client,
    admin: &mut Player,
    args: &BenchArgs,
    dev_dir: &Path,
) -> anyhow::Result<i32> {
    let created = Instant::now();
    let names: Vec<String> = (0..args.locations).map(|l| format!("idle-{l}")).collect();
    for batch in names.chunks(garrison_client::tx::MAX_OPS_PER_TRANSACTION) {
        let ops: Vec<AdminOp> = batch
            .iter()
            .map(|name| AdminOp::CreateLocation { name: name.clone() })
            .collect();
        // A busy cluster may not answer in time: the player resubmits the
        // same transaction (exactly once) before it signs another.
        let mut tries = 0;
        let receipt = loop {
            match admin.admin(client, ops.clone()).await {
                Ok(receipt) => break receipt,
                Err(e) if e.outcome_unknown() && tries < 30 => {
                    tries += 1;
                    eprintln!("  creating {}..: {e}; trying again", batch[0]);
                }
                Err(e) => return Err(e.into()),
            }
        };
        if !matches!(receipt.outcome, Outcome::Committed { .. }) {
            bail!("creating locations was refused: {:?}", receipt.outcome);
        }
        eprintln!(
            "  {:>6.1}s  created up to {}",
            created.elapsed().as_secs_f64(),
            batch[batch.len() - 1]
        );
    }
    let status = client.status().await?;
    let wanted = args.locations as usize;
    loop {
        let mut ready = 0;
        for addr in status.api_addrs.values() {
            let s = client.status_of(addr).await?;
            let led = s
                .groups
                .iter()
                .filter(|g| g.location.as_ref().is_some_and(|l| l.starts_with("idle-")))
                .filter(|g| g.leader.is_some())
                .count();
            ready += usize::from(led >= wanted);
        }
        if ready == status.api_addrs.len() {
            break;
        }
        if created.elapsed() > Duration::from_secs(3600) {
            bail!("the nodes did not all hold {wanted} locations with leaders within an hour");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let create_s = created.elapsed().as_secs_f64();
    println!("{wanted} locations held by every node with a leader after {create_s:.1}s");
    let pids: Vec<(u64, i32)> = status
        .api_addrs
        .keys()
        .map(|node| Ok((*node, dev_pid(dev_dir, *node)?)))
        .collect::<anyhow::Result<_>>()?;
    let before: Vec<(f64, u64)> = pids
        .iter()
        .map(|(_, pid)| cpu_and_rss(*pid))
        .collect::<anyhow::Result<_>>()?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let secs = t0.elapsed().as_secs_f64();
    let (mut max_cpu, mut max_rss) = (0.0f64, 0u64);
    for ((node, pid), (cpu0, _)) in pids.iter().zip(before) {
        let (cpu1, rss) = cpu_and_rss(*pid)?;
        let pct = (cpu1 - cpu0) / secs * 100.0;
        println!(
            "node {node} (pid {pid}): {pct:.1}% of one core, {:.0} MiB resident",
            rss as f64 / (1 << 20) as f64
        );
        max_cpu = max_cpu.max(pct);
        max_rss = max_rss.max(rss);
    }
    println!(
        "RESULT label=garrison mode=idle locations={wanted} create_secs={create_s:.1} secs={secs:.1} max_cpu_pct={max_cpu:.1} max_rss_mib={:.0}",
        max_rss as f64 / (1 << 20) as f64
    );
    Ok(0)
}

/// Probes `bench-0` with a write every 5 ms, kills its leader, and reports
/// the time from the kill to the first acknowledged write.
async fn failover(client: &Client, dev_dir: &Path) -> anyhow::Result<i32> {
    const LOCATION: &str = "bench-0";
    let mut player = Player::new(Keypair::generate());
    let probe = format!("probe/{}", hex::encode(&player.key().public()[..8]));
    let write = |n: i64| {
        vec![Op::Put {
            entity: probe.clone(),
            fields: vec![("n".into(), Value::Int(n))],
        }]
    };
    let first = player.transact(client, LOCATION, write(0)).await?;
    if !matches!(first.outcome, Outcome::Committed { .. }) {
        bail!("the probe write was refused: {:?}", first.outcome);
    }
    let leader_addr = client.find_leader(LOCATION).await?;
    let status = client.status().await?;
    let (node, _) = status
        .api_addrs
        .iter()
        .find(|(_, addr)| **addr == leader_addr)
        .with_context(|| format!("no node serves {leader_addr}"))?;
    let pid = dev_pid(dev_dir, *node)?;
    // Warm: writes flowing every 5 ms for a second before the kill.
    let warm_until = Instant::now() + Duration::from_secs(1);
    let mut n = 1;
    while Instant::now() < warm_until {
        player.transact(client, LOCATION, write(n)).await?;
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = Instant::now();
    // SAFETY: kill(2) with a pid read from the dev cluster's pid file.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!("kill -9 {pid} failed: {}", std::io::Error::last_os_error());
    }
    let mut last = String::new();
    loop {
        n += 1;
        match player.transact(client, LOCATION, write(n)).await {
            Ok(r) if matches!(r.outcome, Outcome::Committed { .. }) => break,
            _ if killed.elapsed() > Duration::from_secs(30) => {
                bail!("no write acknowledged within 30 s of the kill; the last answer: {last}")
            }
            Ok(r) => last = format!("{:?}", r.outcome),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ms = killed.elapsed().as_secs_f64() * 1000.0;
    println!(
        "failover: killed node {node} (pid {pid}, leader of {LOCATION}); first acknowledged write {ms:.0} ms after the kill"
    );
    println!("RESULT label=garrison mode=failover killed_node={node} killed_pid={pid} first_write_ms={ms:.1}");
    Ok(0)
}
