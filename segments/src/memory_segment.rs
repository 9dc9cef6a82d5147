//! Building memory segments from batches.
//!
//! A batch becomes one memory segment: its inserts' distinct hashes become postings,
//! its ids become the segment's defined and deleted sets. Within a batch the last
//! change of an id wins, as in fpindex.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::segment::{DocSets, Segment, SegmentInfo};
use crate::types::{Batch, Change, MetadataDelta, SegmentId, pack};

/// Builds the memory segment for one batch.
pub fn build(id: SegmentId, batch: &Batch) -> Result<Segment> {
    build_many(id, std::slice::from_ref(batch))
}

/// Builds one memory segment holding consecutive batches (oldest first), as if
/// they had been applied one after the other. Used when replaying the WAL.
pub fn build_many(id: SegmentId, batches: &[Batch]) -> Result<Segment> {
    let (Some(first), Some(last)) = (batches.first(), batches.last()) else {
        return Err(Error::InvalidInput(
            "no batches to build a segment from".into(),
        ));
    };
    let num_changes = batches.iter().map(|b| b.changes.len()).sum();
    let mut seen = HashSet::with_capacity(num_changes);
    let mut docs = DocSets::default();
    let mut postings = Vec::with_capacity(batches.iter().map(Batch::num_hashes).sum());
    let mut hashes = Vec::new();
    let mut metadata = MetadataDelta::new();
    for batch in batches {
        metadata.extend(batch.metadata.clone());
    }
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
                hashes.clear();
                hashes.extend_from_slice(h);
                hashes.sort_unstable();
                hashes.dedup();
                postings.extend(hashes.iter().map(|&hash| pack(hash, doc)));
            }
            Change::Delete { .. } => {
                docs.deleted.insert(doc);
            }
        }
    }
    postings.sort_unstable();
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

    #[test]
    fn id_zero_is_rejected() {
        let batch = Batch::new(Position(1), vec![Change::Delete { id: 0 }]);
        assert!(matches!(
            build(SegmentId(1), &batch),
            Err(Error::InvalidFingerprintId)
        ));
    }
}
