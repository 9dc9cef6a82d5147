//! Writes of new fingerprints while something else happens: single
//! fingerprints timed until a follower can find them (write-to-searchable),
//! and background writers for the mixed and chaos steps, which keep the ids
//! the node acknowledged so they can be checked afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::corpus::Corpus;
use crate::measure::{histogram, ms, percentiles};
use crate::{Insert, InsertChange, Query, Update, post_msgpack};

/// Ids of fingerprints written by these steps start here, far above any
/// corpus (whose misses are ids N+1..=2N), so no step collides with another.
pub const FIRST_NEW_ID: u32 = 3_000_000_000;

/// Single-fingerprint writes, one at a time per client.
#[derive(Debug, Clone, Serialize)]
pub struct WritesResult {
    pub writes: u64,
    pub clients: usize,
    pub writes_per_second: f64,
    /// Until the node answered (after read-your-writes in replica mode).
    pub answered_p50_ms: f64,
    pub answered_p99_ms: f64,
    pub answered_p999_ms: f64,
    pub answered_max_ms: f64,
    /// Until the follower's search found the fingerprint, from the write's
    /// sending; absent without a follower.
    pub searchable: Option<[f64; 4]>,
    pub errors: u64,
}

impl std::fmt::Display for WritesResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writes: {} single-fingerprint PUTs with {} clients: {:.0} writes/s; answered p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms",
            self.writes,
            self.clients,
            self.writes_per_second,
            self.answered_p50_ms,
            self.answered_p99_ms,
            self.answered_p999_ms,
            self.answered_max_ms
        )?;
        if let Some([p50, p99, p999, max]) = self.searchable {
            write!(
                f,
                "; searchable on the follower p50 {p50:.2} ms p99 {p99:.2} ms p99.9 {p999:.2} ms max {max:.2} ms after sending"
            )?;
        }
        write!(f, "; errors {}", self.errors)
    }
}

#[derive(Serialize)]
struct Put {
    h: Vec<u32>,
}

/// Writes `count` new fingerprints (ids from `first`) with `PUT /:index/:id`,
/// each client one at a time, and with `follower` also times each until the
/// follower's search finds it (its own hashes as the query, top answer).
pub async fn writes(
    corpus: Corpus,
    url: &str,
    index: &str,
    count: u32,
    first: u32,
    clients: usize,
    follower: Option<String>,
) -> anyhow::Result<WritesResult> {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(u64::from(first)));
    let end = u64::from(first) + u64::from(count);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (client, next) = (client.clone(), next.clone());
        let (url, index, follower) = (url.to_string(), index.to_string(), follower.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ack, mut seen, mut errors) = (histogram(), histogram(), 0u64);
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= end {
                    break;
                }
                let id = id as u32;
                let hashes = corpus.fingerprint(id);
                let body = rmp_serde::to_vec_named(&Put { h: hashes.clone() }).unwrap_or_default();
                let t = Instant::now();
                let res = client
                    .put(format!("{url}/{index}/{id}"))
                    .header("Content-Type", "application/vnd.msgpack")
                    .body(body)
                    .send()
                    .await;
                if !matches!(&res, Ok(r) if r.status().is_success()) {
                    errors += 1;
                    continue;
                }
                let _ = ack.record(t.elapsed().as_micros() as u64);
                let Some(f) = &follower else { continue };
                let target = format!("{f}/{index}/_search");
                let query = Query { q: hashes };
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    if let Ok((200, v)) = post_msgpack(&client, &target, &query).await
                        && v["r"][0]["i"].as_u64() == Some(u64::from(id))
                    {
                        let _ = seen.record(t.elapsed().as_micros() as u64);
                        break;
                    }
                    if Instant::now() > deadline {
                        errors += 1;
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
            (ack, seen, errors)
        }));
    }
    let (mut ack, mut seen, mut errors) = (histogram(), histogram(), 0);
    for t in tasks {
        let (a, s, e) = t.await?;
        ack.add(a)?;
        seen.add(s)?;
        errors += e;
    }
    let secs = started.elapsed().as_secs_f64();
    let [
        answered_p50_ms,
        answered_p99_ms,
        answered_p999_ms,
        answered_max_ms,
    ] = percentiles(&ack);
    Ok(WritesResult {
        writes: ack.len(),
        clients,
        writes_per_second: ack.len() as f64 / secs,
        answered_p50_ms,
        answered_p99_ms,
        answered_p999_ms,
        answered_max_ms,
        searchable: follower.map(|_| percentiles(&seen)),
        errors,
    })
}

/// What background writers did: the ids the node acknowledged, and how the
/// other attempts ended.
#[derive(Debug)]
pub struct Written {
    /// Ids of every fingerprint in an acknowledged `_update` (200).
    pub acked: Vec<u32>,
    /// Batches answered 503 (refused, nothing promised).
    pub refused: u64,
    /// Batches that failed otherwise: connection refused or reset (the node
    /// down), timeouts, other statuses. Their fingerprints may or may not
    /// have been applied: nothing was promised.
    pub failed: u64,
    /// Latency of acknowledged batches, in microseconds.
    pub latency: Histogram<u64>,
}

impl Default for Written {
    fn default() -> Written {
        Written {
            acked: Vec::new(),
            refused: 0,
            failed: 0,
            latency: histogram(),
        }
    }
}

impl Written {
    fn merge(&mut self, other: Written) -> anyhow::Result<()> {
        self.acked.extend(other.acked);
        self.refused += other.refused;
        self.failed += other.failed;
        self.latency.add(other.latency)?;
        Ok(())
    }
}

/// Writers that insert new fingerprints in `_update` batches of `batch`
/// until told to stop; each waits for its answer before the next batch,
/// and with a `rate` (fingerprints per second, all writers together) for
/// its next due time as well (a writer behind its schedule does not burst
/// to catch up).
pub struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Written>>,
}

impl Writers {
    /// Starts `writers` writers; ids are taken from `next` (shared with later
    /// steps, so ids are never reused).
    pub fn start(
        corpus: Corpus,
        url: &str,
        index: &str,
        writers: usize,
        batch: u32,
        rate: Option<f64>,
        next: Arc<AtomicU64>,
    ) -> Writers {
        let writers = writers.max(1);
        // Each writer's time between batches.
        let period = rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(f64::from(batch) * writers as f64 / r));
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        let target = format!("{url}/{index}/_update");
        let tasks = (0..writers)
            .map(|_| {
                let (client, target, stop, next) =
                    (client.clone(), target.clone(), stop.clone(), next.clone());
                tokio::spawn(async move {
                    let mut w = Written::default();
                    let mut schedule = period.map(|p| {
                        let mut i = tokio::time::interval(p);
                        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        i
                    });
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(schedule) = schedule.as_mut() {
                            schedule.tick().await;
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                        let first = next.fetch_add(u64::from(batch), Ordering::Relaxed);
                        let ids: Vec<u32> = (first..first + u64::from(batch))
                            .filter_map(|id| u32::try_from(id).ok())
                            .collect();
                        let body = Update {
                            c: ids
                                .iter()
                                .map(|&id| InsertChange {
                                    i: Insert {
                                        i: id,
                                        h: corpus.fingerprint(id),
                                    },
                                })
                                .collect(),
                        };
                        let t = Instant::now();
                        match post_msgpack(&client, &target, &body).await {
                            Ok((200, _)) => {
                                let _ = w.latency.record(t.elapsed().as_micros() as u64);
                                w.acked.extend(ids);
                            }
                            Ok((503, _)) => {
                                w.refused += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            _ => {
                                w.failed += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                    w
                })
            })
            .collect();
        Writers { stop, tasks }
    }

    /// Stops the writers once their current batch is answered.
    pub async fn finish(self) -> anyhow::Result<Written> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Written::default();
        for t in self.tasks {
            all.merge(t.await?)?;
        }
        Ok(all)
    }
}

/// Background writes as a report shows them.
#[derive(Debug, Clone, Serialize)]
pub struct WriteLoad {
    pub writers: usize,
    pub batch: u32,
    pub acked_fingerprints: u64,
    pub fingerprints_per_second: f64,
    pub batch_p50_ms: f64,
    pub batch_p99_ms: f64,
    pub refused: u64,
    pub failed: u64,
}

impl WriteLoad {
    pub fn new(w: &Written, writers: usize, batch: u32, seconds: f64) -> WriteLoad {
        WriteLoad {
            writers,
            batch,
            acked_fingerprints: w.acked.len() as u64,
            fingerprints_per_second: w.acked.len() as f64 / seconds.max(1e-9),
            batch_p50_ms: ms(&w.latency, 0.5),
            batch_p99_ms: ms(&w.latency, 0.99),
            refused: w.refused,
            failed: w.failed,
        }
    }
}

impl std::fmt::Display for WriteLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} writers in batches of {}: {} fingerprints acknowledged ({:.0} fp/s), batch p50 {:.1} ms p99 {:.1} ms; refused (503) {}; failed {}",
            self.writers,
            self.batch,
            self.acked_fingerprints,
            self.fingerprints_per_second,
            self.batch_p50_ms,
            self.batch_p99_ms,
            self.refused,
            self.failed
        )
    }
}

/// Which of `ids` the node at `url` does not find by their own hashes (top
/// answer of a search), checked with `clients` concurrent searches. A search
/// that fails is retried for up to a minute before the id counts as missing.
pub async fn missing(
    corpus: Corpus,
    url: &str,
    index: &str,
    ids: &[u32],
    clients: usize,
) -> anyhow::Result<Vec<u32>> {
    let client = reqwest::Client::new();
    let target = format!("{url}/{index}/_search");
    let ids = Arc::new(ids.to_vec());
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (client, target, ids, next) =
            (client.clone(), target.clone(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut missing = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&id) = ids.get(i) else { break };
                let query = Query {
                    q: corpus.fingerprint(id),
                };
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match post_msgpack(&client, &target, &query).await {
                        Ok((200, v)) => {
                            if v["r"][0]["i"].as_u64() != Some(u64::from(id)) {
                                missing.push(id);
                            }
                            break;
                        }
                        _ if Instant::now() > deadline => {
                            missing.push(id);
                            break;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
            missing
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort_unstable();
    Ok(all)
}
