//! A segment: an immutable set of postings plus the ids it defines and deletes.
//!
//! A segment lives either in memory (a sorted vector, built from one batch or by
//! merging memory segments) or in a memory-mapped file. Both answer the same
//! questions: which ids carry these hashes, which ids does it mention, and all its
//! postings in `(hash, id)` order for merging.
//!
//! Invariants: postings are sorted by `(hash, id)` and unique; every posting's id
//! is in `docs.defined`; `docs.defined` and `docs.deleted` are disjoint.

use roaring::RoaringBitmap;

use crate::error::Result;
use crate::file_segment::{FileCursor, FileSegment};
use crate::filter::{FilterBuilder, FilterRef, OwnedFilter};
use crate::prefix::PrefixTable;
use crate::types::{MetadataDelta, PackedPosting, Position, SegmentId};

/// Ids a segment decides about.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DocSets {
    /// Ids this segment inserts or replaces (they may have no postings).
    pub defined: RoaringBitmap,
    /// Ids this segment deletes (tombstones).
    pub deleted: RoaringBitmap,
}

impl DocSets {
    /// Every id this segment decides about.
    pub fn mentioned(&self) -> RoaringBitmap {
        &self.defined | &self.deleted
    }

    pub fn mentions(&self, id: u32) -> bool {
        self.defined.contains(id) || self.deleted.contains(id)
    }
}

/// Facts about a segment that merge policies and the manifest need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub id: SegmentId,
    /// Position of the oldest batch this segment holds.
    pub min_position: Position,
    /// Position of the newest batch this segment holds; also the version reported
    /// for every fingerprint the segment defines.
    pub max_position: Position,
    pub num_postings: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentKind {
    Memory,
    File,
}

/// Where a segment's postings live.
#[derive(Debug)]
pub(crate) enum Store {
    Memory(MemoryPostings),
    File(Box<FileSegment>),
}

#[derive(Debug)]
pub struct Segment {
    pub info: SegmentInfo,
    pub docs: DocSets,
    /// Metadata changes carried by the batches in this memory segment; folded into
    /// the manifest when the segment is checkpointed (always empty for files).
    pub metadata: MetadataDelta,
    pub(crate) store: Store,
}

impl Segment {
    pub(crate) fn memory(
        info: SegmentInfo,
        docs: DocSets,
        metadata: MetadataDelta,
        postings: Vec<PackedPosting>,
    ) -> Segment {
        Segment {
            info,
            docs,
            metadata,
            store: Store::Memory(MemoryPostings::new(postings)),
        }
    }

    /// A segment over an opened file segment.
    pub fn file(file: FileSegment) -> Segment {
        Segment {
            info: file.info(),
            docs: file.docs().clone(),
            metadata: MetadataDelta::new(),
            store: Store::File(Box::new(file)),
        }
    }

    pub fn kind(&self) -> SegmentKind {
        match self.store {
            Store::Memory(_) => SegmentKind::Memory,
            Store::File(_) => SegmentKind::File,
        }
    }

    /// Bytes this segment occupies (file size, or heap bytes of its postings
    /// and filter).
    pub fn size_bytes(&self) -> u64 {
        match &self.store {
            Store::Memory(p) => {
                (p.postings.len() * std::mem::size_of::<PackedPosting>()
                    + p.filter.as_ref().map_or(0, OwnedFilter::heap_bytes)) as u64
            }
            Store::File(f) => f.file_size(),
        }
    }

    pub fn as_file(&self) -> Option<&FileSegment> {
        match &self.store {
            Store::File(f) => Some(f),
            Store::Memory(_) => None,
        }
    }

    /// Calls `found(id)` once for every posting whose hash is in `sorted_query`
    /// (sorted, deduplicated).
    pub fn collect_matches(&self, sorted_query: &[u32], found: &mut dyn FnMut(u32)) -> Result<()> {
        match &self.store {
            Store::Memory(m) => {
                m.collect_matches(sorted_query, found);
                Ok(())
            }
            Store::File(f) => f.collect_matches(sorted_query, found),
        }
    }

    /// The segment's membership filter, if it has one: a search asks it
    /// before looking a hash up.
    pub fn filter(&self) -> Option<FilterRef<'_>> {
        match &self.store {
            Store::Memory(m) => m.filter.as_ref().and_then(OwnedFilter::as_filter),
            Store::File(f) => f.filter(),
        }
    }

    /// Starts reading the blocks a search for `sorted_query` will touch
    /// (file segments; memory segments are in RAM already).
    pub fn prefetch(&self, sorted_query: &[u32]) {
        if let Store::File(f) = &self.store {
            f.prefetch(sorted_query);
        }
    }

    /// A memory segment's postings, in `(hash, id)` order.
    pub fn memory_postings(&self) -> Option<&[PackedPosting]> {
        match &self.store {
            Store::Memory(m) => Some(&m.postings),
            Store::File(_) => None,
        }
    }

    /// All postings in `(hash, id)` order.
    pub fn cursor(&self) -> PostingCursor<'_> {
        match &self.store {
            Store::Memory(m) => PostingCursor::Memory(m.postings.iter()),
            Store::File(f) => PostingCursor::File(Box::new(f.cursor())),
        }
    }

    /// Marks a file segment for deletion once the last reader drops it.
    pub(crate) fn retire(&self) {
        if let Store::File(f) = &self.store {
            f.delete_on_drop();
        }
    }
}

/// Postings of a memory segment, sorted, with a prefix table over their hashes
/// (a bucket holds ~16 postings) so a lookup is one bucket plus a few probes,
/// and the same membership filter as a file segment's. Even a 10-fingerprint
/// segment gets one: it saves a query 1.8 us there (`cargo bench --bench
/// memory_probe`), and leaving small segments without one made no difference
/// to a load's speed (docs/benchmarks.md "Ingest with filters").
#[derive(Debug)]
pub(crate) struct MemoryPostings {
    postings: Vec<PackedPosting>,
    prefix: PrefixTable,
    filter: Option<OwnedFilter>,
}

impl MemoryPostings {
    fn new(postings: Vec<PackedPosting>) -> Self {
        let hash_at = |i: usize| (postings[i] >> 32) as u32;
        let prefix = PrefixTable::build(postings.len() as u64, 16, |i| hash_at(i as usize));
        let filter = FilterBuilder::for_keys(postings.len() as u64).and_then(|mut f| {
            for &p in &postings {
                f.insert((p >> 32) as u32);
            }
            f.into_owned()
        });
        MemoryPostings {
            postings,
            prefix,
            filter,
        }
    }

    fn collect_matches(&self, sorted_query: &[u32], found: &mut dyn FnMut(u32)) {
        let hash_at = |i: u64| (self.postings[i as usize] >> 32) as u32;
        for &hash in sorted_query {
            let start = self.prefix.lower_bound(hash, hash_at) as usize;
            for &p in &self.postings[start..] {
                if (p >> 32) as u32 != hash {
                    break;
                }
                found(p as u32);
            }
        }
    }
}

/// Iterates a segment's postings in order.
pub enum PostingCursor<'a> {
    Memory(std::slice::Iter<'a, PackedPosting>),
    File(Box<FileCursor<'a>>),
}

impl std::fmt::Debug for PostingCursor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostingCursor")
    }
}

impl Iterator for PostingCursor<'_> {
    type Item = Result<PackedPosting>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            PostingCursor::Memory(it) => it.next().copied().map(Ok),
            PostingCursor::File(c) => c.next(),
        }
    }
}
