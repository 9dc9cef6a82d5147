//! The replication stream against a real nats-server: fpnode creates it with
//! safe settings, refuses one that would lose data, and the JetStream features
//! replication relies on behave as docs/replication.md says (atomic batches,
//! per-subject compaction, Nats-Msg-Id deduplication).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/nats.rs"]
mod nats;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream::Config};
use fpnode_actors::stream::{
    FingerprintPayload, StreamError, StreamSettings, ensure_stream, fingerprint_subject,
};
use jetstream_extra::batch_publish::BatchPublishExt;

async fn connect(server: &nats::NatsServer) -> jetstream::Context {
    jetstream::new(async_nats::connect(server.url()).await.unwrap())
}

/// A fresh server with fpnode's stream created (keep the server alive).
async fn with_stream() -> (nats::NatsServer, jetstream::Context) {
    let server = nats::NatsServer::start();
    let js = connect(&server).await;
    ensure_stream(&js, &StreamSettings::default())
        .await
        .unwrap();
    (server, js)
}

#[tokio::test]
async fn fpnode_creates_its_stream_with_safe_settings_and_accepts_it_again() {
    let server = nats::NatsServer::start();
    let js = connect(&server).await;
    let settings = StreamSettings::default();
    let stream = ensure_stream(&js, &settings).await.unwrap();
    let cfg = &stream.cached_info().config;
    assert_eq!(cfg.max_messages_per_subject, 1);
    assert!(cfg.allow_atomic_publish);
    assert!(settings.problems(cfg).is_empty());
    ensure_stream(&js, &settings).await.unwrap();
}

#[tokio::test]
async fn a_stream_whose_settings_would_lose_data_is_refused_with_the_reason() {
    let server = nats::NatsServer::start();
    let js = connect(&server).await;
    js.create_stream(Config {
        name: "fpindex".into(),
        subjects: vec!["fpindex.>".into()],
        max_age: Duration::from_secs(3600),
        max_messages_per_subject: 1,
        allow_atomic_publish: true,
        allow_message_ttl: true,
        allow_direct: true,
        duplicate_window: Duration::from_secs(60),
        ..Config::default()
    })
    .await
    .unwrap();
    match ensure_stream(&js, &StreamSettings::default()).await {
        Err(StreamError::Unsafe { reasons, .. }) => {
            assert_eq!(reasons.len(), 1, "{reasons:?}");
            assert!(reasons[0].contains("max_age"), "{reasons:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn atomic_batches_land_whole_and_the_stream_keeps_the_latest_state_of_each_fingerprint() {
    let (_server, js) = with_stream().await;
    let subject = |id| fingerprint_subject("fpindex", "main", id);
    let mut batch = js.batch_publish().build();
    batch
        .add(
            subject(1),
            FingerprintPayload::insert(vec![1, 2]).encode().unwrap(),
        )
        .await
        .unwrap();
    batch
        .add(
            subject(2),
            FingerprintPayload::insert(vec![3]).encode().unwrap(),
        )
        .await
        .unwrap();
    let ack = batch
        .commit(subject(3), FingerprintPayload::delete().encode().unwrap())
        .await
        .unwrap();
    assert_eq!(ack.batch_size, 3);
    // A newer state of fingerprint 1 replaces the older one (compaction).
    js.publish(
        subject(1),
        FingerprintPayload::insert(vec![9]).encode().unwrap(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut stream = js.get_stream("fpindex").await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 3);
    let last = stream
        .get_last_raw_message_by_subject(&subject(1))
        .await
        .unwrap();
    assert_eq!(
        FingerprintPayload::decode(&last.payload).unwrap(),
        FingerprintPayload::insert(vec![9])
    );
}

#[tokio::test]
async fn nats_msg_id_deduplicates_a_retried_write() {
    let (_server, js) = with_stream().await;
    let subject = fingerprint_subject("fpindex", "main", 5);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "request-1");
    let payload = FingerprintPayload::insert(vec![1]).encode().unwrap();
    let first = js
        .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    let again = js
        .publish_with_headers(subject, headers, payload)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);
}

/// nats-server 2.12.8 refuses `Nats-Msg-Id` inside an atomic batch, and stores
/// nothing of that batch: retried `_update`s need another idempotency mechanism
/// (docs/replication.md). If a server upgrade changes this, this test says so.
#[tokio::test]
async fn nats_msg_id_inside_an_atomic_batch_is_refused_and_nothing_is_stored() {
    use async_nats::jetstream::message::OutboundMessage;
    use jetstream_extra::batch_publish::BatchPublishErrorKind;
    let (_server, js) = with_stream().await;
    let msg = |id: u32, msg_id: &str| {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", msg_id);
        OutboundMessage::new(
            fingerprint_subject("fpindex", "main", id).into(),
            FingerprintPayload::insert(vec![id]).encode().unwrap(),
            Some(h),
        )
    };
    let mut batch = js.batch_publish().build();
    let result = match batch.add_message(msg(1, "req-1:1")).await {
        Ok(()) => batch.commit_message(msg(2, "req-1:2")).await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = result.expect_err("2.12.8 refuses Nats-Msg-Id in atomic batches");
    assert_eq!(
        err.kind(),
        BatchPublishErrorKind::BatchPublishUnsupportedHeader
    );
    let info = js
        .get_stream("fpindex")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .clone();
    assert_eq!(info.messages, 0);
}

fn outbound(
    subject: String,
    payload: bytes::Bytes,
    headers: &[(&str, &str)],
) -> async_nats::jetstream::message::OutboundMessage {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, *v);
    }
    async_nats::jetstream::message::OutboundMessage::new(subject.into(), payload, Some(h))
}

/// The idempotency mechanism docs/replication.md plans for `_update` batches: a
/// marker message that expects its subject to be empty makes a retry of the
/// same request fail whole, and the error names the first attempt's sequence.
#[tokio::test]
async fn a_request_marker_makes_a_retried_batch_fail_whole() {
    let (_server, js) = with_stream().await;
    let marker = || {
        outbound(
            "fpindex.main._req.abc".into(),
            bytes::Bytes::from_static(b"\x80"),
            &[
                ("Nats-Expected-Last-Subject-Sequence", "0"),
                ("Nats-TTL", "120s"),
            ],
        )
    };
    let mut results = Vec::new();
    for _ in 0..2 {
        let mut batch = js.batch_publish().build();
        batch
            .add(
                fingerprint_subject("fpindex", "main", 1),
                FingerprintPayload::insert(vec![1]).encode().unwrap(),
            )
            .await
            .unwrap();
        results.push(batch.commit_message(marker()).await.map(|a| a.sequence));
    }
    assert_eq!(results[0].as_ref().unwrap(), &2);
    let err = results[1].as_ref().unwrap_err().to_string();
    assert!(err.contains("wrong last sequence: 2"), "{err}");
    let state = js
        .get_stream("fpindex")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .clone();
    assert_eq!((state.messages, state.last_sequence), (2, 2));
}

/// `expected_version` maps to `Nats-Expected-Last-Subject-Sequence` with a
/// subject filter covering the index, inside an atomic batch.
#[tokio::test]
async fn expected_version_is_checked_against_the_whole_index_inside_a_batch() {
    let (_server, js) = with_stream().await;
    let put = |id: u32| {
        (
            fingerprint_subject("fpindex", "main", id),
            FingerprintPayload::insert(vec![id]).encode().unwrap(),
        )
    };
    for id in [1, 2] {
        let (s, p) = put(id);
        js.publish(s, p).await.unwrap().await.unwrap();
    }
    // Another index's writes do not move this index's version.
    js.publish(
        fingerprint_subject("fpindex", "other", 1),
        FingerprintPayload::delete().encode().unwrap(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let attempt = |expected: &'static str| {
        let js = js.clone();
        async move {
            let (s, p) = put(7);
            let mut batch = js.batch_publish().build();
            batch
                .add_message(outbound(
                    s,
                    p,
                    &[
                        ("Nats-Expected-Last-Subject-Sequence", expected),
                        (
                            "Nats-Expected-Last-Subject-Sequence-Subject",
                            "fpindex.main.>",
                        ),
                    ],
                ))
                .await?;
            let (s, p) = put(8);
            batch.commit(s, p).await.map(|a| a.sequence)
        }
    };
    assert!(
        attempt("1").await.is_err(),
        "a stale expected version must be refused"
    );
    assert_eq!(attempt("2").await.unwrap(), 5);
}

/// Deleting an index purges its older messages: JetStream's purge with a
/// subject filter and a sequence removes the filter's messages below that
/// sequence and keeps the one at it (the delete record).
#[tokio::test]
async fn a_filtered_purge_below_a_sequence_keeps_that_sequence() {
    let (_server, js) = with_stream().await;
    for id in [1, 2] {
        js.publish(
            fingerprint_subject("fpindex", "main", id),
            FingerprintPayload::insert(vec![id]).encode().unwrap(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    js.publish(
        fingerprint_subject("fpindex", "other", 1),
        FingerprintPayload::insert(vec![1]).encode().unwrap(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let record = js
        .publish(
            "fpindex.main._index",
            bytes::Bytes::from_static(b"\x81\xa1g\x01"),
        )
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    assert_eq!(record, 4);
    let stream = js.get_stream("fpindex").await.unwrap();
    let purged = stream
        .purge()
        .filter("fpindex.main.>")
        .sequence(record)
        .await
        .unwrap();
    assert_eq!(purged.purged, 2);
    let kept = stream
        .direct_get_last_for_subject("fpindex.main._index")
        .await
        .unwrap();
    assert_eq!(kept.sequence, 4);
    assert!(
        stream
            .direct_get_last_for_subject("fpindex.other.00000001")
            .await
            .is_ok()
    );
}

/// Measured on 2.12.8: a filtered purge "below sequence 1" removes the
/// message at sequence 1 too (0 and 1 mean "no sequence limit"), so fpnode
/// never purges below a sequence <= 1 (there is nothing below it anyway).
#[tokio::test]
async fn a_filtered_purge_below_sequence_one_removes_everything() {
    let (_server, js) = with_stream().await;
    let record = js
        .publish(
            "fpindex.main._index",
            bytes::Bytes::from_static(b"\x81\xa1g\x01"),
        )
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    assert_eq!(record, 1);
    let stream = js.get_stream("fpindex").await.unwrap();
    let purged = stream
        .purge()
        .filter("fpindex.main.>")
        .sequence(record)
        .await
        .unwrap();
    assert_eq!(purged.purged, 1);
    assert!(
        stream
            .direct_get_last_for_subject("fpindex.main._index")
            .await
            .is_err()
    );
}
