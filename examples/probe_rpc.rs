//! The floor of one client call: what a tarpc request and its answer cost
//! over loopback TCP with garrison's framing and encoding, and nothing else.
//!
//! A server and a client, each on a runtime of its own (two worker threads,
//! as a node and the load generator have on two cores); `CALLERS` tasks
//! spread over `CONNECTIONS` connections call in a loop for `SECONDS`. The
//! server's method only echoes a byte count. Prints the calls per second
//! and the CPU time this process spent per call (both sides together, user
//! and kernel).
//!
//!     cargo run --release --example probe_rpc -- [CALLERS] [SECONDS] [BYTES] [CONNECTIONS]
//!
//! `docs/performance.md` uses it to bound what the read and write targets
//! leave for everything else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tarpc::server::{BaseChannel, Channel};
use tarpc::{context, serde_transport};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

#[tarpc::service]
trait Probe {
    /// Answers the length of what it was sent.
    async fn echo(payload: Vec<u8>) -> u64;
}

#[derive(Clone)]
struct Server;

impl Probe for Server {
    async fn echo(self, _: context::Context, payload: Vec<u8>) -> u64 {
        payload.len() as u64
    }
}

const MAX_FRAME_BYTES: usize = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given and nothing else.
    let usage = unsafe {
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn main() -> anyhow::Result<()> {
    let arg = |i: usize, default: u64| -> anyhow::Result<u64> {
        std::env::args()
            .nth(i)
            .map_or(Ok(default), |a| a.parse().map_err(Into::into))
    };
    let (callers, seconds, bytes) = (arg(1, 64)?, arg(2, 8)?, arg(3, 200)?);
    let connections = arg(4, 1)?.clamp(1, callers.max(1));

    let server_rt = runtime();
    let listener = server_rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    server_rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            stream.set_nodelay(true).expect("nodelay");
            let framed = Framed::new(stream, garrison_wire::frame_codec(MAX_FRAME_BYTES));
            let transport = serde_transport::new(framed, garrison_wire::Bincode2::default());
            let channel = BaseChannel::with_defaults(transport);
            tokio::spawn(
                channel
                    .execute(Server.serve())
                    .for_each(|call| async { drop(tokio::spawn(call)) }),
            );
        }
    });

    let client_rt = runtime();
    let calls = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (per_second, cpu_per_call) = client_rt.block_on(async {
        let mut clients = Vec::new();
        for _ in 0..connections {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let framed = Framed::new(stream, garrison_wire::frame_codec(MAX_FRAME_BYTES));
            let transport = serde_transport::new(framed, garrison_wire::Bincode2::default());
            clients.push(ProbeClient::new(tarpc::client::Config::default(), transport).spawn());
        }
        let mut tasks = Vec::new();
        for i in 0..callers {
            let client = clients[i as usize % clients.len()].clone();
            let (calls, stop) = (calls.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let payload = vec![7u8; bytes as usize];
                while !stop.load(Ordering::Relaxed) {
                    let answer = client.echo(context::current(), payload.clone()).await?;
                    anyhow::ensure!(answer == bytes, "echo answered {answer}, not {bytes}");
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            }));
        }
        // One second to warm up, then the measured window.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (calls0, cpu0, t0) = (calls.load(Ordering::Relaxed), cpu_time(), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (calls1, cpu1, elapsed) = (calls.load(Ordering::Relaxed), cpu_time(), t0.elapsed());
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.await??;
        }
        let n = (calls1 - calls0).max(1) as f64;
        anyhow::Ok((
            n / elapsed.as_secs_f64(),
            (cpu1 - cpu0).as_secs_f64() * 1e6 / n,
        ))
    })?;
    println!(
        "RESULT probe=rpc callers={callers} connections={connections} bytes={bytes} calls_per_s={per_second:.0} \
         cpu_us_per_call={cpu_per_call:.1}"
    );
    Ok(())
}
