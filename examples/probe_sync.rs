//! What one durable append costs on this disk: write `BYTES` at the end of
//! a file and `fdatasync` it, `COUNT` times, as the log engine's flush
//! thread does for each batch. Prints the median and the 90th percentile.
//!
//!     cargo run --release --example probe_sync -- DIR [COUNT] [BYTES]
//!
//! `docs/performance.md` uses it to bound one-client latency: a write waits
//! for two of these in series (the leader's, then a follower's).

use std::io::Write;
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: DIR [COUNT] [BYTES]"))?;
    let count: usize = args.next().map_or(Ok(3000), |a| a.parse())?;
    let bytes: usize = args.next().map_or(Ok(300), |a| a.parse())?;
    anyhow::ensure!(count > 0, "COUNT must be positive");
    let file = tempfile::tempfile_in(&dir)?;
    let frame = vec![0x5a; bytes];
    let mut took: Vec<Duration> = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        (&file).write_all(&frame)?;
        file.sync_data()?;
        took.push(started.elapsed());
    }
    took.sort();
    let at = |q: usize| took[(took.len() * q / 100).min(took.len() - 1)].as_secs_f64() * 1e6;
    println!(
        "RESULT probe=sync dir={dir} count={count} bytes={bytes} p50_us={:.0} p90_us={:.0}",
        at(50),
        at(90)
    );
    Ok(())
}
