//! `POST /:index/_stream` against the real binary (docs/api.md): changes
//! applied in groups as the body arrives, NDJSON progress lines and a final
//! line, a bad line named by its number with everything before it durable, a
//! client cut off mid-stream losing nothing it was told is durable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Api, Node};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

fn insert(id: u64) -> Value {
    json!({ "insert": { "id": id, "hashes": [id as u32, id as u32 + 1, 7] } })
}

fn ndjson(changes: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in changes {
        out.extend(serde_json::to_vec(c).unwrap());
        out.push(b'\n');
    }
    out
}

/// Sends `body` in chunks of `chunk` bytes as a streamed (chunked) request;
/// returns the status and the answer's lines.
async fn stream(
    node: &Node,
    index: &str,
    ct: &str,
    body: Vec<u8>,
    chunk: usize,
) -> (u16, Vec<Value>) {
    let chunks: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let res = reqwest::Client::new()
        .post(node.url(&format!("/{index}/_stream")))
        .header("Content-Type", ct)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    (status, lines)
}

async fn metric(api: &Api, name: &str) -> f64 {
    let text = api.call("GET", "/_metrics", None).await.body;
    text.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

async fn present(api: &Api, index: &str, id: u64) -> bool {
    let r = api.call("GET", &format!("/{index}/{id}"), None).await;
    assert!(
        r.status == 200 || r.status == 404,
        "{id}: {} {:?}",
        r.status,
        r.body
    );
    r.status == 200
}

#[tokio::test]
async fn a_stream_is_applied_in_order_in_groups_with_progress_lines() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    // 5,000 inserts; then ids 1-100 deleted and 50-60 inserted again, in
    // later groups: only applying in the body's order gives the right end.
    let mut changes: Vec<Value> = (1..=5000).map(insert).collect();
    changes.extend((1..=100).map(|id| json!({ "delete": { "id": id } })));
    changes.extend((50..=60).map(insert));
    let (status, lines) =
        stream(&node, "idx", "application/x-ndjson", ndjson(&changes), 7777).await;
    assert_eq!(status, 200);
    let last = lines.last().unwrap();
    assert_eq!(last["done"], json!(true), "{last}");
    assert_eq!(last["lines"], json!(changes.len()));
    assert_eq!(last["changes"], json!(changes.len()));
    // Progress lines come per group, never going back.
    assert!(lines.len() >= 6, "{} lines", lines.len());
    let counts: Vec<u64> = lines.iter().map(|l| l["lines"].as_u64().unwrap()).collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    let version = last["version"].as_u64().unwrap();
    let r = api.call("GET", "/idx", None).await;
    assert_eq!(r.body["version"], json!(version));
    for id in [1, 49, 61, 100] {
        assert!(!present(&api, "idx", id).await, "{id} was deleted later");
    }
    for id in [50, 55, 60, 101, 2500, 5000] {
        assert!(present(&api, "idx", id).await, "{id} missing");
    }
    let r = api
        .call(
            "POST",
            "/idx/_search",
            Some(json!({ "query": [4321, 4322, 7], "limit": 1 })),
        )
        .await;
    assert_eq!(r.body["results"][0], json!({ "id": 4321, "score": 3 }));
}

#[tokio::test]
async fn a_bad_line_stops_the_stream_by_its_number_and_everything_before_is_durable() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    let mut body = ndjson(&(1..=2499).map(insert).collect::<Vec<_>>());
    body.extend(b"{\"insert\": {\"id\": 2500, \"hashes\": \"not a list\"}}\n");
    body.extend(ndjson(&(2501..=3000).map(insert).collect::<Vec<_>>()));
    let (status, lines) = stream(&node, "idx", "application/x-ndjson", body, 4096).await;
    assert_eq!(status, 200);
    let last = lines.last().unwrap();
    assert_eq!(last["error"], json!("InvalidLine"), "{last}");
    assert_eq!(last["line"], json!(2500));
    assert_eq!(last["durable"]["lines"], json!(2499));
    assert_eq!(last["durable"]["changes"], json!(2499));
    for id in [1, 1000, 2499] {
        assert!(present(&api, "idx", id).await, "{id} before the bad line");
    }
    for id in [2500, 2501, 3000] {
        assert!(!present(&api, "idx", id).await, "{id} after the bad line");
    }
    // A bad id is named too, by its line.
    let body = ndjson(&[insert(1), json!({ "delete": { "id": 0 } })]);
    let (_, lines) = stream(&node, "idx", "application/x-ndjson", body, 100).await;
    let last = lines.last().unwrap();
    assert_eq!(
        (last["error"].clone(), last["line"].clone()),
        (json!("InvalidFingerprintId"), json!(2))
    );
}

#[tokio::test]
async fn a_client_cut_off_mid_stream_loses_nothing_it_was_told_is_durable() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let res = reqwest::Client::new()
        .post(node.url("/idx/_stream"))
        .header("Content-Type", "application/x-ndjson")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let broken = tx.clone();
    let feeder = tokio::spawn(async move {
        for id in 1..=3000u64 {
            let line = ndjson(&[insert(id)]);
            if tx.send(Ok(Bytes::from(line))).await.is_err() {
                return;
            }
        }
        // Then the client stops sending, without ending the body, and is
        // cut off below.
        std::future::pending::<()>().await;
    });
    let res = res.await.unwrap();
    assert_eq!(res.status(), 200);
    let mut answer = res.bytes_stream();
    let mut text = String::new();
    let mut durable = 0u64;
    while durable < 2000 {
        let chunk = tokio::time::timeout(Duration::from_secs(30), answer.next())
            .await
            .expect("no progress line")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        for line in text.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                durable = durable.max(v["lines"].as_u64().unwrap_or(0));
            }
        }
    }
    // Cut off: the body breaks off mid-stream (an error on the client's
    // side aborts the request, the connection goes away).
    feeder.abort();
    assert!(
        broken
            .send(Err(std::io::Error::other("client cut off")))
            .await
            .is_ok(),
        "the request's body was gone before the cut"
    );
    drop(answer);
    // The node notices and ends the stream's work.
    let mut ingests = f64::NAN;
    for _ in 0..100 {
        ingests = metric(&api, "fpnode_stream_ingests").await;
        if ingests == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ingests, 0.0, "the stream's work did not end");
    for id in (1..=durable).step_by(97).chain([durable]) {
        assert!(present(&api, "idx", id).await, "{id} was reported durable");
    }
    assert_eq!(api.call("GET", "/_health", None).await.status, 200);
    // The index takes writes afterwards.
    let r = api
        .call("PUT", "/idx/9999", Some(json!({ "hashes": [1, 2] })))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn a_messagepack_stream_is_applied_and_bad_requests_are_named() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    let mut body = Vec::new();
    for id in 1..=2000u64 {
        body.extend(rmp_serde::to_vec_named(&insert(id)).unwrap());
    }
    let (status, lines) = stream(&node, "idx", "application/msgpack", body.clone(), 1000).await;
    assert_eq!(status, 200);
    let last = lines.last().unwrap();
    assert_eq!(
        (last["done"].clone(), last["changes"].clone()),
        (json!(true), json!(2000))
    );
    assert!(present(&api, "idx", 1999).await);
    // Cut inside the last value: everything before it applied, named.
    let mut cut = Vec::new();
    for id in 3001..=3010u64 {
        cut.extend(rmp_serde::to_vec_named(&insert(id)).unwrap());
    }
    cut.truncate(cut.len() - 3);
    let (_, lines) = stream(&node, "idx", "application/msgpack", cut, 16).await;
    let last = lines.last().unwrap();
    assert_eq!(
        (
            last["error"].clone(),
            last["line"].clone(),
            last["durable"]["changes"].clone(),
            last["durable"]["lines"].clone()
        ),
        (json!("TruncatedBody"), json!(10), json!(9), json!(9))
    );
    assert!(present(&api, "idx", 3009).await);
    assert!(!present(&api, "idx", 3010).await);
    // Before any streaming: a missing index and an unknown format.
    let (status, lines) = stream(&node, "nope", "application/x-ndjson", b"{}\n".to_vec(), 10).await;
    assert_eq!(
        (status, lines),
        (404, vec![json!({ "error": "IndexNotFound" })])
    );
    let (status, lines) = stream(&node, "idx", "image/png", b"x".to_vec(), 10).await;
    assert_eq!(
        (status, lines),
        (415, vec![json!({ "error": "UnsupportedMediaType" })])
    );
}
