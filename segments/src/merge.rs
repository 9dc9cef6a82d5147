//! Merging segments: a k-way merge of posting streams that keeps only what the
//! newest mention of each id decides.
//!
//! Input is a contiguous run of segment views, oldest first, with the shadowed sets
//! of the snapshot the merge was planned on. A posting survives if its id is not
//! shadowed in its segment; ids surviving in two inputs are impossible (the older
//! one is shadowed by the newer), so the output is strictly increasing. Tombstones
//! survive unless the run starts at the oldest segment, where nothing older is left
//! for them to mask.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::error::{Error, Result};
use crate::file_segment::FileSegmentWriter;
use crate::segment::{DocSets, PostingCursor};
use crate::snapshot::SegmentView;
use crate::types::PackedPosting;

/// Where merged postings go.
pub trait PostingSink {
    fn push(&mut self, posting: PackedPosting) -> Result<()>;

    /// Pushes postings already in order.
    fn push_all(&mut self, postings: &[PackedPosting]) -> Result<()> {
        for &p in postings {
            self.push(p)?;
        }
        Ok(())
    }
}

impl PostingSink for Vec<PackedPosting> {
    #[inline]
    fn push(&mut self, posting: PackedPosting) -> Result<()> {
        Vec::push(self, posting);
        Ok(())
    }

    fn push_all(&mut self, postings: &[PackedPosting]) -> Result<()> {
        self.extend_from_slice(postings);
        Ok(())
    }
}

impl PostingSink for FileSegmentWriter {
    #[inline]
    fn push(&mut self, posting: PackedPosting) -> Result<()> {
        FileSegmentWriter::push(self, posting)
    }
}

/// Postings the merge of `views` writes at most (shadowed and deleted ones
/// dropped, it writes fewer): what sizes its output's filter.
pub fn input_postings(views: &[SegmentView]) -> u64 {
    views.iter().map(|v| v.segment.info.num_postings).sum()
}

/// The id sets of the merge of `views`.
pub fn merged_docs(views: &[SegmentView], drop_tombstones: bool) -> DocSets {
    let mut docs = DocSets::default();
    for v in views {
        docs.defined |= &v.segment.docs.defined - v.shadowed.as_ref();
        if !drop_tombstones {
            docs.deleted |= &v.segment.docs.deleted - v.shadowed.as_ref();
        }
    }
    docs
}

/// Streams the surviving postings of `views` into `sink` in order; returns how
/// many were written.
pub fn merge_postings<S: PostingSink>(views: &[SegmentView], sink: &mut S) -> Result<u64> {
    if views.len() >= 2 {
        let runs: Option<Vec<&[PackedPosting]>> =
            views.iter().map(|v| v.segment.memory_postings()).collect();
        if let Some(runs) = runs {
            return merge_memory_runs(&runs, views, sink, CHUNK);
        }
    }
    merge_cursors(views, sink)
}

/// [`merge_postings`] through posting cursors and a heap, for any segments
/// (file segments are read block by block). Public for the benchmark that
/// compares it with the chunked merge of memory segments.
pub fn merge_cursors<S: PostingSink>(views: &[SegmentView], sink: &mut S) -> Result<u64> {
    let mut cursors: Vec<PostingCursor<'_>> = views.iter().map(|v| v.segment.cursor()).collect();
    let mut written = 0u64;
    if let [cursor] = cursors.as_mut_slice() {
        let shadowed = &views[0].shadowed;
        let none = shadowed.is_empty();
        for p in cursor {
            let p = p?;
            if none || !shadowed.contains(p as u32) {
                sink.push(p)?;
                written += 1;
            }
        }
        return Ok(written);
    }
    let mut heap = BinaryHeap::with_capacity(cursors.len());
    for (i, c) in cursors.iter_mut().enumerate() {
        if let Some(p) = next_live(c, &views[i])? {
            heap.push(Reverse((p, i)));
        }
    }
    // Replace the top in place (one sift) instead of pop + push (two).
    while let Some(mut top) = heap.peek_mut() {
        let Reverse((p, i)) = *top;
        sink.push(p)?;
        written += 1;
        match next_live(&mut cursors[i], &views[i])? {
            Some(next) => *top = Reverse((next, i)),
            None => {
                std::collections::binary_heap::PeekMut::pop(top);
            }
        }
    }
    Ok(written)
}

/// Postings per chunk of [`merge_memory_runs`]: 512 KiB, sorted within L2.
const CHUNK: usize = 1 << 16;

/// Merges memory segments (`runs[i]` = the postings of `views[i]`) chunk by
/// chunk instead of through a heap: each chunk takes, from every run, the
/// postings below one bound, and sorts them together (a stable sort finds the
/// runs and merges them without a comparison per posting per level of a heap).
/// The bound is the smallest posting `step` ahead in any run, so a chunk holds at
/// most `runs.len() * step` postings and takes exactly `step` from that run.
fn merge_memory_runs<S: PostingSink>(
    runs: &[&[PackedPosting]],
    views: &[SegmentView],
    sink: &mut S,
    chunk_len: usize,
) -> Result<u64> {
    let step = (chunk_len / runs.len()).max(1);
    let mut pos = vec![0usize; runs.len()];
    let mut chunk: Vec<PackedPosting> = Vec::with_capacity(chunk_len);
    let mut written = 0u64;
    loop {
        let bound = runs
            .iter()
            .zip(&pos)
            .filter_map(|(run, &p)| run.get(p + step).copied())
            .min();
        chunk.clear();
        let mut taken = 0usize;
        for ((run, p), view) in runs.iter().zip(pos.iter_mut()).zip(views) {
            let rest = &run[*p..];
            let n = match bound {
                Some(b) => rest[..rest.len().min(step)].partition_point(|&x| x < b),
                None => rest.len(),
            };
            let part = &rest[..n];
            if view.shadowed.is_empty() {
                chunk.extend_from_slice(part);
            } else {
                let shadowed = view.shadowed.as_ref();
                chunk.extend(part.iter().filter(|&&x| !shadowed.contains(x as u32)));
            }
            *p += n;
            taken += n;
        }
        // Runs are strictly increasing (built and merged deduplicated), so
        // the run holding the bound always gives `step` postings. A run that
        // repeats a posting would stall here: a named error, not a hang.
        if taken == 0 && bound.is_some() {
            return Err(Error::InvalidInput(
                "memory segment postings are not strictly increasing".into(),
            ));
        }
        chunk.sort();
        sink.push_all(&chunk)?;
        written += chunk.len() as u64;
        if bound.is_none() {
            return Ok(written);
        }
    }
}

#[inline]
fn next_live(cursor: &mut PostingCursor<'_>, view: &SegmentView) -> Result<Option<PackedPosting>> {
    // Nothing shadowed (every id of the segment is live): no set lookups.
    if view.shadowed.is_empty() {
        return cursor.next().transpose();
    }
    for p in cursor {
        let p = p?;
        if !view.shadowed.contains(p as u32) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use roaring::RoaringBitmap;

    use super::*;
    use crate::memory_segment::build;
    use crate::types::{Batch, Change, Position, SegmentId};

    /// One generated segment: its (id, hashes) inserts and its shadowed ids.
    type Generated = (Vec<(u32, Vec<u32>)>, Vec<u32>);

    fn views(segments: &[Generated]) -> Vec<SegmentView> {
        segments
            .iter()
            .enumerate()
            .map(|(n, (docs, shadowed))| {
                let changes = docs
                    .iter()
                    .map(|(id, hashes)| Change::Insert {
                        id: *id,
                        hashes: hashes.clone(),
                    })
                    .collect();
                let batch = Batch::new(Position(n as u64 + 1), changes);
                SegmentView {
                    segment: Arc::new(build(SegmentId(n as u64), &batch).unwrap()),
                    shadowed: Arc::new(shadowed.iter().copied().collect::<RoaringBitmap>()),
                }
            })
            .collect()
    }

    /// A run that repeats a posting (never built, but a bug elsewhere could
    /// make one) is a named error, not a merge that never ends.
    #[test]
    fn a_run_that_is_not_strictly_increasing_is_an_error() {
        let views = views(&[(vec![(1, vec![1])], vec![]), (vec![(2, vec![1])], vec![])]);
        let repeated: Vec<PackedPosting> = vec![5, 5, 5, 5];
        let other: Vec<PackedPosting> = vec![5, 6, 7, 8];
        let runs: Vec<&[PackedPosting]> = vec![&repeated, &other];
        let mut out = Vec::new();
        let r = merge_memory_runs(&runs, &views, &mut out, 2);
        assert!(
            matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("strictly increasing")),
            "{r:?}"
        );
    }

    proptest! {
        // Chunks as small as one posting per run, to cross every bound.
        #[test]
        fn chunked_merge_equals_the_heap_merge(
            segments in prop::collection::vec(
                (
                    prop::collection::vec((1u32..40, prop::collection::vec(0u32..30, 0..12)), 0..20),
                    prop::collection::vec(1u32..40, 0..10),
                ),
                2..7,
            ),
            chunk_len in 1usize..64,
        ) {
            // Segments of one merge never share a live (hash, id): an id
            // mentioned by two of them is shadowed in the older one.
            let mut segments = segments;
            let mut newer = RoaringBitmap::new();
            for (docs, shadowed) in segments.iter_mut().rev() {
                docs.sort_by_key(|d| d.0);
                docs.dedup_by_key(|d| d.0);
                shadowed.extend(docs.iter().map(|d| d.0).filter(|id| newer.contains(*id)));
                newer.extend(docs.iter().map(|d| d.0));
            }
            let views = views(&segments);
            let runs: Vec<&[PackedPosting]> =
                views.iter().map(|v| v.segment.memory_postings().unwrap()).collect();
            let mut chunked = Vec::new();
            let n = merge_memory_runs(&runs, &views, &mut chunked, chunk_len).unwrap();
            let mut heap = Vec::new();
            merge_cursors(&views, &mut heap).unwrap();
            prop_assert_eq!(n as usize, chunked.len());
            prop_assert!(chunked.windows(2).all(|w| w[0] < w[1]));
            prop_assert_eq!(chunked, heap);
        }
    }
}
