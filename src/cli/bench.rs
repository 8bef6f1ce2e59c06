//! `garrison bench`: C concurrent clients over L locations, every
//! transaction signed by its player and verified by the cluster; prints
//! progress each second, then transactions/s and latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use garrison_client::{Keypair, Op, Outcome, Player, Value};

use super::admin::default_admin_key;
use super::{connect, Cli};

/// Arguments of `garrison bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent clients, each its own player.
    #[arg(long, short, default_value_t = 64)]
    pub clients: u32,
    /// Locations the clients spread over (bench-0, bench-1, ...).
    #[arg(long, short, default_value_t = 16)]
    pub locations: u32,
    /// Run for this many seconds...
    #[arg(long, short, default_value_t = 10)]
    pub duration: u64,
    /// ...or stop after this many transactions in all.
    #[arg(long)]
    pub count: Option<u64>,
    /// Bytes of payload per transaction (a string field).
    #[arg(long, default_value_t = 200)]
    pub value_size: usize,
    /// The admin key that creates the bench locations (default: the dev
    /// cluster's).
    #[arg(long)]
    pub admin_key: Option<std::path::PathBuf>,
}

/// Latency percentile `p` (0..=100) of sorted microsecond samples.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs the benchmark.
pub async fn run(cli: &Cli, args: &BenchArgs) -> anyhow::Result<i32> {
    if args.clients == 0 || args.locations == 0 {
        bail!("--clients and --locations must be positive");
    }
    let client = Arc::new(connect(cli).await?);
    let admin_key = args.admin_key.clone().unwrap_or_else(default_admin_key);
    let mut admin = Player::new(
        Keypair::load(&admin_key).context("the bench creates its locations with an admin key")?,
    );
    for l in 0..args.locations {
        admin
            .create_location(&client, &format!("bench-{l}"))
            .await
            .context("creating the bench locations")?;
    }
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let value = "x".repeat(args.value_size);
    let mut workers = Vec::new();
    for c in 0..args.clients {
        let (client, done, failed, value) =
            (client.clone(), done.clone(), failed.clone(), value.clone());
        let location = format!("bench-{}", c % args.locations);
        let count = args.count;
        workers.push(tokio::spawn(async move {
            let mut player = Player::new(Keypair::generate());
            let mut latencies = Vec::new();
            let mut n: i64 = 0;
            loop {
                if Instant::now() >= deadline && count.is_none() {
                    break;
                }
                if let Some(limit) = count {
                    if done.fetch_add(1, Ordering::Relaxed) >= limit {
                        break;
                    }
                }
                n += 1;
                let op = Op::Put {
                    entity: format!("unit/{c}"),
                    fields: vec![
                        ("n".into(), Value::Int(n)),
                        ("payload".into(), Value::Str(value.clone())),
                    ],
                };
                let t0 = Instant::now();
                match player.transact(&client, &location, vec![op]).await {
                    Ok(r) if matches!(r.outcome, Outcome::Committed { .. }) => {
                        latencies.push(t0.elapsed().as_micros() as u64);
                        if count.is_none() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let progress = {
        let (done, failed) = (done.clone(), failed.clone());
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>5.1}s  {now:>8} tx  {:>7} tx/s  {} failed",
                    started.elapsed().as_secs_f64(),
                    now - last,
                    failed.load(Ordering::Relaxed)
                );
                last = now;
            }
        })
    };
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await?);
    }
    progress.abort();
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let ok = latencies.len() as f64;
    println!(
        "{} clients, {} locations: {} signed transactions in {elapsed:.1}s = {:.0} tx/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} failed",
        args.clients,
        args.locations,
        latencies.len(),
        ok / elapsed,
        percentile(&latencies, 50.0) as f64 / 1000.0,
        percentile(&latencies, 99.0) as f64 / 1000.0,
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
        failed.load(Ordering::Relaxed),
    );
    Ok(0)
}
