//! `fpnode import` builds an index offline that the node then serves;
//! `fpnode inspect` describes it; bad input is refused with the record named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::json;

fn hashes(id: u32) -> Vec<u32> {
    (0..30)
        .map(|i| id.wrapping_mul(2_654_435_761).wrapping_add(i * 40_503))
        .collect()
}

fn fpnode(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fpnode"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The child may refuse before reading its input (a broken pipe is fine).
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn imported_ndjson_and_msgpack_indexes_are_served_and_inspected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut ndjson = Vec::new();
    for id in 1..=2000u32 {
        writeln!(ndjson, "{}", json!({ "id": id, "hashes": hashes(id) })).unwrap();
    }
    let out = fpnode(
        &[
            "import",
            "--dir",
            d,
            "--index",
            "nd",
            "--format",
            "ndjson",
            "--run-postings",
            "10000",
        ],
        &ndjson,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 2000 fingerprints"));
    let mut mp = Vec::new();
    for id in 1..=500u32 {
        mp.extend(rmp_serde::to_vec_named(&json!({ "i": id, "h": hashes(id) })).unwrap());
    }
    let out = fpnode(
        &["import", "--dir", d, "--index", "mp", "--version", "7"],
        &mp,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Importing over an existing index is refused.
    let out = fpnode(&["import", "--dir", d, "--index", "mp"], &mp);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    // A bad record is named.
    let out = fpnode(
        &["import", "--dir", d, "--index", "bad", "--format", "ndjson"],
        b"{\"id\":1,\"hashes\":[1]}\n{\"id\":0,\"hashes\":[1]}\n",
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("record 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = fpnode(&["inspect", "--dir", d, "--verify"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("index nd") && text.contains("fingerprints      2000"),
        "{text}"
    );
    assert!(
        text.contains("index mp") && text.contains("version           7"),
        "{text}"
    );
    assert!(text.contains("verified"), "{text}");

    let mut node = common::Node::start(&[]).await;
    node.kill();
    node.dir = dir.path().to_path_buf();
    node.spawn().await;
    let api = common::Api::json(&node);
    for (index, id) in [("nd", 1999u32), ("mp", 42)] {
        let r = api
            .call(
                "POST",
                &format!("/{index}/_search"),
                Some(json!({ "query": hashes(id) })),
            )
            .await;
        assert_eq!(
            r.body["results"][0],
            json!({ "id": id, "score": 30 }),
            "{index}"
        );
    }
    let r = api.call("GET", "/mp", None).await;
    assert_eq!(r.body["version"], json!(7));
    assert_eq!(r.body["stats"]["num_docs"], json!(500));
    // The node keeps writing on top of the imported data.
    let r = api
        .call("PUT", "/mp/9999", Some(json!({ "hashes": [1, 2, 3] })))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(api.call("GET", "/mp", None).await.body["version"], json!(8));
    // A recreate after delete gets a generation past the imported one.
    api.call("DELETE", "/mp", None).await;
    assert_eq!(
        api.call("PUT", "/mp", None).await.body["generation"],
        json!(2)
    );
}
