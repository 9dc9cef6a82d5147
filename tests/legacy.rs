//! fpindex's legacy line protocol on `--legacy-port`, against the real
//! binary over real TCP (docs/api.md "Legacy line protocol"): the
//! protocol's examples answered as fpindex answers them, every error by its
//! message, transactions, attributes and metadata seen through HTTP too,
//! line and idle limits, shutdown. Replica mode: tests/replication.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/legacy.rs"]
mod legacy;

use std::time::{Duration, Instant};

use common::{Api, Node, free_port};
use legacy::Legacy;
use serde_json::json;

async fn node(extra: &[&str]) -> (Node, u16) {
    let port = free_port();
    let p = port.to_string();
    let mut args = vec!["--legacy-port", p.as_str()];
    args.extend_from_slice(extra);
    (Node::start(&args).await, port)
}

#[tokio::test]
async fn the_protocols_examples_answer_as_fpindex_answers_them() {
    let (node, port) = node(&[]).await;
    let mut c = Legacy::connect(port).await;
    assert_eq!(c.ask("echo hello world").await, "OK hello world");
    assert_eq!(c.ask("insert 1 1,2,3").await, "ERR not in transaction");
    assert_eq!(c.ask("begin").await, "OK ");
    assert_eq!(c.ask("insert 1001 11000,12000,13000").await, "OK ");
    assert_eq!(c.ask("insert 1002 11000,12000,19000").await, "OK ");
    assert_eq!(c.ask("commit").await, "OK ");
    assert_eq!(c.ask("search 11000,12000,13000").await, "OK 1001:3 1002:2");
    assert_eq!(c.ask("set max_results 1").await, "OK ");
    assert_eq!(c.ask("get max_results").await, "OK 1");
    assert_eq!(c.ask("search 11000,12000,13000").await, "OK 1001:3");

    // The same index the HTTP API serves as /main, created at startup.
    let api = Api::json(&node);
    let got = api
        .call(
            "POST",
            "/main/_search",
            Some(json!({"query": [11000, 12000, 19000]})),
        )
        .await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(
        got.body["results"],
        json!([{"id": 1002, "score": 3}, {"id": 1001, "score": 2}])
    );
    // Another connection has its own attributes.
    let mut other = Legacy::connect(port).await;
    assert_eq!(other.ask("get max_results").await, "OK 500");
    assert_eq!(
        other.ask("search 11000,12000,13000").await,
        "OK 1001:3 1002:2"
    );
}

#[tokio::test]
async fn every_error_is_named_and_the_connection_stays_open() {
    let (node, port) = node(&[]).await;
    let mut c = Legacy::connect(port).await;
    for (line, reply) in [
        ("", "OK "),
        ("   ", "OK "),
        ("frobnicate", "ERR unknown command"),
        ("search", "ERR expected one argument"),
        ("search 1,2 3", "ERR expected one argument"),
        ("search 1,x", "ERR invalid fingerprint"),
        ("commit", "ERR not in transaction"),
        ("rollback", "ERR not in transaction"),
        ("optimize", "ERR not in transaction"),
        ("cleanup", "ERR not in transaction"),
        ("set foo bar", "ERR not in transaction"),
        ("set max_results -1", "ERR invalid value"),
        ("set timeout x", "ERR invalid value"),
        ("set max_results", "ERR expected two arguments"),
        ("get", "ERR expected one argument"),
        ("get nothing_here", "OK "),
        ("begin", "OK "),
        ("begin", "ERR already in transaction"),
        ("insert 5", "ERR expected two arguments"),
        ("insert x 1,2", "ERR invalid document id"),
        ("insert -5 1,2", "ERR invalid document id"),
        ("insert 5 ", "ERR expected two arguments"),
        ("insert 5 1,,2", "ERR invalid fingerprint"),
        ("optimize", "OK "),
        ("cleanup", "OK "),
        // Signed hashes: -1 is 4294967295.
        ("insert 5 -1,7", "OK "),
        ("set attribute source legacy", "OK "),
        ("commit", "OK "),
        ("commit", "ERR not in transaction"),
        ("get attribute source", "OK legacy"),
        ("get source", "OK legacy"),
        ("search 4294967295", "OK 5:1"),
        // A transaction rolled back leaves nothing.
        ("begin", "OK "),
        ("insert 6 8,9", "OK "),
        ("set source other", "OK "),
        ("get source", "OK legacy"),
        ("rollback", "OK "),
        ("search 8,9", "OK "),
        ("get source", "OK legacy"),
        // An empty transaction commits nothing.
        ("begin", "OK "),
        ("commit", "OK "),
        // CR LF line ends and repeated spaces.
        ("echo  a   b\r", "OK a b"),
    ] {
        assert_eq!(c.ask(line).await, reply, "{line:?}");
    }
    let api = Api::json(&node);
    let got = api
        .call(
            "POST",
            "/main/_search",
            Some(json!({"query": [7, 4294967295u32]})),
        )
        .await;
    assert_eq!(
        got.body["results"],
        json!([{"id": 5, "score": 2}]),
        "{}",
        got.body
    );
    let index = api.call("GET", "/main", None).await;
    assert_eq!(index.body["metadata"]["source"], "legacy", "{}", index.body);
    assert_eq!(api.call("GET", "/main/6", None).await.status, 404);
    let metrics = api.call("GET", "/_metrics", None).await.body;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(r#"fpnode_legacy_requests_total{command="begin",outcome="err"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("fpnode_legacy_connections 1"), "{metrics}");
}

#[tokio::test]
async fn requests_sent_together_are_answered_in_order() {
    let (_node, port) = node(&[]).await;
    let mut c = Legacy::connect(port).await;
    c.send(b"begin\ninsert 1 1,2,3\ninsert 2 1,2\ncommit\nsearch 1,2,3\necho done\n")
        .await;
    let mut replies = Vec::new();
    for _ in 0..6 {
        replies.push(c.reply().await);
    }
    assert_eq!(
        replies,
        [
            "OK \r\n",
            "OK \r\n",
            "OK \r\n",
            "OK \r\n",
            "OK 1:3 2:2\r\n",
            "OK done\r\n"
        ]
    );
}

#[tokio::test]
async fn a_line_too_long_and_an_idle_connection_are_told_and_closed() {
    let (_node, port) = node(&[]).await;
    let mut c = Legacy::connect(port).await;
    // 256 KiB is allowed (a valid, long search)...
    let mut long = String::from("search ");
    while long.len() < (256 << 10) - 8 {
        long.push_str("1234567,");
    }
    long.push('1');
    assert!(long.len() <= 256 << 10);
    assert!(c.ask(&long).await.starts_with("OK"));
    // ...one byte more is not, with or without its newline yet.
    let mut c = Legacy::connect(port).await;
    c.send(&vec![b'x'; (256 << 10) + 1]).await;
    assert_eq!(c.reply().await, "ERR line too long\r\n");
    assert!(c.closed().await);

    let mut c = Legacy::connect(port).await;
    assert_eq!(c.ask("set idle_timeout 300").await, "OK ");
    let started = Instant::now();
    assert_eq!(c.reply().await, "ERR timeout\r\n");
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert!(c.closed().await);
}

#[tokio::test]
async fn a_transaction_larger_than_one_update_is_refused_and_stays_open() {
    let (node, port) = node(&["--max-body-bytes", "4096"]).await;
    let mut c = Legacy::connect(port).await;
    assert_eq!(c.ask("begin").await, "OK ");
    let fp = (0..100).map(|h| (h * 7919).to_string()).collect::<Vec<_>>();
    let fp = fp.join(",");
    let mut accepted = 0;
    let refused = loop {
        let reply = c.ask(&format!("insert {} {fp}", accepted + 1)).await;
        if reply != "OK " {
            break reply;
        }
        accepted += 1;
        assert!(accepted < 100, "never refused");
    };
    assert_eq!(refused, "ERR transaction too large");
    assert!(accepted >= 1, "{accepted}");
    assert_eq!(c.ask("commit").await, "OK ");
    let index = Api::json(&node).call("GET", "/main/_status", None).await;
    assert_eq!(index.body["num_docs"], accepted, "{}", index.body);
}

#[tokio::test]
async fn shutdown_closes_legacy_connections() {
    let (mut node, port) = node(&[]).await;
    let mut c = Legacy::connect(port).await;
    assert_eq!(c.ask("echo up").await, "OK up");
    let status = node.terminate();
    assert!(status.success(), "{status}");
    assert!(c.closed().await);
}
