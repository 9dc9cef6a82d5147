//! Open-loop search: queries are sent on a fixed schedule (`rate` per second)
//! whether or not earlier ones have been answered, and each latency is taken
//! from the moment the query was *due*, not from when it was sent. A stalled
//! server therefore shows up as the latency its users would see, instead of
//! silently slowing the client down (coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;

use crate::corpus::Corpus;
use crate::measure::{histogram, percentiles};
use crate::{Query, QuerySpec, post_msgpack};

#[derive(Debug, Clone, Serialize)]
pub struct OpenLoopResult {
    pub offered_qps: f64,
    #[serde(flatten)]
    pub spec: QuerySpec,
    pub seconds: f64,
    /// Answers per second, until the last answer came.
    pub achieved_qps: f64,
    pub queries: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Of the answered queries made from stored fingerprints, the share
    /// whose first result was that fingerprint.
    pub recall_at_1: f64,
    /// Answered queries for fingerprints never stored that got a result.
    pub miss_answers: u64,
    /// `503 Overloaded` answers: the node shedding load it cannot serve in
    /// time (reported, not an error).
    pub shed: u64,
    /// Other non-200 answers and transport failures.
    pub errors: u64,
    /// Queries not sent because `max_in_flight` were already waiting (the
    /// node far behind the offered rate): the load generator's limit, shown
    /// beside the answers, not counted as the node's errors.
    pub not_sent: u64,
}

impl std::fmt::Display for OpenLoopResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "open loop {:.0} QPS offered for {:.0} s: {:.0} QPS answered; latency from due time p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms; recall@1 {:.2}%; shed (503) {}; errors {}; not sent {}",
            self.offered_qps,
            self.seconds,
            self.achieved_qps,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.recall_at_1 * 100.0,
            self.shed,
            self.errors,
            self.not_sent
        )
    }
}

struct Answer {
    miss: bool,
    latency_us: u64,
    status: u16,
    correct: bool,
}

#[allow(clippy::too_many_arguments)]
pub async fn open_loop(
    corpus: Corpus,
    url: &str,
    index: &str,
    n: u32,
    rate: f64,
    seconds: f64,
    spec: QuerySpec,
    max_in_flight: usize,
) -> anyhow::Result<OpenLoopResult> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(max_in_flight)
        .timeout(Duration::from_secs(30))
        .build()?;
    let target = Arc::new(format!("{url}/{index}/_search"));
    let total = (rate * seconds).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(rate as u64);
    let mut hist = histogram();
    let (mut hits, mut correct, mut shed, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let (mut answered, mut miss_answers) = (0u64, 0u64);
    let in_flight = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Answer>();
    let start = Instant::now();
    // The schedule is kept by a thread of its own with the OS timer
    // (tens of microseconds late at most): tokio's timer wheel has 1 ms
    // ticks, which would add up to a millisecond to every latency.
    let runtime = tokio::runtime::Handle::current();
    let dispatcher = {
        let in_flight = in_flight.clone();
        tokio::task::spawn_blocking(move || {
            let mut not_sent = 0u64;
            for i in 0..total {
                let due = start + interval.mul_f64(i as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if in_flight.load(Ordering::Relaxed) >= max_in_flight as u64 {
                    not_sent += 1;
                    continue;
                }
                // A miss is a fingerprint of the same corpus that was never stored.
                let miss = rng.gen_bool(spec.misses.clamp(0.0, 1.0));
                let id = if miss {
                    rng.gen_range(n.saturating_add(1)..=n.saturating_mul(2).max(n + 1))
                } else {
                    rng.gen_range(1..=n.max(1))
                };
                let q = corpus.query(id, spec.noise, spec.drop, &mut rng);
                let (client, target, in_flight, tx) = (
                    client.clone(),
                    target.clone(),
                    in_flight.clone(),
                    tx.clone(),
                );
                in_flight.fetch_add(1, Ordering::Relaxed);
                runtime.spawn(async move {
                    let res = post_msgpack(&client, &target, &Query { q }).await;
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                    let latency_us = due.elapsed().as_micros() as u64;
                    let answer = match res {
                        // For a miss, "correct" means it got an answer at all.
                        Ok((status, v)) => Answer {
                            miss,
                            latency_us,
                            status,
                            correct: if miss {
                                v["r"][0]["i"].as_u64().is_some()
                            } else {
                                v["r"][0]["i"].as_u64() == Some(u64::from(id))
                            },
                        },
                        Err(_) => Answer {
                            miss,
                            latency_us,
                            status: 0,
                            correct: false,
                        },
                    };
                    let _ = tx.send(answer);
                });
            }
            not_sent
        })
    };
    // Every query task holds a sender: the channel ends with the last answer.
    while let Some(a) = rx.recv().await {
        match a.status {
            200 => {
                let _ = hist.record(a.latency_us.max(1));
                answered += 1;
                if a.miss {
                    miss_answers += u64::from(a.correct);
                } else {
                    hits += 1;
                    correct += u64::from(a.correct);
                }
            }
            503 => shed += 1,
            _ => errors += 1,
        }
    }
    let not_sent = dispatcher.await?;
    let elapsed = start.elapsed().as_secs_f64();
    let [p50_ms, p99_ms, p999_ms, max_ms] = percentiles(&hist);
    Ok(OpenLoopResult {
        offered_qps: rate,
        spec,
        seconds,
        achieved_qps: answered as f64 / elapsed.max(f64::EPSILON),
        queries: total,
        p50_ms,
        p99_ms,
        p999_ms,
        max_ms,
        recall_at_1: correct as f64 / hits.max(1) as f64,
        miss_answers,
        shed,
        errors,
        not_sent,
    })
}
