//! One index: file segments + memory segments + WAL + manifest, behind a
//! published snapshot.
//!
//! Who serialises what:
//! - `state` (mutex): segment lists, manifest, published position. Held
//!   briefly to prepare a group, to publish one, and to plan and commit
//!   maintenance.
//! - `wal` (mutex): the WAL writer and the logged position; held for one
//!   group's append and fsync, never while taking `state` (lock order:
//!   `state` before `wal` before `logged`).
//! - `logged` (mutex): groups logged and not yet published.
//! - `checkpoint_lock`: one checkpoint at a time.
//! - `memory_merge_lock`: one memory merge at a time (beside a checkpoint, on
//!   memory segments that arrived after the checkpoint took all it found).
//! - `merge_lock`: one file merge at a time (beside both).
//!
//! Segments taken by a running checkpoint or merge are listed in `busy`, so no
//! two tasks ever take the same segment.
//! - `snapshot` (atomic swap): what searches read; never blocks on the above.
//!
//! Durability: `apply` returns only after the batches are fsynced in the WAL. A
//! checkpoint writes memory segments into a file segment, then the manifest, then
//! trims the WAL. A merge writes its output, then the manifest, then retires the
//! inputs (deleted when the last snapshot holding them drops). A crash between any
//! two steps leaves the old manifest valid; orphan files are removed on open.
//!
//! Backpressure: if segments pile up faster than maintenance folds them, `apply`
//! waits (bounded by `stall_timeout`) and then fails with `WriteStall`.
//!
//! Files: this one holds the types and accessors; `open` (create, open,
//! recovery from the WAL), `apply` (the write path) and `maintenance`
//! (checkpoints and merges) each add their part of `impl Index`.

mod apply;
mod maintenance;
mod open;

pub use apply::{Fence, Prepared};

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::durable::Fs;
use crate::file_segment::OpenOptions;
use crate::manifest::Manifest;
use crate::merge_policy::TieredMergePolicy;
use crate::segment::Segment;
use crate::snapshot::Snapshot;
use crate::types::{Generation, Metadata, Position, SegmentId};
use crate::wal::{WalOptions, WalWriter};

pub const SEGMENTS_DIR: &str = "segments";
pub const WAL_DIR: &str = "wal";
const LOCK_FILE: &str = "LOCK";

#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// Checkpoint once memory segments hold this many postings.
    pub checkpoint_threshold: u64,
    /// Checkpoint once the oldest unflushed batch is this old.
    pub checkpoint_age: Duration,
    pub memory_policy: TieredMergePolicy,
    pub file_policy: TieredMergePolicy,
    /// Writes wait while there are more memory segments than this...
    pub max_memory_segments: usize,
    /// ...or more file segments than this...
    pub max_file_segments: usize,
    /// ...or memory segments hold more than `checkpoint_threshold` times this.
    pub max_memory_factor: u64,
    /// How long a write waits for maintenance before failing with `WriteStall`.
    pub stall_timeout: Duration,
    pub wal: WalOptions,
    pub open: OpenOptions,
    /// Where fsyncs go (the OS; a power-cut model in tests).
    pub fs: Fs,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            checkpoint_threshold: 8 << 20,
            checkpoint_age: Duration::from_secs(60),
            // In-memory merges are cheap (a few ms for a few batches) and every
            // memory segment costs each search a lookup: keep them few. The
            // floor is about one 1,000-fingerprint batch (0.96 MB of
            // postings): with 4 MB, 4 to 14 batches stayed in tier 0 and the
            // merged segment was merged again with every 3 new ones (1.8
            // rewrites per posting before a checkpoint instead of 1.2, by a
            // simulation of the policy; docs/benchmarks.md "Ingest with
            // filters").
            memory_policy: TieredMergePolicy {
                segments_per_tier: 4,
                max_merge_at_once: 8,
                floor_bytes: 1 << 20,
                max_merged_bytes: u64::MAX,
                max_segments: 16,
            },
            file_policy: TieredMergePolicy::default(),
            max_memory_segments: 48,
            max_file_segments: 64,
            max_memory_factor: 3,
            stall_timeout: Duration::from_secs(5),
            wal: WalOptions::default(),
            open: OpenOptions::default(),
            fs: Fs::default(),
        }
    }
}

/// Counters for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct Counters {
    pub checkpoints: AtomicU64,
    pub memory_merges: AtomicU64,
    pub file_merges: AtomicU64,
    /// Bytes written into segment files (checkpoints + merges).
    pub segment_bytes_written: AtomicU64,
    pub wal_syncs: AtomicU64,
    /// Time writes spent waiting on a stall, in microseconds.
    pub stall_micros: AtomicU64,
}

/// A snapshot of the index's shape, for `_status`, metrics and `inspect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexStats {
    pub generation: Generation,
    pub applied: Position,
    /// What survives a crash: `applied`, except during a bulk load.
    pub durable: Position,
    pub checkpoint_position: Position,
    pub num_docs: u64,
    pub memory_segments: usize,
    pub file_segments: usize,
    pub memory_postings: u64,
    pub file_postings: u64,
    pub file_bytes: u64,
}

struct MemoryEntry {
    segment: Arc<Segment>,
    created: Instant,
}

struct State {
    manifest: Manifest,
    files: Vec<Arc<Segment>>,
    memory: Vec<MemoryEntry>,
    /// Segments taken by a running checkpoint or merge.
    busy: HashSet<SegmentId>,
    applied: Position,
    metadata: Metadata,
    poisoned: Option<String>,
}

/// The WAL side of the write path: whoever holds it logs one group at a time.
struct WalState {
    writer: WalWriter,
    /// Newest position logged (or applied unlogged in bulk load).
    logged: Position,
    /// Newest position applied without the WAL (bulk load) and not yet in a
    /// file segment. While set nothing is logged, so the WAL never holds a
    /// batch that follows a hole; the next checkpoint covering it clears it.
    unlogged: Option<Position>,
    /// The current write pipeline's fence (see [`Index::fence`]).
    fence: u64,
    /// Ids changed by recently logged groups (see `Index::mark_replaced`).
    recent: RecentIds,
}

/// Whether each id was left live, and by the batch at which position.
type RecentIds = rustc_hash::FxHashMap<crate::types::FingerprintId, (bool, Position)>;

impl State {
    fn next_id(&mut self) -> SegmentId {
        let id = SegmentId(self.manifest.next_segment_id);
        self.manifest.next_segment_id += 1;
        id
    }

    fn memory_postings(&self) -> u64 {
        self.memory
            .iter()
            .map(|m| m.segment.info.num_postings)
            .sum()
    }

    fn all_segments(&self) -> Vec<Arc<Segment>> {
        self.files
            .iter()
            .cloned()
            .chain(self.memory.iter().map(|m| m.segment.clone()))
            .collect()
    }
}

pub struct Index {
    dir: PathBuf,
    opts: IndexOptions,
    _lock: File,
    state: Mutex<State>,
    wal: Mutex<WalState>,
    /// Groups logged and not yet published, oldest first.
    logged: Mutex<VecDeque<Prepared>>,
    /// `WalState::unlogged` for readers that must not wait on an fsync (0:
    /// none).
    unlogged: AtomicU64,
    /// One `apply` (prepare, log, publish) at a time.
    apply_lock: Mutex<()>,
    maintained: Condvar,
    checkpoint_lock: Mutex<()>,
    memory_merge_lock: Mutex<()>,
    merge_lock: Mutex<()>,
    snapshot: ArcSwap<Snapshot>,
    pub counters: Counters,
    /// Bulk load (a replica bootstrapping): fewer, larger merges.
    bulk: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("dir", &self.dir).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves the data as consistent as any crash
    // would: keep going rather than cascade the panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Index {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &IndexOptions {
        &self.opts
    }

    /// The current snapshot; hold it for as long as a consistent view is needed.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn generation(&self) -> Generation {
        self.snapshot.load().generation
    }

    /// Position of the last applied batch.
    pub fn position(&self) -> Position {
        self.snapshot.load().position
    }

    /// The batches applied after `since`, from the WAL (and the checkpointed
    /// WAL files it retains), at most about `max_changes` changes: the change
    /// feed's source (docs/api.md `_changes`). Only published batches are
    /// read. `ChangesNotRetained` if `since` is older than what is kept.
    pub fn changes_since(
        &self,
        since: Position,
        max_changes: usize,
        hint: Option<crate::wal::ChangesCursor>,
    ) -> crate::error::Result<crate::wal::ChangesPage> {
        let upto = self.logged_upto(since)?;
        crate::wal::read_since(&self.dir.join(WAL_DIR), since, upto, max_changes, hint)
    }

    /// The position the change log reaches, if what follows `since` is all
    /// in it: batches applied without the WAL (a replica's bulk load) are
    /// not, and a page read across them would silently miss changes.
    fn logged_upto(&self, since: Position) -> crate::error::Result<Position> {
        let upto = self.position();
        if self.has_unlogged() && since < upto {
            return Err(crate::error::Error::ChangesNotRetained {
                since: since.0,
                oldest: upto.0,
            });
        }
        Ok(upto)
    }

    /// Whether the changes after `since` can be read ([`Index::changes_since`]
    /// would not answer `ChangesNotRetained` now), without reading them.
    pub fn changes_retained(&self, since: Position) -> crate::error::Result<()> {
        let upto = self.logged_upto(since)?;
        crate::wal::retained(&self.dir.join(WAL_DIR), since, upto)
    }

    pub fn stats(&self) -> IndexStats {
        let st = lock(&self.state);
        IndexStats {
            generation: st.manifest.generation,
            applied: st.applied,
            durable: if self.has_unlogged() {
                st.manifest.checkpoint_position
            } else {
                st.applied
            },
            checkpoint_position: st.manifest.checkpoint_position,
            num_docs: self.snapshot.load().num_docs,
            memory_segments: st.memory.len(),
            file_segments: st.files.len(),
            memory_postings: st.memory_postings(),
            file_postings: st.files.iter().map(|s| s.info.num_postings).sum(),
            file_bytes: st.files.iter().map(|s| s.size_bytes()).sum(),
        }
    }

    fn publish_snapshot(&self, st: &State, snapshot: Snapshot) {
        let snapshot = Snapshot {
            position: st.applied,
            checkpoint_position: st.manifest.checkpoint_position,
            metadata: Arc::new(st.metadata.clone()),
            checkpoint_metadata: Arc::new(st.manifest.metadata.clone()),
            generation: st.manifest.generation,
            ..snapshot
        };
        self.snapshot.store(Arc::new(snapshot));
    }

    /// After maintenance changed the segment lists: publish a snapshot with
    /// shadows recomputed, count the task, and wake writers waiting on a stall.
    fn republish(&self, st: MutexGuard<'_, State>, counter: &AtomicU64) {
        let snap = self.snapshot.load().with_segments(&st.all_segments());
        self.publish_snapshot(&st, snap);
        counter.fetch_add(1, Ordering::Relaxed);
        drop(st);
        self.maintained.notify_all();
    }
    /// Bulk load mode, for an index being filled from scratch (a replica
    /// bootstrapping from the stream): batches are not written to the WAL
    /// (only checkpoints make them durable: after a crash the index reopens at
    /// its last checkpoint and the caller must apply the rest again),
    /// checkpoints are twice as large and file merges fewer and wider, so each
    /// posting is written fewer times. Searches stay correct, with more
    /// segments to visit until normal merging resumes.
    pub fn set_bulk_load(&self, on: bool) {
        self.bulk.store(on, Ordering::Release);
    }

    pub fn is_bulk_load(&self) -> bool {
        self.bulk.load(Ordering::Acquire)
    }

    /// True while some applied batches are only in memory (bulk load): the
    /// next checkpoint makes them durable.
    pub fn has_unlogged(&self) -> bool {
        self.unlogged.load(Ordering::Acquire) != 0
    }
}
