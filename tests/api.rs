//! End-to-end API tests: the real binary over real HTTP, in JSON and MessagePack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Api, Node};
use serde_json::{Value, json};

/// Builds a body with keys spelled for `api`'s format.
fn update_body(api: &Api, changes: &[(u64, Option<Vec<u32>>)]) -> Value {
    let k = |s: &'static str| api.k(s);
    let changes: Vec<Value> = changes
        .iter()
        .map(|(id, hashes)| match hashes {
            Some(h) => json!({ k("insert"): { k("id"): id, k("hashes"): h } }),
            None => json!({ k("delete"): { k("id"): id } }),
        })
        .collect();
    json!({ k("changes"): changes })
}

async fn every_endpoint(api: Api) {
    let k = |s: &'static str| api.k(s);
    let r = api.call("GET", "/_health", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, Some("OK\n")));

    let r = api.call("PUT", "/idx", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({ k("version"): 0, k("ready"): true, k("generation"): 1 })
    );
    // Idempotent.
    assert_eq!(api.call("PUT", "/idx", None).await.status, 200);
    assert_eq!(api.call("HEAD", "/idx", None).await.status, 200);
    assert_eq!(api.call("GET", "/idx/_health", None).await.status, 200);

    let body = update_body(
        &api,
        &[
            (1, Some(vec![10, 11, 12, 13])),
            (2, Some(vec![12, 13, 14])),
            (3, None),
        ],
    );
    let r = api.call("POST", "/idx/_update", Some(body)).await;
    assert_eq!((r.status, &r.body), (200, &json!({ k("version"): 1 })));

    let r = api
        .call(
            "POST",
            "/idx/_search",
            Some(json!({ k("query"): [10, 11, 12, 13, 13] })),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body,
        json!({ k("results"): [ { k("id"): 1, k("score"): 4 }, { k("id"): 2, k("score"): 2 } ] })
    );
    let r = api
        .call(
            "POST",
            "/idx/_search",
            Some(json!({ k("query"): [10, 11, 12, 13], k("limit"): 1 })),
        )
        .await;
    assert_eq!(r.body[k("results")].as_array().unwrap().len(), 1);

    let r = api
        .call("PUT", "/idx/7", Some(json!({ k("hashes"): [99] })))
        .await;
    assert_eq!((r.status, &r.body), (200, &json!({})));
    let r = api.call("GET", "/idx/7", None).await;
    assert_eq!((r.status, &r.body), (200, &json!({ k("version"): 2 })));
    assert_eq!(api.call("HEAD", "/idx/7", None).await.status, 200);
    let r = api.call("DELETE", "/idx/7", None).await;
    assert_eq!((r.status, &r.body), (200, &json!({})));
    let r = api.call("GET", "/idx/7", None).await;
    assert_eq!(
        (r.status, &r.body),
        (404, &json!({ k("error"): "FingerprintNotFound" }))
    );
    assert_eq!(api.call("HEAD", "/idx/7", None).await.status, 404);

    let meta = json!({ k("changes"): [], k("metadata"): { "source": "test" } });
    assert_eq!(
        api.call("POST", "/idx/_update", Some(meta)).await.status,
        200
    );
    let r = api.call("GET", "/idx", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body[k("version")], json!(4));
    assert_eq!(r.body[k("metadata")], json!({ "source": "test" }));
    assert_eq!(
        r.body[k("stats")],
        json!({ "min_doc_id": 1, "max_doc_id": 2, "num_segments": 4, "num_docs": 2 })
    );

    let r = api.call("GET", "/idx/_status", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["version"], json!(4));
    assert_eq!(r.body["generation"], json!(1));

    // expected_version
    let stale = json!({ k("changes"): [], k("expected_version"): 3 });
    let r = api.call("POST", "/idx/_update", Some(stale)).await;
    assert_eq!(
        (r.status, &r.body),
        (409, &json!({ k("error"): "VersionMismatch" }))
    );
    let fresh = json!({ k("changes"): [], k("expected_version"): 4 });
    assert_eq!(
        api.call("POST", "/idx/_update", Some(fresh)).await.body,
        json!({ k("version"): 5 })
    );

    // Generations.
    let r = api
        .call(
            "PUT",
            "/idx",
            Some(json!({ k("expect_does_not_exist"): true })),
        )
        .await;
    assert_eq!(
        (r.status, &r.body),
        (409, &json!({ k("error"): "IndexAlreadyExists" }))
    );
    let r = api
        .call("PUT", "/idx", Some(json!({ k("generation"): 0 })))
        .await;
    assert_eq!(r.body, json!({ k("error"): "OlderIndexAlreadyExists" }));
    let r = api
        .call("PUT", "/idx", Some(json!({ k("generation"): 2 })))
        .await;
    assert_eq!(r.body, json!({ k("error"): "NewerIndexAlreadyExists" }));

    let r = api.call("DELETE", "/idx", None).await;
    assert_eq!((r.status, &r.body), (200, &json!({ k("deleted"): true })));
    let r = api.call("DELETE", "/idx", None).await;
    assert_eq!((r.status, &r.body), (200, &json!({ k("deleted"): false })));
    let r = api
        .call("DELETE", "/idx", Some(json!({ k("expect_exists"): true })))
        .await;
    assert_eq!(
        (r.status, &r.body),
        (404, &json!({ k("error"): "IndexNotFound" }))
    );
    assert_eq!(api.call("HEAD", "/idx", None).await.status, 404);
    assert_eq!(api.call("GET", "/idx/_health", None).await.status, 404);
    // Recreated: a newer generation, no old data.
    let r = api.call("PUT", "/idx", None).await;
    assert_eq!(r.body[k("generation")], json!(2));
    let r = api
        .call(
            "POST",
            "/idx/_search",
            Some(json!({ k("query"): [10, 11, 12, 13] })),
        )
        .await;
    assert_eq!(r.body, json!({ k("results"): [] }));

    let r = api.call("GET", "/_metrics", None).await;
    let text = r.body.as_str().unwrap().to_string();
    for name in [
        "fpindex_searches_total",
        "fpindex_updates_total",
        "fpindex_search_duration_seconds",
        "fpnode_http_requests_total",
    ] {
        assert!(text.contains(name), "metrics lack {name}");
    }
    api.call("DELETE", "/idx", None).await;
}

#[tokio::test]
async fn every_endpoint_answers_as_fpindex_does_in_json() {
    let node = Node::start(&[]).await;
    every_endpoint(Api::json(&node)).await;
}

#[tokio::test]
async fn every_endpoint_answers_as_fpindex_does_in_msgpack() {
    let node = Node::start(&[]).await;
    let api = Api::msgpack(&node);
    let r = api.call("PUT", "/pre", Some(json!({}))).await;
    assert_eq!(r.content_type, "application/vnd.msgpack");
    every_endpoint(api).await;
}

#[tokio::test]
async fn every_error_has_its_name_and_status() {
    let node = Node::start(&["--max-body-bytes", "4096"]).await;
    let api = Api::json(&node);
    api.call("PUT", "/e", None).await;
    let client = reqwest::Client::new();
    let raw = |method: &str, path: &str, ct: Option<&str>, body: Vec<u8>| {
        let mut r = client.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            node.url(path),
        );
        if let Some(ct) = ct {
            r = r.header("Content-Type", ct);
        }
        r.body(body).send()
    };
    let expect = |status: u16, name: &str| (status, json!({ "error": name }));
    async fn answer(r: reqwest::Response) -> (u16, Value) {
        let s = r.status().as_u16();
        let b = r.bytes().await.unwrap();
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }
    let j = Some("application/json");
    /// method, path, content type, body, expected (status, body)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, (u16, Value));
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/e/_search",
            j,
            b"{not json".to_vec(),
            expect(400, "BadRequest"),
        ),
        (
            "POST",
            "/e/_search",
            j,
            b"{\"query\":\"x\"}".to_vec(),
            expect(400, "BadRequest"),
        ),
        (
            "POST",
            "/e/_search",
            j,
            b"{\"query\":[4294967296]}".to_vec(),
            expect(400, "BadRequest"),
        ),
        (
            "POST",
            "/e/_search",
            Some("text/plain"),
            b"{}".to_vec(),
            expect(415, "UnsupportedMediaType"),
        ),
        (
            "POST",
            "/e/_search",
            j,
            vec![b' '; 5000],
            expect(413, "PayloadTooLarge"),
        ),
        (
            "POST",
            "/bad.name/_search",
            j,
            b"{\"query\":[1]}".to_vec(),
            expect(400, "InvalidIndexName"),
        ),
        (
            "POST",
            "/missing/_search",
            j,
            b"{\"query\":[1]}".to_vec(),
            expect(404, "IndexNotFound"),
        ),
        (
            "POST",
            "/e/_update",
            j,
            b"{\"changes\":[{\"insert\":{\"id\":0,\"hashes\":[1]}}]}".to_vec(),
            expect(400, "InvalidFingerprintId"),
        ),
        (
            "POST",
            "/e/_update",
            j,
            b"{\"changes\":[{\"delete\":{\"id\":4294967296}}]}".to_vec(),
            expect(400, "InvalidFingerprintId"),
        ),
        (
            "POST",
            "/e/_update",
            j,
            b"{\"changes\":[{\"upsert\":{\"id\":1}}]}".to_vec(),
            expect(400, "BadRequest"),
        ),
        (
            "GET",
            "/e/0",
            None,
            vec![],
            expect(400, "InvalidFingerprintId"),
        ),
        (
            "GET",
            "/e/abc",
            None,
            vec![],
            expect(400, "InvalidFingerprintId"),
        ),
        (
            "GET",
            "/e/5",
            None,
            vec![],
            expect(404, "FingerprintNotFound"),
        ),
        ("PUT", "/e/5", j, b"{}".to_vec(), expect(400, "BadRequest")),
        (
            "GET",
            "/missing/_snapshot",
            None,
            vec![],
            expect(404, "IndexNotFound"),
        ),
        ("POST", "/e", None, vec![], expect(405, "MethodNotAllowed")),
        ("GET", "/a/b/c", None, vec![], expect(404, "NotFound")),
    ];
    for (method, path, ct, body, want) in cases {
        let got = answer(raw(method, path, ct, body).await.unwrap()).await;
        assert_eq!(got, want, "{method} {path}");
    }
    // Limits on counts (bodies under the byte limit of a second node).
    let big = Node::start(&[]).await;
    let api = Api::json(&big);
    api.call("PUT", "/e", None).await;
    let q: Vec<u32> = (0..100_001).collect();
    let r = api
        .call("POST", "/e/_search", Some(json!({ "query": q })))
        .await;
    assert_eq!(
        (r.status, r.body),
        (400, json!({ "error": "QueryTooLong" }))
    );
    let h: Vec<u32> = (0..100_001).collect();
    let r = api.call("PUT", "/e/1", Some(json!({ "hashes": h }))).await;
    assert_eq!(
        (r.status, r.body),
        (400, json!({ "error": "TooManyHashes" }))
    );
    let changes: Vec<Value> = (1..=100_001)
        .map(|i| json!({ "delete": { "id": i } }))
        .collect();
    let r = api
        .call("POST", "/e/_update", Some(json!({ "changes": changes })))
        .await;
    assert_eq!(
        (r.status, r.body),
        (400, json!({ "error": "TooManyChanges" }))
    );
}

#[tokio::test]
async fn a_search_past_its_timeout_answers_search_timeout() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    api.call("PUT", "/t", None).await;
    // 20 batches of 1000 fingerprints sharing hashes 1..=30: a query of those
    // hashes scores 600,000 postings across many segments, far over 1 ms.
    for b in 0..20u32 {
        let changes: Vec<Value> = (1..=1000u32)
            .map(|i| json!({ "insert": { "id": b * 1000 + i, "hashes": (1..=30).collect::<Vec<u32>>() } }))
            .collect();
        api.call("POST", "/t/_update", Some(json!({ "changes": changes })))
            .await;
    }
    let q: Vec<u32> = (1..=30).collect();
    let r = api
        .call(
            "POST",
            "/t/_search",
            Some(json!({ "query": q, "timeout": 1 })),
        )
        .await;
    assert_eq!(
        (r.status, r.body),
        (503, json!({ "error": "SearchTimeout" }))
    );
    let r = api
        .call(
            "POST",
            "/t/_search",
            Some(json!({ "query": q, "timeout": 10000, "limit": 3 })),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["results"].as_array().unwrap().len(), 3);
    let text = api
        .call("GET", "/_metrics", None)
        .await
        .body
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        text.contains("fpnode_wal_fsync_seconds_count"),
        "no WAL fsync metric"
    );
}

#[tokio::test]
async fn metrics_are_there_from_the_first_scrape_with_their_help() {
    // fpindex exports its counters from startup: rate() and absent() alerts
    // work before the first search (fpindex's own test_metrics).
    let node = Node::start(&[]).await;
    let text = node.metrics().await;
    for name in [
        "fpindex_searches_total",
        "fpindex_search_hits_total",
        "fpindex_search_misses_total",
        "fpindex_updates_total",
        "fpindex_checkpoints_total",
        "fpnode_audio_rejected_total",
        "fpnode_stream_errors_total",
    ] {
        assert!(
            text.lines().any(|l| l == format!("{name} 0")),
            "{name} is not 0 at startup:\n{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("# HELP {name} ")) && l.len() > name.len() + 8),
            "{name} has no help text:\n{text}"
        );
    }
    assert!(
        text.contains(&format!(
            "fpnode_build_info{{version=\"{}\",mode=\"standalone\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    for name in ["fpnode_data_disk_free_bytes", "fpnode_data_disk_size_bytes"] {
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name}:\n{text}"));
        assert!(value > 0.0, "{name} {value}");
    }
}

#[tokio::test]
async fn a_deleted_index_leaves_no_series_in_the_metrics() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    for index in ["keep", "gone"] {
        assert_eq!(
            api.call("PUT", &format!("/{index}"), None).await.status,
            200
        );
        let put = api
            .call(
                "PUT",
                &format!("/{index}/1"),
                Some(json!({"hashes": [1, 2]})),
            )
            .await;
        assert_eq!(put.status, 200);
    }
    let scrape = || async { node.metrics().await };
    let before = scrape().await;
    for line in [
        r#"fpindex_docs{index="gone"} 1"#,
        r#"fpindex_docs{index="keep"} 1"#,
        r#"fpnode_segments{index="gone",kind="memory"}"#,
        "# HELP fpindex_docs live fingerprints",
        "# TYPE fpindex_docs gauge",
    ] {
        assert!(before.contains(line), "{line}:\n{before}");
    }
    assert_eq!(api.call("DELETE", "/gone", None).await.status, 200);
    let after = scrape().await;
    assert!(!after.contains(r#"index="gone""#), "{after}");
    assert!(after.contains(r#"fpindex_docs{index="keep"} 1"#), "{after}");
    // One HELP per family, whatever the number of indexes.
    assert_eq!(after.matches("# HELP fpindex_docs ").count(), 1);
}

/// fpindex's test_snapshot.py, both cases: an empty index's snapshot is its
/// header alone; a missing index is 404.
#[tokio::test]
async fn a_snapshot_of_an_empty_index_is_its_header_and_of_none_404() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/e", None).await.status, 200);
    let res = reqwest::get(node.url("/e/_snapshot")).await.unwrap();
    assert_eq!(res.status(), 200);
    let bytes = res.bytes().await.unwrap();
    let mut cursor = std::io::Cursor::new(&bytes[..]);
    let header: Value = rmp_serde::from_read(&mut cursor).unwrap();
    assert_eq!(header["f"], 1);
    assert!(header["g"].as_u64().unwrap() >= 1);
    assert_eq!(header["s"], json!([]));
    assert_eq!(cursor.position() as usize, bytes.len());
    let missing = reqwest::get(node.url("/nope/_snapshot")).await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// `GET /_ready` on a standalone node, and `fpnode healthcheck` (the
/// image's HEALTHCHECK) against a node and against nothing.
#[tokio::test]
async fn ready_and_the_healthcheck_command() {
    let node = Node::start(&[]).await;
    let r = reqwest::get(node.url("/_ready")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "OK\n");
    let check = |port: u16| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fpnode"))
            .args([
                "healthcheck",
                "--port",
                &port.to_string(),
                "--timeout-ms",
                "2000",
            ])
            .env_remove("FPNODE_PORT")
            .output()
            .unwrap()
    };
    let ok = check(node.port);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let nothing = check(common::free_port());
    assert_eq!(nothing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&nothing.stderr).contains("fpnode healthcheck: 127.0.0.1:"),
        "{}",
        String::from_utf8_lossy(&nothing.stderr)
    );
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_fpnode"))
        .args([
            "healthcheck",
            "--port",
            &node.port.to_string(),
            "--path",
            "/nope/_health",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).ends_with(": 404\n"));
}
