//! Building memory segments from batches.
//!
//! Consecutive batches (a write group, or a stretch of WAL on replay) become one
//! memory segment: their inserts' distinct hashes become postings, their ids
//! the segment's defined and deleted sets. The last change of an id wins, as
//! in fpindex.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::segment::{DocSets, Segment, SegmentInfo};
use crate::types::{Batch, Change, MetadataDelta, SegmentId, pack};

/// Builds the memory segment for one batch.
pub fn build(id: SegmentId, batch: &Batch) -> Result<Segment> {
    build_many(id, std::slice::from_ref(batch))
}

/// Builds one memory segment holding consecutive batches (oldest first), as if
/// they had been applied one after the other: a write group, or WAL replay.
pub fn build_many(id: SegmentId, batches: &[Batch]) -> Result<Segment> {
    let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
        return Err(Error::InvalidInput(
            "no batches to build a segment from".into(),
        ));
    };
    let num_changes = batches.iter().map(|b| b.changes.len()).sum();
    let mut seen = HashSet::with_capacity(num_changes);
    let mut docs = DocSets::default();
    let mut metadata = MetadataDelta::new();
    for batch in batches {
        metadata.extend(batch.metadata.clone());
    }
    // The change that decides each id (the last one), newest first.
    let mut inserts: Vec<(u32, &[u32])> = Vec::with_capacity(num_changes);
    for change in batches.iter().rev().flat_map(|b| b.changes.iter().rev()) {
        let doc = change.id();
        if doc == 0 {
            return Err(Error::InvalidFingerprintId);
        }
        if !seen.insert(doc) {
            continue;
        }
        match change {
            Change::Insert { hashes: h, .. } => {
                docs.defined.insert(doc);
                inserts.push((doc, h));
            }
            Change::Delete { .. } => {
                docs.deleted.insert(doc);
            }
        }
    }
    // Postings in id order, then a stable radix sort by hash: `(hash, id)`
    // order in four counting passes instead of a comparison sort. A hash
    // repeated in one fingerprint ends up adjacent to itself: dedup.
    inserts.sort_unstable_by_key(|&(doc, _)| doc);
    let mut postings = Vec::with_capacity(inserts.iter().map(|(_, h)| h.len()).sum());
    for (doc, h) in inserts {
        postings.extend(h.iter().map(|&hash| pack(hash, doc)));
    }
    radsort::sort_by_key(&mut postings, |&p| (p >> 32) as u32);
    postings.dedup();
    let info = SegmentInfo {
        id,
        min_position: first.position,
        max_position: last.position,
        num_postings: postings.len() as u64,
    };
    Ok(Segment::memory(info, docs, metadata, postings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Position;

    #[test]
    fn last_change_of_an_id_in_a_batch_wins_and_hashes_are_a_set() {
        let batch = Batch::new(
            Position(7),
            vec![
                Change::Insert {
                    id: 1,
                    hashes: vec![5, 6],
                },
                Change::Insert {
                    id: 2,
                    hashes: vec![9, 9, 3],
                },
                Change::Delete { id: 1 },
                Change::Delete { id: 3 },
                Change::Insert {
                    id: 3,
                    hashes: vec![],
                },
            ],
        );
        let seg = build(SegmentId(1), &batch).unwrap();
        assert_eq!(seg.docs.defined.iter().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(seg.docs.deleted.iter().collect::<Vec<_>>(), vec![1]);
        let postings: Vec<_> = seg.cursor().map(|p| p.unwrap()).collect();
        assert_eq!(postings, vec![pack(3, 2), pack(9, 2)]);
        assert_eq!(seg.info.max_position, Position(7));
    }

    proptest::proptest! {
        // The radix-sorted build equals the definition: the distinct
        // `(hash, id)` of each id's last change, if it is an insert, sorted.
        #[test]
        fn postings_are_the_sorted_set_of_each_ids_last_insert(
            changes in proptest::collection::vec(
                (1u32..50, proptest::option::of(proptest::collection::vec(proptest::prelude::any::<u32>(), 0..20))),
                0..60,
            ),
        ) {
            let changes: Vec<Change> = changes
                .into_iter()
                .map(|(id, hashes)| match hashes {
                    Some(hashes) => Change::Insert { id, hashes },
                    None => Change::Delete { id },
                })
                .collect();
            let mut last = std::collections::BTreeMap::new();
            for c in &changes {
                last.insert(c.id(), c.clone());
            }
            let mut expected: Vec<u64> = last
                .values()
                .flat_map(|c| match c {
                    Change::Insert { id, hashes } => hashes.iter().map(|&h| pack(h, *id)).collect(),
                    Change::Delete { .. } => Vec::new(),
                })
                .collect();
            expected.sort_unstable();
            expected.dedup();
            let seg = build(SegmentId(1), &Batch::new(Position(1), changes)).unwrap();
            let postings: Vec<u64> = seg.cursor().map(|p| p.unwrap()).collect();
            proptest::prop_assert_eq!(postings, expected);
        }
    }

    #[test]
    fn id_zero_is_rejected() {
        let batch = Batch::new(Position(1), vec![Change::Delete { id: 0 }]);
        assert!(matches!(
            build(SegmentId(1), &batch),
            Err(Error::InvalidFingerprintId)
        ));
    }
}
