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
use crate::file_segment::{FileCursor, FileSegmentWriter};
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
/// many were written. Two or more inputs go through [`merge_runs`] (chunks
/// sorted together: 2.0-2.2x the heap's speed, `cargo bench --bench ingest`,
/// docs/benchmarks.md "Ingest with filters"), one is copied through.
pub fn merge_postings<S: PostingSink>(views: &[SegmentView], sink: &mut S) -> Result<u64> {
    if views.len() < 2 {
        return merge_cursors(views, sink);
    }
    merge_runs(&mut runs(views)?, views, sink, CHUNK)
}

/// The inputs of [`merge_runs`] for `views`.
fn runs(views: &[SegmentView]) -> Result<Vec<Run<'_>>> {
    views
        .iter()
        .map(
            |v| match (v.segment.memory_postings(), v.segment.as_file()) {
                (Some(postings), _) => Ok(Run::Memory { postings, pos: 0 }),
                (None, Some(file)) => Ok(Run::File {
                    cursor: Box::new(file.cursor()),
                    buf: Vec::new(),
                    pos: 0,
                    done: false,
                }),
                // Every segment is one or the other; a new kind must be taught here.
                (None, None) => Err(Error::InvalidInput(
                    "a segment of unknown kind cannot be merged".into(),
                )),
            },
        )
        .collect()
}

/// [`merge_postings`] through posting cursors and a heap, for any segments
/// (file segments are read block by block). Public for the benchmark that
/// compares it with the chunked merge.
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

/// Postings per chunk of [`merge_runs`]: 512 KiB, sorted within L2.
const CHUNK: usize = 1 << 16;

/// One input of [`merge_runs`]: a memory segment's postings as they are, or
/// a file segment's decoded a block at a time into a buffer.
enum Run<'a> {
    Memory {
        postings: &'a [PackedPosting],
        pos: usize,
    },
    File {
        cursor: Box<FileCursor<'a>>,
        buf: Vec<PackedPosting>,
        pos: usize,
        done: bool,
    },
}

impl Run<'_> {
    /// The postings decoded and not yet taken.
    fn rest(&self) -> &[PackedPosting] {
        match self {
            Run::Memory { postings, pos } => postings.get(*pos..).unwrap_or_default(),
            Run::File { buf, pos, .. } => buf.get(*pos..).unwrap_or_default(),
        }
    }

    fn take(&mut self, n: usize) {
        match self {
            Run::Memory { pos, .. } | Run::File { pos, .. } => *pos += n,
        }
    }

    /// Decodes blocks until at least `want` postings are not yet taken, or
    /// the segment has no more.
    fn fill(&mut self, want: usize) -> Result<()> {
        let Run::File {
            cursor,
            buf,
            pos,
            done,
        } = self
        else {
            return Ok(());
        };
        if buf.len() - *pos >= want || *done {
            return Ok(());
        }
        buf.drain(..*pos);
        *pos = 0;
        while buf.len() < want {
            if !cursor.next_block(buf)? {
                *done = true;
                break;
            }
        }
        Ok(())
    }
}

/// Merges runs chunk by chunk instead of through a heap: each chunk takes,
/// from every run, the postings below one bound, and sorts them together (a
/// stable sort finds the runs and merges them without a comparison per
/// posting per level of a heap). The bound is the smallest posting `step`
/// ahead in any run, so a chunk holds at most `runs.len() * step` postings
/// and takes exactly `step` from that run.
fn merge_runs<S: PostingSink>(
    runs: &mut [Run<'_>],
    views: &[SegmentView],
    sink: &mut S,
    chunk_len: usize,
) -> Result<u64> {
    let step = (chunk_len / runs.len().max(1)).max(1);
    let mut chunk: Vec<PackedPosting> = Vec::with_capacity(chunk_len);
    let mut written = 0u64;
    loop {
        for run in runs.iter_mut() {
            run.fill(step + 1)?;
        }
        let bound = runs
            .iter()
            .filter_map(|r| r.rest().get(step).copied())
            .min();
        chunk.clear();
        let mut taken = 0usize;
        for (run, view) in runs.iter_mut().zip(views) {
            let rest = run.rest();
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
            run.take(n);
            taken += n;
        }
        // Runs are strictly increasing (built and merged deduplicated), so
        // the run holding the bound always gives `step` postings. A run that
        // repeats a posting would stall here: a named error, not a hang.
        if taken == 0 && bound.is_some() {
            return Err(Error::InvalidInput(
                "segment postings are not strictly increasing".into(),
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
    use crate::durable::Fs;
    use crate::file_segment::{FileSegment, OpenOptions};
    use crate::memory_segment::build;
    use crate::segment::Segment;
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

    /// `view`'s segment written as a file segment, with the same shadowed ids.
    fn as_file(dir: &std::path::Path, view: &SegmentView) -> SegmentView {
        let info = view.segment.info;
        let mut w = FileSegmentWriter::create(dir, info.id, Fs::default(), 0).unwrap();
        for p in view.segment.cursor() {
            w.push(p.unwrap()).unwrap();
        }
        let (path, _, _) = w
            .finish(&view.segment.docs, info.min_position, info.max_position)
            .unwrap();
        let file = FileSegment::open(&path, Some(info.id), OpenOptions::default()).unwrap();
        SegmentView {
            segment: Arc::new(Segment::file(file)),
            shadowed: view.shadowed.clone(),
        }
    }

    /// A run that repeats a posting (never built, but a bug elsewhere could
    /// make one) is a named error, not a merge that never ends.
    #[test]
    fn a_run_that_is_not_strictly_increasing_is_an_error() {
        let views = views(&[(vec![(1, vec![1])], vec![]), (vec![(2, vec![1])], vec![])]);
        let repeated: Vec<PackedPosting> = vec![5, 5, 5, 5];
        let other: Vec<PackedPosting> = vec![5, 6, 7, 8];
        let mut runs = vec![
            Run::Memory {
                postings: &repeated,
                pos: 0,
            },
            Run::Memory {
                postings: &other,
                pos: 0,
            },
        ];
        let mut out = Vec::new();
        let r = merge_runs(&mut runs, &views, &mut out, 2);
        assert!(
            matches!(r, Err(Error::InvalidInput(ref m)) if m.contains("strictly increasing")),
            "{r:?}"
        );
    }

    /// File segments of many blocks, some ids shadowed: the chunked merge
    /// refills and drains each run's buffer many times over.
    #[test]
    fn chunked_merge_of_big_file_segments_equals_the_heap_merge() {
        let segments: Vec<Generated> = (0..4u32)
            .map(|s| {
                let docs = (0..300u32)
                    .map(|d| {
                        let id = 1 + s * 300 + d;
                        let hashes = (0..40u32)
                            .map(|h| id.wrapping_mul(2_654_435_761) ^ (h * 7919))
                            .collect();
                        (id, hashes)
                    })
                    .collect();
                (docs, (1 + s * 300..1 + s * 300 + 300).step_by(7).collect())
            })
            .collect();
        let memory = views(&segments);
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<SegmentView> = memory.iter().map(|v| as_file(dir.path(), v)).collect();
        let mut heap = Vec::new();
        let n_heap = merge_cursors(&files, &mut heap).unwrap();
        assert!(n_heap > 40_000, "{n_heap}");
        for chunk_len in [1, 97, 1000, 10_000] {
            let mut chunked = Vec::new();
            let n =
                merge_runs(&mut runs(&files).unwrap(), &files, &mut chunked, chunk_len).unwrap();
            assert_eq!(n, n_heap, "chunk {chunk_len}");
            assert!(chunked == heap, "chunk {chunk_len}");
        }
    }

    /// A block that fails its checksum mid-merge stops the merge with the
    /// error, not a shorter output.
    #[test]
    fn a_corrupt_block_fails_the_chunked_merge() {
        let segments: Vec<Generated> = (0..2u32)
            .map(|s| {
                let docs = (0..200u32)
                    .map(|d| {
                        (
                            1 + s * 200 + d,
                            (0..30u32).map(|h| h * 1_000_003 + d).collect(),
                        )
                    })
                    .collect();
                (docs, vec![])
            })
            .collect();
        let memory = views(&segments);
        let dir = tempfile::tempdir().unwrap();
        let path = {
            let file = as_file(dir.path(), &memory[1]);
            file.segment.as_file().unwrap().path().to_path_buf()
        };
        // A byte a third of the way in (in the blocks: past the header,
        // before the directory), flipped; the file is opened afresh.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes.len() / 3;
        bytes[at] ^= 0x5a;
        std::fs::write(&path, &bytes).unwrap();
        let file = FileSegment::open(&path, None, OpenOptions::default()).unwrap();
        let views = vec![
            as_file(dir.path(), &memory[0]),
            SegmentView {
                segment: Arc::new(Segment::file(file)),
                shadowed: Arc::new(RoaringBitmap::new()),
            },
        ];
        let mut out = Vec::new();
        let r = merge_postings(&views, &mut out);
        assert!(matches!(r, Err(Error::Corrupt { .. })), "{r:?}");
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
            let memory = views(&segments);
            // The same segments as files (read a block at a time), and
            // mixed: every other one a file.
            let dir = tempfile::tempdir().unwrap();
            let files: Vec<SegmentView> =
                memory.iter().map(|v| as_file(dir.path(), v)).collect();
            let mixed: Vec<SegmentView> = memory
                .iter()
                .zip(&files)
                .enumerate()
                .map(|(i, (m, f))| if i % 2 == 0 { f.clone() } else { m.clone() })
                .collect();
            let mut heap = Vec::new();
            merge_cursors(&memory, &mut heap).unwrap();
            prop_assert!(heap.windows(2).all(|w| w[0] < w[1]));
            for views in [&memory, &files, &mixed] {
                let mut chunked = Vec::new();
                let n = merge_runs(&mut runs(views).unwrap(), views, &mut chunked, chunk_len).unwrap();
                prop_assert_eq!(n as usize, chunked.len());
                prop_assert_eq!(&chunked, &heap);
            }
        }
    }
}
