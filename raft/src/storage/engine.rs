//! The node's Raft log: every group's entries and Raft variables, in
//! append-only segment files that all groups share, made durable by one
//! `fdatasync` for every write that arrived meanwhile.
//!
//! The log used to live in sled. A sled flush hands its write to sled's
//! thread pool, which wakes every one of its idle threads (seven or more) for
//! each job; at one flush per commit on every replica that was a third of a
//! node's CPU. The flushes here run on one thread of the engine's own. sled
//! keeps what changes rarely: snapshots and the group directory.
//!
//! # Files
//!
//! `<data dir>/raftlog/<sequence number, 16 hex digits>.log`. A file starts
//! with [`MAGIC`], then holds frames (see `docs/formats.md`):
//!
//! ```text
//! u32 LE body length | u32 LE CRC-32 (IEEE) of the body | body
//! body: kind u8 | group u64 BE | argument u64 BE | data
//! ```
//!
//! | kind | argument | data | effect |
//! |---|---|---|---|
//! | 1 entry | index | the encoded entry | insert or replace the entry |
//! | 2 truncate | index | — | remove the group's entries from `index` on |
//! | 3 purge | index | — | remove the group's entries up to `index` |
//! | 4 variable | tag | the encoded value | set a Raft variable |
//! | 5 drop | — | — | forget the group |
//!
//! Replaying the frames of every file in order rebuilds the log. File
//! numbers must be consecutive (a gap is a lost file). Only the newest
//! file may end in a torn frame (a crash mid-write); it is cut there.
//! Every entry read back from a file (by openraft, or to move it during
//! compaction) has its frame checked again, so damage on disk while the
//! node runs is an error, never other bytes.
//! A file is created under a temporary name and renamed once its magic is on
//! disk. A lock on `raftlog/LOCK` keeps a second engine out of the directory
//! until the first one's flush thread has finished.
//!
//! # Rotation and compaction
//!
//! When the newest file passes [`SEGMENT_BYTES`] a new one is started, and
//! it begins with the current value of every group's variables. The new
//! file is made under its temporary name first; it is named only once
//! everything queued for the old file is on disk, so a crash never leaves
//! a torn frame anywhere but in the newest file. Files are deleted oldest
//! first: once the oldest holds less than half its size in live entries,
//! or all files together hold more than four segments and less than half
//! of it live, the oldest file's live entries and every group's variables
//! are written again to the newest file, synced, and the oldest is deleted
//! (and the directory synced). So no variable lives only in a deleted
//! file, even if a rotation was cut short, and replay stays correct: every
//! frame that removed or replaced something is newer than what it
//! removed.
//!
//! Both run on the flush thread. It holds the engine's lock only for work
//! in memory: to change the active file, to find the oldest file's live
//! entries (a walk over every group's index) and to queue them again (an
//! entry truncated, purged or replaced meanwhile is not moved). Creating
//! the file, reading the entries, syncing and deleting happen outside it,
//! so reads and writes of every group go on meanwhile; a write that waits
//! for its sync still waits for the step in progress, as the flush thread
//! is busy with it. [`LogEngine::open_observed`] lets tests stop or crash
//! the thread at each step.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write as _};
use std::ops::RangeInclusive;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::typ::GroupId;

/// The first bytes of every log file: the format and its version.
pub const MAGIC: [u8; 8] = *b"GRLOG\0\0\x01";

/// A file past this size is closed and a new one started.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// The largest frame body a file may hold; a longer length field is a
/// corrupt or torn frame, never an allocation.
pub const MAX_FRAME_BYTES: u32 = 256 << 20;

const FRAME_HEADER: u64 = 8;
const BODY_PREFIX: u64 = 17;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Entry = 1,
    Truncate = 2,
    Purge = 3,
    Var = 4,
    Drop = 5,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Entry,
            2 => Self::Truncate,
            3 => Self::Purge,
            4 => Self::Var,
            5 => Self::Drop,
            _ => return None,
        })
    }
}

/// Where [`LogEngine::entries`] finds an entry's bytes.
enum Source {
    /// Not in the file yet: copied from the queued frames.
    Memory(Vec<u8>),
    /// In this file.
    File(Arc<File>, Loc),
}

/// Where an entry's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    file: u64,
    offset: u64,
    len: u32,
}

impl Loc {
    /// The bytes of the entry's whole frame, which is what it keeps alive.
    fn frame_bytes(&self) -> u64 {
        FRAME_HEADER + BODY_PREFIX + u64::from(self.len)
    }

    /// Where the entry's frame starts.
    fn frame_start(&self) -> u64 {
        self.offset - FRAME_HEADER - BODY_PREFIX
    }

    /// Whether `next`'s frame follows this one's in the same file.
    fn precedes(&self, next: Loc) -> bool {
        next.file == self.file && next.frame_start() == self.offset + u64::from(self.len)
    }
}

#[derive(Default)]
struct GroupLog {
    entries: BTreeMap<u64, Loc>,
    vars: BTreeMap<u8, Vec<u8>>,
}

struct Segment {
    file: Arc<File>,
    /// Bytes of the file, frames and magic.
    size: u64,
    /// Bytes of the frames of the entries in it that are still in the log.
    live: u64,
}

/// A write to the log, as its callers see it.
pub enum Write<'a> {
    /// Insert or replace entries (index, encoded entry).
    Entries(&'a [(u64, Vec<u8>)]),
    /// Remove entries from this index on.
    Truncate(u64),
    /// Remove entries up to this index.
    Purge(u64),
    /// Set a Raft variable.
    Var(u8, &'a [u8]),
    /// Forget the group.
    Drop,
}

/// Frames the flush thread is writing, outside the lock.
struct Inflight {
    file: u64,
    /// Where in `file` they go.
    at: u64,
    bytes: Arc<Vec<u8>>,
}

struct State {
    groups: HashMap<GroupId, GroupLog>,
    files: BTreeMap<u64, Segment>,
    /// The newest file, which takes the writes.
    active: u64,
    /// Frames being written by the flush thread (to the active file, or
    /// to the one before it while a new file is started).
    inflight: Option<Inflight>,
    /// Frames not yet handed to the flush thread, for the active file at
    /// `pending_at`.
    pending: Vec<u8>,
    pending_at: u64,
    /// Frames queued so far; a write's ticket is this count after it.
    queued: u64,
    flusher_idle: bool,
    shutdown: bool,
    failed: Option<String>,
}

impl State {
    fn end(&self) -> u64 {
        self.pending_at + self.pending.len() as u64
    }

    /// Hands what is pending to the flush thread: the file, the frames and
    /// the ticket they bring to disk.
    fn take_batch(&mut self) -> (Arc<File>, Arc<Vec<u8>>, u64) {
        debug_assert!(self.inflight.is_none(), "one batch at a time");
        let bytes = Arc::new(std::mem::take(&mut self.pending));
        let at = self.pending_at;
        self.pending_at += bytes.len() as u64;
        self.inflight = Some(Inflight {
            file: self.active,
            at,
            bytes: bytes.clone(),
        });
        (self.files[&self.active].file.clone(), bytes, self.queued)
    }

    /// The flush thread is done with its batch; `written`: it is in the
    /// file.
    fn finish_batch(&mut self, written: bool) {
        let Some(batch) = self.inflight.take() else {
            return;
        };
        if let Some(seg) = self.files.get_mut(&batch.file).filter(|_| written) {
            seg.size = batch.at + batch.bytes.len() as u64;
        }
    }

    fn remove_loc(&mut self, loc: Loc) {
        if let Some(seg) = self.files.get_mut(&loc.file) {
            seg.live -= loc.frame_bytes();
        }
    }

    fn insert_loc(&mut self, group: GroupId, index: u64, loc: Loc) {
        if let Some(seg) = self.files.get_mut(&loc.file) {
            seg.live += loc.frame_bytes();
        }
        let old = self
            .groups
            .entry(group)
            .or_default()
            .entries
            .insert(index, loc);
        if let Some(old) = old {
            self.remove_loc(old);
        }
    }

    /// Applies one frame to the in-memory index (at write and at replay).
    fn apply(&mut self, kind: Kind, group: GroupId, arg: u64, data: &[u8], loc: Loc) {
        match kind {
            Kind::Entry => self.insert_loc(group, arg, loc),
            Kind::Truncate | Kind::Purge => {
                let Some(log) = self.groups.get_mut(&group) else {
                    return;
                };
                let removed = if kind == Kind::Truncate {
                    log.entries.split_off(&arg)
                } else {
                    let keep = log.entries.split_off(&arg.saturating_add(1));
                    std::mem::replace(&mut log.entries, keep)
                };
                for loc in removed.into_values() {
                    self.remove_loc(loc);
                }
            }
            Kind::Var => {
                self.groups
                    .entry(group)
                    .or_default()
                    .vars
                    .insert(arg as u8, data.to_vec());
            }
            Kind::Drop => {
                if let Some(log) = self.groups.remove(&group) {
                    for loc in log.entries.into_values() {
                        self.remove_loc(loc);
                    }
                }
            }
        }
    }

    /// Queues one frame for the active file and applies it.
    fn queue(&mut self, kind: Kind, group: GroupId, arg: u64, data: &[u8]) {
        let offset = self.end() + FRAME_HEADER + BODY_PREFIX;
        let body_len = BODY_PREFIX as usize + data.len();
        let mut hasher = crc32fast::Hasher::new();
        let mut prefix = [0u8; BODY_PREFIX as usize];
        prefix[0] = kind as u8;
        prefix[1..9].copy_from_slice(&group.to_be_bytes());
        prefix[9..].copy_from_slice(&arg.to_be_bytes());
        hasher.update(&prefix);
        hasher.update(data);
        self.pending
            .extend_from_slice(&(body_len as u32).to_le_bytes());
        self.pending
            .extend_from_slice(&hasher.finalize().to_le_bytes());
        self.pending.extend_from_slice(&prefix);
        self.pending.extend_from_slice(data);
        self.queued += 1;
        let loc = Loc {
            file: self.active,
            offset,
            len: data.len() as u32,
        };
        self.apply(kind, group, arg, data, loc);
    }

    /// Makes the new file `seq` (holding only the magic) the active one;
    /// nothing may be pending.
    fn start_file(&mut self, seq: u64, file: File) {
        assert!(
            self.pending.is_empty(),
            "pending frames belong to the old file"
        );
        let size = MAGIC.len() as u64;
        let file = Arc::new(file);
        self.files.insert(
            seq,
            Segment {
                file,
                size,
                live: 0,
            },
        );
        self.active = seq;
        self.pending_at = size;
    }

    /// The bytes at `loc` if they have not reached the file yet.
    fn unwritten(&self, loc: Loc) -> Option<Vec<u8>> {
        let len = loc.len as usize;
        if let Some(batch) = &self.inflight {
            let end = batch.at + batch.bytes.len() as u64;
            if loc.file == batch.file && (batch.at..end).contains(&loc.offset) {
                let at = (loc.offset - batch.at) as usize;
                return Some(batch.bytes[at..at + len].to_vec());
            }
        }
        if loc.file != self.active || loc.offset < self.pending_at {
            return None;
        }
        let at = (loc.offset - self.pending_at) as usize;
        Some(self.pending[at..at + len].to_vec())
    }
}

/// Raises the durable mark to `done` (never lowers it, never clears a
/// failure): the flush thread and [`LogEngine::sync`] may report out of
/// order.
fn report_durable(shared: &Shared, done: u64) {
    shared.durable.send_modify(|d| {
        if let Ok(prev) = d {
            *prev = (*prev).max(done);
        }
    });
}

/// What [`LogEngine::open_observed`] calls, on the flush thread and
/// without the engine's lock, at each step of a rotation or compaction.
pub type Observer = Box<dyn Fn(Maintenance) + Send + Sync>;

/// A step of the flush thread's upkeep of the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Maintenance {
    /// A new file has been made; the active file is about to change.
    Rotating,
    /// The new file has its name; the old one's last batch is on disk.
    Named,
    /// An old file was chosen; its live entries are about to be read.
    Compacting,
    /// The old file is deleted; what was moved out of it is on disk.
    Deleted,
}

struct Shared {
    dir: PathBuf,
    segment_bytes: u64,
    /// Told of each rotation and compaction as it starts (tests).
    observer: Option<Observer>,
    /// Holds the directory's lock until the flush thread is done.
    _lock: File,
    state: Mutex<State>,
    wake: Condvar,
    /// The ticket of the last durable write, or why the log failed.
    durable: watch::Sender<Result<u64, String>>,
}

impl Shared {
    fn observe(&self, step: Maintenance) {
        if let Some(observer) = &self.observer {
            observer(step);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("the raft log's lock is never held across a panic")
    }
}

/// Ends the flush thread when the last handle goes, after it wrote what was
/// queued, so a reopened log never meets a writer of the old one.
struct Handle {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

/// The node's Raft log (cheap to clone; every group's store holds one).
#[derive(Clone)]
pub struct LogEngine {
    handle: Arc<Handle>,
}

fn file_name(seq: u64) -> String {
    format!("{seq:016x}.log")
}

/// The sequence number in a log file's name (16 lowercase hex digits, then
/// `.log`), if it is one.
fn log_file_seq(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    let lower_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if digits.len() != 16 || !digits.chars().all(lower_hex) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("raft log: {what} {}: {e}", path.display())
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("syncing directory", dir, e))
}

/// The entry in `frame` (header and body, as read back from `loc`), after
/// checking that the frame is still the one written there.
fn checked_entry(frame: &[u8], group: GroupId, index: u64, loc: Loc) -> Result<Vec<u8>, String> {
    let body = &frame[FRAME_HEADER as usize..];
    let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(frame[4..8].try_into().expect("4 bytes"));
    let intact = len as usize == body.len()
        && crc32fast::hash(body) == crc
        && body[0] == Kind::Entry as u8
        && body[1..9] == group.to_be_bytes()
        && body[9..17] == index.to_be_bytes();
    if !intact {
        return Err(format!(
            "raft log: entry {index} of group {group} in {} at byte {} is damaged (its frame no longer checks out)",
            file_name(loc.file),
            loc.frame_start()
        ));
    }
    Ok(body[BODY_PREFIX as usize..].to_vec())
}

/// Parses the frames of one file; returns the length of its valid prefix.
fn replay_file(state: &mut State, seq: u64, bytes: &[u8], path: &Path) -> Result<u64, String> {
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(format!(
            "raft log: {} is not a garrison raft log file of this version (its first bytes are not {:?})",
            path.display(),
            String::from_utf8_lossy(&MAGIC)
        ));
    }
    let mut at = MAGIC.len();
    loop {
        let Some(header) = bytes.get(at..at + FRAME_HEADER as usize) else {
            return Ok(at as u64);
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let start = at + FRAME_HEADER as usize;
        if len > MAX_FRAME_BYTES {
            return Ok(at as u64);
        }
        let Some(body) = bytes.get(start..start + len as usize) else {
            return Ok(at as u64);
        };
        if crc32fast::hash(body) != crc {
            return Ok(at as u64);
        }
        // A whole frame whose checksum holds was written so: if it is not
        // one this version knows, the file is not ours to cut.
        let kind = body.first().copied().and_then(Kind::from_byte);
        let Some(kind) = kind.filter(|_| len as u64 >= BODY_PREFIX) else {
            return Err(format!(
                "raft log: {} holds at byte {at} a frame of an unknown kind or shape (written by another version?)",
                path.display()
            ));
        };
        let group = GroupId::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
        let arg = u64::from_be_bytes(body[9..17].try_into().expect("8 bytes"));
        let data = &body[BODY_PREFIX as usize..];
        let loc = Loc {
            file: seq,
            offset: (start as u64) + BODY_PREFIX,
            len: data.len() as u32,
        };
        state.apply(kind, group, arg, data, loc);
        at = start + len as usize;
    }
}

/// Creates file `seq` holding the magic: under a temporary name first, so
/// that a crash never leaves a log file without its magic.
fn create_file(dir: &Path, seq: u64) -> Result<File, String> {
    let (tmp, file) = create_tmp_file(dir, seq)?;
    let path = dir.join(file_name(seq));
    std::fs::rename(&tmp, &path).map_err(|e| io_err("naming", &path, e))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Creates file `seq` under its temporary name, holding the magic (synced);
/// the caller renames it. A crash before that leaves a file that the next
/// start deletes.
fn create_tmp_file(dir: &Path, seq: u64) -> Result<(PathBuf, File), String> {
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", file_name(seq)));
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&tmp)
        .map_err(|e| io_err("creating", &tmp, e))?;
    let mut writer = &file;
    file.set_len(0)
        .and_then(|_| writer.write_all(&MAGIC))
        .and_then(|_| file.sync_data())
        .map_err(|e| io_err("writing", &tmp, e))?;
    Ok((tmp, file))
}

/// The name a file has until its magic is on disk.
const TMP_SUFFIX: &str = ".tmp";

/// The file whose lock says which process owns the directory.
const LOCK_FILE: &str = "LOCK";

impl LogEngine {
    /// Opens (or creates) the log in `dir` and replays it, then starts its
    /// flush thread.
    pub fn open(dir: &Path) -> Result<Self, String> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`Self::open`], starting a new file past `segment_bytes` (tests use
    /// small files to exercise rotation and compaction).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<Self, String> {
        Self::open_observed(dir, segment_bytes, None)
    }

    /// [`Self::open_with`], telling `observer` of every step of every
    /// rotation and compaction (tests pause or crash the flush thread
    /// there).
    pub fn open_observed(
        dir: &Path,
        segment_bytes: u64,
        observer: Option<Observer>,
    ) -> Result<Self, String> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| io_err("creating", dir, e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err("opening", &lock_path, e))?;
        lock.try_lock().map_err(|e| {
            format!(
                "raft log: {} is in use by another process or engine ({e})",
                dir.display()
            )
        })?;
        let mut seqs = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| io_err("listing", dir, e))? {
            let item = item.map_err(|e| io_err("listing", dir, e))?;
            let name = item.file_name();
            let name = name.to_string_lossy();
            if name == LOCK_FILE {
                continue;
            }
            if name
                .strip_suffix(TMP_SUFFIX)
                .and_then(log_file_seq)
                .is_some()
            {
                // A file being started when the node stopped: never a log yet.
                let path = item.path();
                std::fs::remove_file(&path).map_err(|e| io_err("deleting", &path, e))?;
                continue;
            }
            match log_file_seq(&name) {
                Some(seq) => seqs.push(seq),
                None => {
                    return Err(format!(
                        "raft log: unexpected file {} in {}",
                        name,
                        dir.display()
                    ))
                }
            }
        }
        seqs.sort_unstable();
        // Files are deleted oldest first and started one number up: a
        // missing number in between is a lost file, and with it entries and
        // the removals that later files rely on.
        if let Some(gap) = seqs.windows(2).find(|w| w[1] != w[0] + 1) {
            return Err(format!(
                "raft log: {} is missing from {} (between {} and {}): a log file was lost",
                file_name(gap[0] + 1),
                dir.display(),
                file_name(gap[0]),
                file_name(gap[1])
            ));
        }
        let mut state = State {
            groups: HashMap::new(),
            files: BTreeMap::new(),
            active: 0,
            inflight: None,
            pending: Vec::new(),
            pending_at: 0,
            queued: 0,
            flusher_idle: false,
            shutdown: false,
            failed: None,
        };
        for (i, &seq) in seqs.iter().enumerate() {
            let path = dir.join(file_name(seq));
            let mut file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_err("opening", &path, e))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)
                .map_err(|e| io_err("reading", &path, e))?;
            let last = i + 1 == seqs.len();
            state.files.insert(
                seq,
                Segment {
                    file: Arc::new(file.try_clone().map_err(|e| io_err("opening", &path, e))?),
                    size: bytes.len() as u64,
                    live: 0,
                },
            );
            let valid = replay_file(&mut state, seq, &bytes, &path)?;
            if valid < bytes.len() as u64 {
                if !last {
                    return Err(format!(
                        "raft log: {} is corrupt at byte {valid} and is not the newest file",
                        path.display()
                    ));
                }
                // A crash cut the last write short: drop the torn frame.
                tracing::warn!(
                    file = %path.display(),
                    at = valid,
                    bytes = bytes.len() as u64 - valid,
                    "raft log: cutting a torn or damaged end of the newest file"
                );
                file.set_len(valid)
                    .and_then(|_| file.sync_all())
                    .map_err(|e| io_err("cutting the torn end of", &path, e))?;
            }
            if let Some(seg) = state.files.get_mut(&seq) {
                seg.size = valid;
            }
            state.active = seq;
            state.pending_at = valid;
        }
        if state.files.is_empty() {
            state.start_file(1, create_file(dir, 1)?);
        }
        let (durable, _) = watch::channel(Ok(0));
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            segment_bytes,
            observer,
            _lock: lock,
            state: Mutex::new(state),
            wake: Condvar::new(),
            durable,
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("garrison-raftlog".into())
            .spawn(move || flush_loop(&worker))
            .map_err(|e| format!("raft log: starting the flush thread: {e}"))?;
        Ok(Self {
            handle: Arc::new(Handle {
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// Applies `write` to `group` at once (readers see it) and returns the
    /// ticket to wait for with [`Self::durable`].
    pub fn write(&self, group: GroupId, write: Write<'_>) -> Result<u64, String> {
        self.write_inner(group, write, true)
    }

    /// [`Self::write`] without starting a sync: the write becomes durable
    /// with the next one (for what may be lost, like the committed index).
    pub fn write_lazily(&self, group: GroupId, write: Write<'_>) -> Result<u64, String> {
        self.write_inner(group, write, false)
    }

    fn write_inner(&self, group: GroupId, write: Write<'_>, wake: bool) -> Result<u64, String> {
        let too_long = match &write {
            Write::Entries(entries) => entries.iter().map(|(_, b)| b.len()).max().unwrap_or(0),
            Write::Var(_, value) => value.len(),
            _ => 0,
        };
        if too_long as u64 + BODY_PREFIX > u64::from(MAX_FRAME_BYTES) {
            return Err(format!(
                "raft log: a record of {too_long} bytes is longer than the {MAX_FRAME_BYTES} a frame may hold"
            ));
        }
        let shared = self.shared();
        let mut state = shared.lock();
        if let Some(e) = &state.failed {
            return Err(e.clone());
        }
        match write {
            Write::Entries(entries) => {
                for (index, bytes) in entries {
                    state.queue(Kind::Entry, group, *index, bytes);
                }
            }
            Write::Truncate(from) => state.queue(Kind::Truncate, group, from, &[]),
            Write::Purge(upto) => state.queue(Kind::Purge, group, upto, &[]),
            Write::Var(tag, value) => state.queue(Kind::Var, group, u64::from(tag), value),
            Write::Drop => state.queue(Kind::Drop, group, 0, &[]),
        }
        let ticket = state.queued;
        if wake && state.flusher_idle {
            state.flusher_idle = false;
            shared.wake.notify_one();
        }
        Ok(ticket)
    }

    /// Waits until the write with `ticket` (and every one before it) is on
    /// disk.
    pub async fn durable(&self, ticket: u64) -> Result<(), String> {
        let shared = self.shared();
        let mut rx = shared.durable.subscribe();
        if !matches!(&*rx.borrow(), Ok(done) if *done >= ticket) {
            // The write may have been queued lazily: start its sync.
            let mut state = shared.lock();
            if state.flusher_idle && !state.pending.is_empty() {
                state.flusher_idle = false;
                shared.wake.notify_one();
            }
        }
        let seen = rx
            .wait_for(|d| d.as_ref().map_or(true, |&done| done >= ticket))
            .await
            .map_err(|_| "raft log: the flush thread stopped".to_string())?;
        seen.as_ref().map(|_| ()).map_err(Clone::clone)
    }

    /// Waits until everything written so far is on disk.
    pub async fn settle(&self) -> Result<(), String> {
        let ticket = self.shared().lock().queued;
        self.durable(ticket).await
    }

    /// Writes and waits until the write is on disk.
    pub async fn write_durably(&self, group: GroupId, write: Write<'_>) -> Result<(), String> {
        let ticket = self.write(group, write)?;
        self.durable(ticket).await
    }

    /// Waits, blocking the calling thread, until everything written so far
    /// is on disk (start-up only: it blocks a runtime thread if called from
    /// one).
    pub fn sync(&self) -> Result<(), String> {
        // Unconstrained: under a runtime, an exhausted task budget would
        // defer the watch's wake-up to a yield that never comes here.
        futures::executor::block_on(tokio::task::unconstrained(self.settle()))
    }

    /// A Raft variable of `group`.
    pub fn var(&self, group: GroupId, tag: u8) -> Option<Vec<u8>> {
        let state = self.shared().lock();
        state.groups.get(&group)?.vars.get(&tag).cloned()
    }

    /// The first and last index of `group`'s entries.
    pub fn bounds(&self, group: GroupId) -> Option<(u64, u64)> {
        let state = self.shared().lock();
        let entries = &state.groups.get(&group)?.entries;
        Some((*entries.keys().next()?, *entries.keys().next_back()?))
    }

    /// The encoded entries of `group` in `range`, in index order.
    pub fn entries(
        &self,
        group: GroupId,
        range: RangeInclusive<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, String> {
        // Entries still in memory are copied under the lock; the others are
        // read from their files after it, one read for each run of adjacent
        // frames (an append's entries are written together).
        let mut wanted: Vec<(u64, Source)> = Vec::new();
        {
            let state = self.shared().lock();
            if let Some(e) = &state.failed {
                return Err(e.clone());
            }
            let Some(log) = state.groups.get(&group) else {
                return Ok(Vec::new());
            };
            for (&index, &loc) in log.entries.range(range) {
                let source = match state.unwritten(loc) {
                    Some(bytes) => Source::Memory(bytes),
                    None => {
                        let file = state.files.get(&loc.file).map(|s| s.file.clone());
                        let file = file.ok_or_else(|| {
                            format!("raft log: entry {index} of group {group} is in a deleted file")
                        })?;
                        Source::File(file, loc)
                    }
                };
                wanted.push((index, source));
            }
        }
        let mut out = Vec::with_capacity(wanted.len());
        let mut rest = wanted.into_iter().peekable();
        while let Some((index, source)) = rest.next() {
            let (file, first) = match source {
                Source::Memory(bytes) => {
                    out.push((index, bytes));
                    continue;
                }
                Source::File(file, loc) => (file, loc),
            };
            let mut run = vec![(index, first)];
            while let Some((next, Source::File(_, loc))) = rest.peek() {
                if !run.last().is_some_and(|&(_, prev)| prev.precedes(*loc)) {
                    break;
                }
                run.push((*next, *loc));
                rest.next();
            }
            out.extend(read_run(&file, group, &run)?);
        }
        Ok(out)
    }

    /// The groups that have anything in the log (an entry or a variable).
    pub fn groups(&self) -> Vec<GroupId> {
        let state = self.shared().lock();
        let mut groups: Vec<GroupId> = state
            .groups
            .iter()
            .filter(|(_, log)| !log.entries.is_empty() || !log.vars.is_empty())
            .map(|(&group, _)| group)
            .collect();
        groups.sort_unstable();
        groups
    }

    /// The log's files, oldest first, with their size and live entry bytes.
    pub fn files(&self) -> Vec<(u64, u64, u64)> {
        let state = self.shared().lock();
        state
            .files
            .iter()
            .map(|(&seq, s)| (seq, s.size, s.live))
            .collect()
    }
}

/// The flush thread: writes what was queued, syncs it, tells the waiters;
/// rotates and compacts between flushes.
fn flush_loop(shared: &Shared) {
    loop {
        let mut state = shared.lock();
        while state.pending.is_empty() && !state.shutdown {
            state.flusher_idle = true;
            state = shared
                .wake
                .wait(state)
                .expect("the raft log's lock is never held across a panic");
        }
        state.flusher_idle = false;
        if state.pending.is_empty() {
            return;
        }
        drop(state);
        let result = flush_pending(shared)
            .and_then(|_| {
                let state = shared.lock();
                let full = state.files[&state.active].size >= shared.segment_bytes;
                drop(state);
                if full {
                    rotate(shared)?;
                }
                Ok(())
            })
            .and_then(|_| compact(shared));
        if let Err(e) = result {
            tracing::error!("{e}; the node's raft log refuses further writes");
            shared.lock().failed = Some(e.clone());
            shared.durable.send_modify(|d| *d = Err(e));
            return;
        }
    }
}

/// Appends a batch taken with [`State::take_batch`] to its file and syncs
/// it, outside the lock; a failure fails the engine.
fn write_batch(shared: &Shared, file: &File, batch: &[u8]) -> Result<(), String> {
    let mut writer = file;
    let result = writer
        .write_all(batch)
        .and_then(|_| file.sync_data())
        .map_err(|e| format!("raft log: writing: {e}"));
    let mut state = shared.lock();
    state.finish_batch(result.is_ok());
    if let Err(e) = &result {
        // What reached the file is unknown: refuse everything from now on.
        state.failed = Some(e.clone());
    }
    result
}

/// Writes and syncs what is queued (the flush thread's step), then reports
/// it durable. Readers and writers go on meanwhile.
fn flush_pending(shared: &Shared) -> Result<(), String> {
    let (file, batch, ticket) = {
        let mut state = shared.lock();
        if let Some(e) = &state.failed {
            return Err(e.clone());
        }
        if state.pending.is_empty() {
            return Ok(());
        }
        state.take_batch()
    };
    write_batch(shared, &file, &batch)?;
    report_durable(shared, ticket);
    Ok(())
}

/// Starts a new file that begins with every group's variables. The file is
/// made (and synced) before the lock is taken; under it, the active file
/// only changes hands. The new file gets its name once everything queued
/// for the old one is on disk, so only the newest file ever ends torn.
fn rotate(shared: &Shared) -> Result<(), String> {
    let seq = shared.lock().active + 1;
    let (tmp, file) = create_tmp_file(&shared.dir, seq)?;
    shared.observe(Maintenance::Rotating);
    let old = {
        let mut state = shared.lock();
        let old = (!state.pending.is_empty()).then(|| state.take_batch());
        state.start_file(seq, file);
        queue_vars(&mut state);
        old
    };
    if let Some((old_file, old_batch, _)) = &old {
        write_batch(shared, old_file, old_batch)?;
    }
    let path = shared.dir.join(file_name(seq));
    std::fs::rename(&tmp, &path).map_err(|e| io_err("naming", &path, e))?;
    sync_dir(&shared.dir)?;
    shared.observe(Maintenance::Named);
    if let Some((_, _, ticket)) = old {
        report_durable(shared, ticket);
    }
    Ok(())
}

/// Deletes the oldest files while they hold less than half their size in
/// live entries (or the files as a whole do), writing those entries again
/// to the active file first. The lock is held only to choose the file,
/// list its live entries, and queue them again; their bytes are read, and
/// the queue synced and the file deleted, outside it.
fn compact(shared: &Shared) -> Result<(), String> {
    loop {
        let Some((oldest, file, moving)) = choose_compaction(shared) else {
            return Ok(());
        };
        shared.observe(Maintenance::Compacting);
        let moved = read_moving(&file, &moving)?;
        {
            let mut state = shared.lock();
            // Every variable again too: the newer files begin with a copy of
            // them only if their rotation finished before a crash.
            queue_vars(&mut state);
            for ((group, index, loc), bytes) in moved {
                // Truncated, purged or replaced meanwhile: not to be moved.
                let current = state.groups.get(&group).and_then(|g| g.entries.get(&index));
                if current == Some(&loc) {
                    state.queue(Kind::Entry, group, index, &bytes);
                }
            }
        }
        flush_pending(shared)?;
        {
            let mut state = shared.lock();
            // New entries never go to an old file, so none can be left.
            let live = state.files.get(&oldest).map_or(0, |seg| seg.live);
            if live != 0 {
                return Err(format!(
                    "raft log: {} still holds {live} live bytes after its entries were moved",
                    file_name(oldest)
                ));
            }
            state.files.remove(&oldest);
        }
        let path = shared.dir.join(file_name(oldest));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("deleting", &path, e)),
        }
        // Deletions reach the disk in order: an older file never outlives
        // a newer one.
        sync_dir(&shared.dir)?;
        shared.observe(Maintenance::Deleted);
    }
}

/// An entry to move out of a file: its group, index and place.
type LiveEntry = (GroupId, u64, Loc);

/// The file to compact, if one is due, with its live entries in (group,
/// index) order.
fn choose_compaction(shared: &Shared) -> Option<(u64, Arc<File>, Vec<LiveEntry>)> {
    let state = shared.lock();
    let (&oldest, seg) = state.files.iter().next()?;
    let (total, live) = state
        .files
        .values()
        .fold((0, 0), |(t, l), s| (t + s.size, l + s.live));
    // The oldest file goes when it is mostly dead, or when the files as a
    // whole are: a mostly live oldest file (idle groups' entries) must not
    // keep every newer file on disk.
    let mostly_dead = seg.live * 2 < seg.size;
    let too_much = total > 4 * shared.segment_bytes && total > 2 * live;
    if oldest == state.active || !(mostly_dead || too_much) {
        return None;
    }
    let mut moving: Vec<LiveEntry> = Vec::new();
    for (&group, log) in &state.groups {
        for (&index, &loc) in &log.entries {
            if loc.file == oldest {
                moving.push((group, index, loc));
            }
        }
    }
    moving.sort_unstable_by_key(|(g, i, _)| (*g, *i));
    Some((oldest, seg.file.clone(), moving))
}

/// Reads and checks the entries to move from `file`: one read for each run
/// of a group's adjacent frames.
fn read_moving(file: &File, moving: &[LiveEntry]) -> Result<Vec<(LiveEntry, Vec<u8>)>, String> {
    let mut moved = Vec::with_capacity(moving.len());
    for run in moving.chunk_by(|a, b| a.0 == b.0 && a.2.precedes(b.2)) {
        let locs: Vec<(u64, Loc)> = run.iter().map(|&(_, index, loc)| (index, loc)).collect();
        let read = read_run(file, run[0].0, &locs)?;
        moved.extend(
            run.iter()
                .zip(read)
                .map(|(&live, (_, bytes))| (live, bytes)),
        );
    }
    Ok(moved)
}

/// Reads the entries of `group` in `run` (adjacent frames in `file`, in
/// order) with one read, from the first frame's header, so every frame's
/// checksum is checked again: a file damaged while the node runs gives an
/// error, never other bytes.
fn read_run(
    file: &File,
    group: GroupId,
    run: &[(u64, Loc)],
) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let (Some(&(first_index, first)), Some(&(_, last))) = (run.first(), run.last()) else {
        return Ok(Vec::new());
    };
    let start = first.frame_start();
    let mut span = vec![0; (last.offset + u64::from(last.len) - start) as usize];
    file.read_exact_at(&mut span, start).map_err(|e| {
        format!(
            "raft log: reading entries from {first_index} of group {group} in {}: {e}",
            file_name(first.file)
        )
    })?;
    run.iter()
        .map(|&(index, loc)| {
            let at = (loc.frame_start() - start) as usize;
            let frame = &span[at..at + loc.frame_bytes() as usize];
            Ok((index, checked_entry(frame, group, index, loc)?))
        })
        .collect()
}

/// Queues a frame for every variable of every group.
fn queue_vars(state: &mut State) {
    let mut vars: Vec<(GroupId, u8, Vec<u8>)> = Vec::new();
    for (&group, log) in &state.groups {
        for (&tag, value) in &log.vars {
            vars.push((group, tag, value.clone()));
        }
    }
    vars.sort_unstable_by_key(|(g, t, _)| (*g, *t));
    for (group, tag, value) in vars {
        state.queue(Kind::Var, group, u64::from(tag), &value);
    }
}
