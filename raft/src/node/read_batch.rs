//! Read-index rounds shared by concurrent linearizable reads.
//!
//! A leader answers a read-index request by confirming with a quorum that it
//! still leads (a heartbeat round) and returning its commit index. Done per
//! read, 64 concurrent readers cost 64 rounds. Here the reads of one group
//! that arrive while a round is under way wait for the *next* round, and all
//! of them share it: a round that started before a read arrived might have
//! read the commit index before a write the reader already saw acknowledged,
//! so a reader never joins one. At most one round per group runs at a time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::Error;
use crate::typ::GroupId;

/// Waiters of one group: those for the next round, and whether a round runs.
#[derive(Default)]
struct Waiters {
    next: Vec<oneshot::Sender<Result<u64, Error>>>,
    running: bool,
}

/// The read-index rounds of every group this node leads.
#[derive(Default)]
pub(crate) struct ReadBatcher {
    groups: Arc<Mutex<BTreeMap<GroupId, Waiters>>>,
}

impl ReadBatcher {
    /// The read index of `group` from a round that starts after this call;
    /// `round` runs one round (a quorum check) on `raft` (the group's Raft;
    /// anything cloneable in tests).
    pub(crate) async fn read_index<R, F, Fut>(
        &self,
        group: GroupId,
        raft: R,
        round: F,
    ) -> Result<u64, Error>
    where
        R: Clone + Send + 'static,
        F: Fn(R) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<u64, Error>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut groups = self.groups.lock().expect("read batcher");
            let waiters = groups.entry(group).or_default();
            waiters.next.push(tx);
            !std::mem::replace(&mut waiters.running, true)
        };
        if start {
            // A task drives rounds until nobody waits; the waiters of each
            // round are taken before it starts.
            let groups = self.groups.clone();
            tokio::spawn(async move {
                loop {
                    let batch = {
                        let mut groups = groups.lock().expect("read batcher");
                        let waiters = groups.entry(group).or_default();
                        if waiters.next.is_empty() {
                            groups.remove(&group);
                            return;
                        }
                        std::mem::take(&mut waiters.next)
                    };
                    let result = round(raft.clone()).await;
                    for waiter in batch {
                        let _ = waiter.send(result.clone());
                    }
                }
            });
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::Raft("read-index round abandoned".into())))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// A "commit index" that writes advance, and rounds that read it, then
    /// wait for the test to open the gate, counting themselves.
    #[derive(Clone)]
    struct Fake {
        commit: Arc<AtomicU64>,
        rounds: Arc<AtomicU64>,
        gate: tokio::sync::watch::Receiver<bool>,
    }

    async fn round(mut fake: Fake) -> Result<u64, Error> {
        fake.rounds.fetch_add(1, Ordering::SeqCst);
        let index = fake.commit.load(Ordering::SeqCst);
        fake.gate.wait_for(|open| *open).await.expect("gate");
        Ok(index)
    }

    /// The first read starts a round that stays open until every other
    /// read waits; those all share the next round and none joins the first,
    /// which read the commit index before their writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_reads_share_rounds_and_never_join_an_earlier_one() {
        const READS: u64 = 64;
        let batcher = Arc::new(ReadBatcher::default());
        let (open, gate) = tokio::sync::watch::channel(false);
        let fake = Fake {
            commit: Default::default(),
            rounds: Default::default(),
            gate,
        };
        let read = |batcher: Arc<ReadBatcher>, fake: Fake| async move {
            // A write acknowledged before the read starts...
            let seen = fake.commit.fetch_add(1, Ordering::SeqCst) + 1;
            let index = batcher.read_index(1, fake.clone(), round).await.unwrap();
            // ...must be covered by the read's index.
            assert!(index >= seen, "read index {index} misses write {seen}");
        };
        let mut readers = vec![tokio::spawn(read(batcher.clone(), fake.clone()))];
        let waiting = |n: usize| {
            let started = Instant::now();
            let batcher = batcher.clone();
            let fake = fake.clone();
            async move {
                loop {
                    let now = batcher
                        .groups
                        .lock()
                        .unwrap()
                        .get(&1)
                        .map_or(0, |w| w.next.len());
                    if now == n && fake.rounds.load(Ordering::SeqCst) == 1 {
                        return;
                    }
                    assert!(
                        started.elapsed() < Duration::from_secs(10),
                        "{now} waiting, not {n}"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        waiting(0).await;
        for _ in 1..READS {
            readers.push(tokio::spawn(read(batcher.clone(), fake.clone())));
        }
        waiting(READS as usize - 1).await;
        open.send(true).unwrap();
        for r in readers {
            r.await.unwrap();
        }
        assert_eq!(
            fake.rounds.load(Ordering::SeqCst),
            2,
            "one round, then one shared by the rest"
        );
        assert!(batcher.groups.lock().unwrap().is_empty());
    }
}
