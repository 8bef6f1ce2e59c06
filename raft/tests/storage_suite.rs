//! The log and state-machine stores keep openraft's storage contract, and the
//! durability rules garrison adds to it.

mod common;

use common::RecordApp;
use garrison_raft::storage::{LogStore, StateMachineStore, Storage};
use garrison_raft::typ::{StorageError, TypeConfig};
use openraft::storage::RaftLogStorage;
use openraft::testing::{StoreBuilder, Suite};

struct DiskBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for DiskBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let storage = Storage::open(dir.path(), 64 << 20).expect("sled opens");
        // A group id other than 0 checks that keys are really prefixed.
        // Without `after_snapshots`: the suite purges logs that no
        // snapshot covers (the tests below check that wait).
        let log = storage.log_store(42);
        let sm = StateMachineStore::open(&storage, 42, Box::new(RecordApp::default()))
            .expect("state machine opens");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(DiskBuilder).expect("openraft's storage suite");
}

#[tokio::test(flavor = "current_thread")]
async fn flushes_requested_together_share_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), 64 << 20).unwrap();
    let before = storage.flush_stats();
    let callers = 64u64;
    // On a current-thread runtime every caller queues its request before the
    // flusher task gets to run, so they ride on one flush (two if the
    // flusher woke between two of them).
    let results = futures::future::join_all((0..callers).map(|_| storage.flush())).await;
    assert!(results.iter().all(|r| r.is_ok()));
    let stats = storage.flush_stats();
    assert_eq!(stats.waiters - before.waiters, callers);
    let flushes = stats.flushes - before.flushes;
    assert!(flushes <= 2, "{flushes} flushes for {callers} callers");
}

/// Set in the child process of the crash test: the database directory.
const CRASH_CHILD_DIR: &str = "GARRISON_TEST_CRASH_CHILD_DIR";

/// Runs the test `name` in a child process with [`CRASH_CHILD_DIR`] set to
/// a new directory, which it returns; the child must abort.
fn run_aborting_child(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have aborted");
    dir
}

/// A vote that `save_vote` reported saved is on disk even if the process dies
/// the next instant without closing the database (no destructor, no sled
/// shutdown flush): the child aborts right after saving, the parent reads.
#[test]
fn a_saved_vote_survives_an_abort_of_the_process() {
    let vote = openraft::Vote::new(7, 3);
    if let Ok(dir) = std::env::var(CRASH_CHILD_DIR) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let storage = Storage::open(std::path::Path::new(&dir), 64 << 20).unwrap();
            storage.log_store(9).save_vote(&vote).await.unwrap();
        });
        std::process::abort();
    }
    let dir = run_aborting_child("a_saved_vote_survives_an_abort_of_the_process");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let storage = Storage::open(dir.path(), 64 << 20).unwrap();
        assert_eq!(storage.log_store(9).read_vote().await.unwrap(), Some(vote));
    });
}

/// A node that led its group before a restart does not resume leadership:
/// its committed vote for itself reads back as not committed (so it must
/// win a new term, whose first entry commits everything before it), while
/// a vote for another leader reads back as saved.
#[tokio::test]
async fn a_restarted_leader_must_be_elected_again() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), 64 << 20).unwrap();
    let mut mine = storage.log_store(1).for_node(3);
    let mut committed = openraft::Vote::new(5, 3);
    committed.commit();
    mine.save_vote(&committed).await.unwrap();
    assert_eq!(
        mine.read_vote().await.unwrap(),
        Some(openraft::Vote::new(5, 3))
    );
    let mut other = storage.log_store(2).for_node(1);
    other.save_vote(&committed).await.unwrap();
    assert_eq!(other.read_vote().await.unwrap(), Some(committed));
}

/// A crash inside `remove_group` (its record is deleted first) leaves the
/// group's Raft log behind; the next start forgets it, and nothing else:
/// not a recorded group's, not the meta group's.
#[tokio::test]
async fn the_log_of_a_group_without_a_record_is_forgotten() {
    use garrison_raft::storage::GroupRecord;
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), 64 << 20).unwrap();
    let kept = GroupRecord::Location {
        name: "hill".into(),
    };
    storage.add_group(7, &kept).await.unwrap();
    for group in [0, 7, 8] {
        storage
            .log_store(group)
            .save_vote(&openraft::Vote::new(1, 1))
            .await
            .unwrap();
    }
    assert_eq!(storage.engine().groups(), vec![0, 7, 8]);
    assert_eq!(storage.forget_unrecorded().await.unwrap(), vec![8]);
    assert_eq!(storage.engine().groups(), vec![0, 7]);
    assert_eq!(
        storage.forget_unrecorded().await.unwrap(),
        Vec::<u64>::new()
    );
}

/// A snapshot of group 1 after `n` entries, as a leader would send it.
async fn snapshot_after(storage: &Storage, n: u64) -> garrison_raft::typ::Snapshot {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    let mut source = StateMachineStore::open(storage, 1, Box::new(RecordApp::default())).unwrap();
    let entries = (1..=n).map(|i| openraft::Entry::<TypeConfig> {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
        payload: openraft::EntryPayload::Normal(garrison_raft::typ::Proposal {
            log_time_ms: i,
            payload: vec![i as u8],
        }),
    });
    source.apply(entries).await.unwrap();
    source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap()
}

/// Group 2 of a new store, with a purge up to a snapshot of 5 entries
/// already running (as openraft's core runs it) and the snapshot not yet
/// installed; the state machine returned is the copy the node keeps,
/// [`StateMachineStore::for_raft`] gives openraft's task its own.
async fn purge_ahead_of_install() -> (
    tempfile::TempDir,
    Storage,
    garrison_raft::typ::Snapshot,
    StateMachineStore,
    tokio::task::JoinHandle<Result<(), StorageError>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(dir.path(), 64 << 20).unwrap();
    let snapshot = snapshot_after(&storage, 5).await;
    let upto = snapshot.meta.last_log_id.unwrap();
    let sm = StateMachineStore::open(&storage, 2, Box::new(RecordApp::default())).unwrap();
    let mut log = storage.log_store(2).after_snapshots(sm.snapshot_mark());
    let purge = tokio::spawn(async move { log.purge(upto).await });
    (dir, storage, snapshot, sm, purge)
}

/// The error of a purge that must fail soon.
async fn purge_error(purge: tokio::task::JoinHandle<Result<(), StorageError>>) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(60), purge)
        .await
        .expect("the purge is not left waiting")
        .unwrap()
        .expect_err("nothing covers the purge")
        .to_string()
}

/// openraft 0.9 purges the log right after handing an installed snapshot
/// to the state machine task, before that task has saved it: the purge
/// must wait for the save.
#[tokio::test(flavor = "current_thread")]
async fn a_purge_waits_for_the_snapshot_that_covers_it() {
    use openraft::storage::RaftStateMachine;
    let (_dir, storage, snapshot, mut sm, purge) = purge_ahead_of_install().await;
    let upto = snapshot.meta.last_log_id.unwrap();
    // On this single-threaded runtime the purge runs whenever this task
    // yields; it must stay parked until the snapshot is saved.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert!(!purge.is_finished(), "the purge overtook the snapshot");
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(60), purge)
        .await
        .expect("the purge goes on once the snapshot is saved")
        .unwrap()
        .unwrap();
    // A purge the stored snapshot already covers does not wait, also for
    // a store opened on it later (openraft purges at start-up when the
    // log ends before the snapshot).
    let reopened = StateMachineStore::open(&storage, 2, Box::new(RecordApp::default())).unwrap();
    let mut log = storage
        .log_store(2)
        .after_snapshots(reopened.snapshot_mark());
    tokio::time::timeout(std::time::Duration::from_secs(60), log.purge(upto))
        .await
        .unwrap()
        .unwrap();
}

/// The same race, then `abort()` at the first moment the purge could be
/// on disk: the reopened group's stored snapshot still covers its log's
/// purge mark, so the group can be rebuilt.
#[test]
fn a_crash_after_the_purge_of_an_installed_snapshot_keeps_the_snapshot() {
    use openraft::storage::RaftStateMachine;
    const TEST: &str = "a_crash_after_the_purge_of_an_installed_snapshot_keeps_the_snapshot";
    if let Ok(dir) = std::env::var(CRASH_CHILD_DIR) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let storage = Storage::open(std::path::Path::new(&dir), 64 << 20).unwrap();
            let snapshot = snapshot_after(&storage, 5).await;
            let mut sm =
                StateMachineStore::open(&storage, 2, Box::new(RecordApp::default())).unwrap();
            let mut log = storage.log_store(2).after_snapshots(sm.snapshot_mark());
            let mut purge = Box::pin(log.purge(snapshot.meta.last_log_id.unwrap()));
            // The purge gets to run before the install, as in openraft.
            if futures::poll!(purge.as_mut()).is_pending() {
                sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
                    .await
                    .unwrap();
                purge.await.unwrap();
            }
            storage.engine().settle().await.unwrap();
        });
        std::process::abort();
    }
    let dir = run_aborting_child(TEST);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let storage = Storage::open(dir.path(), 64 << 20).unwrap();
        let purged = storage
            .log_store(2)
            .get_log_state()
            .await
            .unwrap()
            .last_purged_log_id
            .map(|l| l.index);
        assert_eq!(purged, Some(5), "the purge was made durable");
        let mut sm = StateMachineStore::open(&storage, 2, Box::new(RecordApp::default())).unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(5), "the snapshot was lost");
    });
}

/// An install that fails (here: data that is no snapshot image) fails the
/// purge queued behind it rather than leaving it, and openraft's core that
/// awaits it, waiting for good.
#[tokio::test(flavor = "current_thread")]
async fn a_purge_behind_a_failed_install_fails() {
    use openraft::storage::RaftStateMachine;
    let (_dir, storage, snapshot, mut sm, purge) = purge_ahead_of_install().await;
    let garbage = Box::new(std::io::Cursor::new(b"not a snapshot".to_vec()));
    assert!(sm.install_snapshot(&snapshot.meta, garbage).await.is_err());
    let e = purge_error(purge).await;
    assert!(e.contains("not installed"), "{e}");
    assert_eq!(
        storage
            .log_store(2)
            .get_log_state()
            .await
            .unwrap()
            .last_purged_log_id,
        None
    );
}

/// When openraft's state machine task stops (an error, a panic in apply,
/// shutdown) before it installs the snapshot, the purge waiting for it
/// fails: otherwise openraft's core, which awaits the purge, could never
/// be shut down.
#[tokio::test(flavor = "current_thread")]
async fn a_purge_fails_once_the_state_machine_task_is_gone() {
    let (_dir, _storage, _snapshot, node_copy, purge) = purge_ahead_of_install().await;
    let task_copy = node_copy.for_raft();
    tokio::task::yield_now().await;
    assert!(!purge.is_finished());
    drop(task_copy);
    let e = purge_error(purge).await;
    assert!(e.contains("task stopped"), "{e}");
}
