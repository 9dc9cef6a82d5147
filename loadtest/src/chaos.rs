//! The chaos step: writers insert new fingerprints while the node and the
//! nats-server are killed (SIGKILL) and restarted in turn; afterwards every
//! fingerprint the node acknowledged must be found by a search. An
//! acknowledged write that is missing is a lost write, and fails the run.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::cluster::{NatsProcess, NodeProcess};
use crate::corpus::Corpus;
use crate::writes::{WriteLoad, Writers, missing};

/// What the chaos step kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Node,
    Nats,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosResult {
    pub node_kills: u32,
    pub nats_kills: u32,
    pub seconds: f64,
    pub writes: WriteLoad,
    /// Node kill to serving the index again, in ms (p50, max).
    pub node_recovery_ms: [f64; 2],
    /// nats-server kill to the node taking writes again, in ms (p50, max).
    pub nats_recovery_ms: [f64; 2],
    /// Acknowledged fingerprints not found afterwards (should be none).
    pub lost: u64,
    /// The first lost ids, for the investigation.
    pub lost_ids: Vec<u32>,
}

impl std::fmt::Display for ChaosResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chaos: {} node kills, {} nats-server kills in {:.0} s; {}; node back in p50 {:.0} ms max {:.0} ms",
            self.node_kills,
            self.nats_kills,
            self.seconds,
            self.writes,
            self.node_recovery_ms[0],
            self.node_recovery_ms[1],
        )?;
        if self.nats_kills > 0 {
            write!(
                f,
                ", writes taken again after a nats-server kill in p50 {:.0} ms max {:.0} ms",
                self.nats_recovery_ms[0], self.nats_recovery_ms[1]
            )?;
        }
        write!(f, "; acknowledged fingerprints lost: {}", self.lost)
    }
}

/// How the chaos step runs.
pub struct ChaosPlan<'a> {
    pub kills: u32,
    pub targets: &'a [Target],
    /// Writes between one recovery and the next kill.
    pub interval: Duration,
    /// How long a killed process stays down.
    pub down: Duration,
    pub writers: usize,
    pub batch: u32,
}

/// Runs the chaos plan against `node` (and `nats`, if the node follows a
/// stream), then checks every acknowledged write.
pub async fn chaos(
    corpus: Corpus,
    node: &mut NodeProcess,
    mut nats: Option<&mut NatsProcess>,
    index: &str,
    plan: &ChaosPlan<'_>,
    next_id: Arc<AtomicU64>,
) -> anyhow::Result<ChaosResult> {
    if plan.targets.is_empty() {
        bail!("chaos: no targets");
    }
    if plan.targets.contains(&Target::Nats) && nats.is_none() {
        bail!("chaos: killing nats-server needs a [nats] section in the scenario");
    }
    let started = Instant::now();
    let writers = Writers::start(
        corpus,
        &node.url,
        index,
        plan.writers,
        plan.batch,
        None,
        next_id,
    );
    let (mut node_kills, mut nats_kills) = (0u32, 0u32);
    let mut node_back = Histogram::<u64>::new(3)?;
    let mut nats_back = Histogram::<u64>::new(3)?;
    let bar = crate::progress::bar(u64::from(plan.kills), "kills");
    for k in 0..plan.kills {
        tokio::time::sleep(plan.interval).await;
        let target = plan.targets[k as usize % plan.targets.len()];
        let t = Instant::now();
        match (target, nats.as_deref_mut()) {
            (Target::Node, _) => {
                node.kill();
                tokio::time::sleep(plan.down).await;
                node.restart(index).await?;
                node_kills += 1;
                node_back.record(t.elapsed().as_millis() as u64)?;
            }
            (Target::Nats, Some(nats)) => {
                nats.kill();
                tokio::time::sleep(plan.down).await;
                nats.restart()?;
                wait_stream(&node.url, index, false).await?;
                nats_kills += 1;
                nats_back.record(t.elapsed().as_millis() as u64)?;
            }
            (Target::Nats, None) => unreachable!("checked above"),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    tokio::time::sleep(plan.interval).await;
    let written = writers.finish().await?;
    let seconds = started.elapsed().as_secs_f64();
    // Everything acknowledged must be there once the node serves again and
    // (a replica) caught up with the stream. A second look, a few seconds
    // later, rules out a write fetched but not yet applied.
    node.wait_ready(index, Duration::from_secs(300)).await?;
    wait_stream(&node.url, index, true).await?;
    let mut lost_ids = missing(corpus, &node.url, index, &written.acked, 4).await?;
    if !lost_ids.is_empty() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        lost_ids = missing(corpus, &node.url, index, &lost_ids, 4).await?;
    }
    let q = |h: &Histogram<u64>| [h.value_at_quantile(0.5) as f64, h.max() as f64];
    Ok(ChaosResult {
        node_kills,
        nats_kills,
        seconds,
        writes: WriteLoad::new(&written, plan.writers, plan.batch, seconds),
        node_recovery_ms: q(&node_back),
        nats_recovery_ms: q(&nats_back),
        lost: lost_ids.len() as u64,
        lost_ids: lost_ids.into_iter().take(20).collect(),
    })
}

/// Waits until the node's stream connection is back (`GET /:index/_status`
/// shows `stream.connected`) and, with `caught_up`, until it fetched every
/// message of the index (`stream.lag` 0). A standalone node has no stream.
async fn wait_stream(url: &str, index: &str, caught_up: bool) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = client.get(format!("{url}/{index}/_status")).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
        {
            let stream = &v["stream"];
            if stream.is_null()
                || (stream["connected"].as_bool() == Some(true)
                    && (!caught_up || stream["lag"].as_u64() == Some(0)))
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the node did not reconnect to NATS (or catch up) within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
