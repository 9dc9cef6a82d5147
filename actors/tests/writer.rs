//! The write pipeline (Batcher -> WalWriter -> IndexWriter) on a real index:
//! numbered batches (replica mode) are taken only if they follow the
//! pipeline's position exactly; concurrent client writes are grouped (fewer
//! fsyncs than writes), numbered without gaps, and visible when answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use fpnode_actors::batcher::{Batcher, BatcherArgs, BatcherMsg};
use fpnode_actors::index_writer::{IndexWriter, WriterArgs};
use fpnode_actors::segment_merger::{MergerArgs, SegmentMerger};
use fpnode_actors::wal_writer::{WalWriter, WalWriterArgs};
use fpnode_actors::{WriteError, WriteRequest};
use fpnode_segments::index::IndexOptions;
use fpnode_segments::{Batch, Change, Generation, Index, Position};
use ractor::{Actor, ActorRef};

fn batch(position: u64, id: u32) -> Batch {
    Batch::new(
        Position(position),
        vec![Change::Insert {
            id,
            hashes: vec![id],
        }],
    )
}

async fn pipeline(index: &Arc<Index>) -> ActorRef<BatcherMsg> {
    // Merges as the node runs them beside, so writes never stall.
    Actor::spawn(
        None,
        SegmentMerger,
        MergerArgs {
            index: index.clone(),
            tick: std::time::Duration::from_millis(10),
        },
    )
    .await
    .unwrap();
    let unanswered = Arc::new(fpnode_actors::messages::Unanswered::default());
    let (w, _) = Actor::spawn(
        None,
        IndexWriter,
        WriterArgs {
            index: index.clone(),
            unanswered: unanswered.clone(),
            published: Arc::default(),
        },
    )
    .await
    .unwrap();
    let (l, _) = Actor::spawn(
        None,
        WalWriter,
        WalWriterArgs {
            index: index.clone(),
            index_writer: w,
            unanswered: unanswered.clone(),
        },
    )
    .await
    .unwrap();
    let (b, _) = Actor::spawn(
        None,
        Batcher,
        BatcherArgs {
            index: index.clone(),
            wal_writer: l,
            max_group_changes: 1000,
            group_credits: 3,
            unanswered,
            published: Arc::default(),
        },
    )
    .await
    .unwrap();
    b
}

#[tokio::test]
async fn numbered_batches_apply_only_in_sequence_and_never_skip_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let index =
        Arc::new(Index::create(dir.path(), Generation(1), IndexOptions::default()).unwrap());
    let batcher = pipeline(&index).await;
    let apply = |b: Batch, after: u64| {
        let batcher = batcher.clone();
        async move { ractor::call!(batcher, BatcherMsg::Apply, b, Position(after)).unwrap() }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_grouped_numbered_without_gaps_and_visible_when_answered() {
    let dir = tempfile::tempdir().unwrap();
    let index =
        Arc::new(Index::create(dir.path(), Generation(1), IndexOptions::default()).unwrap());
    let batcher = pipeline(&index).await;
    let writes = 400u32;
    let mut tasks = Vec::new();
    for id in 1..=writes {
        let (batcher, index) = (batcher.clone(), index.clone());
        tasks.push(tokio::spawn(async move {
            let request = WriteRequest {
                changes: vec![Change::Insert {
                    id,
                    hashes: vec![id, id + 1],
                }],
                ..WriteRequest::default()
            };
            let version = ractor::call!(batcher, BatcherMsg::Write, request)
                .unwrap()
                .unwrap();
            // Read your writes: answered means visible.
            let snap = index.snapshot();
            assert!(snap.position >= version, "{} < {version}", snap.position);
            assert!(snap.get(id).is_some(), "{id} answered but not visible");
            version.0
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(versions, (1..=writes as u64).collect::<Vec<_>>());
    let syncs = index
        .counters
        .wal_syncs
        .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{writes} writes, {syncs} WAL fsyncs");
    assert!(
        syncs < writes as u64,
        "{syncs} fsyncs for {writes} writes: no grouping"
    );
    assert_eq!(index.position(), Position(writes as u64));
    assert_eq!(index.logged_position(), Position(writes as u64));
}
