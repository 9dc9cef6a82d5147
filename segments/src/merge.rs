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

use crate::error::Result;
use crate::file_segment::FileSegmentWriter;
use crate::segment::{DocSets, PostingCursor};
use crate::snapshot::SegmentView;
use crate::types::PackedPosting;

/// Where merged postings go.
pub trait PostingSink {
    fn push(&mut self, posting: PackedPosting) -> Result<()>;
}

impl PostingSink for Vec<PackedPosting> {
    #[inline]
    fn push(&mut self, posting: PackedPosting) -> Result<()> {
        Vec::push(self, posting);
        Ok(())
    }
}

impl PostingSink for FileSegmentWriter {
    #[inline]
    fn push(&mut self, posting: PackedPosting) -> Result<()> {
        FileSegmentWriter::push(self, posting)
    }
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
