//! `GET /:index/_changes` against the real binary (docs/api.md): the changes
//! after a version, in order, with hashes on request, in JSON and
//! MessagePack; long poll; a version no longer retained named as such.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Api, NO_CHANGES_RETAINED, Node, sse_events as events, wait_not_retained};
use serde_json::json;

/// `PUT /idx/<id>` with `hashes`; the answer's status.
async fn put(api: &Api, id: u64, hashes: serde_json::Value) -> u16 {
    api.call(
        "PUT",
        &format!("/idx/{id}"),
        Some(json!({ "hashes": hashes })),
    )
    .await
    .status
}

#[tokio::test]
async fn changes_after_a_version_in_order_with_hashes_on_request() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    let r = api
        .call(
            "POST",
            "/idx/_update",
            Some(json!({ "changes": [
                { "insert": { "id": 1, "hashes": [10, 11] } },
                { "insert": { "id": 2, "hashes": [20] } }
            ] })),
        )
        .await;
    assert_eq!(r.body["version"], json!(1));
    assert_eq!(api.call("DELETE", "/idx/1", None).await.status, 200);
    assert_eq!(
        api.call("PUT", "/idx/3", Some(json!({ "hashes": [30] })))
            .await
            .status,
        200
    );
    let r = api.call("GET", "/idx/_changes?since=0", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body,
        json!({
            "results": [
                { "version": 1, "kind": "insert", "id": 1 },
                { "version": 1, "kind": "insert", "id": 2 },
                { "version": 2, "kind": "delete", "id": 1 },
                { "version": 3, "kind": "insert", "id": 3 }
            ],
            "last_version": 3,
            "more": false
        })
    );
    let r = api
        .call("GET", "/idx/_changes?since=2&hashes=true", None)
        .await;
    assert_eq!(
        r.body["results"],
        json!([{ "version": 3, "kind": "insert", "id": 3, "hashes": [30] }])
    );
    // Pages: whole batches, `more` until the end.
    let r = api.call("GET", "/idx/_changes?since=0&limit=1", None).await;
    assert_eq!(
        (r.body["last_version"].clone(), r.body["more"].clone()),
        (json!(1), json!(true))
    );
    // MessagePack, same content.
    let r = Api::msgpack(&node)
        .call("GET", "/idx/_changes?since=1", None)
        .await;
    assert!(r.content_type.contains("msgpack"), "{}", r.content_type);
    assert_eq!(r.body["last_version"], json!(3));
    // Nothing after the last version: empty, at once.
    let r = api.call("GET", "/idx/_changes?since=3", None).await;
    assert_eq!(
        r.body,
        json!({ "results": [], "last_version": 3, "more": false })
    );
    // A fingerprint that was live is updated; one deleted comes back as
    // an insert.
    assert_eq!(put(&api, 3, json!([31])).await, 200);
    assert_eq!(put(&api, 1, json!([12])).await, 200);
    let r = api
        .call("GET", "/idx/_changes?since=3&hashes=true", None)
        .await;
    assert_eq!(
        r.body["results"],
        json!([
            { "version": 4, "kind": "update", "id": 3, "hashes": [31] },
            { "version": 5, "kind": "insert", "id": 1, "hashes": [12] }
        ])
    );
    // Bad requests are named.
    for bad in [
        "/idx/_changes?feed=bogus",
        "/idx/_changes?since=x",
        "/idx/_changes?nope=1",
    ] {
        assert_eq!(api.call("GET", bad, None).await.status, 400, "{bad}");
    }
    assert_eq!(api.call("GET", "/nope/_changes", None).await.status, 404);
}

#[tokio::test]
async fn a_long_poll_answers_when_a_change_arrives_or_at_its_timeout() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    assert_eq!(
        api.call("PUT", "/idx/1", Some(json!({ "hashes": [1] })))
            .await
            .status,
        200
    );
    let started = Instant::now();
    let r = api
        .call(
            "GET",
            "/idx/_changes?since=1&feed=longpoll&timeout=300",
            None,
        )
        .await;
    let waited = started.elapsed();
    assert_eq!(
        r.body,
        json!({ "results": [], "last_version": 1, "more": false })
    );
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    let poll = {
        let api = api.clone();
        tokio::spawn(async move {
            api.call(
                "GET",
                "/idx/_changes?since=1&feed=longpoll&timeout=20000",
                None,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !poll.is_finished(),
        "the long poll answered before any change"
    );
    assert_eq!(
        api.call("PUT", "/idx/2", Some(json!({ "hashes": [2] })))
            .await
            .status,
        200
    );
    let r = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long poll did not answer the change")
        .unwrap();
    assert_eq!(
        r.body["results"],
        json!([{ "version": 2, "kind": "insert", "id": 2 }])
    );
}

#[tokio::test]
async fn a_version_older_than_the_retention_is_gone_with_the_oldest_kept() {
    let node = Node::start(NO_CHANGES_RETAINED).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    for id in 1..=40u64 {
        assert_eq!(put(&api, id, json!([id, id + 1, id + 2])).await, 200);
    }
    let body = wait_not_retained(&api, "idx").await;
    assert_eq!(body["error"], json!("ChangesNotRetained"));
    let oldest = body["oldest_version"].as_u64().unwrap();
    assert!(oldest > 1 && oldest <= 40, "{body}");
    // From the oldest kept on, the feed reads to the end.
    let r = api
        .call("GET", &format!("/idx/_changes?since={}", oldest - 1), None)
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["results"][0]["version"], json!(oldest));
    assert_eq!(r.body["last_version"], json!(40));
    // An event stream from too far back: a 410 at once (an EventSource
    // stops on it instead of reconnecting to the same error).
    let res = reqwest::Client::new()
        .get(node.url("/idx/_changes?since=0"))
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 410);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"], json!("ChangesNotRetained"));
    assert!(body["oldest_version"].as_u64().unwrap() >= oldest);
}

#[tokio::test]
async fn an_event_stream_follows_writes_and_resumes_from_last_event_id() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    for id in 1..=3u64 {
        assert_eq!(put(&api, id, json!([id])).await, 200);
    }
    let client = reqwest::Client::new();
    let res = client
        .get(node.url("/idx/_changes?since=1&hashes=true"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // Two already there, then live ones as they are written.
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for id in 4..=6u64 {
                assert_eq!(put(&api, id, json!([id])).await, 200);
            }
        })
    };
    let got = events(res, 5).await;
    writer.await.unwrap();
    let ids: Vec<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["2", "3", "4", "5", "6"]);
    assert_eq!(
        got[0].2,
        json!({ "version": 2, "changes": [{ "kind": "insert", "id": 2, "hashes": [2] }] })
    );
    // Dropped after event 4 (as a client cut off would be): resumed from
    // Last-Event-ID, the next event is 5: no gap, no double.
    let res = client
        .get(node.url("/idx/_changes?feed=eventsource"))
        .header("Last-Event-ID", "4")
        .send()
        .await
        .unwrap();
    let got = events(res, 2).await;
    let ids: Vec<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["5", "6"]);
    // A delete ends no stream; an index delete does, named.
    let res = client
        .get(node.url("/idx/_changes?feed=eventsource&since=6"))
        .send()
        .await
        .unwrap();
    let deleter = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(api.call("DELETE", "/idx/1", None).await.status, 200);
            assert_eq!(api.call("DELETE", "/idx", None).await.status, 200);
        })
    };
    let got = events(res, 2).await;
    deleter.await.unwrap();
    assert_eq!(got[0].2["changes"], json!([{ "kind": "delete", "id": 1 }]));
    assert_eq!(
        (got[1].1.as_str(), got[1].2.clone()),
        ("error", json!({ "error": "IndexDeleted" }))
    );
}

/// The feed survives a restart: after SIGTERM and a new start, every change
/// after a version is still read from the retained log, across checkpoints.
#[tokio::test]
async fn the_feed_resumes_after_a_restart_with_nothing_missing() {
    let mut node = Node::start(&["--checkpoint-threshold", "30", "--wal-file-bytes", "500"]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    for id in 1..=30u64 {
        assert_eq!(put(&api, id, json!([id, id + 1, id + 2])).await, 200);
    }
    assert!(node.terminate().success());
    node.spawn().await;
    let api = Api::json(&node);
    for id in 31..=35u64 {
        assert_eq!(put(&api, id, json!([id])).await, 200);
    }
    let mut since = 0;
    let mut versions = Vec::new();
    loop {
        let r = api
            .call("GET", &format!("/idx/_changes?since={since}&limit=7"), None)
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for c in r.body["results"].as_array().unwrap() {
            versions.push(c["version"].as_u64().unwrap());
        }
        since = r.body["last_version"].as_u64().unwrap();
        if !r.body["more"].as_bool().unwrap() {
            break;
        }
    }
    assert_eq!(versions, (1..=35).collect::<Vec<_>>());
}

/// An open event stream does not keep the node from stopping: after
/// SIGTERM, requests in flight get a grace period, then it exits cleanly.
#[tokio::test]
async fn sigterm_with_an_event_stream_open_exits_after_the_grace() {
    let mut node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    let res = reqwest::Client::new()
        .get(node.url("/idx/_changes?feed=eventsource"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || node.terminate())
        .await
        .unwrap();
    drop(res);
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

/// `since=now`: only what comes after the request, for a long poll and for
/// the node's events; a `since` that is neither a version nor `now` is 400.
#[tokio::test]
async fn since_now_follows_only_what_comes_next() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    for id in 1..=3 {
        assert_eq!(put(&api, id, json!([id])).await, 200);
    }
    let poll = {
        let api = api.clone();
        tokio::spawn(async move {
            api.call(
                "GET",
                "/idx/_changes?since=now&feed=longpoll&timeout=10000",
                None,
            )
            .await
        })
    };
    let events = {
        let api = api.clone();
        tokio::spawn(async move {
            api.call(
                "GET",
                "/_changes?since=now&feed=longpoll&timeout=10000",
                None,
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished() && !events.is_finished());
    assert_eq!(put(&api, 4, json!([4])).await, 200);
    let got = poll.await.unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(
        got.body["results"],
        json!([{"version": 4, "kind": "insert", "id": 4}])
    );
    assert_eq!(api.call("PUT", "/other", None).await.status, 200);
    let got = events.await.unwrap();
    assert_eq!(got.body["results"][0]["type"], "index_created");
    assert_eq!(got.body["results"][0]["index"], "other");
    let bad = api.call("GET", "/idx/_changes?since=later", None).await;
    assert_eq!(bad.status, 400);
}
