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
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_saved_vote_survives_an_abort_of_the_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_CHILD_DIR, dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have aborted");
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
