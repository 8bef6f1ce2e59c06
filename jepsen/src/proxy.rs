//! A userspace TCP proxy for the `slow-links` nemesis (kernel netem is not
//! available here). When a run uses it, every peer connection from node i
//! to node j is redirected (iptables DNAT inside node i's namespace) to a
//! proxy on the host, which forwards it to node j and, when told to,
//! delays every chunk, stalls the link, or resets its connections.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What a link does to the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Forward at once.
    Normal,
    /// Hold each chunk this long before forwarding it.
    Delay(Duration),
    /// Forward nothing until the mode changes.
    Stall,
    /// Close every connection, and each new one at once.
    Reset,
}

/// The proxies of one run, by (from node, to node).
#[derive(Default)]
pub struct Links {
    modes: Mutex<BTreeMap<(u64, u64), watch::Sender<LinkMode>>>,
}

/// The host port of the proxy for the link from `from` to `to`.
pub fn port(from: u64, to: u64) -> u16 {
    9000 + (from * 10 + to) as u16
}

impl Links {
    /// Starts the proxy for `from` → `to`, listening on `listen` and
    /// forwarding to `upstream`.
    pub async fn start(
        self: &Arc<Self>,
        from: u64,
        to: u64,
        listen: String,
        upstream: String,
    ) -> anyhow::Result<()> {
        let listener = TcpListener::bind(&listen).await?;
        let (tx, rx) = watch::channel(LinkMode::Normal);
        self.modes.lock().unwrap().insert((from, to), tx);
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (upstream, rx) = (upstream.clone(), rx.clone());
                tokio::spawn(async move {
                    if *rx.borrow() == LinkMode::Reset {
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::select! {
                        _ = pump(ri, wo, rx.clone()) => {}
                        _ = pump(ro, wi, rx) => {}
                    }
                });
            }
        });
        Ok(())
    }

    /// Sets the mode of the link `from` → `to`.
    pub fn set(&self, from: u64, to: u64, mode: LinkMode) {
        if let Some(tx) = self.modes.lock().unwrap().get(&(from, to)) {
            let _ = tx.send(mode);
        }
    }

    /// Every link back to normal.
    pub fn heal(&self) {
        for tx in self.modes.lock().unwrap().values() {
            let _ = tx.send(LinkMode::Normal);
        }
    }
}

/// Copies one direction, obeying the link's mode.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<LinkMode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let current = *mode.borrow();
            match current {
                LinkMode::Normal => break,
                LinkMode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                LinkMode::Stall => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                LinkMode::Reset => return,
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
