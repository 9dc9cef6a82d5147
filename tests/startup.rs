//! Startup errors are clear and name what is wrong: port in use, data directory
//! not writable; corrupt index data is named and keeps only that index out.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn run_to_exit(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fpnode"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fpnode {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_port_in_use_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_exit(&["--dir", dir.path().to_str().unwrap(), "--port", &port]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn an_unwritable_data_directory_is_a_clear_startup_error() {
    let out = run_to_exit(&["--dir", "/proc/fpnode-cannot-exist", "--port", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/proc/fpnode-cannot-exist"), "{err}");
}

/// A corrupt index does not stop the node: the other indexes serve, the
/// corrupt one answers `503 IndexFailed`, the log names the damaged file, the
/// failure is counted, and deleting the index lets the name be used again.
#[tokio::test]
async fn a_corrupt_index_answers_503_while_the_others_serve_and_the_log_names_the_file() {
    use serde_json::json;
    let mut node = common::Node::start(&[]).await;
    let api = common::Api::json(&node);
    for name in ["idx", "other"] {
        assert_eq!(api.call("PUT", &format!("/{name}"), None).await.status, 200);
        let r = api
            .call(
                "PUT",
                &format!("/{name}/1"),
                Some(json!({ "hashes": [1, 2, 3] })),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    node.terminate();
    let manifest = node
        .data_dir()
        .join("indexes/idx/00000000000000000001/MANIFEST");
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[20] ^= 0x55;
    std::fs::write(&manifest, bytes).unwrap();
    // `inspect --verify` names the damaged file, still lists the healthy
    // index, and fails.
    let out = run_to_exit(&[
        "inspect",
        "--dir",
        node.data_dir().to_str().unwrap(),
        "--verify",
    ]);
    assert!(!out.status.success());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("index other\n  generation"), "{stdout}");
    assert!(
        stderr.contains("indexes/idx/00000000000000000001/MANIFEST") && stderr.contains("corrupt"),
        "{stderr}"
    );
    node.spawn().await;
    let api = common::Api::json(&node);
    let r = api.call("GET", "/idx/1", None).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (503, json!({ "error": "IndexFailed" }))
    );
    let r = api
        .call("POST", "/idx/_search", Some(json!({ "query": [1, 2, 3] })))
        .await;
    assert_eq!(r.status, 503);
    let r = api.call("GET", "/other/1", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(api.call("GET", "/_health", None).await.status, 200);
    let log = node.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("indexes/idx/00000000000000000001/MANIFEST") && log.contains("corrupt"),
        "the log does not name the damaged file: {log}"
    );
    let metrics = api.call("GET", "/_metrics", None).await.body;
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .lines()
            .any(|l| l == "fpnode_index_open_failures_total 1"),
        "{metrics}"
    );
    // Creating over it is refused; deleting it frees the name.
    assert_eq!(api.call("PUT", "/idx", None).await.status, 503);
    assert_eq!(api.call("DELETE", "/idx", None).await.status, 200);
    assert_eq!(api.call("GET", "/idx/1", None).await.status, 404);
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    let r = api
        .call("PUT", "/idx/2", Some(json!({ "hashes": [4, 5] })))
        .await;
    assert_eq!(r.status, 200);
}

/// An index directory that cannot be listed (here a file where the
/// directory should be) fails that index only: it answers `503 IndexFailed`
/// and the other indexes open and serve.
#[tokio::test]
async fn an_unlistable_index_directory_fails_only_that_index() {
    use serde_json::json;
    let mut node = common::Node::start(&[]).await;
    let api = common::Api::json(&node);
    assert_eq!(api.call("PUT", "/other", None).await.status, 200);
    let r = api
        .call("PUT", "/other/1", Some(json!({ "hashes": [1, 2, 3] })))
        .await;
    assert_eq!(r.status, 200);
    node.terminate();
    std::fs::write(node.data_dir().join("indexes/stray"), b"not a directory").unwrap();
    node.spawn().await;
    let api = common::Api::json(&node);
    let r = api.call("GET", "/stray/1", None).await;
    assert_eq!(
        (r.status, r.body.clone()),
        (503, json!({ "error": "IndexFailed" }))
    );
    let r = api.call("GET", "/other/1", None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = api
        .call("PUT", "/other/2", Some(json!({ "hashes": [4, 5] })))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}
