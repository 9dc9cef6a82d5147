//! The IndexWriter's numbered-batch rule (replica mode): a batch is applied only
//! if it follows the index's position exactly; one at or before the position is
//! answered as already applied; one that would skip positions is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fpnode_actors::WriteError;
use fpnode_actors::index_writer::{IndexWriter, WriterArgs, WriterMsg};
use fpnode_segments::index::IndexOptions;
use fpnode_segments::{Batch, Change, Generation, Index, Position};
use ractor::Actor;

fn batch(position: u64, id: u32) -> Batch {
    Batch::new(
        Position(position),
        vec![Change::Insert {
            id,
            hashes: vec![id],
        }],
    )
}

#[tokio::test]
async fn numbered_batches_apply_only_in_sequence_and_never_skip_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let index =
        Arc::new(Index::create(dir.path(), Generation(1), IndexOptions::default()).unwrap());
    let (writer, _) = Actor::spawn(
        None,
        IndexWriter,
        WriterArgs {
            index: index.clone(),
        },
    )
    .await
    .unwrap();
    let apply = |b: Batch, after: u64| {
        let writer = writer.clone();
        async move { ractor::call!(writer, WriterMsg::Apply, b, Position(after)).unwrap() }
    };
    assert_eq!(apply(batch(10, 1), 0).await, Ok(Position(10)));
    // Follows 15, but the index is at 10: positions 11..=15 would be skipped.
    assert_eq!(
        apply(batch(20, 2), 15).await,
        Err(WriteError::Gap {
            expected: 10,
            got: 15
        })
    );
    // Already applied (a re-delivery): answered, not applied again.
    assert_eq!(apply(batch(7, 3), 0).await, Ok(Position(7)));
    assert_eq!(apply(batch(20, 2), 10).await, Ok(Position(20)));
    let snap = index.snapshot();
    assert_eq!(snap.position, Position(20));
    assert!(
        snap.get(3).is_none(),
        "a re-delivered old batch must not be applied"
    );
    assert!(snap.get(2).is_some());
}
