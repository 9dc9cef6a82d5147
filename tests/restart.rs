//! Restarts and faults: SIGTERM and SIGKILL keep every acknowledged write; an
//! actor failure is restarted, counted, and loses nothing acknowledged; repeated
//! failure marks the index unhealthy while the process keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Api, Node};
use serde_json::json;

fn hashes(id: u64) -> Vec<u32> {
    (0..20).map(|i| (id * 31 + i * 7919) as u32).collect()
}

async fn put(api: &Api, id: u64) -> u16 {
    api.call(
        "PUT",
        &format!("/idx/{id}"),
        Some(json!({ "hashes": hashes(id) })),
    )
    .await
    .status
}

/// Writes `ids` one by one; every write must be acknowledged.
async fn put_many(api: &Api, ids: std::ops::Range<u64>) -> Vec<u64> {
    let mut acked = Vec::new();
    for id in ids {
        assert_eq!(
            put(api, id).await,
            200,
            "write of {id} was not acknowledged"
        );
        acked.push(id);
    }
    acked
}

/// Writes `ids` one by one while the node may be killed: a write is
/// acknowledged (200) or gets no answer at all (status 0); any other answer
/// is a failure of the test. Returns the acknowledged ones.
async fn put_until_killed(api: &Api, ids: std::ops::Range<u64>) -> Vec<u64> {
    let mut acked = Vec::new();
    for id in ids {
        match put(api, id).await {
            200 => acked.push(id),
            0 => {}
            status => panic!("write of {id} answered {status} before the kill"),
        }
    }
    acked
}

async fn assert_present(api: &Api, ids: &[u64]) {
    for &id in ids {
        let r = api.call("GET", &format!("/idx/{id}"), None).await;
        assert_eq!(r.status, 200, "acknowledged fingerprint {id} is missing");
        let r = api
            .call(
                "POST",
                "/idx/_search",
                Some(json!({ "query": hashes(id), "limit": 1 })),
            )
            .await;
        assert_eq!(
            r.body["results"][0]["id"],
            json!(id),
            "search does not find {id}"
        );
    }
}

/// A search for fingerprint 10,001 (the faults test's writers start there).
async fn search_10001(api: &Api) -> common::Answer {
    api.call(
        "POST",
        "/idx/_search",
        Some(json!({ "query": hashes(10_001), "limit": 1 })),
    )
    .await
}

async fn metric(api: &Api, name: &str) -> f64 {
    let text = api
        .call("GET", "/_metrics", None)
        .await
        .body
        .as_str()
        .unwrap_or_default()
        .to_string();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_sigkill_loses_no_acknowledged_write() {
    let mut node = Node::start(&["--checkpoint-threshold", "200"]).await;
    let api = Api::json(&node);
    api.call("PUT", "/idx", None).await;
    let mut acked = put_many(&api, 1..40).await;
    let status = node.terminate();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    node.spawn().await;
    let api = Api::json(&node);
    assert_present(&api, &acked).await;

    // Concurrent writers, then SIGKILL mid-stream.
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            put_until_killed(&api, (1000 + w * 1000)..(1000 + w * 1000 + 400)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.kill();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert!(
        acked.len() > 60,
        "too few writes acknowledged before the kill: {}",
        acked.len()
    );
    node.spawn().await;
    let api = Api::json(&node);
    assert_present(&api, &acked).await;
    let r = api.call("GET", "/idx", None).await;
    assert!(r.body["stats"]["num_docs"].as_u64().unwrap() >= acked.len() as u64);
}

#[tokio::test]
async fn restart_with_many_file_segments_keeps_everything() {
    // Tiny checkpoints: every few writes become a file segment.
    let mut node =
        Node::start(&["--checkpoint-threshold", "40", "--checkpoint-age-ms", "10"]).await;
    let api = Api::json(&node);
    api.call("PUT", "/idx", None).await;
    let acked = put_many(&api, 1..150).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = api.call("GET", "/idx/_status", None).await.body;
    assert!(status["file_segments"].as_u64().unwrap() >= 2, "{status}");
    node.kill();
    node.spawn().await;
    let api = Api::json(&node);
    assert_present(&api, &acked).await;
}

async fn inject(api: &Api, child: &str) {
    let r = api
        .client
        .post(format!("{}/_debug/fail/idx/{child}", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn a_failed_index_writer_is_restarted_counted_and_loses_nothing() {
    let node = Node::start(&["--enable-fault-injection"]).await;
    let api = Api::json(&node);
    api.call("PUT", "/idx", None).await;
    let mut acked = put_many(&api, 1..20).await;
    inject(&api, "index_writer").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The IndexWriter fails after the write's WAL fsync: the restarted
    // pipeline publishes the write and answers it, as accepted.
    let r = api
        .call("PUT", "/idx/500", Some(json!({ "hashes": hashes(500) })))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    acked.push(500);
    assert!(
        metric(&api, "fpnode_actor_restarts_total{actor=\"index_writer\"}").await >= 1.0,
        "the writer did not fail"
    );
    // ...and later writes succeed.
    let mut ok = false;
    for _ in 0..100 {
        let r = api
            .call("PUT", "/idx/501", Some(json!({ "hashes": hashes(501) })))
            .await;
        if r.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "writer did not come back");
    acked.push(501);
    acked.extend(put_many(&api, 20..40).await);
    assert_present(&api, &acked).await;
}

#[tokio::test]
async fn a_failed_segment_merger_is_restarted_and_counted() {
    let node = Node::start(&[
        "--enable-fault-injection",
        "--checkpoint-threshold",
        "40",
        "--checkpoint-age-ms",
        "10",
    ])
    .await;
    let api = Api::json(&node);
    api.call("PUT", "/idx", None).await;
    let mut acked = put_many(&api, 1..10).await;
    inject(&api, "segment_merger").await;
    let mut restarts = 0.0;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        restarts = metric(
            &api,
            "fpnode_actor_restarts_total{actor=\"segment_merger\"}",
        )
        .await;
        if restarts >= 1.0 {
            break;
        }
    }
    assert!(restarts >= 1.0);
    acked.extend(put_many(&api, 10..60).await);
    // Only a merger running after the restart can checkpoint up to a version
    // that did not exist before it.
    let version = api.call("GET", "/idx/_status", None).await.body["version"]
        .as_u64()
        .unwrap();
    let mut status = serde_json::Value::Null;
    for _ in 0..250 {
        status = api.call("GET", "/idx/_status", None).await.body;
        if status["checkpoint_version"].as_u64().unwrap() >= version {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        status["checkpoint_version"].as_u64().unwrap() >= version,
        "merger did not resume: version {version}, {status}"
    );
    assert_present(&api, &acked).await;
}

#[tokio::test]
async fn repeated_failure_marks_the_index_unhealthy_and_the_process_keeps_serving() {
    let mut node = Node::start(&["--enable-fault-injection"]).await;
    let api = Api::json(&node);
    api.call("PUT", "/idx", None).await;
    api.call("PUT", "/other", None).await;
    let acked = put_many(&api, 1..5).await;
    let mut unhealthy = false;
    for _ in 0..12 {
        inject(&api, "index_writer").await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        api.call("PUT", "/idx/900", Some(json!({ "hashes": [1] })))
            .await;
        // Wait out the restart backoff.
        tokio::time::sleep(Duration::from_millis(400)).await;
        if api.call("GET", "/idx/_health", None).await.status == 503 {
            unhealthy = true;
            break;
        }
    }
    assert!(unhealthy, "index never marked unhealthy");
    assert!(node.is_running());
    assert_eq!(api.call("GET", "/_health", None).await.status, 200);
    assert_eq!(api.call("GET", "/other/_health", None).await.status, 200);
    let r = api
        .call("PUT", "/other/1", Some(json!({ "hashes": [1, 2] })))
        .await;
    assert_eq!(r.status, 200);
    // Reads of the unhealthy index still answer from its data.
    assert_present(&api, &acked).await;
    let r = api
        .call("PUT", "/idx/901", Some(json!({ "hashes": [1] })))
        .await;
    assert_eq!(
        (r.status, r.body.clone()),
        (503, json!({ "error": "Unavailable" }))
    );
}

/// Every actor kind above the writer and merger: a failed IndexSupervisor is
/// restarted by the registry (its writer and merger with it), a failed
/// IndexRegistry by the NodeSupervisor (adopting the open indexes); writes keep
/// working afterwards and nothing acknowledged is lost.
#[tokio::test]
async fn failed_index_supervisors_and_registries_are_restarted_and_lose_nothing() {
    let node = Node::start(&["--enable-fault-injection"]).await;
    let api = Api::json(&node);
    api.call("PUT", "/idx", None).await;
    let mut acked = put_many(&api, 1..20).await;
    for (child, metric_name) in [
        (
            "index_supervisor",
            "fpnode_actor_restarts_total{actor=\"index_supervisor\"}",
        ),
        (
            "index_registry",
            "fpnode_actor_restarts_total{actor=\"index_registry\"}",
        ),
    ] {
        inject(&api, child).await;
        let mut ok = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let id = 1000 + acked.len() as u64;
            let r = api
                .call(
                    "PUT",
                    &format!("/idx/{id}"),
                    Some(json!({ "hashes": hashes(id) })),
                )
                .await;
            if r.status == 200 && metric(&api, metric_name).await >= 1.0 {
                acked.push(id);
                ok = true;
                break;
            }
        }
        assert!(ok, "writes did not come back after {child} failed");
        acked.extend(
            put_many(
                &api,
                (acked.len() as u64 + 2000)..(acked.len() as u64 + 2010),
            )
            .await,
        );
        assert_eq!(api.call("GET", "/idx/_health", None).await.status, 200);
    }
    assert_present(&api, &acked).await;
}

/// A failure in each stage of the write pipeline: a write caught before its
/// WAL fsync is answered 503 (never acknowledged); the pipeline restarts as a
/// whole and counts the stage, later writes succeed, nothing acknowledged is
/// lost. A write caught after its fsync (in the IndexWriter) is durable: the
/// restarted pipeline publishes it and answers it 200.
#[tokio::test]
async fn a_failure_in_any_write_stage_restarts_the_pipeline_and_loses_nothing() {
    let node = Node::start(&["--enable-fault-injection"]).await;
    let api = Api::json(&node);
    api.call("PUT", "/idx", None).await;
    let mut acked = put_many(&api, 1..10).await;
    for (n, stage) in ["batcher", "wal_writer", "index_writer"].iter().enumerate() {
        inject(&api, stage).await;
        let failing = 500 + n as u64;
        let r = api
            .call(
                "PUT",
                &format!("/idx/{failing}"),
                Some(json!({ "hashes": hashes(failing) })),
            )
            .await;
        // Failed before the WAL: refused. After the fsync (IndexWriter):
        // published by the restarted pipeline and answered as accepted.
        let answer = if *stage == "index_writer" { 200 } else { 503 };
        assert_eq!(r.status, answer, "{stage}: {:?}", r.body);
        let mut back = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if put(&api, 600 + n as u64).await == 200 {
                back = true;
                break;
            }
        }
        assert!(back, "the pipeline did not come back after {stage} failed");
        acked.push(600 + n as u64);
        let present = api
            .call("GET", &format!("/idx/{failing}"), None)
            .await
            .status;
        // Failed before the WAL: not applied. After the fsync: published by
        // the restarted pipeline.
        let expected = if *stage == "index_writer" { 200 } else { 404 };
        assert_eq!(present, expected, "{stage}: fingerprint {failing}");
        let restarts = format!("fpnode_actor_restarts_total{{actor=\"{stage}\"}}");
        assert!(metric(&api, &restarts).await >= 1.0, "{restarts}");
    }
    acked.extend(put_many(&api, 10..30).await);
    assert_present(&api, &acked).await;
}

/// A search that panics answers that one request `500 SearchFailed` and its
/// worker is replaced: more panics than there are workers, and the node still
/// answers every search after each, with the pool back at full size.
#[tokio::test]
async fn a_panicking_search_answers_500_and_its_worker_is_replaced() {
    let node = Node::start(&["--enable-fault-injection", "--search-threads", "2"]).await;
    let api = Api::json(&node);
    api.call("PUT", "/idx", None).await;
    put_many(&api, 1..5).await;
    let search = || {
        let api = api.clone();
        async move {
            let call = api.call(
                "POST",
                "/idx/_search",
                Some(json!({ "query": hashes(3), "limit": 1 })),
            );
            tokio::time::timeout(Duration::from_secs(10), call)
                .await
                .expect("a search hung: no worker left to run it")
        }
    };
    for round in 0..5 {
        inject(&api, "search_worker").await;
        let r = search().await;
        assert_eq!(
            (r.status, r.body.clone()),
            (500, json!({ "error": "SearchFailed" })),
            "round {round}"
        );
        let r = search().await;
        assert_eq!(r.status, 200, "round {round}: {:?}", r.body);
        assert_eq!(r.body["results"][0]["id"], json!(3));
    }
    assert!(metric(&api, "fpnode_search_worker_restarts_total").await >= 5.0);
    let mut live = 0.0;
    for _ in 0..100 {
        live = metric(&api, "fpnode_search_workers").await;
        if live == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live, 2.0, "search workers running");
}

/// Creates and deletes of many names at once (their file-system steps run
/// off the registry's mailbox, side by side): every one gets a 200 or a 404,
/// and the lineage keeps every generation across a SIGKILL, so a deleted
/// name never gets a generation twice. (The order of steps on one name is
/// checked deterministically in actors/tests/registry.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_and_deletes_keep_every_generation_across_a_kill() {
    let mut node = Node::start(&[]).await;
    let api = Api::json(&node);
    let names: Vec<String> = (0..12).map(|i| format!("n{i}")).collect();
    let mut tasks = Vec::new();
    for name in names.clone() {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            // Not awaited one by one: the three requests queue on the name.
            let path = format!("/{name}");
            let (a, b, c) = tokio::join!(
                api.call("PUT", &path, None),
                async {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    api.call("DELETE", &path, None).await
                },
                async {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    api.call("PUT", &path, None).await
                }
            );
            (name, a, b, c)
        }));
    }
    for t in tasks {
        let (name, a, b, c) = t.await.unwrap();
        for r in [&a, &b, &c] {
            assert!(
                r.status == 200 || r.status == 404,
                "{name}: {} {:?}",
                r.status,
                r.body
            );
        }
        assert_eq!(c.status, 200, "{name}: create {:?}", c.body);
    }
    // Whatever order the three arrived in, make sure the name exists; after a
    // kill, delete + create must mint a newer generation.
    let mut before = Vec::new();
    for name in &names {
        if api
            .call("GET", &format!("/{name}/_status"), None)
            .await
            .status
            == 404
        {
            assert_eq!(api.call("PUT", &format!("/{name}"), None).await.status, 200);
        }
        let s = api.call("GET", &format!("/{name}/_status"), None).await;
        assert_eq!(s.status, 200, "{name}");
        before.push(s.body["generation"].as_u64().unwrap());
    }
    // Deleted: only the lineage remembers their generations now.
    for name in &names {
        assert_eq!(
            api.call("DELETE", &format!("/{name}"), None).await.status,
            200
        );
    }
    node.kill();
    node.spawn().await;
    let api = Api::json(&node);
    for (name, g) in names.iter().zip(before) {
        let r = api.call("PUT", &format!("/{name}"), None).await;
        assert_eq!(r.status, 200);
        let now = r.body["generation"].as_u64().unwrap();
        assert!(now > g, "{name}: generation {now} after {g}: minted twice");
    }
}

/// Every actor of an index, and the search workers, fail in turn while
/// writers and searchers run: each is restarted and counted, searches keep
/// being answered, and every acknowledged write is there at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_every_actor_during_ingest_and_searches_lose_nothing_acknowledged() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let node = Node::start(&[
        "--enable-fault-injection",
        "--checkpoint-threshold",
        "400",
        "--checkpoint-age-ms",
        "50",
    ])
    .await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let (api, stop) = (api.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut id = 10_000 * (w + 1);
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                match put(&api, id).await {
                    200 => acked.push(id),
                    // A write caught in a failing stage, or behind a
                    // restart: refused, never acknowledged.
                    503 => {}
                    status => panic!("write {id} answered {status}"),
                }
            }
            acked
        }));
    }
    let searcher = {
        let (api, stop) = (api.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut answered, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let r = search_10001(&api).await;
                match (r.status, r.body["error"].as_str()) {
                    (200, _) => answered += 1,
                    (500, Some("SearchFailed")) | (503, _) => failed += 1,
                    (status, _) => panic!("search answered {status}: {:?}", r.body),
                }
            }
            (answered, failed)
        })
    };
    let stages = [
        "batcher",
        "wal_writer",
        "index_writer",
        "segment_merger",
        "search_worker",
    ];
    let (mut after_faults, mut probe) = (Vec::new(), 90_000u64);
    for stage in stages {
        tokio::time::sleep(Duration::from_millis(300)).await;
        inject(&api, stage).await;
        let name = if stage == "search_worker" {
            "fpnode_search_worker_restarts_total".to_string()
        } else {
            format!("fpnode_actor_restarts_total{{actor=\"{stage}\"}}")
        };
        let mut restarted = false;
        for _ in 0..250 {
            if metric(&api, &name).await >= 1.0 {
                restarted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(restarted, "{stage} was not restarted under load ({name})");
        // Failed and counted is not enough: it must be back. A write (or,
        // for a search worker, a search) must succeed after the fault.
        let mut back = false;
        for _ in 0..250 {
            back = if stage == "search_worker" {
                let r = search_10001(&api).await;
                r.status == 200
            } else {
                probe += 1;
                put(&api, probe).await == 200
            };
            if back {
                if stage != "search_worker" {
                    after_faults.push(probe);
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(back, "nothing succeeded after {stage} failed");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    acked.extend(after_faults);
    let (answered, failed) = searcher.await.unwrap();
    eprintln!(
        "{} writes acknowledged; searches: {answered} answered, {failed} failed",
        acked.len()
    );
    assert!(acked.len() > 50, "too few writes: {}", acked.len());
    assert!(answered > 50, "too few searches answered: {answered}");
    for id in &acked {
        let r = api.call("GET", &format!("/idx/{id}"), None).await;
        assert_eq!(r.status, 200, "acknowledged write {id} lost");
    }
}
