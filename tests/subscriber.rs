//! Replica apply path against a real nats-server: a StreamSubscriber follows an
//! index's subjects and the index ends up equal to the stream's latest state of
//! every fingerprint, at the stream sequence as its version; a new subscriber
//! resumes from the stored position; other indexes' messages are ignored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/nats.rs"]
mod nats;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use fpnode_actors::IndexHandle;
use fpnode_actors::index_supervisor::{IndexSupArgs, IndexSupervisor, SupervisionOptions};
use fpnode_actors::stream::{
    FingerprintPayload, StreamSettings, ensure_stream, fingerprint_subject,
};
use fpnode_actors::stream_subscriber::{StreamSubscriber, SubscriberArgs};
use fpnode_segments::index::IndexOptions;
use fpnode_segments::{Generation, Index};
use ractor::Actor;

/// Publishes `n` writes to `main` (inserts, replaces, every 7th a delete) and
/// some to `other`; returns the model of `main` and its last sequence.
async fn publish(
    js: &jetstream::Context,
    from: u32,
    n: u32,
    model: &mut BTreeMap<u32, Vec<u32>>,
) -> u64 {
    let mut last = 0;
    for i in from..from + n {
        let id = i % 150 + 1;
        let payload = if i % 7 == 0 {
            model.remove(&id);
            FingerprintPayload::delete()
        } else {
            let h = vec![i, i + 1, i + 2];
            model.insert(id, h.clone());
            FingerprintPayload::insert(h)
        };
        let ack = js
            .publish(
                fingerprint_subject("fpindex", "main", id),
                payload.encode().unwrap(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        last = ack.sequence;
        if i % 5 == 0 {
            js.publish(
                fingerprint_subject("fpindex", "other", id),
                FingerprintPayload::insert(vec![1]).encode().unwrap(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    last
}

async fn wait_for(index: &Index, position: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while index.position().0 < position {
        assert!(
            Instant::now() < deadline,
            "replica stuck at {} of {position}",
            index.position()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An empty replica of index `main` in `dir`: engine, handle and the
/// IndexSupervisor that runs its writer.
async fn replica(
    dir: &std::path::Path,
) -> (
    Arc<Index>,
    Arc<IndexHandle>,
    ractor::ActorRef<fpnode_actors::index_supervisor::IndexSupMsg>,
) {
    let index = Arc::new(Index::create(dir, Generation(1), IndexOptions::default()).unwrap());
    let handle = Arc::new(IndexHandle::new("main".into(), index.clone(), 16));
    let args = IndexSupArgs {
        handle: handle.clone(),
        opts: SupervisionOptions::default(),
        replication: None,
    };
    let (sup, _) = Actor::spawn(None, IndexSupervisor, args).await.unwrap();
    (index, handle, sup)
}

#[tokio::test]
async fn a_replica_follows_the_stream_and_resumes_from_its_position() {
    let server = nats::NatsServer::start();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let settings = StreamSettings::default();
    ensure_stream(&js, &settings).await.unwrap();
    let mut model = BTreeMap::new();
    let last = publish(&js, 1, 700, &mut model).await;

    let dir = tempfile::tempdir().unwrap();
    let (index, handle, sup) = replica(dir.path()).await;
    let sub_args = || SubscriberArgs {
        js: js.clone(),
        settings: settings.clone(),
        handle: handle.clone(),
        max_batch: 100,
        wait: Duration::from_millis(200),
        link: None,
    };
    let (sub, sub_join) = Actor::spawn(None, StreamSubscriber, sub_args())
        .await
        .unwrap();
    wait_for(&index, last).await;
    assert_eq!(
        index.position().0,
        last,
        "version = stream sequence of the last applied message"
    );
    assert_eq!(index.snapshot().dump().unwrap(), model);

    // Stop following, let the stream move on, follow again: resumes, no gaps.
    sub.stop(None);
    sub_join.await.unwrap();
    let last = publish(&js, 5000, 300, &mut model).await;
    let (_sub, _) = Actor::spawn(None, StreamSubscriber, sub_args())
        .await
        .unwrap();
    wait_for(&index, last).await;
    assert_eq!(index.snapshot().dump().unwrap(), model);
    sup.stop(None);
}

/// A writer failure in the middle of a replay (batches in flight) must not let
/// a later batch skip the failed one: the index still ends equal to the stream.
#[tokio::test]
async fn a_writer_failure_during_replay_loses_no_message() {
    use fpnode_actors::index_supervisor::{Child, IndexSupMsg};
    let server = nats::NatsServer::start();
    let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let settings = StreamSettings::default();
    ensure_stream(&js, &settings).await.unwrap();
    let mut model = BTreeMap::new();
    let last = publish(&js, 1, 1500, &mut model).await;
    let dir = tempfile::tempdir().unwrap();
    let (index, handle, sup) = replica(dir.path()).await;
    let first_writer = handle.batcher().unwrap().get_id();
    // The pipeline's first publish fails, with the next batch already in flight.
    sup.cast(IndexSupMsg::InjectFailure(Child::Writer)).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_sub, _) = Actor::spawn(
        None,
        StreamSubscriber,
        SubscriberArgs {
            js: js.clone(),
            settings,
            handle: handle.clone(),
            max_batch: 50,
            wait: Duration::from_millis(100),
            link: None,
        },
    )
    .await
    .unwrap();
    wait_for(&index, last).await;
    assert_ne!(
        handle.batcher().unwrap().get_id(),
        first_writer,
        "the injected failure never happened"
    );
    assert_eq!(index.snapshot().dump().unwrap(), model);
    sup.stop(None);
}
