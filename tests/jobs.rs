//! Background jobs against the real binary (docs/api.md "Jobs"): every kind
//! started and observed to its result, checked against the data; cancelled
//! (queued and running); interrupted by a kill and by a clean stop; errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Api, Node, job, wait_job};
use serde_json::{Value, json};

/// `n` fingerprints from `first`, 40 hashes each.
fn corpus(first: u32, n: u32) -> BTreeMap<u32, Vec<u32>> {
    (first..first + n)
        .map(|id| {
            let mut h: Vec<u32> = (0..40)
                .map(|k| id.wrapping_mul(2_654_435_761) ^ k)
                .collect();
            h.sort_unstable();
            h.dedup();
            (id, h)
        })
        .collect()
}

fn ndjson(c: &BTreeMap<u32, Vec<u32>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, h) in c {
        out.extend(serde_json::to_vec(&json!({"id": id, "hashes": h})).unwrap());
        out.push(b'\n');
    }
    out
}

/// Reads an export file (MessagePack `{i, h}` records).
fn read_msgpack(path: &Path) -> BTreeMap<u32, Vec<u32>> {
    #[derive(serde::Deserialize)]
    struct R {
        i: u32,
        h: Vec<u32>,
    }
    let bytes = std::fs::read(path).unwrap();
    let mut cur = std::io::Cursor::new(&bytes[..]);
    let mut out = BTreeMap::new();
    while (cur.position() as usize) < bytes.len() {
        let mut r: R = rmp_serde::decode::from_read(&mut cur).unwrap();
        r.h.sort_unstable();
        out.insert(r.i, r.h);
    }
    out
}

async fn start_job(api: &Api, body: Value) -> u64 {
    let a = api.call("POST", "/_jobs", Some(body.clone())).await;
    assert_eq!(a.status, 202, "{body}: {}", a.body);
    a.body["id"].as_u64().unwrap()
}

/// Polls `done` until it holds (20 s at most).
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_state(api: &Api, id: u64, state: &str) -> Value {
    wait_job(api, id, state, |j| j["state"] == state).await
}

async fn num_docs(api: &Api, index: &str) -> u64 {
    let a = api.call("GET", &format!("/{index}/_status"), None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["num_docs"].as_u64().unwrap()
}

struct Setup {
    node: Node,
    api: Api,
    imports: tempfile::TempDir,
}

async fn setup(extra: &[&str]) -> Setup {
    let imports = tempfile::tempdir().unwrap();
    let dir = imports.path().to_str().unwrap().to_string();
    let mut args = vec!["--import-dir", dir.as_str()];
    args.extend_from_slice(extra);
    let node = Node::start(&args).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/a", None).await.status, 200);
    Setup { node, api, imports }
}

fn fpnode(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fpnode"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn every_kind_runs_to_a_result_that_matches_the_data() {
    // Small checkpoints: the import leaves many file segments to compact.
    let s = setup(&["--checkpoint-threshold", "20000"]).await;
    let api = &s.api;
    let data = corpus(1, 3000);
    std::fs::write(s.imports.path().join("corpus.ndjson"), ndjson(&data)).unwrap();

    let id = start_job(
        api,
        json!({"kind": "import", "index": "a", "file": "corpus.ndjson"}),
    )
    .await;
    let done = wait_state(api, id, "succeeded").await;
    assert_eq!(done["result"]["fingerprints"], 3000, "{done}");
    assert_eq!(done["kind"], "import");
    assert_eq!(done["index"], "a");
    assert_eq!(done["progress"]["unit"], "bytes");
    assert_eq!(done["progress"]["done"], done["progress"]["total"]);
    assert_eq!(num_docs(api, "a").await, 3000);
    let version = done["result"]["version"].as_u64().unwrap();
    assert_eq!(
        api.call("GET", "/a", None).await.body["version"].as_u64(),
        Some(version)
    );

    // Export: the file holds exactly the corpus.
    let id = start_job(
        api,
        json!({"kind": "export", "index": "a", "format": "msgpack"}),
    )
    .await;
    let done = wait_state(api, id, "succeeded").await;
    let file = PathBuf::from(done["result"]["file"].as_str().unwrap());
    assert!(
        file.starts_with(s.node.data_dir().join("exports")),
        "{file:?}"
    );
    assert_eq!(read_msgpack(&file), data);
    assert_eq!(done["result"]["fingerprints"], 3000);

    // Compact: one segment left, the same data.
    // (Background merges may have merged the files already: writing one
    // fingerprint again, unchanged, makes sure a memory segment is there.)
    let again = api
        .call("PUT", "/a/1", Some(json!({"hashes": data[&1]})))
        .await;
    assert_eq!(again.status, 200);
    let before = api.call("GET", "/a/_status", None).await.body;
    let segments =
        before["file_segments"].as_u64().unwrap() + before["memory_segments"].as_u64().unwrap();
    assert!(segments >= 2, "{before}");
    let id = start_job(api, json!({"kind": "compact", "index": "a"})).await;
    let done = wait_state(api, id, "succeeded").await;
    assert_eq!(done["result"]["segments_after"], 1, "{done}");
    let after = api.call("GET", "/a/_status", None).await.body;
    assert_eq!(after["file_segments"], 1, "{after}");
    assert_eq!(after["num_docs"], 3000);
    let hit = api
        .call(
            "POST",
            "/a/_search",
            Some(json!({"query": data[&1234], "limit": 1})),
        )
        .await;
    assert_eq!(hit.body["results"][0]["id"], 1234, "{}", hit.body);

    // Verify: every byte read.
    let id = start_job(api, json!({"kind": "verify", "index": "a"})).await;
    let done = wait_state(api, id, "succeeded").await;
    assert_eq!(done["result"]["segments"], 1);
    assert_eq!(done["result"]["fingerprints"], 3000);
    assert_eq!(
        done["result"]["bytes"].as_u64(),
        after["file_bytes"].as_u64()
    );

    // Snapshot: restorable into another data directory, same data.
    let id = start_job(api, json!({"kind": "snapshot", "index": "a"})).await;
    let done = wait_state(api, id, "succeeded").await;
    let archive = done["result"]["file"].as_str().unwrap().to_string();
    let other = tempfile::tempdir().unwrap();
    let dir = other.path().to_str().unwrap();
    let out = fpnode(&["restore", "--dir", dir, "--index", "b", "--input", &archive]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = other.path().join("b.msgpack");
    let out = fpnode(&[
        "export",
        "--dir",
        dir,
        "--index",
        "b",
        "--format",
        "msgpack",
        "--output",
        exported.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(read_msgpack(&exported), data);

    // Listed newest first, with rates.
    let list = api.call("GET", "/_jobs", None).await.body;
    let ids: Vec<u64> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [5, 4, 3, 2, 1]);
    assert!(list["jobs"][4]["rate"].as_f64().unwrap() > 0.0);
    let metrics = api.call("GET", "/_metrics", None).await.body;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(r#"fpnode_jobs_finished_total{kind="import",state="succeeded"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_uploaded_body_is_imported_and_its_file_removed() {
    let s = setup(&[]).await;
    let data = corpus(10, 2500);
    let res = reqwest::Client::new()
        .post(s.node.url("/a/_import"))
        .header("Content-Type", "application/x-ndjson")
        .body(ndjson(&data))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    let id = body["id"].as_u64().unwrap();
    assert_eq!(body["params"]["upload_bytes"], ndjson(&data).len());
    let done = wait_state(&s.api, id, "succeeded").await;
    assert_eq!(done["result"]["fingerprints"], 2500);
    assert_eq!(num_docs(&s.api, "a").await, 2500);
    let uploads = s.node.data_dir().join("jobs").join("uploads");
    let left = std::fs::read_dir(&uploads).unwrap().count();
    assert_eq!(left, 0, "upload kept in {uploads:?}");
    // A body for an index that does not exist is refused before it is read.
    let res = reqwest::Client::new()
        .post(s.node.url("/nope/_import"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn queued_and_running_jobs_are_cancelled_and_leave_nothing_half_done() {
    let s = setup(&["--checkpoint-threshold", "20000"]).await;
    let api = &s.api;
    let data = corpus(1, 4000);
    let body = ndjson(&data);
    std::fs::write(s.imports.path().join("corpus.ndjson"), &body).unwrap();
    let full = start_job(
        api,
        json!({"kind": "import", "index": "a", "file": "corpus.ndjson"}),
    )
    .await;
    wait_state(api, full, "succeeded").await;

    // A paced import: 200 kB/s of a file of ~1.8 MB would take ~9 s.
    let more = corpus(100_000, 4000);
    std::fs::write(s.imports.path().join("more.ndjson"), ndjson(&more)).unwrap();
    let slow = start_job(
        api,
        json!({"kind": "import", "index": "a", "file": "more.ndjson", "max_rate": 200000.0}),
    )
    .await;
    // One job at a time: these wait.
    let mut queued = Vec::new();
    for body in [
        json!({"kind": "compact", "index": "a"}),
        json!({"kind": "verify", "index": "a"}),
    ] {
        queued.push(start_job(api, body).await);
    }
    let running = wait_job(api, slow, "moving", |j| {
        j["state"] == "running" && j["progress"]["done"].as_u64() > Some(0)
    })
    .await;
    assert!(running["eta_seconds"].as_f64().unwrap() > 1.0, "{running}");
    for &id in &queued {
        assert_eq!(job(api, id).await["state"], "queued");
        let a = api.call("DELETE", &format!("/_jobs/{id}"), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["state"], "cancelled");
        assert_eq!(a.body["started_ms"], Value::Null);
    }
    let a = api.call("DELETE", &format!("/_jobs/{slow}"), None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["state"], "cancelled");
    assert_eq!(a.body["cancel_requested"], true);
    // What the import wrote before the cancel stays, whole fingerprints only.
    let docs = num_docs(api, "a").await;
    assert!(docs > 4000 && docs < 8000, "{docs}");
    assert_eq!(docs % 1000, 0, "groups of 1,000 are applied whole: {docs}");
    let again = api.call("DELETE", &format!("/_jobs/{slow}"), None).await;
    assert_eq!(
        (again.status, again.body["error"].clone()),
        (409, json!("JobFinished"))
    );

    // A paced export and a paced verify cancelled while running leave no file.
    let export = start_job(
        api,
        json!({"kind": "export", "index": "a", "max_rate": 100.0}),
    )
    .await;
    wait_job(api, export, "running", |j| j["state"] == "running").await;
    let a = api.call("DELETE", &format!("/_jobs/{export}"), None).await;
    assert_eq!(a.body["state"], "cancelled", "{}", a.body);
    let snapshot = start_job(
        api,
        json!({"kind": "snapshot", "index": "a", "max_rate": 1000.0}),
    )
    .await;
    wait_job(api, snapshot, "running", |j| {
        j["state"] == "running" && j["progress"]["done"].as_u64() > Some(0)
    })
    .await;
    let a = api
        .call("DELETE", &format!("/_jobs/{snapshot}"), None)
        .await;
    assert_eq!(a.body["state"], "cancelled", "{}", a.body);
    let exports = s.node.data_dir().join("exports");
    let files: Vec<String> = std::fs::read_dir(&exports)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.is_empty(), "{files:?}");
    let verify = start_job(
        api,
        json!({"kind": "verify", "index": "a", "max_rate": 1.0}),
    )
    .await;
    wait_job(api, verify, "running", |j| j["state"] == "running").await;
    let a = api.call("DELETE", &format!("/_jobs/{verify}"), None).await;
    assert_eq!(a.body["state"], "cancelled", "{}", a.body);
}

#[tokio::test]
async fn a_restart_shows_queued_and_running_jobs_as_interrupted() {
    let mut s = setup(&[]).await;
    let data = corpus(1, 4000);
    std::fs::write(s.imports.path().join("corpus.ndjson"), ndjson(&data)).unwrap();
    let job_body =
        json!({"kind": "import", "index": "a", "file": "corpus.ndjson", "max_rate": 150000.0});
    let slow = start_job(&s.api, job_body.clone()).await;
    let queued = start_job(&s.api, json!({"kind": "verify", "index": "a"})).await;
    wait_job(&s.api, slow, "moving", |j| {
        j["progress"]["done"].as_u64() > Some(0)
    })
    .await;
    // Progress is written to the record as it goes (every second).
    let record = s
        .node
        .data_dir()
        .join("jobs")
        .join(format!("{slow:012}.json"));
    wait_until("progress on disk", || {
        let r: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
        r["progress"]["done"].as_u64() > Some(0)
    })
    .await;
    // SIGKILL: the records on disk say running and queued.
    s.node.kill();
    s.node.spawn().await;
    let api = Api::json(&s.node);
    for id in [slow, queued] {
        let j = job(&api, id).await;
        assert_eq!(j["state"], "interrupted", "{j}");
        assert!(j["error"].as_str().unwrap().contains("stopped"), "{j}");
        assert!(j["finished_ms"].as_u64().is_some());
    }
    assert!(job(&api, slow).await["progress"]["done"].as_u64() > Some(0));

    // A clean stop records the same, and ids go on.
    let again = start_job(&api, job_body).await;
    assert_eq!(again, queued + 1);
    wait_job(&api, again, "running", |j| j["state"] == "running").await;
    assert!(s.node.terminate().success());
    s.node.spawn().await;
    let j = job(&api, again).await;
    assert_eq!(j["state"], "interrupted", "{j}");
    // The index is whole: every imported group is there, nothing else.
    assert_eq!(num_docs(&api, "a").await % 1000, 0);
}

#[tokio::test]
async fn bad_requests_and_bad_files_get_named_errors() {
    let s = setup(&[]).await;
    let api = &s.api;
    std::fs::write(s.imports.path().join("ok.ndjson"), ndjson(&corpus(1, 10))).unwrap();
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::os::unix::fs::symlink(outside.path(), s.imports.path().join("link.ndjson")).unwrap();
    for (body, status, error) in [
        (json!({"kind": "reindex", "index": "a"}), 400, "InvalidJob"),
        (
            json!({"kind": "compact", "index": "a", "file": "x"}),
            400,
            "InvalidJob",
        ),
        (
            json!({"kind": "export", "index": "a", "format": "csv"}),
            400,
            "InvalidJob",
        ),
        (
            json!({"kind": "export", "index": "a", "max_rate": -1}),
            400,
            "InvalidJob",
        ),
        (
            json!({"kind": "verify", "index": "a", "extra": 1}),
            400,
            "InvalidJob",
        ),
        (json!({"kind": "import", "index": "a"}), 400, "InvalidJob"),
        (
            json!({"kind": "verify", "index": "nope"}),
            404,
            "IndexNotFound",
        ),
        (
            json!({"kind": "verify", "index": "a b"}),
            400,
            "InvalidIndexName",
        ),
        (
            json!({"kind": "compact", "index": "a", "max_rate": 5}),
            400,
            "InvalidJob",
        ),
        (json!({"kind": "resync", "index": "a"}), 400, "InvalidJob"),
        (
            json!({"kind": "import", "index": "a", "file": "../x"}),
            403,
            "FileNotAllowed",
        ),
        (
            json!({"kind": "import", "index": "a", "file": "missing"}),
            404,
            "FileNotFound",
        ),
        (
            json!({"kind": "import", "index": "a", "file": "link.ndjson"}),
            403,
            "FileNotAllowed",
        ),
        (
            json!({"kind": "import", "index": "a", "file": "/etc/passwd"}),
            403,
            "FileNotAllowed",
        ),
    ] {
        let a = api.call("POST", "/_jobs", Some(body.clone())).await;
        assert_eq!(
            (a.status, a.body["error"].as_str()),
            (status, Some(error)),
            "{body}"
        );
    }
    assert_eq!(
        api.call("GET", "/_jobs", None).await.body["jobs"],
        json!([])
    );
    let a = api.call("GET", "/_jobs/77", None).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (404, Some("JobNotFound"))
    );
    let a = api.call("DELETE", "/_jobs/x", None).await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (404, Some("JobNotFound"))
    );

    // A bad record fails the job, named by its number; the groups before it
    // are applied.
    let mut body = ndjson(&corpus(1, 2500));
    body.extend(b"{\"id\": 0, \"hashes\": [1]}\n");
    body.extend(ndjson(&corpus(5000, 10)));
    std::fs::write(s.imports.path().join("bad.ndjson"), body).unwrap();
    let id = start_job(
        api,
        json!({"kind": "import", "index": "a", "file": "bad.ndjson"}),
    )
    .await;
    let failed = wait_state(api, id, "failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("record 2501"), "{error}");
    assert_eq!(num_docs(api, "a").await, 2000);

    // Without --import-dir, files are refused (uploads still work).
    let plain = Node::start(&[]).await;
    let api = Api::json(&plain);
    assert_eq!(api.call("PUT", "/a", None).await.status, 200);
    let a = api
        .call(
            "POST",
            "/_jobs",
            Some(json!({"kind": "import", "index": "a", "file": "ok.ndjson"})),
        )
        .await;
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (403, Some("FileNotAllowed"))
    );
}

#[tokio::test]
async fn uploads_are_bounded_and_a_queued_upload_cancelled_leaves_no_file() {
    let s = setup(&["--max-upload-bytes", "300000", "--max-queued-jobs", "1"]).await;
    let api = &s.api;
    let uploads = s.node.data_dir().join("jobs").join("uploads");
    let client = reqwest::Client::new();
    // Declared too large: refused before it is read.
    let big = ndjson(&corpus(1, 2000));
    assert!(big.len() > 300_000);
    let res = client
        .post(s.node.url("/a/_import"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // Streamed (no length) and too large: cut at the limit, nothing kept.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(10_000).map(|c| Ok(c.to_vec())).collect();
    let res = client
        .post(s.node.url("/a/_import"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(files_in(&uploads), Vec::<String>::new());

    // A paced import runs; an upload waits behind it with its file.
    std::fs::write(
        s.imports.path().join("slow.ndjson"),
        ndjson(&corpus(1, 3000)),
    )
    .unwrap();
    let slow = start_job(
        api,
        json!({"kind": "import", "index": "a", "file": "slow.ndjson", "max_rate": 10000.0}),
    )
    .await;
    wait_state(api, slow, "running").await;
    let small = ndjson(&corpus(50_000, 100));
    let res = client
        .post(s.node.url("/a/_import"))
        .header("Content-Type", "application/x-ndjson")
        .body(small.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let queued: Value = res.json().await.unwrap();
    assert_eq!(queued["state"], "queued");
    assert_eq!(files_in(&uploads).len(), 1);
    // The queue (1) is full: jobs and uploads are refused, with a retry hint.
    let full = api
        .call(
            "POST",
            "/_jobs",
            Some(json!({"kind": "verify", "index": "a"})),
        )
        .await;
    assert_eq!(
        (full.status, full.body["error"].as_str()),
        (503, Some("TooManyJobs"))
    );
    assert_eq!(full.retry_after.as_deref(), Some("5"));
    let res = client
        .post(s.node.url("/a/_import"))
        .body(small)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(files_in(&uploads).len(), 1);
    // Cancelled while queued: its file goes with it.
    let id = queued["id"].as_u64().unwrap();
    let a = api.call("DELETE", &format!("/_jobs/{id}"), None).await;
    assert_eq!(a.body["state"], "cancelled");
    assert_eq!(files_in(&uploads), Vec::<String>::new());
    // The paced import keeps to its rate.
    let running = job(api, slow).await;
    let rate = running["rate"].as_f64().unwrap();
    assert!(rate <= 10000.0 * 1.05, "{rate} bytes/s");
    let a = api.call("DELETE", &format!("/_jobs/{slow}"), None).await;
    assert_eq!(a.body["state"], "cancelled");
}

#[tokio::test]
async fn a_msgpack_file_is_imported_and_bad_records_are_named() {
    let s = setup(&[]).await;
    let api = &s.api;
    let data = corpus(1, 1500);
    let mut body = Vec::new();
    for (id, h) in &data {
        body.extend(rmp_serde::to_vec_named(&json!({"i": id, "h": h})).unwrap());
    }
    std::fs::write(s.imports.path().join("c.msgpack"), &body).unwrap();
    let id = start_job(
        api,
        json!({"kind": "import", "index": "a", "file": "c.msgpack", "format": "msgpack"}),
    )
    .await;
    let done = wait_state(api, id, "succeeded").await;
    assert_eq!(done["result"]["fingerprints"], 1500);
    assert_eq!(num_docs(api, "a").await, 1500);

    // A line without an end, longer than 4 MiB: named, not held whole.
    let mut long = ndjson(&corpus(1, 10));
    long.extend(b"{\"id\": 11, \"hashes\": [");
    long.extend(std::iter::repeat_n(b'1', 5 << 20));
    std::fs::write(s.imports.path().join("long.ndjson"), long).unwrap();
    let id = start_job(
        api,
        json!({"kind": "import", "index": "a", "file": "long.ndjson"}),
    )
    .await;
    let failed = wait_state(api, id, "failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("record 11: longer than"), "{error}");
    // More hashes than a fingerprint may carry (100,000).
    let many: Vec<u32> = (0..100_001).collect();
    let line = serde_json::to_vec(&json!({"id": 1, "hashes": many})).unwrap();
    std::fs::write(s.imports.path().join("many.ndjson"), line).unwrap();
    let id = start_job(
        api,
        json!({"kind": "import", "index": "a", "file": "many.ndjson"}),
    )
    .await;
    let failed = wait_state(api, id, "failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("record 1: 100001 hashes"), "{error}");
}

#[tokio::test]
async fn verify_names_a_corrupt_segment_and_a_job_on_a_deleted_index_fails() {
    let s = setup(&[]).await;
    let api = &s.api;
    std::fs::write(s.imports.path().join("c.ndjson"), ndjson(&corpus(1, 2000))).unwrap();
    let id = start_job(
        api,
        json!({"kind": "import", "index": "a", "file": "c.ndjson"}),
    )
    .await;
    wait_state(api, id, "succeeded").await;
    let id = start_job(api, json!({"kind": "compact", "index": "a"})).await;
    wait_state(api, id, "succeeded").await;
    // Flip a byte in the middle of the segment's data.
    let generation = files_in(&s.node.data_dir().join("indexes/a"))
        .pop()
        .unwrap();
    let segments = s
        .node
        .data_dir()
        .join("indexes/a")
        .join(generation)
        .join("segments");
    let file = files_in(&segments)
        .into_iter()
        .find(|n| n.ends_with(".fpseg"))
        .unwrap();
    let path = segments.join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(std::io::SeekFrom::Start(at as u64)).unwrap();
        f.write_all(&bytes[at..=at]).unwrap();
    }
    let id = start_job(api, json!({"kind": "verify", "index": "a"})).await;
    let failed = wait_state(api, id, "failed").await;
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains(&file) && error.contains("checksum"),
        "{error}"
    );

    // A job queued for an index deleted before it runs fails, named.
    assert_eq!(api.call("PUT", "/b", None).await.status, 200);
    std::fs::write(
        s.imports.path().join("slow.ndjson"),
        ndjson(&corpus(1, 3000)),
    )
    .unwrap();
    let slow = start_job(
        api,
        json!({"kind": "import", "index": "a", "file": "slow.ndjson", "max_rate": 50000.0}),
    )
    .await;
    let export = start_job(api, json!({"kind": "export", "index": "b"})).await;
    assert_eq!(api.call("DELETE", "/b", None).await.status, 200);
    let cancelled = api.call("DELETE", &format!("/_jobs/{slow}"), None).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let failed = wait_state(api, export, "failed").await;
    assert!(
        failed["error"].as_str().unwrap().contains("deleted"),
        "{failed}"
    );
}

/// A compaction cancelled through the API while it merges stops (within
/// 65,536 postings), removes its unfinished file and leaves the index as it
/// was. The merge must still be running when the cancel arrives: if a
/// machine merges the corpus before the cancel lands, the test doubles the
/// corpus and tries again (four times at most).
#[tokio::test]
async fn a_compaction_cancelled_while_it_merges_leaves_the_index_as_it_was() {
    // Checkpoints every 2M postings: a few file segments, too few for the
    // background merge policy to touch, so the directory holds still.
    let s = setup(&["--checkpoint-threshold", "2000000"]).await;
    let api = &s.api;
    let mut first = 1;
    for attempt in 0..4 {
        let n = 200_000u32 << attempt;
        let mut body = Vec::new();
        for (id, h) in &corpus(first, n) {
            body.extend(rmp_serde::to_vec_named(&json!({"i": id, "h": h})).unwrap());
        }
        let name = format!("c{attempt}.msgpack");
        std::fs::write(s.imports.path().join(&name), &body).unwrap();
        drop(body);
        let id = start_job(
            api,
            json!({"kind": "import", "index": "a", "file": name, "format": "msgpack"}),
        )
        .await;
        wait_state(api, id, "succeeded").await;
        std::fs::remove_file(s.imports.path().join(&name)).unwrap();
        first += n;
        let docs = num_docs(api, "a").await;
        assert_eq!(docs, u64::from(first - 1));

        let id = start_job(api, json!({"kind": "compact", "index": "a"})).await;
        let seen = wait_job(api, id, "merging", |j| {
            j["state"] != "queued" && j["state"] != "running"
                || j["progress"]["done"].as_u64() > Some(0)
        })
        .await;
        if seen["state"] != "running" {
            assert_eq!(seen["state"], "succeeded", "{seen}");
            continue;
        }
        // Memory is checkpointed before the merge starts: this is the
        // index the cancel must leave.
        let before = api.call("GET", "/a/_status", None).await.body;
        let a = api.call("DELETE", &format!("/_jobs/{id}"), None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let end = wait_job(api, id, "finished", |j| {
            j["state"] != "running" && j["state"] != "queued"
        })
        .await;
        if end["state"] == "succeeded" {
            // The merge ended between the look and the cancel.
            continue;
        }
        assert_eq!(end["state"], "cancelled", "{end}");
        assert!(
            end["progress"]["done"].as_u64() < end["progress"]["total"].as_u64(),
            "{end}"
        );
        let after = api.call("GET", "/a/_status", None).await.body;
        for key in ["num_docs", "file_segments", "file_bytes", "version"] {
            assert_eq!(after[key], before[key], "{key}: {before} -> {after}");
        }
        assert!(after["file_segments"].as_u64() > Some(1), "{after}");
        // No unfinished file left beside the index's segments.
        let generation = files_in(&s.node.data_dir().join("indexes/a"))
            .pop()
            .unwrap();
        let dir = s
            .node
            .data_dir()
            .join("indexes/a")
            .join(generation)
            .join("segments");
        let files = files_in(&dir);
        assert_eq!(
            files.len() as u64,
            after["file_segments"].as_u64().unwrap(),
            "the index's segments only: {files:?}"
        );
        for id in [1, first / 2, first - 1] {
            let hit = api
                .call(
                    "POST",
                    "/a/_search",
                    Some(json!({"query": corpus(id, 1)[&id], "limit": 1})),
                )
                .await;
            assert_eq!(hit.body["results"][0]["id"], id, "{}", hit.body);
        }
        // And the index still compacts.
        let id = start_job(api, json!({"kind": "compact", "index": "a"})).await;
        let done = wait_state(api, id, "succeeded").await;
        assert_eq!(done["result"]["segments_after"], 1, "{done}");
        return;
    }
    panic!("every compaction finished before its cancel arrived");
}
