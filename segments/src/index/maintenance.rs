//! Checkpoints (memory segments -> one file segment, manifest, WAL trimmed),
//! memory merges and file merges: each takes its input segments under the
//! state lock, works without it, and commits under it again.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Index, MemoryEntry, SEGMENTS_DIR, State, lock};
use crate::error::{Error, Result};
use crate::file_segment::{FileSegment, FileSegmentWriter};
use crate::manifest::{Manifest, ManifestSegment};
use crate::merge::{PostingSink, input_postings, merge_postings, merged_docs};
use crate::merge_policy::MergeInput;
use crate::segment::{Segment, SegmentInfo};
use crate::snapshot::SegmentView;
use crate::types::{MetadataDelta, PackedPosting, Position, SegmentId, apply_metadata_delta};

/// The segments one checkpoint or merge has taken (marked `busy`). Released
/// under the state lock when the task commits or fails, and by `Drop` if the
/// task panics: a panicking task must not leave its segments taken forever,
/// or no merge would ever pick them again and writes would stall for good.
/// Made last while the state is locked (nothing after it can panic), so its
/// `Drop` never runs with the lock held.
struct Taken<'a> {
    index: &'a Index,
    ids: Vec<SegmentId>,
}

impl<'a> Taken<'a> {
    fn new(index: &'a Index, st: &mut State, views: &[SegmentView]) -> Taken<'a> {
        let ids: Vec<SegmentId> = views.iter().map(|v| v.segment.info.id).collect();
        st.busy.extend(ids.iter().copied());
        Taken { index, ids }
    }

    /// Releases the segments; `st` is the state, already locked by the caller.
    fn release(mut self, st: &mut State) {
        for id in self.ids.drain(..) {
            st.busy.remove(&id);
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let mut st = lock(&self.index.state);
            for id in &self.ids {
                st.busy.remove(id);
            }
        }
    }
}

impl Index {
    pub(super) fn checkpoint_threshold(&self) -> u64 {
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
                    || (self.has_unlogged() && !self.is_bulk_load())
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
        let (views, id, drop_tombstones, taken) = {
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
            let id = st.next_id();
            let taken = Taken::new(self, &mut st, &views);
            (views, id, n_files == 0, taken)
        };
        let result = self.run_checkpoint(&views, id, drop_tombstones);
        let mut st = lock(&self.state);
        taken.release(&mut st);
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
        self.republish(st, &self.counters.checkpoints);
        // After the state lock is released: the WAL lock may wait for an
        // fsync, which must not hold up searches' and writers' state.
        let mut wal = lock(&self.wal);
        if wal.unlogged.is_some_and(|u| u <= max_pos) {
            wal.unlogged = None;
            self.unlogged.store(0, Ordering::Release);
        }
        wal.writer.remove_covered(max_pos)?;
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
        let (views, id, drop_tombstones, taken) = {
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
            let id = st.next_id();
            let taken = Taken::new(self, &mut st, &views);
            (views, id, n_files == 0 && run.start == 0, taken)
        };
        let merged = merge_in_memory(&views, id, drop_tombstones);
        let mut st = lock(&self.state);
        taken.release(&mut st);
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
        self.compact(&|_, _| true).map(|_| ())
    }

    /// Checkpoints memory, then merges all file segments into one, telling
    /// `keep_going(postings written, postings to write)` how far it is every
    /// [`WATCH_EVERY`] postings; `false` stops it with [`Error::Cancelled`],
    /// the index unchanged (the unfinished file is removed). Returns whether
    /// there was anything to merge.
    pub fn compact(&self, keep_going: &dyn Fn(u64, u64) -> bool) -> Result<bool> {
        self.checkpoint()?;
        self.merge_files_watched(
            |inputs| (inputs.len() >= 2).then_some(0..inputs.len()),
            Some(keep_going),
        )
    }

    fn merge_files_with(
        &self,
        choose: impl FnOnce(&[MergeInput]) -> Option<std::ops::Range<usize>>,
    ) -> Result<bool> {
        self.merge_files_watched(choose, None)
    }

    fn merge_files_watched(
        &self,
        choose: impl FnOnce(&[MergeInput]) -> Option<std::ops::Range<usize>>,
        keep_going: Option<&dyn Fn(u64, u64) -> bool>,
    ) -> Result<bool> {
        let _merge = lock(&self.merge_lock);
        let (views, id, drop_tombstones, taken) = {
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
            let id = st.next_id();
            let taken = Taken::new(self, &mut st, &views);
            (views, id, run.start == 0, taken)
        };
        let result = self.run_file_merge(&views, id, drop_tombstones, keep_going);
        let mut st = lock(&self.state);
        taken.release(&mut st);
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
        keep_going: Option<&dyn Fn(u64, u64) -> bool>,
    ) -> Result<Arc<Segment>> {
        let (Some(first), Some(last)) = (views.first(), views.last()) else {
            return Err(Error::InvalidInput("empty merge".into()));
        };
        let (min_pos, max_pos) = (
            first.segment.info.min_position,
            last.segment.info.max_position,
        );
        self.write_file_segment_watched(id, views, drop_tombstones, (min_pos, max_pos), keep_going)
    }

    fn write_file_segment(
        &self,
        id: SegmentId,
        views: &[SegmentView],
        drop_tombstones: bool,
        min_pos: Position,
        max_pos: Position,
    ) -> Result<Arc<Segment>> {
        self.write_file_segment_watched(id, views, drop_tombstones, (min_pos, max_pos), None)
    }

    fn write_file_segment_watched(
        &self,
        id: SegmentId,
        views: &[SegmentView],
        drop_tombstones: bool,
        (min_pos, max_pos): (Position, Position),
        keep_going: Option<&dyn Fn(u64, u64) -> bool>,
    ) -> Result<Arc<Segment>> {
        let seg_dir = self.dir.join(SEGMENTS_DIR);
        let total = input_postings(views);
        let mut writer = FileSegmentWriter::create(&seg_dir, id, self.opts.fs.clone(), total)?;
        match keep_going {
            None => merge_postings(views, &mut writer)?,
            Some(keep_going) => {
                let mut sink = Watched {
                    sink: &mut writer,
                    written: 0,
                    total,
                    keep_going,
                };
                merge_postings(views, &mut sink)?
            }
        };
        let docs = merged_docs(views, drop_tombstones);
        let (path, _, size) = writer.finish(&docs, min_pos, max_pos)?;
        self.counters
            .segment_bytes_written
            .fetch_add(size, Ordering::Relaxed);
        let f = FileSegment::open(&path, Some(id), self.opts.open)?;
        Ok(Arc::new(Segment::file(f)))
    }

    fn store_manifest(&self, st: &mut State, manifest: Manifest) -> Result<()> {
        if let Err(e) = manifest.store(&self.dir, &self.opts.fs) {
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

/// How often a watched merge reports its progress, in postings.
pub const WATCH_EVERY: u64 = 1 << 16;

/// A posting sink that reports its progress and can be stopped.
struct Watched<'a, S> {
    sink: &'a mut S,
    written: u64,
    total: u64,
    keep_going: &'a dyn Fn(u64, u64) -> bool,
}

impl<S: PostingSink> Watched<'_, S> {
    fn check(&self) -> Result<()> {
        if (self.keep_going)(self.written, self.total) {
            Ok(())
        } else {
            Err(Error::Cancelled)
        }
    }
}

impl<S: PostingSink> PostingSink for Watched<'_, S> {
    fn push(&mut self, posting: PackedPosting) -> Result<()> {
        self.written += 1;
        if self.written.is_multiple_of(WATCH_EVERY) {
            self.check()?;
        }
        self.sink.push(posting)
    }

    fn push_all(&mut self, postings: &[PackedPosting]) -> Result<()> {
        for chunk in postings.chunks(WATCH_EVERY as usize) {
            self.check()?;
            self.sink.push_all(chunk)?;
            self.written += chunk.len() as u64;
        }
        Ok(())
    }
}
