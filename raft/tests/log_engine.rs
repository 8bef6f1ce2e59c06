//! The Raft log engine (`storage::engine`) on real files: what a reopen must
//! restore exactly, what a crash may leave behind and how `open` treats it
//! (a torn newest file is cut, anything else damaged or foreign is refused),
//! rotation and compaction with small segments, a randomized comparison with
//! an in-memory model across reopens, and the one-time move of a log that
//! older data directories kept in sled.
//!
//! Every test works in its own temporary directory; "reopen" always means
//! dropping the engine (which joins its flush thread after it wrote what was
//! queued) and opening the directory again.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use garrison_raft::storage::engine::{
    LogEngine, Maintenance, Write, MAGIC, MAX_FRAME_BYTES, SEGMENT_BYTES,
};
use garrison_raft::storage::Storage;
use garrison_raft::typ::GroupId;

/// A small segment size, so that a few dozen writes rotate and compact.
const SMALL: u64 = 4 << 10;

/// Bytes of a frame besides its data: length, CRC, kind, group, argument.
const FRAME_OVERHEAD: u64 = 4 + 4 + 1 + 8 + 8;

// ---------------------------------------------------------------- helpers

/// Held (shared) by every open of a log in this file, and (exclusive) by a
/// crash test while it starts a child process: a child holds copies of
/// every descriptor open at the fork until its `exec`, the lock file's
/// among them, so an engine dropped and opened again in that window would
/// find its directory still locked.
static SPAWNING: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn open_log(dir: &Path) -> Result<LogEngine, String> {
    let _no_fork = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
    LogEngine::open(dir)
}

fn open_log_with(dir: &Path, segment_bytes: u64) -> Result<LogEngine, String> {
    let _no_fork = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
    LogEngine::open_with(dir, segment_bytes)
}

fn open_log_observed(
    dir: &Path,
    segment_bytes: u64,
    observer: Option<garrison_raft::storage::engine::Observer>,
) -> Result<LogEngine, String> {
    let _no_fork = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
    LogEngine::open_observed(dir, segment_bytes, observer)
}

/// A fresh temporary directory and the log directory inside it (which the
/// engine must create itself).
fn log_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path().join("raftlog");
    (tmp, dir)
}

fn file_name(seq: u64) -> String {
    format!("{seq:016x}.log")
}

/// The names in the log directory, sorted, but for the engine's `LOCK`
/// file (if it keeps one): the log files and anything foreign.
fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("list the log directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name != "LOCK")
        .collect();
    names.sort();
    names
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).expect("file metadata").len()
}

/// A recognisable entry: which group, index and version it is, padded to
/// `len` bytes with a pattern that depends on all three.
fn payload(group: GroupId, index: u64, version: u32, len: usize) -> Vec<u8> {
    let mut bytes = format!("g{group}:i{index}:v{version}:").into_bytes();
    let seed = group
        .wrapping_mul(31)
        .wrapping_add(index)
        .wrapping_mul(7)
        .wrapping_add(u64::from(version));
    bytes.extend((0..len as u64).map(|k| (seed.wrapping_add(k * 13) % 251) as u8));
    bytes.truncate(len);
    bytes
}

/// Everything the engine shows of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct GroupState {
    entries: Vec<(u64, Vec<u8>)>,
    vars: BTreeMap<u8, Vec<u8>>,
    bounds: Option<(u64, u64)>,
}

impl GroupState {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.vars.is_empty()
    }
}

fn group_state(engine: &LogEngine, group: GroupId) -> GroupState {
    GroupState {
        entries: engine
            .entries(group, 0..=u64::MAX)
            .expect("entries are readable"),
        // Every tag, so that a variable that should not exist is noticed.
        vars: (0..=u8::MAX)
            .filter_map(|tag| engine.var(group, tag).map(|v| (tag, v)))
            .collect(),
        bounds: engine.bounds(group),
    }
}

/// The whole engine as its readers see it: `groups()` and every listed
/// group's state.
fn dump(engine: &LogEngine) -> (Vec<GroupId>, BTreeMap<GroupId, GroupState>) {
    let groups = engine.groups();
    let states = groups
        .iter()
        .map(|&g| (g, group_state(engine, g)))
        .collect();
    (groups, states)
}

/// Drops the engine (joining its flush thread) and opens the directory again.
fn reopen(engine: LogEngine, dir: &Path, segment_bytes: u64) -> LogEngine {
    drop(engine);
    open_log_with(dir, segment_bytes).expect("the log reopens")
}

/// Opens the directory expecting a refusal, and returns its message.
fn open_error(dir: &Path) -> String {
    match open_log(dir) {
        Ok(_) => panic!("{} opened, but it should have been refused", dir.display()),
        Err(e) => e,
    }
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut file = OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    file.write_all(bytes).expect("append");
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = fs::read(path).expect("read file");
    bytes[at] ^= 0x5a;
    fs::write(path, bytes).expect("write file");
}

/// A frame exactly as the module docs describe it (the format must be stable:
/// it is on disk).
fn frame(kind: u8, group: GroupId, arg: u64, data: &[u8]) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(&group.to_be_bytes());
    body.extend_from_slice(&arg.to_be_bytes());
    body.extend_from_slice(data);
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Writes `entries` of `group` one frame per index and waits until durable.
async fn put(engine: &LogEngine, group: GroupId, entries: &[(u64, Vec<u8>)]) {
    engine
        .write_durably(group, Write::Entries(entries))
        .await
        .expect("durable write");
}

/// Deterministic entries `range` of `group` with the given version and size.
fn entries_of(
    group: GroupId,
    range: std::ops::RangeInclusive<u64>,
    version: u32,
    len: usize,
) -> Vec<(u64, Vec<u8>)> {
    range
        .map(|i| (i, payload(group, i, version, len)))
        .collect()
}

// ------------------------------------------------------- 1. reopen exactly

/// Entries, variables, truncate, purge and drop of several groups read the
/// same after a reopen (and after a second one with no write in between),
/// including writes that were only queued, never waited for, when the engine
/// was dropped.
#[tokio::test]
async fn every_kind_of_write_survives_reopen() {
    let (_tmp, dir) = log_dir();
    let engine = open_log(&dir).unwrap();

    // Group 1: 1..=10, truncate from 8, a new 8, purge up to 3: 4..=8.
    put(&engine, 1, &entries_of(1, 1..=10, 0, 50)).await;
    engine.write_durably(1, Write::Truncate(8)).await.unwrap();
    put(&engine, 1, &entries_of(1, 8..=8, 1, 70)).await;
    engine.write_durably(1, Write::Purge(3)).await.unwrap();
    // Group 2: variables (one overwritten, one empty) and a few entries.
    engine
        .write_durably(2, Write::Var(1, b"vote 3/2"))
        .await
        .unwrap();
    engine
        .write_durably(2, Write::Var(2, b"committed 1"))
        .await
        .unwrap();
    engine.write_durably(2, Write::Var(3, b"")).await.unwrap();
    engine
        .write_durably(2, Write::Var(1, b"vote 4/1"))
        .await
        .unwrap();
    put(&engine, 2, &entries_of(2, 1..=3, 0, 10)).await;
    // Group 3: written, then dropped: nothing of it is left.
    put(&engine, 3, &entries_of(3, 1..=5, 0, 20)).await;
    engine
        .write_durably(3, Write::Var(1, b"gone"))
        .await
        .unwrap();
    engine.write_durably(3, Write::Drop).await.unwrap();
    // Group 4: dropped, then written again: only the new writes count.
    put(&engine, 4, &entries_of(4, 1..=5, 0, 20)).await;
    engine
        .write_durably(4, Write::Var(1, b"old"))
        .await
        .unwrap();
    engine.write_durably(4, Write::Drop).await.unwrap();
    put(&engine, 4, &entries_of(4, 7..=8, 1, 20)).await;
    // The largest group id, an empty entry and a large one.
    let big = payload(u64::MAX, 2, 0, 200_000);
    put(&engine, u64::MAX, &[(1, Vec::new()), (2, big.clone())]).await;
    // Queued only: the drop below must still write them.
    engine
        .write(5, Write::Entries(&entries_of(5, 1..=3, 0, 30)))
        .unwrap();
    engine.write(5, Write::Var(2, b"queued")).unwrap();

    let before = dump(&engine);
    assert_eq!(before.0, vec![1, 2, 4, 5, u64::MAX]);
    let mut g1 = entries_of(1, 4..=7, 0, 50);
    g1.extend(entries_of(1, 8..=8, 1, 70));
    assert_eq!(before.1[&1].entries, g1);
    assert_eq!(before.1[&1].bounds, Some((4, 8)));
    assert!(before.1[&1].vars.is_empty());
    assert_eq!(
        before.1[&2].vars,
        BTreeMap::from([
            (1, b"vote 4/1".to_vec()),
            (2, b"committed 1".to_vec()),
            (3, Vec::new())
        ])
    );
    assert_eq!(before.1[&2].entries, entries_of(2, 1..=3, 0, 10));
    assert_eq!(group_state(&engine, 3), GroupState::default());
    assert_eq!(before.1[&4].entries, entries_of(4, 7..=8, 1, 20));
    assert!(
        before.1[&4].vars.is_empty(),
        "the drop forgot group 4's variables"
    );
    assert_eq!(before.1[&u64::MAX].entries, vec![(1, Vec::new()), (2, big)]);
    assert_eq!(before.1[&5].entries, entries_of(5, 1..=3, 0, 30));
    assert_eq!(before.1[&5].vars, BTreeMap::from([(2, b"queued".to_vec())]));

    let engine = reopen(engine, &dir, SEGMENT_BYTES);
    assert_eq!(dump(&engine), before, "state after the first reopen");
    let engine = reopen(engine, &dir, SEGMENT_BYTES);
    assert_eq!(dump(&engine), before, "state after the second reopen");
    // One file was enough for all this; nothing else appeared.
    assert_eq!(dir_listing(&dir), vec![file_name(1)]);
}

// ------------------------------------------------------ 2. replace semantics

/// Writing an existing index replaces it, truncate removes from an index on,
/// purge up to one, writes after either are visible at once (before they are
/// durable) and the result survives a reopen.
#[test]
fn replace_truncate_and_purge_semantics() {
    let (_tmp, dir) = log_dir();
    let engine = open_log(&dir).unwrap();
    let g = 9;
    let read = |e: &LogEngine| e.entries(g, 0..=u64::MAX).unwrap();

    engine
        .write(g, Write::Entries(&entries_of(g, 1..=5, 0, 16)))
        .unwrap();
    // Replace 3 (and only 3).
    engine
        .write(g, Write::Entries(&entries_of(g, 3..=3, 1, 40)))
        .unwrap();
    let mut want = entries_of(g, 1..=5, 0, 16);
    want[2] = (3, payload(g, 3, 1, 40));
    assert_eq!(read(&engine), want);
    // A sub-range reads just that range.
    assert_eq!(engine.entries(g, 2..=3).unwrap(), want[1..3].to_vec());
    assert_eq!(engine.entries(g, 6..=9).unwrap(), vec![]);

    // Truncate from 4: 1..=3 remain; past the end changes nothing.
    engine.write(g, Write::Truncate(4)).unwrap();
    want.truncate(3);
    assert_eq!(read(&engine), want);
    assert_eq!(engine.bounds(g), Some((1, 3)));
    engine.write(g, Write::Truncate(100)).unwrap();
    assert_eq!(read(&engine), want);

    // A write after the truncate is visible, with the new bytes.
    engine
        .write(g, Write::Entries(&entries_of(g, 4..=5, 2, 8)))
        .unwrap();
    want.extend(entries_of(g, 4..=5, 2, 8));
    assert_eq!(read(&engine), want);

    // Purge up to 2: 3..=5 remain; purge 0 changes nothing.
    engine.write(g, Write::Purge(2)).unwrap();
    want.drain(..2);
    assert_eq!(read(&engine), want);
    assert_eq!(engine.bounds(g), Some((3, 5)));
    engine.write(g, Write::Purge(0)).unwrap();
    assert_eq!(read(&engine), want);

    // Truncating everything, then appending, starts again at that index.
    engine.write(g, Write::Truncate(3)).unwrap();
    assert_eq!(engine.bounds(g), None);
    assert_eq!(read(&engine), vec![]);
    engine
        .write(g, Write::Entries(&entries_of(g, 3..=4, 3, 12)))
        .unwrap();
    want = entries_of(g, 3..=4, 3, 12);
    assert_eq!(read(&engine), want);
    // Purging past the end removes everything, later entries start anew.
    engine.write(g, Write::Purge(10)).unwrap();
    assert_eq!(engine.bounds(g), None);
    engine
        .write(g, Write::Entries(&entries_of(g, 11..=12, 4, 12)))
        .unwrap();
    want = entries_of(g, 11..=12, 4, 12);
    assert_eq!(read(&engine), want);
    assert_eq!(engine.bounds(g), Some((11, 12)));

    // Another group is untouched by all of this.
    engine
        .write(8, Write::Entries(&entries_of(8, 1..=5, 0, 16)))
        .unwrap();
    engine.write(g, Write::Truncate(0)).unwrap();
    engine.write(g, Write::Entries(&want)).unwrap();
    assert_eq!(
        engine.entries(8, 0..=u64::MAX).unwrap(),
        entries_of(8, 1..=5, 0, 16)
    );

    engine.sync().unwrap();
    let engine = reopen(engine, &dir, SEGMENT_BYTES);
    assert_eq!(read(&engine), want);
    assert_eq!(engine.bounds(g), Some((11, 12)));
    assert_eq!(
        engine.entries(8, 0..=u64::MAX).unwrap(),
        entries_of(8, 1..=5, 0, 16)
    );
}

// ------------------------------------------------------------ 3. torn tail

/// How the newest file is damaged before the reopen.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The last frame loses its last bytes.
    CutLastFrame,
    /// Bytes that are no frame at all (their length field is absurd).
    Garbage,
    /// The header of a frame and part of its body.
    PartialFrame,
    /// A whole frame whose checksum does not match.
    BadChecksum,
    /// A header whose length is above `MAX_FRAME_BYTES`.
    OversizedLength,
}

/// Writes three entries of 40 bytes to group 1 in file 1, damages the file
/// end, reopens: the torn frame is cut (the file shortened to its valid
/// prefix), what came before survives, and a write after the reopen works
/// and survives another reopen.
async fn torn_tail_case(damage: Damage) {
    let (_tmp, dir) = log_dir();
    let engine = open_log(&dir).unwrap();
    engine
        .write_durably(1, Write::Var(1, b"vote"))
        .await
        .unwrap();
    for i in 1..=3 {
        put(&engine, 1, &entries_of(1, i..=i, 0, 40)).await;
    }
    drop(engine);
    let path = dir.join(file_name(1));
    let full = file_len(&path);
    let entry_frame = FRAME_OVERHEAD + 40;
    assert_eq!(
        full,
        MAGIC.len() as u64 + FRAME_OVERHEAD + 4 + 3 * entry_frame
    );

    // What must survive, and where the file must be cut.
    let (survivors, valid) = match damage {
        Damage::CutLastFrame => {
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(full - 3).unwrap();
            (2, full - entry_frame)
        }
        Damage::Garbage => {
            append_bytes(&path, b"\xde\xad\xbe\xef not a frame at all");
            (3, full)
        }
        Damage::PartialFrame => {
            let whole = frame(1, 1, 4, &payload(1, 4, 0, 100));
            append_bytes(&path, &whole[..whole.len() - 30]);
            (3, full)
        }
        Damage::BadChecksum => {
            let mut whole = frame(1, 1, 4, &payload(1, 4, 0, 40));
            let last = whole.len() - 1;
            whole[last] ^= 1;
            append_bytes(&path, &whole);
            (3, full)
        }
        Damage::OversizedLength => {
            let mut header = (MAX_FRAME_BYTES + 1).to_le_bytes().to_vec();
            header.extend_from_slice(&[0; 4 + 17 + 8]);
            append_bytes(&path, &header);
            (3, full)
        }
    };

    let engine = open_log(&dir).expect("a torn newest file is accepted");
    assert_eq!(file_len(&path), valid, "the torn end is cut off the file");
    assert_eq!(
        engine.entries(1, 0..=u64::MAX).unwrap(),
        entries_of(1, 1..=survivors, 0, 40)
    );
    assert_eq!(engine.var(1, 1), Some(b"vote".to_vec()));

    // Writes after the cut land right after the valid prefix and survive.
    let next = survivors + 1;
    put(&engine, 1, &entries_of(1, next..=next, 1, 33)).await;
    assert_eq!(file_len(&path), valid + FRAME_OVERHEAD + 33);
    let engine = reopen(engine, &dir, SEGMENT_BYTES);
    let mut want = entries_of(1, 1..=survivors, 0, 40);
    want.extend(entries_of(1, next..=next, 1, 33));
    assert_eq!(engine.entries(1, 0..=u64::MAX).unwrap(), want);
    assert_eq!(file_len(&path), valid + FRAME_OVERHEAD + 33);
}

#[tokio::test]
async fn a_torn_tail_is_cut_whatever_the_damage() {
    for damage in [
        Damage::CutLastFrame,
        Damage::Garbage,
        Damage::PartialFrame,
        Damage::BadChecksum,
        Damage::OversizedLength,
    ] {
        // Shown with a failure: which damage it was.
        eprintln!("damage: {damage:?}");
        torn_tail_case(damage).await;
    }
}

/// A lazy write (the committed index) starts no sync of its own, but
/// waiting for it, or for everything (`settle`, as at shutdown), starts one.
#[tokio::test]
async fn waiting_for_a_lazy_write_syncs_it() {
    let (_tmp, dir) = log_dir();
    let engine = open_log(&dir).unwrap();
    put(&engine, 1, &entries_of(1, 1..=1, 0, 10)).await;
    let synced = file_len(&dir.join(file_name(1)));
    let ticket = engine.write_lazily(1, Write::Var(2, b"committed")).unwrap();
    tokio::time::timeout(Duration::from_secs(30), engine.durable(ticket))
        .await
        .expect("a lazy write becomes durable once someone waits for it")
        .unwrap();
    assert!(file_len(&dir.join(file_name(1))) > synced);
    engine.write_lazily(1, Write::Var(2, b"again")).unwrap();
    tokio::time::timeout(Duration::from_secs(30), engine.settle())
        .await
        .expect("settle syncs lazy writes")
        .unwrap();
    let engine = reopen(engine, &dir, SEGMENT_BYTES);
    assert_eq!(engine.var(1, 2), Some(b"again".to_vec()));
}

/// A whole, valid frame appended by hand, built from the documented format,
/// is read like one the engine wrote: the format in the module docs is the
/// one on disk.
#[tokio::test]
async fn frames_follow_the_documented_format() {
    let (_tmp, dir) = log_dir();
    let engine = open_log(&dir).unwrap();
    put(&engine, 3, &entries_of(3, 1..=2, 0, 10)).await;
    drop(engine);
    let path = dir.join(file_name(1));
    let mut bytes = MAGIC.to_vec();
    bytes.extend(frame(1, 3, 1, &payload(3, 1, 0, 10)));
    bytes.extend(frame(1, 3, 2, &payload(3, 2, 0, 10)));
    assert_eq!(fs::read(&path).unwrap(), bytes, "the engine's own bytes");

    let mut extra = frame(1, 3, 3, b"by hand");
    extra.extend(frame(4, 3, 7, b"variable by hand"));
    extra.extend(frame(3, 3, 1, &[]));
    append_bytes(&path, &extra);
    let engine = open_log(&dir).unwrap();
    assert_eq!(
        engine.entries(3, 0..=u64::MAX).unwrap(),
        vec![(2, payload(3, 2, 0, 10)), (3, b"by hand".to_vec())]
    );
    assert_eq!(engine.var(3, 7), Some(b"variable by hand".to_vec()));
    assert_eq!(file_len(&path), bytes.len() as u64 + extra.len() as u64);
}

// ------------------------------------------------ 4. damage in older files

/// Fills group 1 with entries of 500 bytes (nothing purged, so nothing is
/// compacted) until the log has at least `files` files.
async fn fill_files(dir: &Path, files: usize) -> Vec<(u64, Vec<u8>)> {
    let engine = open_log_with(dir, SMALL).unwrap();
    let mut written = Vec::new();
    let mut index = 0;
    while engine.files().len() < files {
        index += 1;
        let e = entries_of(1, index..=index, 0, 500);
        put(&engine, 1, &e).await;
        written.extend(e);
        assert!(
            index < 100,
            "no rotation after {index} entries of 500 bytes"
        );
    }
    assert_eq!(engine.files()[0].0, 1, "file 1 was kept");
    drop(engine);
    written
}

/// A flipped byte in a file that is not the newest is corruption, not a torn
/// write: `open` refuses with an error naming that file, and leaves the file
/// as it was. Restoring the byte makes the log open again, complete.
#[tokio::test]
async fn corruption_in_an_older_file_is_refused() {
    let (_tmp, dir) = log_dir();
    let written = fill_files(&dir, 3).await;

    for seq in [1, 2] {
        let path = dir.join(file_name(seq));
        let before = fs::read(&path).unwrap();
        // Inside the data of the file's first frame.
        let at = MAGIC.len() + FRAME_OVERHEAD as usize + 7;
        flip_byte(&path, at);
        let err = open_error(&dir);
        assert!(err.contains(&file_name(seq)), "{err:?} names file {seq}");
        assert!(err.contains("corrupt"), "{err:?} says it is corrupt");
        let after = fs::read(&path).unwrap();
        assert_eq!(after.len(), before.len(), "a refused file is not cut");
        flip_byte(&path, at);
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    let engine = open_log_with(&dir, SMALL).unwrap();
    assert_eq!(engine.entries(1, 0..=u64::MAX).unwrap(), written);
}

/// Cutting an older file short (a lost tail of a file that is not the newest)
/// is refused the same way.
#[tokio::test]
async fn a_short_older_file_is_refused() {
    let (_tmp, dir) = log_dir();
    fill_files(&dir, 2).await;
    let path = dir.join(file_name(1));
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(file_len(&path) - 5).unwrap();
    let err = open_error(&dir);
    assert!(err.contains(&file_name(1)), "{err:?} names file 1");
}

/// A file missing between two others (lost, or deleted by hand) is refused
/// with its name: entries, and the truncations and purges that newer files
/// rely on, went with it. Only the oldest files may go, and only by
/// compaction.
#[tokio::test]
async fn a_missing_file_between_others_is_refused() {
    let (_tmp, dir) = log_dir();
    fill_files(&dir, 3).await;
    let before = dir_listing(&dir);
    let middle = dir.join(file_name(2));
    let kept = fs::read(&middle).unwrap();
    fs::remove_file(&middle).unwrap();
    let err = open_error(&dir);
    assert!(
        err.contains(&file_name(2)) && err.contains("missing"),
        "{err:?}"
    );
    fs::write(&middle, kept).unwrap();
    assert_eq!(dir_listing(&dir), before);
    let engine = open_log_with(&dir, SMALL).unwrap();
    assert_eq!(engine.files().len(), 3);
}

/// A byte that changes in a file while the node runs (after the open that
/// checked every frame) makes reading that entry an error that says where,
/// never a read of other bytes; the entries around it still read.
#[tokio::test]
async fn an_entry_damaged_on_disk_is_an_error_when_read() {
    let (_tmp, dir) = log_dir();
    let engine = open_log(&dir).unwrap();
    let written = entries_of(4, 1..=3, 0, 50);
    put(&engine, 4, &written).await;
    let path = dir.join(file_name(1));
    // The second entry's data: past the magic, one whole frame and a header.
    let second = MAGIC.len() + (FRAME_OVERHEAD as usize + 50) + FRAME_OVERHEAD as usize + 7;
    flip_byte(&path, second);
    let err = engine.entries(4, 1..=3).unwrap_err();
    assert!(
        err.contains("damaged") && err.contains(&file_name(1)),
        "{err}"
    );
    assert_eq!(engine.entries(4, 1..=1).unwrap(), written[..1].to_vec());
    assert_eq!(engine.entries(4, 3..=3).unwrap(), written[2..].to_vec());
    flip_byte(&path, second);
    assert_eq!(engine.entries(4, 1..=3).unwrap(), written);
}

// ------------------------------------------------------- 5. foreign files

/// A whole frame whose checksum holds but whose kind this version does not
/// know was written so (by another version, or it is not our file): it is
/// refused, even at the end of the newest file, never cut as a torn write.
#[tokio::test]
async fn a_whole_frame_of_an_unknown_kind_is_refused() {
    let (_tmp, dir) = log_dir();
    let engine = open_log(&dir).unwrap();
    put(&engine, 1, &entries_of(1, 1..=2, 0, 10)).await;
    drop(engine);
    let path = dir.join(file_name(1));
    let before = file_len(&path);
    append_bytes(&path, &frame(9, 1, 0, b"from the future"));
    let err = open_error(&dir);
    assert!(
        err.contains(&file_name(1)) && err.contains("unknown"),
        "{err}"
    );
    assert!(file_len(&path) > before, "nothing was cut");
}

/// A file that does not start with `MAGIC` is refused, newest or not, with
/// an error that names it and says what is wrong.
#[tokio::test]
async fn a_file_without_magic_is_refused() {
    // The only file: text.
    let (_tmp, dir) = log_dir();
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file_name(1));
    fs::write(&path, b"this is not a raft log, it is a text file").unwrap();
    let err = open_error(&dir);
    assert!(err.contains(&file_name(1)), "{err:?} names the file");
    assert!(err.contains("not a garrison raft log"), "{err:?} says why");
    assert_eq!(
        fs::read(&path).unwrap(),
        b"this is not a raft log, it is a text file",
        "a refused file is left alone"
    );

    // Another version of the format.
    let mut other = MAGIC;
    other[7] += 1;
    fs::write(&path, other).unwrap();
    assert!(open_error(&dir).contains(&file_name(1)));

    // A valid log, then a newer file with a short non-magic start.
    let (_tmp2, dir) = log_dir();
    let engine = open_log(&dir).unwrap();
    put(&engine, 1, &entries_of(1, 1..=2, 0, 10)).await;
    drop(engine);
    fs::write(dir.join(file_name(2)), b"GRX").unwrap();
    let err = open_error(&dir);
    assert!(err.contains(&file_name(2)), "{err:?} names file 2");
}

/// Names the engine never writes are refused, whatever they are.
#[test]
fn an_unexpected_file_name_is_refused() {
    let names = [
        "notes.txt",
        "1.log",
        "000000000000000g.log",
        "00000000000000001.log",
        "0000000000000001",
        "0000000000000001.log.old",
        // Not one of the engine's own temporary files either: it is refused,
        // never deleted.
        "notes.tmp",
    ];
    for name in names {
        let (_tmp, dir) = log_dir();
        drop(open_log(&dir).unwrap());
        fs::write(dir.join(name), b"x").unwrap();
        let opened = open_log(&dir);
        assert_eq!(
            fs::read(dir.join(name)).ok(),
            Some(b"x".to_vec()),
            "{name} is left alone"
        );
        let err = opened
            .err()
            .unwrap_or_else(|| panic!("{name} was accepted"));
        assert!(err.contains("unexpected"), "{name}: {err:?}");
        assert!(err.contains(name), "{name}: {err:?} names the file");
    }
    // A directory is no log file either.
    let (_tmp, dir) = log_dir();
    drop(open_log(&dir).unwrap());
    fs::create_dir(dir.join("old")).unwrap();
    let err = open_error(&dir);
    assert!(err.contains("unexpected file old"), "{err:?}");
}

/// A file is started under a temporary name and renamed only once its
/// `MAGIC` is on disk, so a crash while starting one leaves a `.log.tmp`
/// file, which the next start deletes; a `.log` file that is empty or holds
/// part of `MAGIC` is damage, newest or not, and is refused.
#[tokio::test]
async fn a_file_being_started_is_dropped_and_an_empty_log_file_refused() {
    let (_tmp, dir) = log_dir();
    let engine = open_log(&dir).unwrap();
    put(&engine, 1, &entries_of(1, 1..=3, 0, 20)).await;
    engine
        .write_durably(1, Write::Var(1, b"vote"))
        .await
        .unwrap();
    drop(engine);
    let started = dir.join(format!("{}.tmp", file_name(2)));
    fs::write(&started, &MAGIC[..3]).unwrap();
    let engine = open_log(&dir).expect("a file being started is no log yet");
    assert!(!started.exists(), "the temporary file is deleted");
    assert_eq!(
        engine.entries(1, 0..=u64::MAX).unwrap(),
        entries_of(1, 1..=3, 0, 20)
    );
    assert_eq!(engine.var(1, 1), Some(b"vote".to_vec()));
    drop(engine);

    for start in [&b""[..], &MAGIC[..3]] {
        let newest = dir.join(file_name(2));
        fs::write(&newest, start).unwrap();
        let err = open_error(&dir);
        assert!(err.contains(&file_name(2)), "{err:?} names file 2");
        fs::remove_file(&newest).unwrap();
    }
}

/// A crash while a new file is being started, after its `MAGIC` but before
/// the copies of every group's variables that begin it are synced, leaves a
/// newest file that is cut back to `MAGIC` at the next start. The variables
/// are still in the older file then; deleting that file later (it holds no
/// live entries) must not lose them: a vote, once saved, is never forgotten.
#[tokio::test]
async fn a_crash_while_starting_a_file_loses_no_variable() {
    let (_tmp, dir) = log_dir();
    let engine = open_log_with(&dir, SMALL).unwrap();
    engine
        .write_durably(1, Write::Var(1, b"vote 1"))
        .await
        .unwrap();
    engine
        .write_durably(2, Write::Var(1, b"vote 2"))
        .await
        .unwrap();
    // Entries of 300 bytes (mostly live, so file 1 stays) until rotation.
    let mut index = 0;
    while engine.files().len() < 2 {
        index += 1;
        put(&engine, 1, &entries_of(1, index..=index, 0, 300)).await;
    }
    drop(engine);
    // File 2 holds MAGIC and the two variable frames; the crash tore the
    // first of them.
    let newest = dir.join(file_name(2));
    assert_eq!(
        file_len(&newest),
        MAGIC.len() as u64 + 2 * (FRAME_OVERHEAD + 6)
    );
    let file = OpenOptions::new().write(true).open(&newest).unwrap();
    file.set_len(MAGIC.len() as u64 + 10).unwrap();
    drop(file);

    let engine = open_log_with(&dir, SMALL).unwrap();
    assert_eq!(engine.var(1, 1), Some(b"vote 1".to_vec()));
    assert_eq!(engine.var(2, 1), Some(b"vote 2".to_vec()));
    // Raft purges the log after a snapshot: file 1 is garbage now.
    engine.write_durably(1, Write::Purge(index)).await.unwrap();
    put(&engine, 1, &entries_of(1, index + 1..=index + 1, 0, 300)).await;
    let engine = reopen(engine, &dir, SMALL);
    assert_eq!(engine.var(1, 1), Some(b"vote 1".to_vec()), "group 1's vote");
    assert_eq!(engine.var(2, 1), Some(b"vote 2".to_vec()), "group 2's vote");
    assert_eq!(
        engine.entries(1, 0..=u64::MAX).unwrap(),
        entries_of(1, index + 1..=index + 1, 0, 300)
    );
}

/// A directory that does not exist yet is created with one file holding
/// just `MAGIC`.
#[test]
fn a_new_log_starts_with_one_file() {
    let (_tmp, dir) = log_dir();
    let engine = open_log(&dir).unwrap();
    assert_eq!(dir_listing(&dir), vec![file_name(1)]);
    assert_eq!(fs::read(dir.join(file_name(1))).unwrap(), MAGIC);
    assert_eq!(engine.files(), vec![(1, MAGIC.len() as u64, 0)]);
    assert!(engine.groups().is_empty());
}

// ------------------------------------------- 6. rotation and compaction

/// Checks the files the engine reports against the directory and each other,
/// once the flush thread is between steps: it starts and deletes files, and
/// writes, without holding the engine's lock, so a look in the middle of a
/// step sees the two disagree for a moment.
fn check_files(engine: &LogEngine, dir: &Path) {
    let look = || {
        let files = engine.files();
        let on_disk: Vec<(String, u64)> = dir_listing(dir)
            .into_iter()
            // Deleted since it was listed: looked at again below.
            .map(|name| {
                let len = fs::metadata(dir.join(&name)).map_or(u64::MAX, |m| m.len());
                (name, len)
            })
            .collect();
        let sizes: Vec<(String, u64)> = files
            .iter()
            .map(|&(seq, size, _)| (file_name(seq), size))
            .collect();
        (files, on_disk, sizes)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (files, on_disk, sizes) = loop {
        let seen = look();
        // Live bytes count frames still queued for the file too.
        let settled = seen.0.iter().all(|&(_, size, live)| live <= size);
        if (seen.1 == seen.2 && settled) || Instant::now() > deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(sizes, on_disk, "files() is the directory, sizes and all");
    for (seq, size, live) in files {
        assert!(live <= size, "file {seq}: {live} live bytes of {size}");
    }
}

/// An idle group (a vote and three entries, written first, never purged)
/// while three groups churn: writes, purges, variables. Old files are
/// deleted, the idle group's entries are moved out of them and read back
/// right, before and after a reopen, and so are its vote and the churning
/// groups' variables set before many rotations.
#[tokio::test]
async fn rotation_and_compaction_keep_the_live_log() {
    let (_tmp, dir) = log_dir();
    let mut engine = open_log_with(&dir, SMALL).unwrap();
    let idle: GroupId = 100;
    engine
        .write_durably(idle, Write::Var(1, b"vote of the idle group"))
        .await
        .unwrap();
    put(&engine, idle, &entries_of(idle, 1..=3, 0, 100)).await;
    // Set once, never again: must be carried across every rotation.
    engine
        .write_durably(7, Write::Var(9, b"set long ago"))
        .await
        .unwrap();

    let churn: [GroupId; 3] = [1, 2, 3];
    let mut highest_seq = 1;
    for round in 1..=150u64 {
        for &g in &churn {
            let len = 150 + (round as usize * 17 + g as usize * 31) % 100;
            engine
                .write(g, Write::Entries(&entries_of(g, round..=round, 0, len)))
                .unwrap();
            if round > 4 {
                engine.write(g, Write::Purge(round - 4)).unwrap();
                engine
                    .write(g, Write::Var(3, &(round - 4).to_be_bytes()))
                    .unwrap();
            }
        }
        engine.settle().await.unwrap();
        highest_seq = highest_seq.max(engine.files().last().unwrap().0);
        // Reopen now and then, so that compaction also runs on replayed state.
        if round % 50 == 0 {
            engine = reopen(engine, &dir, SMALL);
        }
    }
    engine.settle().await.unwrap();
    check_files(&engine, &dir);
    let files = engine.files();
    assert!(highest_seq >= 10, "only {highest_seq} files were started");
    assert!(files[0].0 > 1, "file 1 is still there: {files:?}");
    assert!(files.len() <= 4, "old files are not deleted: {files:?}");
    for seq in 1..files[0].0 {
        assert!(!dir.join(file_name(seq)).exists(), "file {seq} was deleted");
    }

    let check = |engine: &LogEngine| {
        assert_eq!(
            engine.entries(idle, 0..=u64::MAX).unwrap(),
            entries_of(idle, 1..=3, 0, 100),
            "the idle group's entries"
        );
        assert_eq!(
            engine.var(idle, 1),
            Some(b"vote of the idle group".to_vec())
        );
        assert_eq!(engine.var(7, 9), Some(b"set long ago".to_vec()));
        for &g in &churn {
            let got = engine.entries(g, 0..=u64::MAX).unwrap();
            let indexes: Vec<u64> = got.iter().map(|(i, _)| *i).collect();
            assert_eq!(indexes, (147..=150).collect::<Vec<_>>(), "group {g}");
            for (i, bytes) in got {
                let len = 150 + (i as usize * 17 + g as usize * 31) % 100;
                assert_eq!(bytes, payload(g, i, 0, len), "group {g} entry {i}");
            }
            assert_eq!(engine.var(g, 3), Some(146u64.to_be_bytes().to_vec()));
        }
    };
    check(&engine);
    let before = dump(&engine);
    let engine = reopen(engine, &dir, SMALL);
    assert_eq!(dump(&engine), before);
    check(&engine);
    check_files(&engine, &dir);

    // And it goes on: more churn after the reopen, then one more reopen.
    for round in 151..=200u64 {
        for &g in &churn {
            let len = 150 + (round as usize * 17 + g as usize * 31) % 100;
            put(&engine, g, &entries_of(g, round..=round, 0, len)).await;
            engine
                .write_durably(g, Write::Purge(round - 4))
                .await
                .unwrap();
        }
    }
    let engine = reopen(engine, &dir, SMALL);
    assert_eq!(
        engine.entries(idle, 0..=u64::MAX).unwrap(),
        entries_of(idle, 1..=3, 0, 100)
    );
    assert_eq!(
        engine.var(idle, 1),
        Some(b"vote of the idle group".to_vec())
    );
    assert_eq!(engine.var(7, 9), Some(b"set long ago".to_vec()));
    assert_eq!(engine.bounds(1), Some((197, 200)));
    check_files(&engine, &dir);
}

/// Readers on another thread always get the right bytes while the flush
/// thread rotates, moves entries and deletes files under them.
#[tokio::test]
async fn reads_stay_right_while_files_are_compacted() {
    let (_tmp, dir) = log_dir();
    let engine = open_log_with(&dir, SMALL).unwrap();
    put(&engine, 100, &entries_of(100, 1..=5, 0, 120)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || -> Result<u64, String> {
            let mut reads = 0u64;
            loop {
                // Checked before the reads, so the last pass sees the end.
                let last_pass = stop.load(Ordering::Acquire);
                if engine.entries(100, 0..=u64::MAX)? != entries_of(100, 1..=5, 0, 120) {
                    return Err("the idle group's entries changed".into());
                }
                // Whatever the churning group holds must be what was written
                // at that index.
                for (i, bytes) in engine.entries(1, 0..=u64::MAX)? {
                    if bytes != payload(1, i, 0, 200) {
                        return Err(format!("entry {i} of group 1 has wrong bytes"));
                    }
                }
                reads += 1;
                if last_pass {
                    return Ok(reads);
                }
            }
        })
    };
    for round in 1..=200u64 {
        put(&engine, 1, &entries_of(1, round..=round, 0, 200)).await;
        if round > 3 {
            engine.write(1, Write::Purge(round - 3)).unwrap();
        }
    }
    engine.settle().await.unwrap();
    stop.store(true, Ordering::Release);
    let reads = reader.join().expect("the reader does not panic");
    assert!(reads.expect("every read was right") > 0);
    assert!(
        engine.files()[0].0 > 1,
        "compaction ran: {:?}",
        engine.files()
    );
}

/// The flush thread starts files and moves entries without the engine's
/// lock: parked in the middle of a rotation, then of a compaction, it
/// keeps no other thread from writing or reading any group.
#[test]
fn reads_and_writes_go_on_while_files_are_rotated_or_compacted() {
    use std::sync::mpsc;
    use std::sync::Mutex;
    for step in [Maintenance::Rotating, Maintenance::Compacting] {
        let (_tmp, dir) = log_dir();
        let (parked_tx, parked) = mpsc::channel::<()>();
        let (go, go_rx) = mpsc::channel::<()>();
        let (parked_tx, go_rx) = (Mutex::new(parked_tx), Mutex::new(go_rx));
        // Parks the flush thread at the first `step` until `go` is dropped.
        let observer = Box::new(move |seen: Maintenance| {
            if seen == step && parked_tx.lock().unwrap().send(()).is_ok() {
                let _ = go_rx.lock().unwrap().recv();
            }
        });
        let engine = open_log_observed(&dir, SMALL, Some(observer)).unwrap();
        // Writes (and purges) until the flush thread parks; on its own
        // thread, as a write would wait if the lock were held.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = 0;
                while !stop.load(Ordering::Acquire) {
                    last += 1;
                    let entry = [(last, payload(1, last, 0, 200))];
                    engine.write(1, Write::Entries(&entry)).unwrap();
                    if last > 3 {
                        engine.write(1, Write::Purge(last - 3)).unwrap();
                    }
                }
                last
            })
        };
        parked
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no {step:?} began"));
        stop.store(true, Ordering::Release);
        let (done_tx, done) = mpsc::channel();
        let other = engine.clone();
        let reader = std::thread::spawn(move || {
            other.write(2, Write::Var(1, b"vote")).unwrap();
            let entry = [(1, payload(2, 1, 0, 50))];
            other.write(2, Write::Entries(&entry)).unwrap();
            let read = (
                other.entries(1, 0..=u64::MAX).unwrap(),
                other.entries(2, 1..=1).unwrap(),
                other.var(2, 1),
            );
            let _ = done_tx.send(read);
        });
        let read = done.recv_timeout(Duration::from_secs(60));
        drop(go);
        let (ones, twos, var) =
            read.unwrap_or_else(|_| panic!("a reader or writer waited for the {step:?} step"));
        // Its handle on the engine keeps the directory locked until it ends.
        reader.join().unwrap();
        assert!(!ones.is_empty());
        for (i, bytes) in ones {
            assert_eq!(bytes, payload(1, i, 0, 200), "entry {i} of group 1");
        }
        assert_eq!(twos, vec![(1, payload(2, 1, 0, 50))]);
        assert_eq!(var.as_deref(), Some(&b"vote"[..]));
        let last = writer.join().unwrap();
        assert_eq!(engine.bounds(1), Some((last - 2, last)));
        futures::executor::block_on(engine.settle()).unwrap();
        check_files(&engine, &dir);
        let engine = reopen(engine, &dir, SMALL);
        assert_eq!(engine.entries(2, 1..=1).unwrap(), twos);
        assert_eq!(engine.bounds(1), Some((last - 2, last)));
    }
}

/// Set in the child process of the crash test: "<log dir>|<step>".
const CRASH_CHILD: &str = "GARRISON_TEST_ENGINE_CRASH";

/// The child of [`a_crash_at_any_step_of_the_upkeep_loses_no_acknowledged_write`]:
/// an idle group, then one writer that waits for each round (an entry, a
/// variable, a purge) to be durable and records it in `acked` before the
/// next. The flush thread aborts the process at the first `step`, as soon
/// as every round reported durable has been recorded.
fn crash_child(dir: &Path, step: Maintenance) -> ! {
    use futures::FutureExt;
    use std::sync::{Mutex, OnceLock};
    // (rounds recorded, ticket of the round being waited for)
    let progress = Arc::new(Mutex::new((0u64, None::<u64>)));
    let engine_cell: Arc<OnceLock<LogEngine>> = Arc::new(OnceLock::new());
    let observer = {
        let (progress, engine_cell) = (progress.clone(), engine_cell.clone());
        Box::new(move |seen: Maintenance| {
            if seen != step {
                return;
            }
            let engine = engine_cell.get().expect("the engine is open");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let (_, waiting) = *progress.lock().unwrap();
                if let Some(ticket) = waiting {
                    if engine.durable(ticket).now_or_never().is_none() {
                        break;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            std::process::abort();
        })
    };
    let engine = open_log_observed(dir, SMALL, Some(observer)).unwrap();
    let _ = engine_cell.set(engine.clone());
    futures::executor::block_on(async {
        put(&engine, 100, &entries_of(100, 1..=3, 0, 120)).await;
        engine
            .write_durably(100, Write::Var(1, b"idle"))
            .await
            .unwrap();
    });
    let mut acked = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.with_extension("acked"))
        .unwrap();
    for round in 1..=10_000u64 {
        engine
            .write(1, Write::Entries(&[(round, payload(1, round, 0, 200))]))
            .unwrap();
        engine
            .write(1, Write::Var(1, &round.to_be_bytes()))
            .unwrap();
        let ticket = engine
            .write(1, Write::Purge(round.saturating_sub(3)))
            .unwrap();
        progress.lock().unwrap().1 = Some(ticket);
        futures::executor::block_on(engine.durable(ticket)).unwrap();
        // One write(2) call: it survives the abort (not a machine crash).
        acked.write_all(format!("{round}\n").as_bytes()).unwrap();
        *progress.lock().unwrap() = (round, None);
    }
    panic!("no {step:?} step in 10,000 rounds");
}

/// Whatever step of a rotation or compaction the process dies in, the
/// reopened log holds every round the writer was told was durable, and
/// the idle group's entries and variable that compaction moved.
#[test]
fn a_crash_at_any_step_of_the_upkeep_loses_no_acknowledged_write() {
    const TEST: &str = "a_crash_at_any_step_of_the_upkeep_loses_no_acknowledged_write";
    let steps = [
        Maintenance::Rotating,
        Maintenance::Named,
        Maintenance::Compacting,
        Maintenance::Deleted,
    ];
    if let Ok(spec) = std::env::var(CRASH_CHILD) {
        let (dir, step) = spec.split_once('|').expect("dir|step");
        let step = steps
            .into_iter()
            .find(|s| format!("{s:?}") == step)
            .expect("a known step");
        crash_child(Path::new(dir), step);
    }
    for step in steps {
        let (_tmp, dir) = log_dir();
        let mut child = {
            let _forking = SPAWNING.write().unwrap_or_else(|e| e.into_inner());
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
                .env(CRASH_CHILD, format!("{}|{step:?}", dir.display()))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child must have aborted at {step:?}");
        let acked = fs::read_to_string(dir.with_extension("acked")).unwrap_or_default();
        let acked: u64 = acked.lines().last().map_or(0, |l| l.parse().unwrap());
        assert!(acked > 0, "{step:?}: the writer got no round through");
        let engine = open_log_with(&dir, SMALL).expect("the log reopens");
        assert!(
            engine.entries(100, 0..=u64::MAX).unwrap() == entries_of(100, 1..=3, 0, 120),
            "{step:?}: the idle group's entries were lost or changed"
        );
        assert_eq!(engine.var(100, 1).as_deref(), Some(&b"idle"[..]));
        let (first, last) = engine.bounds(1).expect("the writer's entries");
        assert!(
            last >= acked,
            "{step:?}: round {acked} was acknowledged, the log ends at {last}"
        );
        for (i, bytes) in engine.entries(1, first..=last).unwrap() {
            assert_eq!(bytes, payload(1, i, 0, 200), "{step:?}: entry {i}");
        }
        let var = engine.var(1, 1).expect("the writer's variable");
        let var = u64::from_be_bytes(var.try_into().unwrap());
        assert!(
            var >= acked,
            "{step:?}: variable {var}, round {acked} acknowledged"
        );
    }
}

/// Group `group` writes one 300-byte entry a round and purges it at once:
/// every file it fills is dead by the time the next one starts.
async fn churn(engine: &LogEngine, group: GroupId, rounds: u64) {
    for round in 1..=rounds {
        put(engine, group, &entries_of(group, round..=round, 0, 300)).await;
        engine
            .write_durably(group, Write::Purge(round))
            .await
            .unwrap();
    }
}

/// An emptied group (every entry truncated, no variables) reads the same
/// after old files were compacted away and the log reopened; `groups()`
/// promises only groups that have anything in the log.
#[tokio::test]
async fn an_emptied_group_is_listed_the_same_after_compaction() {
    let (_tmp, dir) = log_dir();
    let engine = open_log_with(&dir, SMALL).unwrap();
    put(&engine, 5, &entries_of(5, 1..=2, 0, 10)).await;
    engine.write_durably(5, Write::Truncate(1)).await.unwrap();
    churn(&engine, 1, 60).await;
    assert!(engine.files()[0].0 > 1, "file 1 was compacted away");
    let before = dump(&engine);
    let engine = reopen(engine, &dir, SMALL);
    assert_eq!(
        dump(&engine),
        before,
        "groups() and states across the reopen"
    );
    assert!(
        !engine.groups().contains(&5),
        "group 5 has nothing in the log: {:?}",
        engine.groups()
    );
}

/// One idle group whose never-purged entries fill more than half of the
/// oldest file must not keep every later file alive: while another group
/// churns (and purges), the log stays a bounded number of files.
#[tokio::test]
async fn a_large_idle_log_does_not_stop_compaction() {
    let (_tmp, dir) = log_dir();
    let engine = open_log_with(&dir, SMALL).unwrap();
    // About 3 KiB of live entries, all in file 1.
    put(&engine, 100, &entries_of(100, 1..=6, 0, 500)).await;
    churn(&engine, 1, 300).await;
    let files = engine.files();
    let total: u64 = files.iter().map(|&(_, size, _)| size).sum();
    let live: u64 = files.iter().map(|&(_, _, live)| live).sum();
    assert!(
        files.len() <= 6,
        "{} files, {total} bytes on disk for {live} live bytes: {files:?}",
        files.len()
    );
    assert_eq!(
        engine.entries(100, 0..=u64::MAX).unwrap(),
        entries_of(100, 1..=6, 0, 500)
    );
}

/// A log of small entries that are all live must not be rewritten by every
/// write: a file of small frames is mostly frame headers, but that is no
/// garbage to collect.
#[tokio::test]
async fn small_live_entries_are_not_rewritten_on_every_write() {
    let (_tmp, dir) = log_dir();
    let engine = open_log_with(&dir, SMALL).unwrap();
    // About 18 KiB of frames, none of them garbage (nothing is purged).
    for batch in 0..12u64 {
        let first = batch * 50 + 1;
        put(&engine, 1, &entries_of(1, first..=first + 49, 0, 5)).await;
    }
    let start = engine.files().last().unwrap().0;
    // Twenty small writes (under 700 bytes of frames) fit in one file.
    for i in 1..=20u64 {
        put(&engine, 2, &entries_of(2, i..=i, 0, 5)).await;
    }
    let files = engine.files();
    let started = files.last().unwrap().0 - start;
    assert!(
        started <= 1,
        "{started} files started for 20 small writes (the whole log rewritten each time?): {files:?}"
    );
    assert_eq!(
        engine.entries(1, 0..=u64::MAX).unwrap(),
        entries_of(1, 1..=600, 0, 5)
    );
}

// ------------------------------------------------------ 7. random model

/// xorshift64: deterministic, so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, max_len: u64) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A write, owned, to apply to both the engine and the model.
#[derive(Debug)]
enum Op {
    Entries(Vec<(u64, Vec<u8>)>),
    Truncate(u64),
    Purge(u64),
    Var(u8, Vec<u8>),
    Drop,
}

impl Op {
    fn as_write(&self) -> Write<'_> {
        match self {
            Op::Entries(e) => Write::Entries(e),
            Op::Truncate(i) => Write::Truncate(*i),
            Op::Purge(i) => Write::Purge(*i),
            Op::Var(tag, value) => Write::Var(*tag, value),
            Op::Drop => Write::Drop,
        }
    }
}

/// What the engine should hold for one group.
#[derive(Default)]
struct ModelGroup {
    entries: BTreeMap<u64, Vec<u8>>,
    vars: BTreeMap<u8, Vec<u8>>,
}

/// What the engine should hold: per group, entries and variables.
#[derive(Default)]
struct Model {
    groups: BTreeMap<GroupId, ModelGroup>,
}

impl Model {
    fn bounds(&self, group: GroupId) -> Option<(u64, u64)> {
        let entries = &self.groups.get(&group)?.entries;
        Some((*entries.keys().next()?, *entries.keys().next_back()?))
    }

    fn apply(&mut self, group: GroupId, op: &Op) {
        match op {
            Op::Entries(e) => {
                let log = &mut self.groups.entry(group).or_default().entries;
                log.extend(e.iter().cloned());
            }
            Op::Truncate(from) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.entries.split_off(from);
                }
            }
            Op::Purge(upto) => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.entries = g.entries.split_off(&upto.saturating_add(1));
                }
            }
            Op::Var(tag, value) => {
                self.groups
                    .entry(group)
                    .or_default()
                    .vars
                    .insert(*tag, value.clone());
            }
            Op::Drop => {
                self.groups.remove(&group);
            }
        }
    }

    fn state(&self, group: GroupId) -> GroupState {
        let Some(g) = self.groups.get(&group) else {
            return GroupState::default();
        };
        GroupState {
            entries: g.entries.iter().map(|(i, b)| (*i, b.clone())).collect(),
            vars: g.vars.clone(),
            bounds: self.bounds(group),
        }
    }

    /// A random write to `group` that mostly looks like Raft's (appends
    /// after the last entry) but also replaces, leaves gaps, truncates and
    /// purges anywhere, including past either end.
    fn random_op(&self, rng: &mut Rng, group: GroupId) -> Op {
        let bounds = self.bounds(group);
        match rng.below(100) {
            0..=59 => {
                let start = match bounds {
                    Some((_, last)) if rng.below(6) != 0 => last + 1,
                    Some((first, last)) => first + rng.below(last - first + 3),
                    None => 1 + rng.below(20),
                };
                let count = 1 + rng.below(4);
                Op::Entries(
                    (start..start + count)
                        .map(|i| (i, rng.bytes(300)))
                        .collect(),
                )
            }
            60..=67 => Op::Truncate(match bounds {
                Some((first, last)) => first + rng.below(last - first + 3),
                None => rng.below(10),
            }),
            68..=77 => Op::Purge(match bounds {
                Some((first, last)) => first.saturating_sub(1) + rng.below(last - first + 2),
                None => rng.below(10),
            }),
            78..=95 => Op::Var(1 + rng.below(3) as u8, rng.bytes(40)),
            _ => Op::Drop,
        }
    }
}

/// The engine holds exactly what the model does: the same entries,
/// variables and bounds for every group either knows, and the same groups
/// with anything in them.
fn check_model(engine: &LogEngine, model: &Model, context: &str) {
    let listed = engine.groups();
    let mut groups: Vec<GroupId> = model.groups.keys().copied().collect();
    groups.extend(&listed);
    groups.sort_unstable();
    groups.dedup();
    for &g in &groups {
        assert_eq!(
            group_state(engine, g),
            model.state(g),
            "{context}: group {g}"
        );
    }
    let engine_groups: Vec<GroupId> = listed
        .into_iter()
        .filter(|&g| !group_state(engine, g).is_empty())
        .collect();
    let model_groups: Vec<GroupId> = model
        .groups
        .iter()
        .filter(|(_, m)| !m.entries.is_empty() || !m.vars.is_empty())
        .map(|(&g, _)| g)
        .collect();
    assert_eq!(
        engine_groups, model_groups,
        "{context}: groups with anything in them"
    );
}

/// Random writes to four groups, some waited for and some not, with reopens
/// at random points; the engine is compared with the model after every few
/// steps and after every reopen.
async fn random_run(seed: u64, segment_bytes: u64, steps: u64) {
    let (_tmp, dir) = log_dir();
    let mut rng = Rng(seed);
    let mut model = Model::default();
    let mut engine = open_log_with(&dir, segment_bytes).unwrap();
    let (mut reopens, mut highest_seq) = (0, 1);
    for step in 0..steps {
        let context = format!("seed {seed:#x}, step {step}");
        let group = 1 + rng.below(4);
        let op = model.random_op(&mut rng, group);
        let ticket = engine
            .write(group, op.as_write())
            .unwrap_or_else(|e| panic!("{context}: {op:?}: {e}"));
        model.apply(group, &op);
        if rng.below(3) == 0 {
            engine.durable(ticket).await.unwrap();
        }
        if rng.below(40) == 0 {
            engine.settle().await.unwrap();
            check_files(&engine, &dir);
            highest_seq = highest_seq.max(engine.files().last().unwrap().0);
            drop(engine);
            // Now and then as after a crash mid-write: junk after the last
            // frame of the newest file, which the reopen must cut.
            if rng.below(3) == 0 {
                let newest = dir_listing(&dir).pop().unwrap();
                append_bytes(&dir.join(newest), &rng.bytes(60));
            }
            engine = open_log_with(&dir, segment_bytes).unwrap();
            reopens += 1;
            check_model(
                &engine,
                &model,
                &format!("{context}, after reopen {reopens}"),
            );
        } else if step % 5 == 0 {
            check_model(&engine, &model, &context);
        }
    }
    engine.settle().await.unwrap();
    highest_seq = highest_seq.max(engine.files().last().unwrap().0);
    let engine = reopen(engine, &dir, segment_bytes);
    check_model(&engine, &model, &format!("seed {seed:#x}, at the end"));
    check_files(&engine, &dir);
    // The run really exercised what it is for.
    assert!(reopens >= 3, "seed {seed:#x}: only {reopens} reopens");
    assert!(
        highest_seq >= 5,
        "seed {seed:#x}: only {highest_seq} files started"
    );
    assert!(
        engine.files()[0].0 > 1,
        "seed {seed:#x}: nothing was compacted"
    );
}

#[tokio::test]
async fn random_writes_match_a_model_across_reopens() {
    for (seed, segment_bytes) in [
        (1, SMALL),
        (0x9e37_79b9_7f4a_7c15, SMALL),
        (0xdead_beef, 2 << 10),
        (42, 8 << 10),
        (0x0123_4567_89ab_cdef, SMALL),
        (7, 2 << 10),
    ] {
        random_run(seed, segment_bytes, 600).await;
    }
}

// ------------------------------------------------------- 8. sled import

fn log_key(group: GroupId, index: u64) -> Vec<u8> {
    [group.to_be_bytes(), index.to_be_bytes()].concat()
}

fn var_key(group: GroupId, tag: u8) -> Vec<u8> {
    let mut key = group.to_be_bytes().to_vec();
    key.push(tag);
    key
}

const SLED_GROUPS: [GroupId; 3] = [0, 7, u64::MAX];

/// sled releases its lock on the directory on threads of its own, a moment
/// after its last handle is dropped: calls `open` again while the lock is
/// still held (for ten seconds at most).
fn while_sled_locked<T, E: std::fmt::Display>(mut open: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let opened = {
            let _no_fork = SPAWNING.read().unwrap_or_else(|e| e.into_inner());
            open()
        };
        match opened {
            Ok(opened) => return opened,
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("opening sled: {e}"),
        }
    }
}

/// Fills the sled trees `log` and `raft` as data directories kept them
/// before the engine (the values are opaque bytes to the engine).
fn fill_sled(dir: &Path) {
    let db = while_sled_locked(|| sled::Config::new().path(dir).open());
    let log = db.open_tree("log").unwrap();
    let raft = db.open_tree("raft").unwrap();
    for g in SLED_GROUPS {
        for i in 5..=20 {
            log.insert(log_key(g, i), payload(g, i, 0, 64)).unwrap();
        }
        for tag in 1..=3 {
            raft.insert(var_key(g, tag), format!("group {g} var {tag}").into_bytes())
                .unwrap();
        }
    }
    db.flush().unwrap();
}

fn check_imported(storage: &Storage) {
    let engine = storage.engine();
    assert_eq!(engine.groups(), SLED_GROUPS.to_vec());
    for g in SLED_GROUPS {
        assert_eq!(
            engine.entries(g, 0..=u64::MAX).unwrap(),
            entries_of(g, 5..=20, 0, 64)
        );
        assert_eq!(engine.bounds(g), Some((5, 20)));
        for tag in 1..=3 {
            assert_eq!(
                engine.var(g, tag),
                Some(format!("group {g} var {tag}").into_bytes()),
                "group {g} variable {tag}"
            );
        }
        assert_eq!(engine.var(g, 4), None);
    }
    assert!(
        storage.db().open_tree("log").unwrap().is_empty(),
        "sled's log tree is emptied"
    );
    assert!(
        storage.db().open_tree("raft").unwrap().is_empty(),
        "sled's raft tree is emptied"
    );
}

/// Opening a data directory whose log is in sled moves it into the engine
/// and empties the trees; the moved log is on disk (it is read back by a
/// fresh engine). A repeated move, as after a crash between the move and the
/// emptying of the trees, changes nothing.
#[test]
fn a_log_kept_in_sled_is_moved_into_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    fill_sled(tmp.path());

    // Storage::open starts a task: it needs a runtime, and the runtime's end
    // drops that task's handle on the database, so it can be opened again.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let storage = while_sled_locked(|| Storage::open(tmp.path(), 64 << 20));
        check_imported(&storage);
    });
    drop(runtime);

    // The engine alone, on the same files: the move was synced to them.
    let engine = open_log(&tmp.path().join("raftlog")).unwrap();
    for g in SLED_GROUPS {
        assert_eq!(
            engine.entries(g, 0..=u64::MAX).unwrap(),
            entries_of(g, 5..=20, 0, 64)
        );
        assert_eq!(
            engine.var(g, 2),
            Some(format!("group {g} var 2").into_bytes())
        );
    }
    let files_after_import = dir_listing(&tmp.path().join("raftlog"));
    drop(engine);

    // The trees full again, as if the last start crashed before emptying
    // them: the same move once more, and the same result.
    fill_sled(tmp.path());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let storage = while_sled_locked(|| Storage::open(tmp.path(), 64 << 20));
        check_imported(&storage);
    });
    drop(runtime);
    assert_eq!(dir_listing(&tmp.path().join("raftlog")), files_after_import);
}
