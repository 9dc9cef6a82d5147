//! Overload: far more concurrent searches than search threads, and a write flood.
//! The node must shed the excess with `503 Overloaded` + `Retry-After`, keep its
//! memory flat, and keep answering `/_health` promptly (searches never run on the
//! async executor). Duration per phase: `FPNODE_OVERLOAD_SECS` (default 10; the
//! figures in docs/benchmarks.md use 30).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

fn secs() -> u64 {
    std::env::var("FPNODE_OVERLOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// A memory figure of the node from /proc (a test that cannot read it must
/// fail, not measure zeros).
fn rss_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Samples RSS every 200 ms until `stop`; returns the samples.
fn sample_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut v = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            v.push(rss_kb(pid, "VmRSS:"));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        v
    })
}

/// Probes `/_health` every 10 ms until `stop`; returns latencies in microseconds.
fn probe_health(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Histogram<u64>> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut h = Histogram::<u64>::new(3).unwrap();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let r = client.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            h.record(t.elapsed().as_micros() as u64).unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        h
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_more_searches_than_threads_are_shed_and_health_stays_prompt() {
    let node = common::Node::start(&["--search-threads", "2", "--search-queue", "4"]).await;
    let pid = node.child.as_ref().unwrap().id();
    let api = common::Api::json(&node);
    api.call("PUT", "/idx", None).await;
    // 20,000 fingerprints that all share hashes 1..=30: a query of those hashes
    // scores 600,000 postings, milliseconds of CPU per search.
    for b in 0..20u32 {
        let changes: Vec<Value> = (1..=1000u32)
            .map(|i| {
                let id = b * 1000 + i;
                let mut h: Vec<u32> = (1..=30).collect();
                h.extend((0..10).map(|k| 1_000_000 + id * 16 + k));
                json!({ "insert": { "id": id, "hashes": h } })
            })
            .collect();
        assert_eq!(
            api.call("POST", "/idx/_update", Some(json!({ "changes": changes })))
                .await
                .status,
            200
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(pid, stop.clone());
    let health = probe_health(node.url("/_health"), stop.clone());
    let (ok, shed, late, other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (api, stop, ok, shed, late, other) = (
            api.clone(),
            stop.clone(),
            ok.clone(),
            shed.clone(),
            late.clone(),
            other.clone(),
        );
        clients.push(tokio::spawn(async move {
            let q: Vec<u32> = (1..=30).collect();
            while !stop.load(Ordering::Relaxed) {
                let r = api
                    .call(
                        "POST",
                        "/idx/_search",
                        Some(json!({ "query": q, "limit": 10 })),
                    )
                    .await;
                match (r.status, r.body["error"].as_str()) {
                    (200, _) => ok.fetch_add(1, Ordering::Relaxed),
                    (503, Some("Overloaded")) => {
                        assert_eq!(r.retry_after.as_deref(), Some("1"));
                        shed.fetch_add(1, Ordering::Relaxed)
                    }
                    // Admitted on an estimate of the wait that a slower
                    // stretch (other tests share the 2 cores) made wrong.
                    (503, Some("SearchTimeout")) => late.fetch_add(1, Ordering::Relaxed),
                    (status, error) => {
                        eprintln!("unexpected answer: {status} {error:?}");
                        other.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs())).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let rss = rss.await.unwrap();
    let health = health.await.unwrap();
    let (ok, shed, late, other) = (
        ok.load(Ordering::Relaxed),
        shed.load(Ordering::Relaxed),
        late.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
    );
    let early = rss[rss.len() / 4];
    let peak_late = *rss[rss.len() / 4..].iter().max().unwrap();
    eprintln!(
        "searches: {ok} answered, {shed} shed, {late} timed out after admission, {other} other; VmRSS after 1/4 of the run {early} kB, peak after {peak_late} kB; /_health {} probes p50 {} us p99 {} us max {} us",
        health.len(),
        health.value_at_quantile(0.5),
        health.value_at_quantile(0.99),
        health.max()
    );
    assert!(
        ok > 0 && shed > 0,
        "expected both answers and shed requests: {ok} / {shed}"
    );
    assert_eq!(other, 0, "searches must be answered or shed as Overloaded");
    // Admission by expected wait: a search it lets in nearly always finishes.
    assert!(
        late * 50 <= ok + shed,
        "{late} admitted searches timed out (of {ok} answered, {shed} shed)"
    );
    assert!(
        peak_late < early + 32 * 1024,
        "RSS grew from {early} kB to {peak_late} kB"
    );
    assert!(
        health.value_at_quantile(0.99) < 50_000,
        "/_health p99 {} us",
        health.value_at_quantile(0.99)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_flood_gets_bounded_memory_and_503s_and_keeps_what_it_acknowledged() {
    let node = common::Node::start(&["--max-writes-in-flight", "2", "--write-wait-ms", "50"]).await;
    let pid = node.child.as_ref().unwrap().id();
    let api = common::Api::json(&node);
    api.call("PUT", "/idx", None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let rss = sample_rss(pid, stop.clone());
    let next = Arc::new(AtomicU64::new(1));
    let (shed, other) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (api, stop, next, shed, other, acked) = (
            api.clone(),
            stop.clone(),
            next.clone(),
            shed.clone(),
            other.clone(),
            acked.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let first = next.fetch_add(200, Ordering::Relaxed) as u32;
                let changes: Vec<Value> = (first..first + 200)
                    .map(|id| json!({ "insert": { "id": id, "hashes": (0..120).map(|k| id.wrapping_mul(2_654_435_761).wrapping_add(k)).collect::<Vec<u32>>() } }))
                    .collect();
                let r = api.call("POST", "/idx/_update", Some(json!({ "changes": changes }))).await;
                match (r.status, r.body["error"].as_str()) {
                    (200, _) => acked.lock().unwrap().push(first),
                    (503, Some("Overloaded")) => {
                        shed.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        other.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs())).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let rss = rss.await.unwrap();
    let peak = *rss.iter().max().unwrap();
    let acked = acked.lock().unwrap().clone();
    let (shed, other) = (shed.load(Ordering::Relaxed), other.load(Ordering::Relaxed));
    eprintln!(
        "writes: {} batches of 200 acknowledged, {shed} shed, {other} other; peak VmRSS {peak} kB",
        acked.len()
    );
    assert!(shed > 0, "the flood was never shed");
    assert_eq!(other, 0);
    assert!(peak < 1024 * 1024, "peak RSS {peak} kB");
    for first in acked.iter().step_by(7) {
        let r = api.call("GET", &format!("/idx/{first}"), None).await;
        assert_eq!(
            r.status, 200,
            "acknowledged batch starting at {first} is missing"
        );
    }
}
