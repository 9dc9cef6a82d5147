//! A reader's consistent view of an index: an ordered list of segments with the
//! ids each one has lost to newer segments.
//!
//! Snapshots are immutable and shared behind an `Arc`; the index publishes a new
//! one after every change to its segment list (atomic swap). A search keeps the
//! snapshot it started with, so merges and checkpoints never disturb it, and a
//! retired segment's file is deleted when the last snapshot holding it drops.
//!
//! Masking rule: for any id, the newest segment that mentions it (defines or
//! deletes it) decides. `shadowed` of a segment is the set of ids it mentions that
//! some newer segment also mentions; its postings for those ids do not count.

use std::sync::Arc;

use roaring::RoaringBitmap;

use crate::error::Result;
use crate::segment::Segment;
use crate::types::{FingerprintId, Generation, Metadata, Position};

/// A segment as seen from one snapshot.
#[derive(Clone, Debug)]
pub struct SegmentView {
    pub segment: Arc<Segment>,
    /// Ids mentioned by this segment that newer segments decide about.
    pub shadowed: Arc<RoaringBitmap>,
}

impl SegmentView {
    /// Ids that are live through this segment.
    pub fn live_count(&self) -> u64 {
        self.segment.docs.defined.len() - self.segment.docs.defined.intersection_len(&self.shadowed)
    }
}

/// What `get` reports for an id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DocInfo {
    /// Position of the newest batch in the segment that decides about the id.
    pub version: Position,
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub generation: Generation,
    /// Position of the last applied batch.
    pub position: Position,
    /// Every batch up to here is in file segments (the WAL before it is gone).
    pub checkpoint_position: Position,
    pub metadata: Arc<Metadata>,
    /// Metadata as of `checkpoint_position` (what the file segments hold).
    pub checkpoint_metadata: Arc<Metadata>,
    /// Oldest first.
    pub segments: Vec<SegmentView>,
    pub num_docs: u64,
}

/// Computes every segment's shadowed set from scratch (newest to oldest).
pub fn compute_shadows(segments: &[Arc<Segment>]) -> Vec<SegmentView> {
    let mut newer = RoaringBitmap::new();
    let mut views: Vec<SegmentView> = segments
        .iter()
        .rev()
        .map(|s| {
            let mentioned = s.docs.mentioned();
            let shadowed = &mentioned & &newer;
            newer |= mentioned;
            SegmentView {
                segment: s.clone(),
                shadowed: Arc::new(shadowed),
            }
        })
        .collect();
    views.reverse();
    views
}

impl Snapshot {
    /// A new snapshot with `segment` appended as the newest, updating the older
    /// segments' shadowed sets incrementally.
    pub fn with_new_segment(&self, segment: Arc<Segment>) -> Snapshot {
        let mentioned = segment.docs.mentioned();
        let mut num_docs = self.num_docs;
        let mut segments: Vec<SegmentView> = self
            .segments
            .iter()
            .map(|v| {
                let docs = &v.segment.docs;
                let hit = (&mentioned & &docs.defined) | (&mentioned & &docs.deleted);
                let fresh = &hit - v.shadowed.as_ref();
                if fresh.is_empty() {
                    return v.clone();
                }
                num_docs -= fresh.intersection_len(&docs.defined);
                SegmentView {
                    segment: v.segment.clone(),
                    shadowed: Arc::new(v.shadowed.as_ref() | &fresh),
                }
            })
            .collect();
        num_docs += segment.docs.defined.len();
        segments.push(SegmentView {
            segment,
            shadowed: Arc::new(RoaringBitmap::new()),
        });
        Snapshot {
            segments,
            num_docs,
            ..self.clone()
        }
    }

    /// A new snapshot over `segments` with shadows computed from scratch.
    pub fn with_segments(&self, segments: &[Arc<Segment>]) -> Snapshot {
        let views = compute_shadows(segments);
        let num_docs = views.iter().map(SegmentView::live_count).sum();
        Snapshot {
            segments: views,
            num_docs,
            ..self.clone()
        }
    }

    /// The version of a live fingerprint, or `None` if it does not exist.
    pub fn get(&self, id: FingerprintId) -> Option<DocInfo> {
        let view = self
            .segments
            .iter()
            .rev()
            .find(|v| v.segment.docs.mentions(id))?;
        view.segment.docs.defined.contains(id).then_some(DocInfo {
            version: view.segment.info.max_position,
        })
    }

    /// Which of `ids` are live: [`Snapshot::get`] for many ids at once, by
    /// bitmap intersections with each segment, newest first (several times
    /// cheaper than one lookup per id in every segment).
    pub fn live_among(&self, ids: &RoaringBitmap) -> RoaringBitmap {
        let mut unresolved = ids.clone();
        let mut live = RoaringBitmap::new();
        for v in self.segments.iter().rev() {
            if unresolved.is_empty() {
                break;
            }
            let defined = &unresolved & &v.segment.docs.defined;
            let deleted = &unresolved & &v.segment.docs.deleted;
            unresolved -= &defined;
            unresolved -= &deleted;
            live |= defined;
        }
        live
    }

    /// Smallest and largest live id (0 and 0 for an empty index).
    pub fn id_range(&self) -> (FingerprintId, FingerprintId) {
        let mut min: Option<u32> = None;
        let mut max: Option<u32> = None;
        for v in &self.segments {
            let defined = &v.segment.docs.defined;
            if let Some(id) = defined.iter().find(|id| !v.shadowed.contains(*id)) {
                min = Some(min.map_or(id, |m| m.min(id)));
            }
            if let Some(id) = defined.iter().rev().find(|id| !v.shadowed.contains(*id)) {
                max = Some(max.map_or(id, |m| m.max(id)));
            }
        }
        (min.unwrap_or(0), max.unwrap_or(0))
    }

    /// All live fingerprints with their distinct hashes, ascending by id. Meant
    /// for tests, dumps and snapshots of small indexes: it materialises everything.
    pub fn dump(&self) -> Result<std::collections::BTreeMap<FingerprintId, Vec<u32>>> {
        self.dump_range(0..=FingerprintId::MAX)
    }

    /// The live fingerprints whose ids are in `ids`, with their distinct
    /// hashes, ascending by id. Reads every posting of every segment once:
    /// an export in id ranges holds one range in memory at a time.
    pub fn dump_range(
        &self,
        ids: std::ops::RangeInclusive<FingerprintId>,
    ) -> Result<std::collections::BTreeMap<FingerprintId, Vec<u32>>> {
        let mut out: std::collections::BTreeMap<FingerprintId, Vec<u32>> = Default::default();
        for v in &self.segments {
            for id in v.segment.docs.defined.range(ids.clone()) {
                if !v.shadowed.contains(id) {
                    out.insert(id, Vec::new());
                }
            }
            for p in v.segment.cursor() {
                let (hash, id) = crate::types::unpack(p?);
                if ids.contains(&id)
                    && !v.shadowed.contains(id)
                    && let Some(h) = out.get_mut(&id)
                {
                    h.push(hash);
                }
            }
        }
        Ok(out)
    }

    /// The ids of every live fingerprint.
    pub fn live_ids(&self) -> RoaringBitmap {
        let mut live = RoaringBitmap::new();
        for v in &self.segments {
            live |= &v.segment.docs.defined - v.shadowed.as_ref();
        }
        live
    }

    pub fn num_segments(&self) -> usize {
        self.segments.len()
    }

    /// Bytes of the file segments searched.
    pub fn file_bytes(&self) -> u64 {
        self.segments
            .iter()
            .filter_map(|v| v.segment.as_file())
            .map(|f| f.file_size())
            .sum()
    }
}
