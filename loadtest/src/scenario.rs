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
//! kind = "search"        # closed loop
//! queries = 2000
//! clients = 2
//! noise = 0.0            # share of each query's hashes replaced
//! drop = 0.0             # share of each query's hashes dropped
//! misses = 0.0           # share of queries for fingerprints never stored
//! min_recall = 1.0       # fail below this recall@1 (over stored ones)
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::corpus::{Corpus, Distribution};
use crate::{LoadResult, QuerySpec, SearchResult, load, search};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub corpus: CorpusSpec,
    pub steps: Vec<Step>,
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
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DistributionName {
    #[default]
    Uniform,
    Skewed,
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
    Load {
        #[serde(default = "default_batch")]
        batch: u32,
        #[serde(default = "default_clients")]
        clients: usize,
    },
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
    },
}

fn default_batch() -> u32 {
    1000
}

/// One step's outcome, as the report shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Load(LoadResult),
    Search {
        #[serde(flatten)]
        result: SearchResult,
        min_recall: f64,
    },
}

impl Outcome {
    /// Why this step failed the run, if it did.
    fn failure(&self) -> Option<String> {
        match self {
            Outcome::Load(r) if r.errors > 0 => Some(format!("load: {} failed batches", r.errors)),
            Outcome::Search { result, .. } if result.errors > 0 => {
                Some(format!("search: {} failed queries", result.errors))
            }
            Outcome::Search { result, min_recall } if result.recall_at_1 < *min_recall => {
                Some(format!(
                    "search (noise {}, drop {}): recall@1 {:.4} below {min_recall}",
                    result.spec.noise, result.spec.drop, result.recall_at_1
                ))
            }
            _ => None,
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
    pub outcomes: Vec<Outcome>,
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

/// A `fpnode` process with its own data directory, killed when dropped.
struct NodeProcess {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    async fn start(binary: &Path) -> anyhow::Result<NodeProcess> {
        let dir = tempfile::tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(binary)
            .arg("--dir")
            .arg(dir.path())
            .args(["--port", &port.to_string(), "--log", "warn"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let node = NodeProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{}/_health", node.url)).send().await
                && r.status().is_success()
            {
                return Ok(node);
            }
            if Instant::now() > deadline {
                bail!("{} did not answer /_health within 30 s", binary.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Runs `scenario` against a fresh node; writes the reports into `out`.
pub async fn run(scenario: Scenario, binary: &Path, out: &Path) -> anyhow::Result<Report> {
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let corpus = Corpus {
        seed: scenario.corpus.seed,
        hashes: scenario.corpus.hashes,
        distribution: scenario.corpus.distribution(),
    };
    let n = scenario.corpus.fingerprints;
    let node = NodeProcess::start(binary).await?;
    let mut outcomes = Vec::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        eprintln!("[{}/{}] {step:?}", i + 1, scenario.steps.len());
        let outcome = match step {
            Step::Load { batch, clients } => {
                Outcome::Load(load(corpus, &node.url, "main", n, *batch, *clients).await?)
            }
            Step::Search {
                queries,
                clients,
                noise,
                drop,
                misses,
                min_recall,
            } => {
                let spec = QuerySpec {
                    noise: *noise,
                    drop: *drop,
                    misses: *misses,
                };
                Outcome::Search {
                    result: search(corpus, &node.url, "main", n, *queries, *clients, spec).await?,
                    min_recall: *min_recall,
                }
            }
        };
        match &outcome {
            Outcome::Load(r) => eprintln!("  {r}"),
            Outcome::Search { result, .. } => eprintln!("  {result}"),
        }
        outcomes.push(outcome);
    }
    drop(node);
    let failures = outcomes.iter().filter_map(Outcome::failure).collect();
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        fpnode_version: fpnode_version(binary),
        machine: machine(),
        started_unix,
        scenario,
        outcomes,
        failures,
    };
    write_reports(&report, out)?;
    Ok(report)
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
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
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
    s.push_str("| step | result |\n| --- | --- |\n");
    for (i, o) in r.outcomes.iter().enumerate() {
        let text = match o {
            Outcome::Load(l) => l.to_string(),
            Outcome::Search { result, min_recall } => {
                format!("{result} (required recall@1 >= {min_recall})")
            }
        };
        s.push_str(&format!("| {} | {text} |\n", i + 1));
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
