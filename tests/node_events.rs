//! `GET /_changes`, the node's own events, against the real binary
//! (docs/api.md "Node events"): indexes created and deleted and job state
//! changes, numbered once for the node, as a page, a long poll and an event
//! stream resumed from `Last-Event-ID`, kept across a restart (a job the
//! restart interrupted included).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Api, Node, sse_events, wait_job};
use serde_json::{Value, json};

async fn page(api: &Api, since: u64) -> Value {
    let a = api
        .call("GET", &format!("/_changes?since={since}"), None)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

/// (seq, type, index or job state) of each event of a page.
fn summary(page: &Value) -> Vec<(u64, String, String)> {
    page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let what = match e["type"].as_str().unwrap() {
                "job" => format!(
                    "{} {}",
                    e["kind"].as_str().unwrap(),
                    e["state"].as_str().unwrap()
                ),
                _ => format!("{} {}", e["index"].as_str().unwrap(), e["generation"]),
            };
            (
                e["seq"].as_u64().unwrap(),
                e["type"].as_str().unwrap().to_string(),
                what,
            )
        })
        .collect()
}

#[tokio::test]
async fn indexes_and_jobs_are_events_numbered_once_and_kept_across_restarts() {
    let mut node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(page(&api, 0).await["results"], json!([]));
    assert_eq!(api.call("PUT", "/a", None).await.status, 200);
    assert_eq!(api.call("DELETE", "/a", None).await.status, 200);
    assert_eq!(api.call("PUT", "/a", None).await.status, 200);
    let job = api
        .call(
            "POST",
            "/_jobs",
            Some(json!({"kind": "verify", "index": "a"})),
        )
        .await;
    assert_eq!(job.status, 202);
    let id = job.body["id"].as_u64().unwrap();
    wait_job(&api, id, "succeeded", |j| j["state"] == "succeeded").await;
    let all = page(&api, 0).await;
    let expected = [
        (1, "index_created", "a 1"),
        (2, "index_deleted", "a 1"),
        (3, "index_created", "a 2"),
        (4, "job", "verify queued"),
        (5, "job", "verify running"),
        (6, "job", "verify succeeded"),
    ]
    .map(|(s, t, w)| (s, t.to_string(), w.to_string()));
    assert_eq!(summary(&all), expected);
    assert_eq!(all["last_seq"], 6);
    assert_eq!(all["results"][3]["index"], "a");
    assert_eq!(all["results"][3]["job"], job.body["id"]);
    assert!(all["results"][0]["time_ms"].as_u64().unwrap() > 0);
    // From a sequence number on, with a limit.
    let some = api
        .call("GET", "/_changes?since=2&limit=2", None)
        .await
        .body;
    assert_eq!(summary(&some), expected[2..4]);
    assert_eq!(some["more"], true);

    // A long poll waits for the next event.
    let waiting = {
        let api = api.clone();
        tokio::spawn(async move {
            api.call("GET", "/_changes?since=6&feed=longpoll&timeout=10000", None)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished());
    assert_eq!(api.call("PUT", "/b", None).await.status, 200);
    let woke = waiting.await.unwrap();
    assert_eq!(woke.status, 200);
    assert_eq!(
        summary(&woke.body),
        [(7, "index_created".to_string(), "b 1".to_string())]
    );

    // Kept across a restart; numbering goes on.
    node.kill();
    node.spawn().await;
    let api = Api::json(&node);
    assert_eq!(summary(&page(&api, 0).await)[..6], expected);
    assert_eq!(api.call("DELETE", "/b", None).await.status, 200);
    assert_eq!(
        summary(&page(&api, 7).await),
        [(8, "index_deleted".to_string(), "b 1".to_string())]
    );
    let bad = api.call("GET", "/_changes?feed=sometimes", None).await;
    assert_eq!(bad.status, 400);
    let bad = api.call("GET", "/_changes?since=x", None).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn an_event_stream_follows_events_and_resumes_from_last_event_id() {
    let node = Node::start(&[]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/a", None).await.status, 200);
    let client = reqwest::Client::new();
    let res = client
        .get(node.url("/_changes"))
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let creates = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            for name in ["b", "c", "d"] {
                assert_eq!(api.call("PUT", &format!("/{name}"), None).await.status, 200);
            }
        })
    };
    let got = sse_events(res, 3).await;
    creates.await.unwrap();
    let ids: Vec<&str> = got.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"]);
    assert_eq!(got[1].1, "index_created");
    assert_eq!(got[1].2["index"], "b");
    // Cut off after event 3: resumed from Last-Event-ID, the next is 4.
    let res = client
        .get(node.url("/_changes?feed=eventsource"))
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap();
    let got = sse_events(res, 1).await;
    assert_eq!(got[0].0, "4");
    assert_eq!(got[0].2["index"], "d");
}

#[tokio::test]
async fn a_job_interrupted_by_a_restart_is_an_event() {
    let imports = tempfile::tempdir().unwrap();
    let dir = imports.path().to_str().unwrap().to_string();
    let mut node = Node::start(&["--import-dir", &dir]).await;
    let api = Api::json(&node);
    assert_eq!(api.call("PUT", "/a", None).await.status, 200);
    let mut body = String::new();
    for id in 1..=5000u32 {
        body += &json!({"id": id, "hashes": [id, id + 1, id + 2]}).to_string();
        body.push('\n');
    }
    std::fs::write(imports.path().join("x.ndjson"), body).unwrap();
    let job = api
        .call(
            "POST",
            "/_jobs",
            Some(json!({"kind": "import", "index": "a", "file": "x.ndjson", "max_rate": 1000.0})),
        )
        .await;
    assert_eq!(job.status, 202, "{}", job.body);
    let mut running = false;
    for _ in 0..2000 {
        if api.call("GET", "/_jobs/1", None).await.body["state"] == "running" {
            running = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(running, "the import never ran");
    node.kill();
    node.spawn().await;
    let api = Api::json(&node);
    let events = summary(&page(&api, 0).await);
    let jobs: Vec<&str> = events
        .iter()
        .filter(|(_, t, _)| t == "job")
        .map(|(_, _, w)| w.as_str())
        .collect();
    assert_eq!(
        jobs,
        ["import queued", "import running", "import interrupted"]
    );
}
