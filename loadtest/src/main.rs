//! `fpnode-loadtest`: generates corpora and drives a node over HTTP, reporting
//! throughput, latency percentiles and recall, so speed is never bought with
//! wrong answers. `run NAME` runs a scenario file against a node it starts
//! itself and writes JSON and Markdown reports (loadtest/README.md).

mod audio;
mod chaos;
mod charts;
mod cluster;
mod corpus;
mod feed;
mod import;
mod measure;
mod openloop;
mod plan;
mod progress;
mod scale;
mod scenario;
mod stream;
mod writes;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde_json::{Value, json};

use corpus::{Corpus, Distribution};

#[derive(Debug, Parser)]
#[command(
    name = "fpnode-loadtest",
    about = "Load generator and measurement client for fpnode"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Corpus seed.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// Hashes per fingerprint.
    #[arg(long, global = true, default_value_t = 120)]
    hashes: usize,
    /// Skewed corpus: this many frequent hashes (default: uniform hashes).
    #[arg(long, global = true)]
    skew_frequent: Option<u32>,
    /// Skewed corpus: the share of hashes that are frequent ones.
    #[arg(long, global = true, default_value_t = 0.1)]
    skew_share: f64,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a scenario (`loadtest/scenarios/<name>.toml`) against a fresh node
    /// and write report.json and report.md; exits non-zero if it failed.
    Run {
        name: String,
        /// Directory of scenario files.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))]
        scenarios: std::path::PathBuf,
        /// The fpnode binary (default: beside this one).
        #[arg(long)]
        fpnode: Option<std::path::PathBuf>,
        /// Where the reports go (default: target/loadtest/<name>).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Corpus size instead of the scenario's (for a scale series).
        #[arg(long)]
        fingerprints: Option<u32>,
        /// The node's data directory, kept afterwards (default: a temporary
        /// directory, removed at the end). Needs room for the index.
        #[arg(long)]
        data: Option<std::path::PathBuf>,
    },
    /// Scale curve from several `run` reports (one per corpus size): writes
    /// scale.svg (bytes/posting, RssAnon, search p50/p99 against corpus
    /// size) and scale.md (the same as a table) into --out.
    Scale {
        reports: Vec<std::path::PathBuf>,
        #[arg(long, default_value = "target/loadtest/scale")]
        out: std::path::PathBuf,
    },
    /// Capacity plan: disk, memory and time for corpora of the given sizes,
    /// derived from what `run` measured (report.json files, or directories
    /// of them; default: docs/loadtest, the reports of docs/benchmarks.md).
    Plan {
        /// Corpus sizes, comma separated (e.g. 10000000,100000000).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10000000,100000000,1000000000"
        )]
        fingerprints: Vec<u64>,
        /// NATS servers holding the stream (R).
        #[arg(long, default_value_t = 3)]
        stream_replicas: u32,
        reports: Vec<std::path::PathBuf>,
    },
    /// Write fingerprints 1..=N to stdout for `fpnode import`.
    Gen {
        #[arg(long)]
        fingerprints: u32,
        #[arg(long, default_value = "msgpack")]
        format: String,
    },
    /// Load fingerprints 1..=N through `_update` (MessagePack).
    Load {
        #[arg(long, default_value = "http://127.0.0.1:6081")]
        url: String,
        #[arg(long, default_value = "main")]
        index: String,
        #[arg(long)]
        fingerprints: u32,
        #[arg(long, default_value_t = 1000)]
        batch: u32,
        #[arg(long, default_value_t = 2)]
        clients: usize,
    },
    /// Stream fingerprints 1..=N through one `_stream` request (MessagePack
    /// values generated as the body is sent).
    Stream {
        #[arg(long, default_value = "http://127.0.0.1:6081")]
        url: String,
        #[arg(long, default_value = "main")]
        index: String,
        #[arg(long)]
        fingerprints: u32,
    },
    /// Single-fingerprint writes (`PUT /:index/:id`), one at a time per client:
    /// latency until the node answered (after read-your-writes in replica
    /// mode) and, with --follower, until another node returns the fingerprint.
    Writes {
        #[arg(long, default_value = "http://127.0.0.1:6081")]
        url: String,
        #[arg(long, default_value = "main")]
        index: String,
        #[arg(long, default_value_t = 2000)]
        count: u32,
        /// First id written (new ids, so a follower can see when each arrives).
        #[arg(long, default_value_t = 3_000_000_000)]
        first: u32,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Another node: also measure until it serves each written fingerprint.
        #[arg(long)]
        follower: Option<String>,
    },
    /// Library scanners against `fpnode audio-server`: C clients fingerprint
    /// the files of a library (made by scripts/gen-audio) for a while;
    /// reports throughput, latency and the server's RSS (docs/audio.md).
    Audio {
        /// The library (scripts/gen-audio OUT_DIR).
        #[arg(long)]
        library: std::path::PathBuf,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
        /// Fail when the server's RSS reaches this.
        #[arg(long, default_value_t = 500)]
        rss_limit_mb: u64,
        /// The server's --max-decodes (default: its own, one per CPU).
        #[arg(long)]
        max_decodes: Option<usize>,
        /// The fpnode binary (default: beside this one).
        #[arg(long)]
        fpnode: Option<std::path::PathBuf>,
        #[arg(long, default_value = "target/loadtest/audio")]
        out: std::path::PathBuf,
    },
    /// Closed-loop search with C clients; queries are stored fingerprints with noise.
    Search {
        #[arg(long, default_value = "http://127.0.0.1:6081")]
        url: String,
        #[arg(long, default_value = "main")]
        index: String,
        /// Corpus size (queries pick ids in 1..=N).
        #[arg(long)]
        fingerprints: u32,
        #[arg(long, default_value_t = 10_000)]
        queries: usize,
        #[arg(long, default_value_t = 1)]
        clients: usize,
        #[arg(long, default_value_t = 0.3)]
        noise: f64,
        /// Share of each query's hashes dropped.
        #[arg(long, default_value_t = 0.0)]
        drop: f64,
        /// Share of queries for fingerprints that are not stored.
        #[arg(long, default_value_t = 0.0)]
        misses: f64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let corpus = Corpus {
        seed: cli.seed,
        hashes: cli.hashes,
        distribution: match cli.skew_frequent {
            Some(frequent) => Distribution::Skewed {
                frequent,
                share: cli.skew_share,
            },
            None => Distribution::Uniform,
        },
    };
    match cli.cmd {
        Cmd::Run {
            name,
            scenarios,
            fpnode,
            out,
            fingerprints,
            data,
        } => {
            let mut s = scenario::load_scenario(&scenarios, &name)?;
            if let Some(n) = fingerprints {
                s.corpus.fingerprints = n;
            }
            let binary = fpnode.unwrap_or_else(scenario::default_binary);
            let out = out.unwrap_or_else(|| {
                std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/loadtest"))
                    .join(&name)
            });
            let data = match data {
                Some(dir) => scenario::DataDir::Given(dir),
                None => scenario::DataDir::Temp(tempfile::tempdir()?),
            };
            let report = scenario::run(s, &binary, data, &out).await?;
            if report.failures.is_empty() {
                println!("scenario {name}: passed");
                Ok(())
            } else {
                bail!("scenario {name} failed: {}", report.failures.join("; "))
            }
        }
        Cmd::Scale { reports, out } => scale::scale(&reports, &out),
        Cmd::Audio {
            library,
            clients,
            seconds,
            rss_limit_mb,
            max_decodes,
            fpnode,
            out,
        } => {
            let binary = fpnode.unwrap_or_else(scenario::default_binary);
            let load = audio::AudioLoad {
                library,
                clients,
                duration: std::time::Duration::from_secs(seconds),
                rss_limit_mb,
                max_decodes,
                out,
            };
            println!("{}", audio::run(&binary, load).await?);
            Ok(())
        }
        Cmd::Plan {
            fingerprints,
            stream_replicas,
            reports,
        } => {
            let reports = if reports.is_empty() {
                plan::default_reports()
            } else {
                reports
            };
            print!("{}", plan::plan(&fingerprints, &reports, stream_replicas)?);
            Ok(())
        }
        Cmd::Gen {
            fingerprints,
            format,
        } => generate(corpus, fingerprints, &format),
        Cmd::Load {
            url,
            index,
            fingerprints,
            batch,
            clients,
        } => {
            println!(
                "{}",
                load(corpus, &url, &index, fingerprints, batch, clients).await?
            );
            Ok(())
        }
        Cmd::Stream {
            url,
            index,
            fingerprints,
        } => {
            println!(
                "{}",
                stream::stream(corpus, &url, &index, fingerprints).await?
            );
            Ok(())
        }
        Cmd::Search {
            url,
            index,
            fingerprints,
            queries,
            clients,
            noise,
            drop,
            misses,
        } => {
            let spec = QuerySpec {
                noise,
                drop,
                misses,
            };
            let r = search(corpus, &url, &index, fingerprints, queries, clients, spec).await?;
            println!("{r}");
            Ok(())
        }
        Cmd::Writes {
            url,
            index,
            count,
            first,
            clients,
            follower,
        } => {
            let r = writes::writes(corpus, &url, &index, count, first, clients, follower).await?;
            println!("{r}");
            Ok(())
        }
    }
}

fn generate(corpus: Corpus, n: u32, format: &str) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    match format {
        "msgpack" if n > 0 => corpus.write_msgpack(&mut out, 1, n)?,
        "msgpack" => {}
        "ndjson" => {
            for id in 1..=n {
                writeln!(
                    out,
                    "{}",
                    json!({ "id": id, "hashes": corpus.fingerprint(id) })
                )?;
            }
        }
        _ => bail!("unknown format {format}: msgpack or ndjson"),
    }
    out.flush()?;
    Ok(())
}

/// `_update` body with MessagePack's one-letter keys, encoded without building
/// a `Value` tree (the client must not be the bottleneck it measures).
#[derive(serde::Serialize)]
pub(crate) struct Update {
    pub c: Vec<InsertChange>,
}

#[derive(serde::Serialize)]
pub(crate) struct InsertChange {
    pub i: Insert,
}

#[derive(serde::Serialize)]
pub(crate) struct Insert {
    pub i: u32,
    pub h: Vec<u32>,
}

#[derive(serde::Serialize)]
pub(crate) struct Query {
    pub q: Vec<u32>,
}

pub(crate) async fn post_msgpack<T: serde::Serialize>(
    client: &reqwest::Client,
    url: &str,
    body: &T,
) -> anyhow::Result<(u16, Value)> {
    let res = client
        .post(url)
        .header("Content-Type", "application/vnd.msgpack")
        .body(rmp_serde::to_vec_named(body)?)
        .send()
        .await?;
    let status = res.status().as_u16();
    let bytes = res.bytes().await?;
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        rmp_serde::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Ok((status, v))
}

/// What a load measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadResult {
    pub fingerprints: u32,
    pub hashes: usize,
    pub batch: u32,
    pub clients: usize,
    pub seconds: f64,
    pub fingerprints_per_second: f64,
    pub batch_p50_ms: f64,
    pub batch_p99_ms: f64,
    /// 503 answers retried.
    pub retries: u64,
    /// Batches that failed for good.
    pub errors: u64,
    /// (seconds since the start, fingerprints acknowledged that second).
    pub timeline: Vec<(f64, f64)>,
}

impl std::fmt::Display for LoadResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "load: {} fingerprints x {} hashes in batches of {} with {} clients: {:.1} s = {:.0} fp/s; batch latency p50 {:.1} ms p99 {:.1} ms; 503 retries {}; errors {}",
            self.fingerprints,
            self.hashes,
            self.batch,
            self.clients,
            self.seconds,
            self.fingerprints_per_second,
            self.batch_p50_ms,
            self.batch_p99_ms,
            self.retries,
            self.errors
        )
    }
}

/// Creates `index` (idempotent); the client to go on with.
pub(crate) async fn create_index(url: &str, index: &str) -> anyhow::Result<reqwest::Client> {
    let client = reqwest::Client::new();
    client
        .put(format!("{url}/{index}"))
        .send()
        .await
        .context("creating the index")?;
    Ok(client)
}

pub async fn load(
    corpus: Corpus,
    url: &str,
    index: &str,
    n: u32,
    batch: u32,
    clients: usize,
) -> anyhow::Result<LoadResult> {
    let client = create_index(url, index).await?;
    let next = Arc::new(AtomicU64::new(1));
    let errors = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let loaded = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let sampler = {
        let loaded = loaded.clone();
        tokio::spawn(async move {
            let bar = progress::bar(u64::from(n), "load");
            let mut timeline = Vec::new();
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = loaded.load(Ordering::Relaxed);
                bar.set_position(now);
                timeline.push((started.elapsed().as_secs_f64(), (now - last) as f64));
                last = now;
                if now >= u64::from(n) {
                    bar.finish_and_clear();
                    return timeline;
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (client, next, errors, retries, loaded) = (
            client.clone(),
            next.clone(),
            errors.clone(),
            retries.clone(),
            loaded.clone(),
        );
        let target = format!("{url}/{index}/_update");
        tasks.push(tokio::spawn(async move {
            let mut hist = measure::histogram();
            loop {
                let first = next.fetch_add(u64::from(batch), Ordering::Relaxed) as u32;
                if first > n {
                    break;
                }
                let last = (first + batch - 1).min(n);
                let body = Update {
                    c: (first..=last)
                        .map(|id| InsertChange {
                            i: Insert {
                                i: id,
                                h: corpus.fingerprint(id),
                            },
                        })
                        .collect(),
                };
                loop {
                    let t = Instant::now();
                    match post_msgpack(&client, &target, &body).await {
                        Ok((200, _)) => {
                            let _ = hist.record(t.elapsed().as_micros() as u64);
                            loaded.fetch_add(u64::from(last - first + 1), Ordering::Relaxed);
                            break;
                        }
                        Ok((503, _)) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => {
                            eprintln!("update {first}..={last} failed: {other:?}");
                            errors.fetch_add(1, Ordering::Relaxed);
                            // Counted as done, so the progress ends.
                            loaded.fetch_add(u64::from(last - first + 1), Ordering::Relaxed);
                            break;
                        }
                    }
                }
            }
            hist
        }));
    }
    let mut hist = measure::histogram();
    for t in tasks {
        hist.add(t.await?)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut timeline = sampler.await?;
    // The last sample covers only part of a second: scale it to a rate.
    if let Some(last) = timeline.last_mut() {
        let whole = (last.0 - 1.0).max(0.0);
        if secs > whole && secs < last.0 {
            *last = (secs, last.1 / (secs - whole));
        }
    }
    Ok(LoadResult {
        fingerprints: n,
        hashes: corpus.hashes,
        batch,
        clients,
        seconds: secs,
        fingerprints_per_second: f64::from(n) / secs,
        batch_p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        batch_p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        retries: retries.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        timeline,
    })
}

/// How queries are made from the corpus.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct QuerySpec {
    /// Share of each query's hashes replaced by random ones.
    pub noise: f64,
    /// Share of each query's hashes dropped.
    pub drop: f64,
    /// Share of queries made from fingerprints that are not in the index.
    pub misses: f64,
}

impl QuerySpec {
    pub fn new(noise: f64, drop: f64, misses: f64) -> QuerySpec {
        QuerySpec {
            noise,
            drop,
            misses,
        }
    }
}

/// What a closed-loop search run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchResult {
    pub queries: u64,
    pub clients: usize,
    #[serde(flatten)]
    pub spec: QuerySpec,
    pub corpus: u32,
    pub qps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Of the queries made from stored fingerprints, the share whose first
    /// result was that fingerprint.
    pub recall_at_1: f64,
    /// Queries for absent fingerprints that got a result anyway.
    pub miss_answers: u64,
    pub miss_queries: u64,
    /// `503 SearchTimeout`: the node gave up at the query's deadline (500 ms
    /// by default).
    pub timeouts: u64,
    /// Other 503s: the node refused the query (queue full).
    pub shed: u64,
    /// Anything else that was not an answer: other statuses, broken
    /// connections.
    pub errors: u64,
}

impl SearchResult {
    /// Share of the queries sent that got no answer but a 503.
    pub fn refused_share(&self) -> f64 {
        let refused = self.timeouts + self.shed;
        refused as f64 / (self.queries + refused + self.errors).max(1) as f64
    }
}

impl std::fmt::Display for SearchResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "search: {} queries (noise {:.0}%, dropped {:.0}%, misses {:.0}%) with {} clients over {} fingerprints: {:.0} QPS; latency p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms; recall@1 {:.2}%; misses answered {}/{}; 503 SearchTimeout {}; 503 shed {}; errors {}",
            self.queries,
            self.spec.noise * 100.0,
            self.spec.drop * 100.0,
            self.spec.misses * 100.0,
            self.clients,
            self.corpus,
            self.qps,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.recall_at_1 * 100.0,
            self.miss_answers,
            self.miss_queries,
            self.timeouts,
            self.shed,
            self.errors
        )
    }
}

#[derive(Default)]
struct Tally {
    hits: u64,
    correct: u64,
    miss_queries: u64,
    miss_answers: u64,
    timeouts: u64,
    shed: u64,
    errors: u64,
}

pub async fn search(
    corpus: Corpus,
    url: &str,
    index: &str,
    n: u32,
    queries: usize,
    clients: usize,
    spec: QuerySpec,
) -> anyhow::Result<SearchResult> {
    let client = reqwest::Client::new();
    let target = format!("{url}/{index}/_search");
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let (client, target, done) = (client.clone(), target.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(1000 + c as u64);
            let mut hist = measure::histogram();
            let mut t = Tally::default();
            while done.fetch_add(1, Ordering::Relaxed) < queries as u64 {
                // A miss is a fingerprint of the same corpus that was never stored.
                let miss = rng.gen_bool(spec.misses.clamp(0.0, 1.0));
                let id = if miss {
                    rng.gen_range(n.saturating_add(1)..=n.saturating_mul(2).max(n + 1))
                } else {
                    rng.gen_range(1..=n)
                };
                let q = corpus.query(id, spec.noise, spec.drop, &mut rng);
                let start = Instant::now();
                match post_msgpack(&client, &target, &Query { q }).await {
                    Ok((200, v)) => {
                        let _ = hist.record(start.elapsed().as_micros() as u64);
                        let first = v["r"][0]["i"].as_u64();
                        if miss {
                            t.miss_queries += 1;
                            t.miss_answers += u64::from(first.is_some());
                        } else {
                            t.hits += 1;
                            t.correct += u64::from(first == Some(u64::from(id)));
                        }
                    }
                    Ok((503, v)) if v["e"].as_str() == Some("SearchTimeout") => t.timeouts += 1,
                    Ok((503, _)) => t.shed += 1,
                    _ => t.errors += 1,
                }
            }
            (hist, t)
        }));
    }
    let mut hist = measure::histogram();
    let mut total = Tally::default();
    for task in tasks {
        let (h, t) = task.await?;
        hist.add(h)?;
        total.hits += t.hits;
        total.correct += t.correct;
        total.miss_queries += t.miss_queries;
        total.miss_answers += t.miss_answers;
        total.timeouts += t.timeouts;
        total.shed += t.shed;
        total.errors += t.errors;
    }
    let secs = started.elapsed().as_secs_f64();
    let [p50_ms, p99_ms, p999_ms, max_ms] = measure::percentiles(&hist);
    Ok(SearchResult {
        queries: hist.len(),
        clients,
        spec,
        corpus: n,
        qps: hist.len() as f64 / secs,
        p50_ms,
        p99_ms,
        p999_ms,
        max_ms,
        recall_at_1: total.correct as f64 / total.hits.max(1) as f64,
        miss_answers: total.miss_answers,
        miss_queries: total.miss_queries,
        timeouts: total.timeouts,
        shed: total.shed,
        errors: total.errors,
    })
}
