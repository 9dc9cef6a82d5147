//! The write path: wait out a stall, log the batches (one fsync), apply them
//! as memory segments and publish the new snapshot.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Index, MemoryEntry, State, lock};
use crate::error::{Error, Result};
use crate::memory_segment;
use crate::types::{Batch, Position, apply_metadata_delta};

impl Index {
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
}
