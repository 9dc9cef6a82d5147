//! `GET /_changes` over WebSocket against the real binary (docs/api.md):
//! several indexes on one connection, filters by kind, hashes on request,
//! unsubscribe, resume from a version after a reconnect, errors named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/ws.rs"]
mod ws;

use common::{Api, NO_CHANGES_RETAINED, Node, wait_not_retained};
use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use ws::{Socket, next, send};

async fn connect(node: &Node) -> Socket {
    ws::connect(node.port).await
}

/// `change` messages of `index` until its version reaches `upto`.
async fn changes_until(socket: &mut Socket, index: &str, upto: u64) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let m = next(socket).await;
        assert_eq!(m["type"], json!("change"), "{m}");
        assert_eq!(m["index"], json!(index), "{m}");
        let version = m["version"].as_u64().unwrap();
        got.push(m);
        if version >= upto {
            return got;
        }
    }
}

async fn put(api: &Api, index: &str, id: u64, hashes: Value) -> u64 {
    let r = api
        .call(
            "PUT",
            &format!("/{index}/{id}"),
            Some(json!({ "hashes": hashes })),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    version(api, index).await
}

/// The index's version (single-fingerprint writes answer without one).
async fn version(api: &Api, index: &str) -> u64 {
    let r = api.call("GET", &format!("/{index}"), None).await;
    r.body["version"].as_u64().unwrap()
}

async fn delete(api: &Api, index: &str, id: u64) -> u64 {
    let r = api.call("DELETE", &format!("/{index}/{id}"), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    version(api, index).await
}

#[tokio::test]
async fn one_socket_follows_two_indexes_with_filters_and_unsubscribes() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    for index in ["a", "b"] {
        assert_eq!(
            api.call("PUT", &format!("/{index}"), None).await.status,
            200
        );
    }
    put(&api, "a", 1, json!([10, 11])).await;
    let mut socket = connect(&node).await;
    // `a` from the start, with hashes; `b` deletes only.
    send(
        &mut socket,
        json!({ "op": "subscribe", "index": "a", "since": 0, "hashes": true }),
    )
    .await;
    assert_eq!(
        next(&mut socket).await,
        json!({ "type": "subscribed", "index": "a", "since": 0 })
    );
    assert_eq!(
        next(&mut socket).await,
        json!({ "type": "change", "index": "a", "version": 1,
                "changes": [{ "kind": "insert", "id": 1, "hashes": [10, 11] }] })
    );
    send(
        &mut socket,
        json!({ "op": "subscribe", "index": "b", "kinds": ["update", "delete"] }),
    )
    .await;
    assert_eq!(next(&mut socket).await["type"], json!("subscribed"));
    put(&api, "b", 7, json!([70])).await;
    put(&api, "b", 7, json!([71])).await;
    let deleted = delete(&api, "b", 7).await;
    // The insert is filtered out, its batch still moves the resume point.
    let b = changes_until(&mut socket, "b", deleted).await;
    assert_eq!(b.len(), 3, "{b:?}");
    assert_eq!(b[0]["changes"], json!([]));
    assert_eq!(b[1]["changes"], json!([{ "kind": "update", "id": 7 }]));
    assert_eq!(b[2]["changes"], json!([{ "kind": "delete", "id": 7 }]));
    // Unsubscribed from `a`: a later write to it is not sent, one to `b` is.
    send(&mut socket, json!({ "op": "unsubscribe", "index": "a" })).await;
    assert_eq!(
        next(&mut socket).await,
        json!({ "type": "unsubscribed", "index": "a" })
    );
    put(&api, "a", 2, json!([20])).await;
    let v = delete(&api, "b", 8).await;
    let m = next(&mut socket).await;
    assert_eq!(
        (m["index"].clone(), m["version"].clone()),
        (json!("b"), json!(v)),
        "{m}"
    );
}

#[tokio::test]
async fn a_reconnected_client_resumes_from_its_last_version_with_nothing_missing() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    let mut socket = connect(&node).await;
    send(&mut socket, json!({ "op": "subscribe", "index": "idx" })).await;
    assert_eq!(next(&mut socket).await["type"], json!("subscribed"));
    for id in 1..=5 {
        put(&api, "idx", id, json!([id])).await;
    }
    let first = changes_until(&mut socket, "idx", 5).await;
    let last_seen = first.last().unwrap()["version"].as_u64().unwrap();
    drop(socket);
    // Written while no one listens.
    for id in 6..=10 {
        put(&api, "idx", id, json!([id])).await;
    }
    let mut socket = connect(&node).await;
    send(
        &mut socket,
        json!({ "op": "subscribe", "index": "idx", "since": last_seen }),
    )
    .await;
    assert_eq!(next(&mut socket).await["type"], json!("subscribed"));
    let rest = changes_until(&mut socket, "idx", 10).await;
    let ids: Vec<u64> = first
        .iter()
        .chain(&rest)
        .flat_map(|m| m["changes"].as_array().unwrap().clone())
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>(), "no gap, no duplicate");
}

#[tokio::test]
async fn bad_frames_and_unknown_or_unretained_indexes_are_named_errors() {
    let node = Node::start(NO_CHANGES_RETAINED).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    let mut socket = connect(&node).await;
    socket.send(Message::Text("not json".into())).await.unwrap();
    let m = next(&mut socket).await;
    assert_eq!(m["error"], json!("InvalidMessage"), "{m}");
    send(&mut socket, json!({ "op": "subscribe" })).await;
    assert_eq!(next(&mut socket).await["error"], json!("InvalidMessage"));
    send(&mut socket, json!({ "op": "subscribe", "index": "nope" })).await;
    assert_eq!(
        next(&mut socket).await,
        json!({ "type": "error", "index": "nope", "error": "IndexNotFound" })
    );
    // The connection is still usable after errors; a version dropped by the
    // retention ends that subscription with the oldest version kept.
    for id in 1..=40 {
        put(&api, "idx", id, json!([id, id + 1])).await;
    }
    let oldest = wait_not_retained(&api, "idx").await["oldest_version"]
        .as_u64()
        .unwrap();
    send(
        &mut socket,
        json!({ "op": "subscribe", "index": "idx", "since": 0 }),
    )
    .await;
    assert_eq!(next(&mut socket).await["type"], json!("subscribed"));
    let m = next(&mut socket).await;
    assert_eq!(
        (m["type"].clone(), m["index"].clone(), m["error"].clone()),
        (json!("error"), json!("idx"), json!("ChangesNotRetained")),
        "{m}"
    );
    assert!(m["oldest_version"].as_u64().unwrap() >= oldest, "{m}");
    // A failed subscription does not spoil the feed: from the current
    // version, the next write arrives.
    let now = version(&api, "idx").await;
    send(
        &mut socket,
        json!({ "op": "subscribe", "index": "idx", "since": now }),
    )
    .await;
    assert_eq!(next(&mut socket).await["type"], json!("subscribed"));
    let v = put(&api, "idx", 41, json!([41])).await;
    let m = next(&mut socket).await;
    assert_eq!(
        (m["type"].clone(), m["version"].clone()),
        (json!("change"), json!(v)),
        "{m}"
    );
}

/// `"index": "*"` follows the node's own events on the same socket as the
/// index feeds: indexes created and deleted, resumed from a `seq`.
#[tokio::test]
async fn the_node_events_are_a_subscription_of_their_own() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/a", None).await.status, 200);
    let mut socket = connect(&node).await;
    send(&mut socket, json!({"op": "subscribe", "index": "*"})).await;
    let m = next(&mut socket).await;
    assert_eq!(
        (m["type"].as_str(), m["since"].as_u64()),
        (Some("subscribed"), Some(0))
    );
    let m = next(&mut socket).await;
    assert_eq!(m["type"], "event", "{m}");
    assert_eq!(m["index"], "*");
    assert_eq!(m["seq"], 1);
    assert_eq!(m["event"]["type"], "index_created");
    assert_eq!(m["event"]["index"], "a");
    assert_eq!(api.call("DELETE", "/a", None).await.status, 200);
    let m = next(&mut socket).await;
    assert_eq!(
        (m["seq"].as_u64(), m["event"]["type"].as_str()),
        (Some(2), Some("index_deleted"))
    );
    // From a seq on, on a new connection; `now` only what comes next.
    let mut again = connect(&node).await;
    send(
        &mut again,
        json!({"op": "subscribe", "index": "*", "since": 1}),
    )
    .await;
    assert_eq!(next(&mut again).await["type"], "subscribed");
    assert_eq!(next(&mut again).await["seq"], 2);
    send(
        &mut again,
        json!({"op": "subscribe", "index": "*", "since": "now"}),
    )
    .await;
    assert_eq!(next(&mut again).await["since"], 2);
    assert_eq!(api.call("PUT", "/b", None).await.status, 200);
    let m = next(&mut again).await;
    assert_eq!(
        (m["seq"].as_u64(), m["event"]["index"].as_str()),
        (Some(3), Some("b"))
    );
    // A seq this node never gave is not retained.
    send(
        &mut again,
        json!({"op": "subscribe", "index": "*", "since": 99}),
    )
    .await;
    assert_eq!(next(&mut again).await["type"], "subscribed");
    let m = next(&mut again).await;
    assert_eq!(
        (m["type"].as_str(), m["error"].as_str()),
        (Some("error"), Some("ChangesNotRetained")),
        "{m}"
    );
}
