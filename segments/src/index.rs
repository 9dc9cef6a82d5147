//! One index: file segments + memory segments + WAL + manifest, behind a
//! published snapshot.
//!
//! Who serialises what:
//! - `state` (mutex): the writer side: WAL, segment lists, manifest. Held while a
//!   batch is logged and applied, and briefly to plan and commit maintenance.
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

use std::collections::HashSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::error::{Error, IoContext, Result};
use crate::file_segment::{self, FileSegment, FileSegmentWriter, OpenOptions};
use crate::manifest::{Manifest, ManifestSegment};
use crate::memory_segment;
use crate::merge::{merge_postings, merged_docs};
use crate::merge_policy::{MergeInput, TieredMergePolicy};
use crate::segment::{Segment, SegmentInfo};
use crate::snapshot::{SegmentView, Snapshot};
use crate::types::{
    Batch, Generation, Metadata, MetadataDelta, Position, SegmentId, apply_metadata_delta,
};
use crate::wal::{self, WalOptions, WalWriter};

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
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            checkpoint_threshold: 8 << 20,
            checkpoint_age: Duration::from_secs(60),
            // In-memory merges are cheap (a few ms for a few batches) and every
            // memory segment costs each search a lookup: keep them few.
            memory_policy: TieredMergePolicy {
                segments_per_tier: 4,
                max_merge_at_once: 8,
                floor_bytes: 4 << 20,
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
    wal: WalWriter,
    manifest: Manifest,
    files: Vec<Arc<Segment>>,
    memory: Vec<MemoryEntry>,
    /// Segments taken by a running checkpoint or merge.
    busy: HashSet<SegmentId>,
    applied: Position,
    metadata: Metadata,
    poisoned: Option<String>,
    /// Newest position applied without the WAL (bulk load) and not yet in a
    /// file segment. While set nothing is logged, so the WAL never holds a
    /// batch that follows a hole; the next checkpoint covering it clears it.
    unlogged: Option<Position>,
}

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
    /// Creates a new, empty index in `dir` (which must not hold one yet).
    pub fn create(dir: &Path, generation: Generation, opts: IndexOptions) -> Result<Index> {
        Index::create_at(dir, generation, Position(0), opts)
    }

    /// Creates a new, empty index whose position starts at `start` (a replica's
    /// index starts at the stream sequence of its create record), so the first
    /// batch it accepts is the one after `start`.
    pub fn create_at(
        dir: &Path,
        generation: Generation,
        start: Position,
        opts: IndexOptions,
    ) -> Result<Index> {
        fs::create_dir_all(dir.join(SEGMENTS_DIR)).at(dir)?;
        if Manifest::load(dir)?.is_some() {
            return Err(Error::InvalidInput(format!(
                "an index already exists in {}",
                dir.display()
            )));
        }
        let manifest = Manifest {
            generation,
            checkpoint_position: start,
            next_segment_id: 1,
            ..Manifest::default()
        };
        manifest.store(dir)?;
        Index::open(dir, opts)
    }

    /// Opens the index in `dir`: verifies its segments, replays the WAL.
    pub fn open(dir: &Path, opts: IndexOptions) -> Result<Index> {
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = File::create(&lock_path).at(&lock_path)?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(e).at(&lock_path),
        }
        let mut manifest = Manifest::load(dir)?.ok_or_else(|| Error::Io {
            path: dir.join(crate::manifest::FILE_NAME),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no index manifest"),
        })?;
        let seg_dir = dir.join(SEGMENTS_DIR);
        fs::create_dir_all(&seg_dir).at(&seg_dir)?;
        let mut files = Vec::with_capacity(manifest.segments.len());
        for s in &manifest.segments {
            let path = seg_dir.join(file_segment::file_name(s.id));
            let f = FileSegment::open(&path, Some(s.id), opts.open)?;
            files.push(Arc::new(Segment::file(f)));
        }
        remove_orphans(&seg_dir, &manifest)?;

        // Replay the WAL into memory segments of about checkpoint_threshold postings.
        let wal_dir = dir.join(WAL_DIR);
        let mut pending: Vec<Batch> = Vec::new();
        let mut pending_postings = 0u64;
        let mut memory = Vec::new();
        let mut metadata = manifest.metadata.clone();
        let mut flush = |pending: &mut Vec<Batch>, manifest: &mut Manifest| -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let id = SegmentId(manifest.next_segment_id);
            manifest.next_segment_id += 1;
            let seg = memory_segment::build_many(id, pending)?;
            memory.push(MemoryEntry {
                segment: Arc::new(seg),
                created: Instant::now(),
            });
            pending.clear();
            Ok(())
        };
        let outcome = wal::replay(&wal_dir, manifest.checkpoint_position, |batch| {
            apply_metadata_delta(&mut metadata, &batch.metadata);
            pending_postings += batch.num_hashes() as u64;
            pending.push(batch);
            if pending_postings >= opts.checkpoint_threshold.max(1) {
                pending_postings = 0;
                flush(&mut pending, &mut manifest)?;
            }
            Ok(())
        })?;
        flush(&mut pending, &mut manifest)?;
        if let Some((path, offset)) = &outcome.truncated {
            tracing::warn!(path = %path.display(), offset, "recovered from a torn WAL tail");
        }
        let wal = WalWriter::open(&wal_dir, outcome.last_position, opts.wal)?;
        let applied = outcome.last_position.max(manifest.checkpoint_position);

        let state = State {
            wal,
            manifest,
            files,
            memory,
            busy: HashSet::new(),
            applied,
            metadata,
            poisoned: None,
            unlogged: None,
        };
        let base = Snapshot {
            generation: state.manifest.generation,
            position: applied,
            checkpoint_position: state.manifest.checkpoint_position,
            metadata: Arc::new(state.metadata.clone()),
            checkpoint_metadata: Arc::new(state.manifest.metadata.clone()),
            ..Snapshot::default()
        };
        let snapshot = base.with_segments(&state.all_segments());
        Ok(Index {
            dir: dir.to_path_buf(),
            opts,
            _lock: lock_file,
            state: Mutex::new(state),
            maintained: Condvar::new(),
            checkpoint_lock: Mutex::new(()),
            memory_merge_lock: Mutex::new(()),
            merge_lock: Mutex::new(()),
            snapshot: ArcSwap::from_pointee(snapshot),
            counters: Counters::default(),
            bulk: std::sync::atomic::AtomicBool::new(false),
        })
    }

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

    pub fn stats(&self) -> IndexStats {
        let st = lock(&self.state);
        IndexStats {
            generation: st.manifest.generation,
            applied: st.applied,
            durable: match st.unlogged {
                Some(_) => st.manifest.checkpoint_position,
                None => st.applied,
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

    fn publish(&self, st: &State, snapshot: Snapshot) {
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
        self.publish(&st, snap);
        counter.fetch_add(1, Ordering::Relaxed);
        drop(st);
        self.maintained.notify_all();
    }

    fn stalled(&self, st: &State) -> Option<(usize, usize)> {
        if st.memory.len() > self.opts.max_memory_segments {
            return Some((st.memory.len(), self.opts.max_memory_segments));
        }
        if st.files.len() > self.opts.max_file_segments {
            return Some((st.files.len(), self.opts.max_file_segments));
        }
        let limit = self
            .checkpoint_threshold()
            .saturating_mul(self.opts.max_memory_factor);
        if st.memory_postings() > limit {
            return Some((st.memory.len(), self.opts.max_memory_segments));
        }
        None
    }

    /// True if writes would currently wait for maintenance.
    pub fn is_stalled(&self) -> bool {
        self.stalled(&lock(&self.state)).is_some()
    }

    /// Logs `batches` durably (one fsync for all) and applies them. Batches at or
    /// before the applied position are skipped (applying is idempotent); the rest
    /// must have strictly increasing positions. Returns the applied position.
    pub fn apply(&self, batches: &[Batch]) -> Result<Position> {
        let mut st = lock(&self.state);
        if let Some(why) = &st.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        let started = Instant::now();
        while let Some((segments, limit)) = self.stalled(&st) {
            let waited = started.elapsed();
            if waited >= self.opts.stall_timeout {
                self.counters
                    .stall_micros
                    .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
                return Err(Error::WriteStall { segments, limit });
            }
            st = self
                .maintained
                .wait_timeout(st, self.opts.stall_timeout - waited)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if !started.elapsed().is_zero() {
            self.counters
                .stall_micros
                .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        let mut last = st.applied;
        let mut fresh = Vec::with_capacity(batches.len());
        for b in batches {
            if b.position <= st.applied {
                continue;
            }
            if b.position <= last {
                return Err(Error::PositionNotIncreasing {
                    last,
                    got: b.position,
                });
            }
            last = b.position;
            let id = st.next_id();
            fresh.push((b, memory_segment::build(id, b)?));
        }
        if fresh.is_empty() {
            return Ok(st.applied);
        }
        // Bulk load: not logged. A crash loses what was applied since the last
        // checkpoint and the index reopens at that checkpoint's position; the
        // caller (a replica bootstrapping) applies those batches again.
        if self.is_bulk_load() || st.unlogged.is_some() {
            st.unlogged = Some(last);
        } else {
            for (b, _) in &fresh {
                st.wal.append(b)?;
            }
            if let Err(e) = st.wal.sync() {
                st.poisoned = Some(e.to_string());
                return Err(e);
            }
            self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
        }
        let mut snapshot = (*self.snapshot.load_full()).clone();
        for (b, seg) in fresh {
            apply_metadata_delta(&mut st.metadata, &b.metadata);
            let seg = Arc::new(seg);
            snapshot = snapshot.with_new_segment(seg.clone());
            st.memory.push(MemoryEntry {
                segment: seg,
                created: Instant::now(),
            });
        }
        st.applied = last;
        self.publish(&st, snapshot);
        Ok(last)
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
        lock(&self.state).unlogged.is_some()
    }

    fn checkpoint_threshold(&self) -> u64 {
        let t = self.opts.checkpoint_threshold.max(1);
        if self.is_bulk_load() {
            t.saturating_mul(2)
        } else {
            t
        }
    }

    /// True if a checkpoint is due by size or age.
    pub fn checkpoint_due(&self) -> bool {
        let st = lock(&self.state);
        match st.memory.first() {
            None => false,
            Some(oldest) => {
                st.memory_postings() >= self.checkpoint_threshold()
                    || oldest.created.elapsed() >= self.opts.checkpoint_age
                    // Bulk load over: make it durable so logging can resume.
                    || (st.unlogged.is_some() && !self.is_bulk_load())
            }
        }
    }

    /// How long until the age threshold makes a checkpoint due (None if no
    /// memory segments).
    pub fn checkpoint_due_in(&self) -> Option<Duration> {
        let st = lock(&self.state);
        st.memory
            .first()
            .map(|m| self.opts.checkpoint_age.saturating_sub(m.created.elapsed()))
    }

    /// Runs a checkpoint if one is due, else a memory merge if the policy wants
    /// one. Returns true if it did something. (A node runs `checkpoint` and
    /// `merge_memory` from separate tasks so a long checkpoint does not hold up
    /// memory merges; this is the one-thread form.)
    pub fn flush(&self) -> Result<bool> {
        if self.checkpoint_due() {
            return self.checkpoint();
        }
        self.merge_memory()
    }

    /// Does all maintenance that is due, until nothing is. For tests and tools;
    /// a node runs `flush` and `merge_files` from their own actors.
    pub fn maintain(&self) -> Result<()> {
        while self.flush()? || self.merge_files()? {}
        Ok(())
    }

    /// Writes all memory segments as one file segment, records it in the
    /// manifest and trims the WAL. Returns false if there was nothing to do.
    pub fn checkpoint(&self) -> Result<bool> {
        let _checkpoint = lock(&self.checkpoint_lock);
        let (views, id, drop_tombstones) = {
            // Let a running memory merge (milliseconds) finish, so the checkpoint
            // takes every memory segment and files stay few and large.
            let _memory = lock(&self.memory_merge_lock);
            let mut st = lock(&self.state);
            let n = st.memory.len();
            if n == 0 {
                return Ok(false);
            }
            let snap = self.snapshot.load_full();
            let n_files = st.files.len();
            let views: Vec<SegmentView> = snap.segments[n_files..n_files + n].to_vec();
            for v in &views {
                st.busy.insert(v.segment.info.id);
            }
            (views, st.next_id(), n_files == 0)
        };
        let result = self.run_checkpoint(&views, id, drop_tombstones);
        let mut st = lock(&self.state);
        for v in &views {
            st.busy.remove(&v.segment.info.id);
        }
        let (seg, delta) = result?;
        let max_pos = seg.info.max_position;
        let mut manifest = st.manifest.clone();
        apply_metadata_delta(&mut manifest.metadata, &delta);
        manifest.checkpoint_position = max_pos;
        manifest.segments.push(manifest_entry(&seg));
        self.store_manifest(&mut st, manifest)?;
        st.files.push(seg);
        // The checkpointed segments are still the oldest memory segments: merges
        // only take segments no task holds, and new ones arrive at the end.
        st.memory.drain(..views.len());
        if st.unlogged.is_some_and(|u| u <= max_pos) {
            st.unlogged = None;
        }
        st.wal.remove_covered(max_pos)?;
        self.republish(st, &self.counters.checkpoints);
        Ok(true)
    }

    fn run_checkpoint(
        &self,
        views: &[SegmentView],
        id: SegmentId,
        drop_tombstones: bool,
    ) -> Result<(Arc<Segment>, MetadataDelta)> {
        let (Some(first), Some(last)) = (views.first(), views.last()) else {
            return Err(Error::InvalidInput("empty checkpoint".into()));
        };
        let (min_pos, max_pos) = (
            first.segment.info.min_position,
            last.segment.info.max_position,
        );
        let seg = self.write_file_segment(id, views, drop_tombstones, min_pos, max_pos)?;
        let mut delta = MetadataDelta::new();
        for v in views {
            delta.extend(v.segment.metadata.clone());
        }
        Ok((seg, delta))
    }

    /// Merges a run of memory segments if the memory policy asks for one.
    pub fn merge_memory(&self) -> Result<bool> {
        let _memory = lock(&self.memory_merge_lock);
        let (views, id, drop_tombstones) = {
            let mut st = lock(&self.state);
            let inputs: Vec<MergeInput> = st
                .memory
                .iter()
                .map(|m| MergeInput {
                    size_bytes: m.segment.size_bytes(),
                    merging: st.busy.contains(&m.segment.info.id),
                })
                .collect();
            let Some(run) = self.opts.memory_policy.find_merge(&inputs) else {
                return Ok(false);
            };
            // A checkpoint is about to merge these anyway: merging them now
            // would be one more pass over the same postings (and merging the
            // segments a running checkpoint holds is not possible). Unless
            // the segments grow many: a checkpoint is only "about to" come by
            // size, and many small batches (a replica following single
            // writes) would otherwise reach the stall limit first and block
            // every write until the checkpoint's age came (found by the chaos
            // load test: writes stalled for a minute).
            let postings: u64 = st.memory.iter().map(|m| m.segment.info.num_postings).sum();
            if postings >= self.checkpoint_threshold() / 2
                && st.memory.len() < self.opts.max_memory_segments / 2
            {
                return Ok(false);
            }
            let n_files = st.files.len();
            let snap = self.snapshot.load_full();
            let views = snap.segments[n_files + run.start..n_files + run.end].to_vec();
            for v in &views {
                st.busy.insert(v.segment.info.id);
            }
            (views, st.next_id(), n_files == 0 && run.start == 0)
        };
        let merged = merge_in_memory(&views, id, drop_tombstones);
        let mut st = lock(&self.state);
        for v in &views {
            st.busy.remove(&v.segment.info.id);
        }
        let merged = merged?;
        let first = merged.info.min_position;
        let start = st
            .memory
            .iter()
            .position(|m| m.segment.info.min_position == first)
            .ok_or_else(|| Error::InvalidInput("merged memory segments vanished".into()))?;
        let created = st.memory[start].created;
        st.memory.splice(
            start..start + views.len(),
            [MemoryEntry {
                segment: Arc::new(merged),
                created,
            }],
        );
        self.republish(st, &self.counters.memory_merges);
        Ok(true)
    }

    /// Merges a run of file segments if the file policy asks for one.
    pub fn merge_files(&self) -> Result<bool> {
        let mut policy = self.opts.file_policy.clone();
        if self.is_bulk_load() {
            // One level of 30-way merges instead of two of 10: every posting
            // is rewritten once less while the index is being filled.
            policy.segments_per_tier = policy.segments_per_tier.max(30);
            policy.max_merge_at_once = policy.max_merge_at_once.max(30);
            policy.max_segments = policy
                .max_segments
                .max(self.opts.max_file_segments.saturating_sub(4));
        }
        self.merge_files_with(|inputs| policy.find_merge(inputs))
    }

    /// Merges all file segments into one (after a checkpoint of memory).
    pub fn force_merge(&self) -> Result<()> {
        self.checkpoint()?;
        self.merge_files_with(|inputs| (inputs.len() >= 2).then_some(0..inputs.len()))?;
        Ok(())
    }

    fn merge_files_with(
        &self,
        choose: impl FnOnce(&[MergeInput]) -> Option<std::ops::Range<usize>>,
    ) -> Result<bool> {
        let _merge = lock(&self.merge_lock);
        let (views, id, drop_tombstones) = {
            let mut st = lock(&self.state);
            let inputs: Vec<MergeInput> = st
                .files
                .iter()
                .map(|s| MergeInput {
                    size_bytes: s.size_bytes(),
                    merging: st.busy.contains(&s.info.id),
                })
                .collect();
            let Some(run) = choose(&inputs) else {
                return Ok(false);
            };
            let snap = self.snapshot.load_full();
            let views = snap.segments[run.clone()].to_vec();
            for v in &views {
                st.busy.insert(v.segment.info.id);
            }
            (views, st.next_id(), run.start == 0)
        };
        let result = self.run_file_merge(&views, id, drop_tombstones);
        let mut st = lock(&self.state);
        for v in &views {
            st.busy.remove(&v.segment.info.id);
        }
        let merged = result?;
        let ids: HashSet<SegmentId> = views.iter().map(|v| v.segment.info.id).collect();
        let Some(start) = st.files.iter().position(|s| ids.contains(&s.info.id)) else {
            return Err(Error::InvalidInput("merged file segments vanished".into()));
        };
        let mut manifest = st.manifest.clone();
        manifest
            .segments
            .splice(start..start + views.len(), [manifest_entry(&merged)]);
        self.store_manifest(&mut st, manifest)?;
        st.files.splice(start..start + views.len(), [merged]);
        for v in &views {
            v.segment.retire();
        }
        self.republish(st, &self.counters.file_merges);
        Ok(true)
    }

    fn run_file_merge(
        &self,
        views: &[SegmentView],
        id: SegmentId,
        drop_tombstones: bool,
    ) -> Result<Arc<Segment>> {
        let (Some(first), Some(last)) = (views.first(), views.last()) else {
            return Err(Error::InvalidInput("empty merge".into()));
        };
        let (min_pos, max_pos) = (
            first.segment.info.min_position,
            last.segment.info.max_position,
        );
        self.write_file_segment(id, views, drop_tombstones, min_pos, max_pos)
    }

    fn write_file_segment(
        &self,
        id: SegmentId,
        views: &[SegmentView],
        drop_tombstones: bool,
        min_pos: Position,
        max_pos: Position,
    ) -> Result<Arc<Segment>> {
        let seg_dir = self.dir.join(SEGMENTS_DIR);
        let mut writer = FileSegmentWriter::create(&seg_dir, id)?;
        merge_postings(views, &mut writer)?;
        let docs = merged_docs(views, drop_tombstones);
        let (path, _, size) = writer.finish(&docs, min_pos, max_pos)?;
        self.counters
            .segment_bytes_written
            .fetch_add(size, Ordering::Relaxed);
        let f = FileSegment::open(&path, Some(id), self.opts.open)?;
        Ok(Arc::new(Segment::file(f)))
    }

    fn store_manifest(&self, st: &mut State, manifest: Manifest) -> Result<()> {
        if let Err(e) = manifest.store(&self.dir) {
            st.poisoned = Some(e.to_string());
            return Err(e);
        }
        st.manifest = manifest;
        Ok(())
    }
}

/// Merges memory segments into one memory segment.
fn merge_in_memory(views: &[SegmentView], id: SegmentId, drop_tombstones: bool) -> Result<Segment> {
    let (Some(first), Some(last)) = (views.first(), views.last()) else {
        return Err(Error::InvalidInput("empty merge".into()));
    };
    let mut postings = Vec::with_capacity(
        views
            .iter()
            .map(|v| v.segment.info.num_postings as usize)
            .sum(),
    );
    merge_postings(views, &mut postings)?;
    let mut metadata = MetadataDelta::new();
    for v in views {
        metadata.extend(v.segment.metadata.clone());
    }
    let info = SegmentInfo {
        id,
        min_position: first.segment.info.min_position,
        max_position: last.segment.info.max_position,
        num_postings: postings.len() as u64,
    };
    Ok(Segment::memory(
        info,
        merged_docs(views, drop_tombstones),
        metadata,
        postings,
    ))
}

fn manifest_entry(seg: &Segment) -> ManifestSegment {
    ManifestSegment {
        id: seg.info.id,
        min_position: seg.info.min_position,
        max_position: seg.info.max_position,
        num_postings: seg.info.num_postings,
        size_bytes: seg.size_bytes(),
    }
}

/// Deletes segment files the manifest does not list (outputs of merges or
/// checkpoints that crashed before their manifest was written) and temp files.
fn remove_orphans(seg_dir: &Path, manifest: &Manifest) -> Result<()> {
    let live: HashSet<SegmentId> = manifest.segments.iter().map(|s| s.id).collect();
    for entry in fs::read_dir(seg_dir).at(seg_dir)? {
        let entry = entry.at(seg_dir)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let orphan = match file_segment::parse_file_name(&name) {
            Some(id) => !live.contains(&id),
            None => name.ends_with(".tmp"),
        };
        if orphan {
            tracing::info!(file = %name, "removing orphan segment file");
            fs::remove_file(entry.path()).at(entry.path())?;
        }
    }
    Ok(())
}
