//! Bearer-token authentication against the real binary (docs/operations.md
//! "Authentication"): every role against every endpoint, missing and bad
//! tokens, reload on SIGHUP (a broken file keeps the tokens in force),
//! `access_token` for browser feeds only, the warning when authentication
//! is off beyond localhost, the legacy protocol with authentication on.
//! Through a proxy: tests/replication.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/legacy.rs"]
mod legacy;

use std::time::{Duration, Instant};

use common::{Api, Node, free_port};
use serde_json::{Value, json};

const READ: &str = "reader-token-0000000001";
const WRITE: &str = "writer-token-0000000001";
const ADMIN: &str = "admin-token-00000000001";

#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
enum Who {
    Nobody,
    BadToken,
    Read,
    Write,
    Admin,
}

fn tokens_file(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("tokens");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

async fn node_with_tokens(extra: &[&str]) -> (Node, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = tokens_file(
        dir.path(),
        &format!("# roles\nread:{READ}\nwrite:{WRITE}\nadmin:{ADMIN}\n"),
    );
    let mut args = vec!["--auth-tokens-file", file.as_str()];
    args.extend_from_slice(extra);
    (Node::start(&args).await, dir, file)
}

fn client(node: &Node, who: Who) -> Api {
    match who {
        Who::Nobody => Api::json(node),
        Who::BadToken => Api::json_with_token(node, "not-a-token-0000000000"),
        Who::Read => Api::json_with_token(node, READ),
        Who::Write => Api::json_with_token(node, WRITE),
        Who::Admin => Api::json_with_token(node, ADMIN),
    }
}

#[tokio::test]
async fn every_role_against_every_endpoint() {
    let (node, _dir, _) = node_with_tokens(&[]).await;
    let admin = client(&node, Who::Admin);
    assert_eq!(admin.call("PUT", "/a", None).await.status, 200);
    let put = admin
        .call("PUT", "/a/1", Some(json!({"hashes": [1, 2, 3]})))
        .await;
    assert_eq!(put.status, 200, "{}", put.body);

    // (method, path, body, role needed, status once allowed). Each allowed
    // call is made by the role needed and by every role above it, so the
    // status must be the same each time.
    let update = json!({"changes": [{"insert": {"id": 2, "hashes": [4, 5]}}]});
    let endpoints: Vec<(&str, &str, Option<Value>, Who, u16)> = vec![
        ("GET", "/_health", None, Who::Nobody, 200),
        ("GET", "/a/_health", None, Who::Nobody, 200),
        ("GET", "/health", None, Who::Nobody, 200),
        ("GET", "/_metrics", None, Who::Read, 200),
        ("GET", "/_changes", None, Who::Read, 200),
        ("GET", "/_jobs", None, Who::Read, 200),
        ("GET", "/_jobs/999", None, Who::Read, 404),
        ("GET", "/a", None, Who::Read, 200),
        ("HEAD", "/a", None, Who::Read, 200),
        ("GET", "/a/_status", None, Who::Read, 200),
        ("GET", "/a/_changes", None, Who::Read, 200),
        (
            "POST",
            "/a/_search",
            Some(json!({"query": [1, 2]})),
            Who::Read,
            200,
        ),
        ("GET", "/a/1", None, Who::Read, 200),
        ("HEAD", "/a/1", None, Who::Read, 200),
        ("POST", "/_fingerprint", Some(json!({})), Who::Read, 400),
        ("GET", "/no/such/route", None, Who::Read, 404),
        ("POST", "/a/_update", Some(update), Who::Write, 200),
        ("PUT", "/a/3", Some(json!({"hashes": [7]})), Who::Write, 200),
        ("DELETE", "/a/3", None, Who::Write, 200),
        ("GET", "/a/_snapshot", None, Who::Admin, 200),
        ("PUT", "/b", None, Who::Admin, 200),
        ("DELETE", "/c", None, Who::Admin, 200),
        ("DELETE", "/_jobs/999", None, Who::Admin, 404),
    ];
    for (method, path, body, needed, allowed) in endpoints {
        for who in [
            Who::Nobody,
            Who::BadToken,
            Who::Read,
            Who::Write,
            Who::Admin,
        ] {
            let a = client(&node, who).call(method, path, body.clone()).await;
            let head = method == "HEAD";
            let expected = if who >= needed || needed == Who::Nobody {
                (allowed, None)
            } else if who == Who::Nobody {
                (401, Some("Unauthorized"))
            } else if who == Who::BadToken {
                (401, Some("InvalidToken"))
            } else {
                (403, Some("Forbidden"))
            };
            assert_eq!(a.status, expected.0, "{who:?} {method} {path}: {}", a.body);
            if let (Some(name), false) = (expected.1, head) {
                assert_eq!(a.body["error"], name, "{who:?} {method} {path}");
            }
        }
    }
    // Jobs: starting one is admin's.
    for who in [Who::Read, Who::Write] {
        let a = client(&node, who)
            .call(
                "POST",
                "/_jobs",
                Some(json!({"kind": "verify", "index": "a"})),
            )
            .await;
        assert_eq!(
            (a.status, a.body["error"].clone()),
            (403, json!("Forbidden"))
        );
    }
    let a = admin
        .call(
            "POST",
            "/_jobs",
            Some(json!({"kind": "verify", "index": "a"})),
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    // Index deletion is admin's; what writers wrote is there.
    let a = client(&node, Who::Write).call("DELETE", "/a", None).await;
    assert_eq!(a.status, 403);
    let hit = client(&node, Who::Read)
        .call("POST", "/a/_search", Some(json!({"query": [4, 5]})))
        .await;
    assert_eq!(hit.body["results"][0]["id"], 2, "{}", hit.body);

    // A 401 says how to authenticate; refusals are counted.
    let raw = reqwest::get(node.url("/a")).await.unwrap();
    assert_eq!(raw.status(), 401);
    assert_eq!(raw.headers()["www-authenticate"], "Bearer realm=\"fpnode\"");
    // Other schemes are no token.
    let basic = reqwest::Client::new()
        .get(node.url("/a"))
        .header("Authorization", format!("Basic {READ}"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    let lower = reqwest::Client::new()
        .get(node.url("/a"))
        .header("Authorization", format!("bearer {READ}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);
    let metrics = admin.call("GET", "/_metrics", None).await.body;
    let metrics = metrics.as_str().unwrap();
    for line in [
        r#"fpnode_auth_failures_total{reason="missing"}"#,
        r#"fpnode_auth_failures_total{reason="invalid"}"#,
        r#"fpnode_auth_failures_total{reason="forbidden"}"#,
        "fpnode_auth_tokens 3",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
}

#[tokio::test]
async fn sighup_reloads_the_tokens_and_a_broken_file_keeps_them() {
    let (mut node, dir, file) = node_with_tokens(&[]).await;
    let pid = node.child.as_ref().unwrap().id().to_string();
    let hup = || {
        assert!(
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    let status = |token: &'static str| {
        let api = Api::json_with_token(&node, token);
        async move { api.call("GET", "/_jobs", None).await.status }
    };
    assert_eq!(status(READ).await, 200);
    // Rotated: a new reader, the old one gone.
    const NEW_READ: &str = "reader-token-0000000002";
    tokens_file(dir.path(), &format!("read:{NEW_READ}\nadmin:{ADMIN}\n"));
    hup();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(NEW_READ).await != 200 {
        assert!(Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(READ).await, 401);
    // A file that does not parse: the tokens in force stay, and it is said.
    std::fs::write(&file, "read:short\n").unwrap();
    hup();
    let admin = Api::json_with_token(&node, ADMIN);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = admin.call("GET", "/_metrics", None).await.body;
        if m.as_str()
            .unwrap()
            .contains(r#"fpnode_auth_reloads_total{outcome="error"} 1"#)
        {
            break;
        }
        assert!(Instant::now() < deadline, "reload error never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status(NEW_READ).await, 200);
    assert!(
        node.log().contains("auth tokens not reloaded"),
        "{}",
        node.log()
    );
    assert!(node.is_running());
}

#[tokio::test]
async fn browser_feeds_may_carry_the_token_in_the_query_and_nothing_else_may() {
    let (node, _dir, _) = node_with_tokens(&[]).await;
    let admin = client(&node, Who::Admin);
    assert_eq!(admin.call("PUT", "/a", None).await.status, 200);
    let get = |path: String| async move { reqwest::get(path).await.unwrap().status().as_u16() };
    assert_eq!(
        get(node.url(&format!("/a/_changes?since=0&access_token={READ}"))).await,
        200
    );
    assert_eq!(
        get(node.url(&format!("/_changes?access_token={READ}"))).await,
        200
    );
    assert_eq!(
        get(node.url("/a/_changes?access_token=not-a-token-0000000000")).await,
        401
    );
    assert_eq!(get(node.url(&format!("/a?access_token={READ}"))).await, 401);
    // A WebSocket from a browser: the token in the query.
    let url = format!("ws://127.0.0.1:{}/_changes?access_token={READ}", node.port);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket.close(None).await.unwrap();
    let url = format!("ws://127.0.0.1:{}/_changes", node.port);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}

#[tokio::test]
async fn a_node_without_tokens_beyond_localhost_warns_loudly() {
    let node = Node::start(&["--host", "0.0.0.0"]).await;
    assert!(
        node.log().contains("AUTHENTICATION IS OFF"),
        "{}",
        node.log()
    );
    // Off means off: fpindex's clients need no token.
    assert_eq!(Api::json(&node).call("PUT", "/a", None).await.status, 200);
    let local = Node::start(&[]).await;
    assert!(!local.log().contains("AUTHENTICATION IS OFF"));
    // A reload (SIGHUP) without tokens is logged, and the node goes on.
    let pid = local.child.as_ref().unwrap().id().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !local
        .log()
        .contains("authentication is off, no tokens to reload")
    {
        assert!(std::time::Instant::now() < deadline, "{}", local.log());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(Api::json(&local).call("PUT", "/b", None).await.status, 200);
}

#[tokio::test]
async fn the_legacy_protocol_writes_with_authentication_on() {
    let port = free_port();
    let p = port.to_string();
    let (node, _dir, _) = node_with_tokens(&["--legacy-port", &p]).await;
    let mut c = legacy::Legacy::connect(port).await;
    assert_eq!(c.ask("begin").await, "OK ");
    assert_eq!(c.ask("insert 9 1,2,3").await, "OK ");
    assert_eq!(c.ask("commit").await, "OK ");
    assert_eq!(c.ask("search 1,2,3").await, "OK 9:3");
    let hit = client(&node, Who::Read)
        .call("POST", "/main/_search", Some(json!({"query": [1, 2, 3]})))
        .await;
    assert_eq!(hit.body["results"][0]["id"], 9, "{}", hit.body);
    assert!(
        node.log()
            .contains("legacy line protocol (--legacy-port) has no authentication")
    );
}
