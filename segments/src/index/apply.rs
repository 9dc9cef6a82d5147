//! The write path, in three steps a pipeline can overlap (docs/architecture.md):
//!
//! 1. [`Index::prepare`]: wait out a stall, check the batches, build them
//!    into one memory segment. CPU only; no lock held while building.
//! 2. [`Index::log`]: append them to the WAL and fsync once (group commit).
//!    Groups must come in position order; the group is then durable, and kept
//!    in the engine until published, so a caller that fails between the two
//!    steps can never leave a logged group out of the index.
//! 3. [`Index::publish_logged`]: publish every logged group, in order, into
//!    the snapshot searches read.
//!
//! While group N is being fsynced, group N+1 can be prepared and group N-1
//! published: the three take different locks. [`Index::apply`] runs the three
//! in one call, for callers that do not pipeline.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Index, MemoryEntry, State, lock};
use crate::error::{Error, Result};
use crate::memory_segment;
use crate::segment::Segment;
use crate::types::{Batch, Change, Position, apply_metadata_delta};

/// Batches checked and built into one memory segment, ready to be logged.
#[derive(Debug, Default)]
pub struct Prepared {
    batches: Vec<Batch>,
    /// The group's batches as one memory segment (as if applied one after
    /// the other): a group of many small writes adds one segment for
    /// searches to visit, not one per write.
    segment: Option<Segment>,
}

impl Prepared {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Position of the newest batch, if any.
    pub fn last_position(&self) -> Option<Position> {
        self.batches.last().map(|b| b.position)
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }
}

/// A write pipeline's right to log (see [`Index::fence`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence(u64);

impl Index {
    /// Starts a new write pipeline: from now on only logs under the returned
    /// fence are taken, and those of any earlier pipeline are refused
    /// (`Fenced`). Waits for a log in progress. A pipeline that replaces a
    /// failed one takes a fence before reading [`Index::logged_position`], so
    /// a log the old one still had on its way can neither land after that
    /// read nor reuse a position.
    pub fn fence(&self) -> Fence {
        let mut wal = lock(&self.wal);
        wal.fence += 1;
        Fence(wal.fence)
    }

    /// [`Index::log`], for the pipeline holding `fence` only.
    pub fn log_fenced(&self, fence: Fence, prepared: Prepared) -> Result<Position> {
        self.log_under(Some(fence), prepared)
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

    /// Step 1: waits while maintenance is behind (failing with `WriteStall`
    /// after `stall_timeout`), drops batches at or before the published
    /// position (applying is idempotent), checks the rest have strictly
    /// increasing positions and builds them into one memory segment.
    pub fn prepare(&self, batches: Vec<Batch>) -> Result<Prepared> {
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
        let applied = st.applied;
        let batches: Vec<Batch> = batches
            .into_iter()
            .filter(|b| b.position > applied)
            .collect();
        let mut last = applied;
        for b in &batches {
            if b.position <= last {
                return Err(Error::PositionNotIncreasing {
                    last,
                    got: b.position,
                });
            }
            last = b.position;
        }
        if batches.is_empty() {
            return Ok(Prepared::default());
        }
        let id = st.next_id();
        drop(st);
        let segment = memory_segment::build_many(id, &batches)?;
        Ok(Prepared {
            batches,
            segment: Some(segment),
        })
    }

    /// Step 2: appends a prepared group to the WAL and fsyncs once. Groups
    /// must follow each other: a group whose first position is not after
    /// the last logged one is refused (`PositionNotIncreasing`). Returns the
    /// position now durable. In bulk load nothing is written (see
    /// [`Index::set_bulk_load`]). A failed write or fsync poisons the WAL.
    pub fn log(&self, prepared: Prepared) -> Result<Position> {
        self.log_under(None, prepared)
    }

    fn log_under(&self, fence: Option<Fence>, prepared: Prepared) -> Result<Position> {
        let mut wal = lock(&self.wal);
        if fence.is_some_and(|Fence(f)| f != wal.fence) {
            return Err(Error::Fenced);
        }
        let (Some(first), Some(last)) = (prepared.batches.first(), prepared.last_position()) else {
            return Ok(wal.logged);
        };
        if first.position <= wal.logged {
            return Err(Error::PositionNotIncreasing {
                last: wal.logged,
                got: first.position,
            });
        }
        // Bulk load: not logged. A crash loses what was applied since the last
        // checkpoint and the index reopens at that checkpoint's position; the
        // caller (a replica bootstrapping) applies those batches again.
        let mut prepared = prepared;
        if self.is_bulk_load() || wal.unlogged.is_some() {
            self.mark_replaced(&mut wal.recent, &mut prepared.batches, false);
            wal.unlogged = Some(last);
            self.unlogged.store(last.0, Ordering::Release);
        } else {
            self.mark_replaced(&mut wal.recent, &mut prepared.batches, true);
            let logged = wal
                .writer
                .append_group(&prepared.batches)
                .and_then(|()| wal.writer.sync());
            if let Err(e) = logged {
                // Those batches never happened: forget what they would leave.
                wal.recent.clear();
                return Err(e);
            }
            self.counters.wal_syncs.fetch_add(1, Ordering::Relaxed);
        }
        wal.logged = last;
        // Queued under the WAL lock, so groups queue in the order they were
        // logged.
        lock(&self.logged).push_back(prepared);
        Ok(last)
    }

    /// Sets each batch's `replaced` (its inserts of ids live before it), if
    /// `mark`, and remembers what the batches leave live in `recent`.
    ///
    /// Live before a batch is what the groups logged before it left: the
    /// newest of them are not published yet, so `recent` holds the state
    /// each id was last logged in, with that batch's position; an id not
    /// in it is as the published snapshot has it. An entry is dropped once
    /// the snapshot reaches its position (snapshots only move forward and
    /// hold every group up to theirs, and an entry always carries its id's
    /// newest logged change), so `recent` holds about the groups in flight.
    fn mark_replaced(&self, recent: &mut super::RecentIds, batches: &mut [Batch], mark: bool) {
        let snapshot = self.snapshot.load();
        let published = snapshot.position;
        recent.retain(|_, (_, at)| *at > published);
        // What the snapshot says of the group's inserted ids, asked once.
        let live = if mark {
            let inserted = batches
                .iter()
                .flat_map(|b| b.changes.iter())
                .filter(|c| matches!(c, Change::Insert { .. }))
                .map(Change::id)
                .filter(|id| !recent.contains_key(id));
            snapshot.live_among(&inserted.collect())
        } else {
            Default::default()
        };
        for batch in batches {
            if mark {
                let mut replaced: Vec<_> = batch
                    .changes
                    .iter()
                    .filter(|c| matches!(c, Change::Insert { .. }))
                    .map(Change::id)
                    .filter(|id| match recent.get(id) {
                        Some((live, _)) => *live,
                        None => live.contains(*id),
                    })
                    .collect();
                replaced.sort_unstable();
                replaced.dedup();
                batch.replaced = replaced;
            }
            for c in &batch.changes {
                let live = matches!(c, Change::Insert { .. });
                recent.insert(c.id(), (live, batch.position));
            }
        }
    }

    /// Step 3: publishes every logged group, oldest first, into the snapshot
    /// searches read. Returns the published position.
    pub fn publish_logged(&self) -> Result<Position> {
        let mut st = lock(&self.state);
        let groups: Vec<Prepared> = lock(&self.logged).drain(..).collect();
        if groups.is_empty() {
            return Ok(st.applied);
        }
        let mut snapshot = (*self.snapshot.load_full()).clone();
        for group in groups {
            let (Some(last), Some(segment)) = (group.last_position(), group.segment) else {
                continue;
            };
            // Logged groups follow each other and the published position.
            if last <= st.applied {
                continue;
            }
            for b in &group.batches {
                apply_metadata_delta(&mut st.metadata, &b.metadata);
            }
            let segment = Arc::new(segment);
            snapshot = snapshot.with_new_segment(segment.clone());
            st.memory.push(MemoryEntry {
                segment,
                created: Instant::now(),
            });
            st.applied = last;
        }
        self.publish_snapshot(&st, snapshot);
        Ok(st.applied)
    }

    /// Position of the newest logged batch (durable, or applied unlogged in
    /// bulk load), published or not: where the next group must start after.
    pub fn logged_position(&self) -> Position {
        lock(&self.wal).logged
    }

    /// Logs `batches` durably (one fsync for all) and applies them: the three
    /// steps in one call. Batches at or before the applied position are
    /// skipped (applying is idempotent); the rest must have strictly
    /// increasing positions. Returns the applied position. Callers may call
    /// this from several threads; one runs at a time.
    pub fn apply(&self, batches: &[Batch]) -> Result<Position> {
        let _one = lock(&self.apply_lock);
        let prepared = self.prepare(batches.to_vec())?;
        if !prepared.is_empty() {
            self.log(prepared)?;
        }
        self.publish_logged()
    }
}
