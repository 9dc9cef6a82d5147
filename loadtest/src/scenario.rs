//! Scenarios: what to run, described in `loadtest/scenarios/<name>.toml`, run
//! by `fpnode-loadtest run <name>`. The runner starts a real `fpnode` binary
//! (a temporary data directory, a free port), runs the steps in order against
//! it over HTTP, writes `report.json` and `report.md`, and fails if any step
//! saw an error or missed its recall threshold.
//!
//! ```toml
//! name = "smoke"
//! description = "..."
//! [corpus]
//! fingerprints = 20000
//! hashes = 120
//! seed = 1
//! distribution = "uniform"   # or "skewed", with frequent = 64, share = 0.1
//! [[steps]]
//! kind = "load"          # _update batches over HTTP
//! batch = 1000
//! clients = 2
//! [[steps]]
//! kind = "stream_ingest" # the whole corpus through one _stream request
//! [[steps]]
//! kind = "feed"          # change-feed subscribers while writers insert
//! subscribers = 1000
//! [[steps]]
//! kind = "search"        # closed loop
//! queries = 2000
//! clients = 2
//! noise = 0.0            # share of each query's hashes replaced
//! drop = 0.0             # share of each query's hashes dropped
//! misses = 0.0           # share of queries for fingerprints never stored
//! min_recall = 1.0       # fail below this recall@1 (over stored ones)
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::chaos::{ChaosPlan, ChaosResult, Target, chaos};
use crate::charts::{self, Axes, Series};
use crate::cluster::{NatsProcess, NodeProcess, stream_size};
use crate::corpus::{Corpus, Distribution};
use crate::feed::{FeedPlan, FeedResult, feed};
use crate::import::{ImportOptions, ImportResult};
use crate::measure::{self, DiskResult};
use crate::openloop::{OpenLoopResult, open_loop};
use crate::stream::{StreamResult, stream};
use crate::writes::{FIRST_NEW_ID, WriteLoad, Writers, WritesResult, writes};
use crate::{LoadResult, QuerySpec, SearchResult, load, search};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub corpus: CorpusSpec,
    /// With a `[nats]` section the runner starts a nats-server and the node
    /// is a replica of its stream; without, a standalone node.
    #[serde(default)]
    pub nats: Option<NatsSpec>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSpec {
    /// JetStream's `sync_interval`: `always` (every acknowledged message
    /// fsynced) or a duration such as `2m` (the server's default).
    #[serde(default = "default_sync")]
    pub sync_interval: String,
}

fn default_sync() -> String {
    "always".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusSpec {
    pub fingerprints: u32,
    #[serde(default = "default_hashes")]
    pub hashes: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// `uniform` (default) or `skewed` (with `frequent` and `share`).
    #[serde(default)]
    pub distribution: DistributionName,
    /// Skewed: how many distinct frequent hashes.
    #[serde(default = "default_frequent")]
    pub frequent: u32,
    /// Skewed: the share of hashes that are frequent ones.
    #[serde(default = "default_share")]
    pub share: f64,
    /// Correlated: bits flipped between consecutive hashes.
    #[serde(default = "default_flip")]
    pub flip: u32,
}

fn default_flip() -> u32 {
    2
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DistributionName {
    #[default]
    Uniform,
    Skewed,
    Correlated,
}

fn default_frequent() -> u32 {
    64
}

fn default_share() -> f64 {
    0.1
}

impl CorpusSpec {
    fn distribution(&self) -> Distribution {
        match self.distribution {
            DistributionName::Uniform => Distribution::Uniform,
            DistributionName::Skewed => Distribution::Skewed {
                frequent: self.frequent,
                share: self.share,
            },
            DistributionName::Correlated => Distribution::Correlated { flip: self.flip },
        }
    }
}

fn default_hashes() -> usize {
    120
}

fn default_seed() -> u64 {
    1
}

fn default_clients() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// `_update` batches over HTTP.
    Load {
        #[serde(default = "default_batch")]
        batch: u32,
        #[serde(default = "default_clients")]
        clients: usize,
    },
    /// The whole corpus through one `_stream` request (MessagePack).
    StreamIngest,
    /// `fpnode import` of the whole corpus, offline (stops the node first).
    Import {
        #[serde(default)]
        run_postings: Option<usize>,
        #[serde(default)]
        runs_per_segment: Option<usize>,
    },
    /// (Re)starts the node on its data and times it until it serves the
    /// index; `drop_caches` empties the page cache first (root only).
    Start {
        #[serde(default)]
        drop_caches: bool,
    },
    /// The node's memory (RssAnon, RssFile) and the index's size on disk.
    Measure,
    /// The disk's own random-read latency over the index files (O_DIRECT).
    Disk {
        #[serde(default = "default_reads")]
        reads: u64,
    },
    /// Closed loop: `clients` each send a query once the last is answered.
    Search {
        queries: usize,
        #[serde(default = "default_clients")]
        clients: usize,
        #[serde(default)]
        noise: f64,
        #[serde(default)]
        drop: f64,
        #[serde(default)]
        misses: f64,
        /// Fail the run if recall@1 is below this.
        #[serde(default)]
        min_recall: f64,
        /// Fail the run if more than this share of queries got a 503
        /// (SearchTimeout or shed); none by default.
        #[serde(default)]
        max_refused: f64,
    },
    /// Open loop: queries on a fixed schedule at each rate in turn, latency
    /// from the time each was due.
    OpenLoop {
        rates: Vec<f64>,
        #[serde(default = "default_seconds")]
        seconds: f64,
        #[serde(default)]
        noise: f64,
        #[serde(default)]
        drop: f64,
        #[serde(default)]
        misses: f64,
        #[serde(default = "default_in_flight")]
        max_in_flight: usize,
        #[serde(default)]
        min_recall: f64,
    },
    /// A new, empty replica replays the stream ([nats] only): time to
    /// serving, replay rate, its peak RssAnon, and the stream's size. The
    /// replica stays up as the follower of later `writes` steps.
    Bootstrap,
    /// Single-fingerprint writes of new ids on the node, one at a time per
    /// client: latency until answered and, with a follower (a `bootstrap`
    /// replica), until the follower's search finds them.
    Writes {
        #[serde(default = "default_writes")]
        count: u32,
        #[serde(default = "default_clients")]
        clients: usize,
    },
    /// Closed-loop searches while writers insert new fingerprints.
    Mixed {
        queries: usize,
        #[serde(default = "default_clients")]
        clients: usize,
        #[serde(default)]
        noise: f64,
        #[serde(default = "default_clients")]
        writers: usize,
        #[serde(default = "default_write_batch")]
        batch: u32,
        /// Fingerprints per second the writers insert together (a steady
        /// trickle); as fast as they are answered when absent.
        #[serde(default)]
        rate: Option<f64>,
        #[serde(default)]
        min_recall: f64,
    },
    /// Writers insert new fingerprints while the node and the nats-server
    /// are killed (SIGKILL) and restarted in turn; then every acknowledged
    /// fingerprint must be found.
    Chaos {
        #[serde(default = "default_kills")]
        kills: u32,
        /// `node`, `nats` (needs [nats]); killed in turn.
        #[serde(default = "default_targets")]
        targets: Vec<Target>,
        /// Writing between one recovery and the next kill, in ms.
        #[serde(default = "default_interval_ms")]
        interval_ms: u64,
        /// How long a killed process stays down, in ms.
        #[serde(default = "default_down_ms")]
        down_ms: u64,
        #[serde(default = "default_chaos_writers")]
        writers: usize,
        #[serde(default = "default_write_batch")]
        batch: u32,
    },
    /// Change-feed subscribers (SSE and WebSocket) follow the index while
    /// writers insert; some are cut off and resume. The writers run once
    /// alone first, for the throughput they would have without subscribers.
    Feed {
        subscribers: usize,
        #[serde(default = "default_half")]
        websocket_share: f64,
        #[serde(default = "default_clients")]
        writers: usize,
        #[serde(default = "default_batch")]
        batch: u32,
        #[serde(default = "default_seconds")]
        seconds: f64,
        #[serde(default)]
        kill_share: f64,
        /// Share of subscribers that check each batch's ids and kinds (all
        /// of them by default); every subscriber checks versions.
        #[serde(default = "default_one")]
        contents_share: f64,
        /// Share of subscribers that also ask for hashes and check them.
        #[serde(default)]
        hashes_share: f64,
        /// Fail the run if the writers' throughput with subscribers is below
        /// this share of the one without (none by default).
        #[serde(default)]
        min_throughput_ratio: f64,
    },
}

fn default_one() -> f64 {
    1.0
}

fn default_half() -> f64 {
    0.5
}

fn default_writes() -> u32 {
    2000
}

fn default_write_batch() -> u32 {
    10
}

fn default_kills() -> u32 {
    20
}

fn default_targets() -> Vec<Target> {
    vec![Target::Node]
}

fn default_interval_ms() -> u64 {
    2000
}

fn default_down_ms() -> u64 {
    500
}

fn default_chaos_writers() -> usize {
    4
}

fn default_batch() -> u32 {
    1000
}

fn default_reads() -> u64 {
    5000
}

fn default_seconds() -> f64 {
    10.0
}

fn default_in_flight() -> usize {
    512
}

impl Step {
    fn needs_node(&self) -> bool {
        !matches!(
            self,
            Step::Import { .. } | Step::Disk { .. } | Step::Start { .. } | Step::Bootstrap
        )
    }
}

/// How long a (re)started node took to serve its index.
#[derive(Debug, Clone, Serialize)]
pub struct StartResult {
    pub ready_ms: f64,
    /// Whether the page cache was really dropped before the start.
    pub caches_dropped: bool,
    pub rss_anon_kb: u64,
}

impl std::fmt::Display for StartResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "start: serving the index {:.0} ms after exec ({}); RssAnon {:.1} MB",
            self.ready_ms,
            if self.caches_dropped {
                "page cache dropped"
            } else {
                "page cache as it was"
            },
            self.rss_anon_kb as f64 / 1024.0
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MeasureResult {
    pub rss_anon_kb: u64,
    pub rss_file_kb: u64,
    pub num_docs: u64,
    pub file_bytes: u64,
    /// Index files per posting (fingerprints x hashes).
    pub bytes_per_posting: f64,
    /// The segments a search probes now (`GET /:index/_status`).
    #[serde(default)]
    pub memory_segments: u64,
    #[serde(default)]
    pub file_segments: u64,
}

impl std::fmt::Display for MeasureResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node: RssAnon {:.1} MB, RssFile {:.1} MB; {} fingerprints, segment files {:.2} GB = {:.3} bytes/posting; {} memory + {} file segments",
            self.rss_anon_kb as f64 / 1024.0,
            self.rss_file_kb as f64 / 1024.0,
            self.num_docs,
            self.file_bytes as f64 / 1e9,
            self.bytes_per_posting,
            self.memory_segments,
            self.file_segments
        )
    }
}

/// One step's outcome, as the report shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Load(LoadResult),
    StreamIngest(StreamResult),
    Import(ImportResult),
    Start(StartResult),
    Measure(MeasureResult),
    Disk(DiskResult),
    Search {
        #[serde(flatten)]
        result: SearchResult,
        min_recall: f64,
        max_refused: f64,
    },
    OpenLoop {
        results: Vec<OpenLoopResult>,
        min_recall: f64,
    },
    Bootstrap(BootstrapResult),
    Writes(WritesResult),
    Mixed {
        search: SearchResult,
        writes: WriteLoad,
        min_recall: f64,
    },
    Chaos(ChaosResult),
    Feed {
        #[serde(flatten)]
        result: FeedResult,
        min_throughput_ratio: f64,
    },
}

/// A new replica's replay of the whole stream.
#[derive(Debug, Clone, Serialize)]
pub struct BootstrapResult {
    /// Fingerprints the replica serves once ready.
    pub fingerprints: u64,
    /// Fingerprints the node it replicates serves.
    pub expected: u64,
    /// Process start to `200` on `/:index/_health`.
    pub seconds: f64,
    pub fingerprints_per_second: f64,
    pub peak_rss_anon_kb: u64,
    pub stream_messages: u64,
    pub stream_bytes: u64,
    pub stream_bytes_per_fingerprint: f64,
}

impl std::fmt::Display for BootstrapResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "bootstrap: a new replica replayed {} of {} fingerprints in {:.1} s = {:.0} fp/s (process start to 200 on /main/_health); peak RssAnon {:.0} MB; stream {} messages, {:.2} GB = {:.0} bytes/fingerprint",
            self.fingerprints,
            self.expected,
            self.seconds,
            self.fingerprints_per_second,
            self.peak_rss_anon_kb as f64 / 1024.0,
            self.stream_messages,
            self.stream_bytes as f64 / 1e9,
            self.stream_bytes_per_fingerprint
        )
    }
}

impl Outcome {
    /// Why this step failed the run, if it did.
    fn failures(&self) -> Vec<String> {
        let recall = |what: &str, spec: &QuerySpec, recall: f64, min: f64| {
            (recall < min).then(|| {
                format!(
                    "{what} (noise {}, drop {}): recall@1 {recall:.4} below {min}",
                    spec.noise, spec.drop
                )
            })
        };
        match self {
            Outcome::Load(r) if r.errors > 0 => vec![format!("load: {} failed batches", r.errors)],
            Outcome::Search {
                result,
                min_recall,
                max_refused,
            } => {
                let mut f = Vec::new();
                if result.errors > 0 {
                    f.push(format!("search: {} failed queries", result.errors));
                }
                if result.refused_share() > *max_refused {
                    f.push(format!(
                        "search: {} timed out and {} shed, more than {}",
                        result.timeouts, result.shed, max_refused
                    ));
                }
                f.extend(recall(
                    "search",
                    &result.spec,
                    result.recall_at_1,
                    *min_recall,
                ));
                f
            }
            Outcome::OpenLoop {
                results,
                min_recall,
            } => results
                .iter()
                .filter_map(|r| {
                    let what = format!("open loop at {} QPS", r.offered_qps);
                    if r.errors > 0 {
                        return Some(format!("{what}: {} failed queries", r.errors));
                    }
                    recall(&what, &r.spec, r.recall_at_1, *min_recall)
                })
                .collect(),
            Outcome::Bootstrap(r) if r.fingerprints != r.expected => vec![format!(
                "bootstrap: the replica serves {} fingerprints, the node {}",
                r.fingerprints, r.expected
            )],
            Outcome::Writes(r) if r.errors > 0 => {
                vec![format!("writes: {} failed or never searchable", r.errors)]
            }
            Outcome::Mixed {
                search, min_recall, ..
            } => {
                let mut f = Vec::new();
                if search.errors > 0 {
                    f.push(format!("mixed: {} failed queries", search.errors));
                }
                f.extend(recall(
                    "mixed search",
                    &search.spec,
                    search.recall_at_1,
                    *min_recall,
                ));
                f
            }
            Outcome::Feed {
                result,
                min_throughput_ratio,
            } => {
                let mut f = result.failures();
                if result.throughput_ratio < *min_throughput_ratio {
                    f.push(format!(
                        "feed: writers' throughput with subscribers is {:.0}% of the one without, below {:.0}%",
                        result.throughput_ratio * 100.0,
                        min_throughput_ratio * 100.0
                    ));
                }
                f
            }
            Outcome::Chaos(r) if r.lost > 0 => vec![format!(
                "chaos: {} acknowledged fingerprints lost (first: {:?})",
                r.lost, r.lost_ids
            )],
            Outcome::Chaos(r) if r.writes.acked_fingerprints == 0 => {
                vec!["chaos: no write was acknowledged".to_string()]
            }
            _ => Vec::new(),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Load(r) => r.fmt(f),
            Outcome::StreamIngest(r) => r.fmt(f),
            Outcome::Import(r) => r.fmt(f),
            Outcome::Start(r) => r.fmt(f),
            Outcome::Measure(r) => r.fmt(f),
            Outcome::Disk(r) => r.fmt(f),
            Outcome::Search {
                result,
                min_recall,
                max_refused,
            } => {
                write!(f, "{result} (required recall@1 >= {min_recall}")?;
                if *max_refused > 0.0 {
                    write!(f, ", refused <= {:.2}%", max_refused * 100.0)?;
                }
                write!(f, ")")
            }
            Outcome::OpenLoop {
                results,
                min_recall,
            } => {
                for (i, r) in results.iter().enumerate() {
                    if i > 0 {
                        write!(f, "<br>")?;
                    }
                    r.fmt(f)?;
                }
                write!(f, " (required recall@1 >= {min_recall})")
            }
            Outcome::Bootstrap(r) => r.fmt(f),
            Outcome::Writes(r) => r.fmt(f),
            Outcome::Mixed {
                search,
                writes,
                min_recall,
            } => write!(
                f,
                "mixed: {search} (required recall@1 >= {min_recall}); meanwhile {writes}"
            ),
            Outcome::Chaos(r) => r.fmt(f),
            Outcome::Feed { result, .. } => result.fmt(f),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub command: String,
    pub fpnode_version: String,
    pub machine: Machine,
    pub started_unix: u64,
    pub seconds: f64,
    pub outcomes: Vec<Outcome>,
    pub charts: Vec<String>,
    pub failures: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gb: f64,
    pub kernel: String,
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let memory_gb = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model,
        memory_gb,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
    }
}

pub fn load_scenario(dir: &Path, name: &str) -> anyhow::Result<Scenario> {
    let path = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no scenario {name} ({} not readable)", path.display()))?;
    let scenario: Scenario =
        toml::from_str(&text).with_context(|| format!("scenario {}", path.display()))?;
    Ok(scenario)
}

/// Where a run keeps its node's data: a temporary directory (removed at the
/// end) unless one was given.
pub enum DataDir {
    Temp(tempfile::TempDir),
    Given(PathBuf),
}

impl DataDir {
    pub fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Given(p) => p,
        }
    }
}

const INDEX: &str = "main";

/// Runs `scenario` with `binary` on `data`; writes the reports into `out`.
pub async fn run(
    scenario: Scenario,
    binary: &Path,
    data: DataDir,
    out: &Path,
) -> anyhow::Result<Report> {
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let corpus = Corpus {
        seed: scenario.corpus.seed,
        hashes: scenario.corpus.hashes,
        distribution: scenario.corpus.distribution(),
    };
    let n = scenario.corpus.fingerprints;
    let dir = data.path().to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // With a stream: nats-server's store, the node and any bootstrapped
    // replica side by side in the data directory.
    let mut nats = match &scenario.nats {
        Some(spec) => Some(NatsProcess::start(
            &data.path().join("nats"),
            &spec.sync_interval,
        )?),
        None => None,
    };
    let (dir, node_args) = match &nats {
        Some(nats) => (
            dir.join("node"),
            vec![
                "--mode".to_string(),
                "replica".to_string(),
                "--nats-url".to_string(),
                nats.url(),
            ],
        ),
        None => (dir, Vec::new()),
    };
    let mut node: Option<NodeProcess> = None;
    let mut follower: Option<NodeProcess> = None;
    let next_id = Arc::new(AtomicU64::new(u64::from(FIRST_NEW_ID)));
    let mut outcomes = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        eprintln!("[{}/{}] {step:?}", i + 1, scenario.steps.len());
        if step.needs_node() && node.is_none() {
            node = Some(NodeProcess::start(binary, &dir, INDEX, &node_args).await?);
        }
        let url = node.as_ref().map(|n| n.url.clone()).unwrap_or_default();
        let outcome = match step {
            Step::Load { batch, clients } => {
                Outcome::Load(load(corpus, &url, INDEX, n, *batch, *clients).await?)
            }
            Step::StreamIngest => Outcome::StreamIngest(stream(corpus, &url, INDEX, n).await?),
            Step::Import {
                run_postings,
                runs_per_segment,
            } => {
                if nats.is_some() {
                    bail!("import builds a standalone index: not in a scenario with [nats]");
                }
                if let Some(running) = node.take() {
                    running.stop();
                }
                let opts = ImportOptions {
                    run_postings: *run_postings,
                    runs_per_segment: *runs_per_segment,
                };
                let (binary, dir) = (binary.to_path_buf(), dir.clone());
                let r = tokio::task::spawn_blocking(move || {
                    crate::import::import(corpus, n, &binary, &dir, INDEX, opts)
                })
                .await??;
                Outcome::Import(r)
            }
            Step::Start { drop_caches } => {
                if let Some(running) = node.take() {
                    running.stop();
                }
                let caches_dropped = *drop_caches && measure::drop_caches();
                let t = Instant::now();
                let started = NodeProcess::start(binary, &dir, INDEX, &node_args).await?;
                let ready_ms = t.elapsed().as_secs_f64() * 1000.0;
                let rss_anon_kb = measure::status_kb(started.pid(), "RssAnon");
                node = Some(started);
                Outcome::Start(StartResult {
                    ready_ms,
                    caches_dropped,
                    rss_anon_kb,
                })
            }
            Step::Measure => {
                let pid = node.as_ref().map_or(0, NodeProcess::pid);
                Outcome::Measure(node_measure(&url, pid, corpus.hashes).await?)
            }
            Step::Disk { reads } => {
                let index_dir = dir.join("indexes").join(INDEX);
                let reads = *reads;
                Outcome::Disk(
                    tokio::task::spawn_blocking(move || {
                        measure::random_reads(&index_dir, reads, 7)
                    })
                    .await??,
                )
            }
            Step::Search {
                queries,
                clients,
                noise,
                drop,
                misses,
                min_recall,
                max_refused,
            } => {
                let spec = QuerySpec::new(*noise, *drop, *misses);
                Outcome::Search {
                    result: search(corpus, &url, INDEX, n, *queries, *clients, spec).await?,
                    min_recall: *min_recall,
                    max_refused: *max_refused,
                }
            }
            Step::OpenLoop {
                rates,
                seconds,
                noise,
                drop,
                misses,
                max_in_flight,
                min_recall,
            } => {
                let spec = QuerySpec::new(*noise, *drop, *misses);
                let mut results = Vec::new();
                for &rate in rates {
                    let r = open_loop(corpus, &url, INDEX, n, rate, *seconds, spec, *max_in_flight)
                        .await?;
                    eprintln!("  {r}");
                    results.push(r);
                }
                Outcome::OpenLoop {
                    results,
                    min_recall: *min_recall,
                }
            }
            Step::Bootstrap => {
                let Some(nats) = &nats else {
                    bail!("bootstrap needs a [nats] section");
                };
                if let Some(old) = follower.take() {
                    old.stop();
                }
                let expected = match &node {
                    Some(node) => num_docs(&node.url).await?,
                    None => 0,
                };
                let replica_dir = data.path().join(format!("replica-{}", i + 1));
                let (mut r, replica) =
                    bootstrap(binary, &replica_dir, &node_args, expected, nats).await?;
                // The node may still have been applying the stream's last
                // batches when it was counted (after a chaos step, a batch
                // published by a killed request): compare the two once both
                // are at the same version.
                if let Some(node) = &node {
                    (r.expected, r.fingerprints) = converged_docs(&node.url, &replica.url).await?;
                    if r.expected != r.fingerprints {
                        // Name the fingerprints that differ, for the report.
                        let new = u64::from(FIRST_NEW_ID)..next_id.load(Ordering::Relaxed);
                        let ids = (1..=u64::from(n)).chain(new);
                        for line in differing(&node.url, &replica.url, ids).await {
                            eprintln!("  differs: {line}");
                        }
                    }
                }
                follower = Some(replica);
                Outcome::Bootstrap(r)
            }
            Step::Writes { count, clients } => {
                let first = next_id.fetch_add(u64::from(*count), Ordering::Relaxed);
                let first = u32::try_from(first).context("no new ids left")?;
                let follower = follower.as_ref().map(|f| f.url.clone());
                Outcome::Writes(
                    writes(corpus, &url, INDEX, *count, first, *clients, follower).await?,
                )
            }
            Step::Mixed {
                queries,
                clients,
                noise,
                writers,
                batch,
                rate,
                min_recall,
            } => {
                let t = Instant::now();
                let w = Writers::start(
                    corpus,
                    &url,
                    INDEX,
                    *writers,
                    *batch,
                    *rate,
                    next_id.clone(),
                );
                let spec = QuerySpec::new(*noise, 0.0, 0.0);
                let searched = search(corpus, &url, INDEX, n, *queries, *clients, spec).await;
                let written = w.finish().await?;
                Outcome::Mixed {
                    search: searched?,
                    writes: WriteLoad::new(&written, *writers, *batch, t.elapsed().as_secs_f64()),
                    min_recall: *min_recall,
                }
            }
            Step::Chaos {
                kills,
                targets,
                interval_ms,
                down_ms,
                writers,
                batch,
            } => {
                let Some(node) = node.as_mut() else {
                    bail!("chaos: no node");
                };
                let plan = ChaosPlan {
                    kills: *kills,
                    targets,
                    interval: Duration::from_millis(*interval_ms),
                    down: Duration::from_millis(*down_ms),
                    writers: *writers,
                    batch: *batch,
                };
                Outcome::Chaos(
                    chaos(corpus, node, nats.as_mut(), INDEX, &plan, next_id.clone()).await?,
                )
            }
            Step::Feed {
                subscribers,
                websocket_share,
                writers,
                batch,
                seconds,
                kill_share,
                contents_share,
                hashes_share,
                min_throughput_ratio,
            } => {
                let Some(node) = node.as_ref() else {
                    bail!("feed: no node");
                };
                let plan = FeedPlan {
                    subscribers: *subscribers,
                    websocket_share: *websocket_share,
                    writers: *writers,
                    batch: *batch,
                    seconds: *seconds,
                    kill_share: *kill_share,
                    contents_share: *contents_share,
                    hashes_share: *hashes_share,
                };
                Outcome::Feed {
                    result: feed(corpus, &url, INDEX, node.pid(), &plan, next_id.clone()).await?,
                    min_throughput_ratio: *min_throughput_ratio,
                }
            }
        };
        match &outcome {
            // Each rate was printed as it finished.
            Outcome::OpenLoop { min_recall, .. } => {
                eprintln!("  (required recall@1 >= {min_recall})")
            }
            _ => eprintln!("  {outcome}"),
        }
        outcomes.push(outcome);
    }
    if let Some(running) = follower.take() {
        running.stop();
    }
    if let Some(running) = node.take() {
        running.stop();
    }
    drop(nats);
    drop(data);
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let charts = draw_charts(&outcomes, out)?;
    let failures = outcomes.iter().flat_map(Outcome::failures).collect();
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        fpnode_version: fpnode_version(binary),
        machine: machine(),
        started_unix,
        seconds: started.elapsed().as_secs_f64(),
        scenario,
        outcomes,
        charts,
        failures,
    };
    write_reports(&report, out)?;
    Ok(report)
}

/// The node's `GET /:index/_status`.
async fn status(url: &str) -> anyhow::Result<serde_json::Value> {
    Ok(reqwest::get(format!("{url}/{INDEX}/_status"))
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn num_docs(url: &str) -> anyhow::Result<u64> {
    Ok(status(url).await?["num_docs"].as_u64().unwrap_or(0))
}

/// Up to 10 fingerprint ids (of `ids`) present on one of the node and the
/// replica and not on the other, and how many ids differ in all.
async fn differing(node: &str, replica: &str, ids: impl Iterator<Item = u64>) -> Vec<String> {
    let client = reqwest::Client::new();
    let get = |base: &str, id: u64| {
        let req = client.get(format!("{base}/{INDEX}/{id}"));
        async move {
            // Present or not (a fingerprint's version depends on merges).
            match req.send().await {
                Ok(r) => r.status().as_u16().to_string(),
                Err(e) => format!("error {e}"),
            }
        }
    };
    let mut out = Vec::new();
    let mut differ = 0;
    for id in ids {
        let (a, b) = (get(node, id).await, get(replica, id).await);
        if a != b {
            differ += 1;
            if out.len() < 10 {
                out.push(format!("id {id}: node {a}, replica {b}"));
            }
        }
    }
    out.push(format!("{differ} ids differ"));
    out
}

/// The node's and the replica's fingerprint counts once both are at the
/// same version (they follow one stream: the same version means the same
/// state), waiting up to 60 s for them to get there.
async fn converged_docs(node: &str, replica: &str) -> anyhow::Result<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (n, r) = (status(node).await?, status(replica).await?);
        if n["version"] == r["version"] {
            let docs = |v: &serde_json::Value| v["num_docs"].as_u64().unwrap_or(0);
            return Ok((docs(&n), docs(&r)));
        }
        if Instant::now() > deadline {
            bail!(
                "the node stayed at version {} while the replica reached {}",
                n["version"],
                r["version"]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts an empty replica in `dir` and times it until it serves the index,
/// sampling its RssAnon every 50 ms.
async fn bootstrap(
    binary: &Path,
    dir: &Path,
    args: &[String],
    expected: u64,
    nats: &NatsProcess,
) -> anyhow::Result<(BootstrapResult, NodeProcess)> {
    let _ = std::fs::remove_dir_all(dir);
    let t = Instant::now();
    let replica = NodeProcess::spawn_new(binary, dir, args)?;
    let probe = format!("{}/{INDEX}/_health", replica.url);
    let client = reqwest::Client::new();
    let bar = crate::progress::bar(expected, "replay");
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(4 * 3600);
    loop {
        peak = peak.max(measure::status_kb(replica.pid(), "RssAnon"));
        if let Ok(r) = client.get(&probe).send().await
            && r.status().is_success()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the replica did not serve {INDEX} within 4 hours");
        }
        if let Ok(n) = num_docs(&replica.url).await {
            bar.set_position(n);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let fingerprints = num_docs(&replica.url).await?;
    let (stream_messages, stream_bytes) = stream_size(&nats.url(), STREAM).await?;
    Ok((
        BootstrapResult {
            fingerprints,
            expected,
            seconds,
            fingerprints_per_second: fingerprints as f64 / seconds,
            peak_rss_anon_kb: peak,
            stream_messages,
            stream_bytes,
            stream_bytes_per_fingerprint: stream_bytes as f64 / fingerprints.max(1) as f64,
        },
        replica,
    ))
}

/// fpnode's default stream name (`--stream`).
const STREAM: &str = "fpindex";

async fn node_measure(url: &str, pid: u32, hashes: usize) -> anyhow::Result<MeasureResult> {
    let status = status(url).await?;
    let num_docs = status["num_docs"].as_u64().unwrap_or(0);
    let file_bytes = status["file_bytes"].as_u64().unwrap_or(0);
    Ok(MeasureResult {
        rss_anon_kb: measure::status_kb(pid, "RssAnon"),
        rss_file_kb: measure::status_kb(pid, "RssFile"),
        num_docs,
        file_bytes,
        bytes_per_posting: file_bytes as f64 / (num_docs * hashes as u64).max(1) as f64,
        memory_segments: status["memory_segments"].as_u64().unwrap_or(0),
        file_segments: status["file_segments"].as_u64().unwrap_or(0),
    })
}

/// Throughput over time of the load and import steps, and latency against
/// offered load of each open-loop step; returns the files' names.
fn draw_charts(outcomes: &[Outcome], out: &Path) -> anyhow::Result<Vec<String>> {
    let mut charts = Vec::new();
    let timelines: Vec<Series> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Outcome::Load(r) => Some((i, "load over HTTP", &r.timeline)),
            Outcome::Import(r) => Some((i, "offline import (read rate)", &r.timeline)),
            _ => None,
        })
        .map(|(i, what, t)| Series {
            name: format!("step {}: {what}", i + 1),
            points: t.clone(),
        })
        .collect();
    if !timelines.is_empty() {
        let name = "throughput.svg";
        let axes = Axes {
            title: "Throughput over time",
            x: "seconds since the step started",
            y: "fingerprints/s",
            log_x: false,
            log_y: false,
        };
        charts::line_chart(&out.join(name), &axes, &timelines)?;
        charts.push(name.to_string());
    }
    for (i, o) in outcomes.iter().enumerate() {
        let Outcome::Import(r) = o else { continue };
        let name = format!("import-resources-step{}.svg", i + 1);
        let axes = Axes {
            title: "Offline import: disk and memory over time",
            x: "seconds since the step started",
            y: "GB",
            log_x: false,
            log_y: false,
        };
        let series = [
            Series {
                name: "data directory (runs + segments)".into(),
                points: r.disk_timeline.clone(),
            },
            Series {
                name: "importer RssAnon (without mapped files)".into(),
                points: r.rss_timeline.clone(),
            },
        ];
        charts::line_chart(&out.join(&name), &axes, &series)?;
        charts.push(name);
    }
    for (i, o) in outcomes.iter().enumerate() {
        let Outcome::OpenLoop { results, .. } = o else {
            continue;
        };
        let line = |name: &str, f: fn(&OpenLoopResult) -> f64| Series {
            name: name.to_string(),
            points: results.iter().map(|r| (r.offered_qps, f(r))).collect(),
        };
        let name = format!("latency-step{}.svg", i + 1);
        let axes = |title, y, log_y| Axes {
            title,
            x: "offered queries/s (log scale)",
            y,
            log_x: true,
            log_y,
        };
        let shed = |r: &OpenLoopResult| r.shed as f64 / r.seconds.max(1e-9);
        charts::stacked(
            &out.join(&name),
            &[
                (
                    axes(
                        "Search latency vs offered load (open loop)",
                        "ms from due time (log scale)",
                        true,
                    ),
                    vec![
                        line("p50", |r| r.p50_ms),
                        line("p99", |r| r.p99_ms),
                        line("p99.9", |r| r.p999_ms),
                    ],
                ),
                (
                    axes("Answers and refusals vs offered load", "queries/s", false),
                    vec![
                        line("answered (200)", |r| r.achieved_qps),
                        line("refused (503)", shed),
                    ],
                ),
            ],
        )?;
        charts.push(name);
    }
    Ok(charts)
}

fn fpnode_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn write_reports(report: &Report, out: &Path) -> anyhow::Result<()> {
    let json = out.join("report.json");
    std::fs::write(&json, serde_json::to_vec_pretty(report)?)?;
    let md = out.join("report.md");
    std::fs::write(&md, markdown(report))?;
    eprintln!("reports: {} and {}", json.display(), md.display());
    Ok(())
}

fn markdown(r: &Report) -> String {
    let mut s = format!(
        "# Scenario `{}`\n\n{}\n\n- command: `{}`\n- fpnode: {}\n- machine: {} x {}, {:.1} GB, Linux {}\n- corpus: {} fingerprints x {} hashes (seed {})\n\n",
        r.scenario.name,
        r.scenario.description,
        r.command,
        r.fpnode_version,
        r.machine.cpus,
        r.machine.cpu_model,
        r.machine.memory_gb,
        r.machine.kernel,
        r.scenario.corpus.fingerprints,
        r.scenario.corpus.hashes,
        r.scenario.corpus.seed,
    );
    s.push_str(&format!("Took {:.0} s.\n\n", r.seconds));
    s.push_str("| step | result |\n| --- | --- |\n");
    for (i, o) in r.outcomes.iter().enumerate() {
        s.push_str(&format!("| {} | {o} |\n", i + 1));
    }
    for c in &r.charts {
        s.push_str(&format!("\n![{c}]({c})\n"));
    }
    if r.failures.is_empty() {
        s.push_str("\nPassed.\n");
    } else {
        s.push_str("\n**Failed:**\n\n");
        for f in &r.failures {
            s.push_str(&format!("- {f}\n"));
        }
    }
    s
}

/// Where `fpnode` is: beside this binary (both built into the same target
/// directory), unless given.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("fpnode")))
        .unwrap_or_else(|| PathBuf::from("fpnode"))
}
