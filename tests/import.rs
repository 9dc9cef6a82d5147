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

#[tokio::test]
async fn a_snapshot_restores_into_an_identical_index_elsewhere() {
    let source = common::Node::start(&[]).await;
    let api = common::Api::json(&source);
    api.call("PUT", "/src", None).await;
    for b in 0..5u32 {
        let changes: Vec<serde_json::Value> = (1..=400u32)
            .map(|i| json!({ "insert": { "id": b * 400 + i, "hashes": hashes(b * 400 + i) } }))
            .collect();
        let body = json!({ "changes": changes, "metadata": { "batch": b.to_string() } });
        assert_eq!(
            api.call("POST", "/src/_update", Some(body)).await.status,
            200
        );
    }
    api.call("DELETE", "/src/7", None).await;
    let res = reqwest::get(source.url("/src/_snapshot")).await.unwrap();
    assert_eq!(res.status(), 200);
    let archive = res.bytes().await.unwrap().to_vec();
    // fpindex's framing (its test_snapshot.py): one self-delimiting
    // MessagePack header {f: 1, g, s: [{i, s}]}, then exactly the payloads.
    let mut cursor = std::io::Cursor::new(&archive[..]);
    let header: serde_json::Value = rmp_serde::from_read(&mut cursor).unwrap();
    let consumed = cursor.position() as usize;
    assert_eq!(header["f"], 1, "{header}");
    assert!(header["g"].as_u64().unwrap() >= 1);
    let segments = header["s"].as_array().unwrap();
    assert!(!segments.is_empty(), "{header}");
    let payload: u64 = segments.iter().map(|s| s["s"].as_u64().unwrap()).sum();
    assert_eq!(consumed as u64 + payload, archive.len() as u64);
    assert_eq!(header["t"], "fpnode");
    assert_eq!(header["m"]["batch"], "4");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // A damaged archive is refused and leaves nothing behind.
    let mut damaged = archive.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x01;
    let out = fpnode(&["restore", "--dir", d, "--index", "copy"], &damaged);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("checksum"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fpnode(
        &["restore", "--dir", d, "--index", "copy"],
        &archive[..archive.len() - 10],
    );
    assert!(!out.status.success());
    let out = fpnode(&["restore", "--dir", d, "--index", "copy"], &archive);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Framing errors, each refused by name: bytes after the last segment,
    // another kind or format, a segment listed twice. The header is encoded
    // again from its parsed form (restored as is: the control).
    let payloads = &archive[consumed..];
    let framed = |header: &serde_json::Value, tail: &[u8]| {
        let mut out = rmp_serde::to_vec_named(header).unwrap();
        out.extend_from_slice(payloads);
        out.extend_from_slice(tail);
        out
    };
    let out = fpnode(
        &["restore", "--dir", d, "--index", "again"],
        &framed(&header, b""),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut other_kind = header.clone();
    other_kind["t"] = json!("fpindex");
    let mut other_format = header.clone();
    other_format["f"] = json!(2);
    let mut twice = header.clone();
    let first = twice["s"][0].clone();
    twice["s"].as_array_mut().unwrap().push(first);
    let first_size = segments[0]["s"].as_u64().unwrap() as usize;
    for (case, bytes, why) in [
        (
            "trailing",
            framed(&header, b"x"),
            "bytes after the last segment",
        ),
        ("kind", framed(&other_kind, b""), "not fpnode's"),
        ("format", framed(&other_format, b""), "version"),
        (
            "twice",
            framed(&twice, &payloads[..first_size]),
            "listed twice",
        ),
    ] {
        let out = fpnode(&["restore", "--dir", d, "--index", case], &bytes);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case}: restored");
        assert!(err.contains(why), "{case}: {err}");
    }

    // The first fpnode format (a JSON header and a trailing CRC-32) is
    // still restored: the same segments, framed as it framed them.
    let v1 = {
        let segments: Vec<serde_json::Value> = segments
            .iter()
            .map(|s| {
                let mut seg = s["i"].clone();
                seg["size_bytes"] = s["s"].clone();
                seg
            })
            .collect();
        let json = serde_json::to_vec(&json!({
            "generation": header["g"], "version": header["v"],
            "metadata": header["m"], "segments": segments,
        }))
        .unwrap();
        let mut v1 = b"FPNODSNP".to_vec();
        v1.extend(1u32.to_le_bytes());
        v1.extend((json.len() as u32).to_le_bytes());
        v1.extend(&json);
        v1.extend(&archive[consumed..]);
        let crc = crc32fast::hash(&v1);
        v1.extend(crc.to_le_bytes());
        v1
    };
    let out = fpnode(&["restore", "--dir", d, "--index", "old"], &v1);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bad_v1 = v1.clone();
    let last = bad_v1.len() - 1;
    bad_v1[last] ^= 1;
    let out = fpnode(&["restore", "--dir", d, "--index", "older"], &bad_v1);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum"));

    let mut node = common::Node::start(&[]).await;
    node.kill();
    node.dir = dir.path().to_path_buf();
    node.spawn().await;
    let copy = common::Api::json(&node);
    let old = copy.call("GET", "/old", None).await.body;
    assert_eq!(old["stats"]["num_docs"], json!(1999), "{old}");
    let a = api.call("GET", "/src", None).await.body;
    let b = copy.call("GET", "/copy", None).await.body;
    assert_eq!(a["version"], b["version"]);
    assert_eq!(a["metadata"], b["metadata"]);
    assert_eq!(a["stats"]["num_docs"], b["stats"]["num_docs"]);
    assert_eq!(b["stats"]["num_docs"], json!(1999));
    for id in [1u32, 7, 400, 1999, 2000] {
        let q = json!({ "query": hashes(id) });
        assert_eq!(
            api.call("POST", "/src/_search", Some(q.clone())).await.body,
            copy.call("POST", "/copy/_search", Some(q)).await.body,
            "search for {id}"
        );
    }
}

/// `fpnode export` writes what `fpnode import` reads: a round trip gives the
/// same fingerprints (sorted ids, sorted distinct hashes), in both formats.
#[test]
fn export_writes_what_import_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut ndjson = Vec::new();
    let mut expected = Vec::new();
    for id in (1..=300u32).rev() {
        let mut h = hashes(id);
        h.push(h[0]); // a repeated hash counts once
        writeln!(ndjson, "{}", json!({ "id": id, "hashes": h })).unwrap();
        let mut sorted = hashes(id);
        sorted.sort_unstable();
        sorted.dedup();
        expected.push(json!({ "id": id, "hashes": sorted }));
    }
    expected.reverse();
    let out = fpnode(
        &["import", "--dir", d, "--index", "a", "--format", "ndjson"],
        &ndjson,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = fpnode(&["export", "--dir", d, "--index", "a"], b"");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines == expected,
        "export differs from the imported fingerprints"
    );
    // MessagePack export imports into an equal index.
    let out = fpnode(
        &["export", "--dir", d, "--index", "a", "--format", "msgpack"],
        b"",
    );
    assert!(out.status.success());
    let back = fpnode(&["import", "--dir", d, "--index", "b"], &out.stdout);
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    let again = fpnode(&["export", "--dir", d, "--index", "b"], b"");
    assert_eq!(
        String::from_utf8(again.stdout).unwrap().lines().count(),
        300
    );
    let missing = fpnode(&["export", "--dir", d, "--index", "nope"], b"");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no index nope"));
}
