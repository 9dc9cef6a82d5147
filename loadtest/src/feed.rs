//! The `feed` step: many change-feed subscribers (Server-Sent Events and
//! WebSocket, mixed) follow the index while writers insert new fingerprints;
//! some subscribers are cut off mid-run and resume from the last version
//! they got. Measured: whether every subscriber received every acknowledged
//! version exactly once and with the batch's exact contents (its inserts,
//! in order, and for the subscribers that asked for them the hashes the
//! writers sent), the delay from a write's acknowledgement to each
//! delivery, the node's memory per subscriber, and the writers' throughput
//! against the same writers without subscribers (run first).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::corpus::Corpus;
use crate::measure::{histogram, ms, status_kb};
use crate::{Insert, InsertChange, Update, post_msgpack};

#[derive(Debug, Clone)]
pub struct FeedPlan {
    pub subscribers: usize,
    /// Share of subscribers on WebSocket (the rest on SSE).
    pub websocket_share: f64,
    pub writers: usize,
    pub batch: u32,
    /// How long the writers write, in each of the two runs.
    pub seconds: f64,
    /// Share of subscribers cut off once, at a random time, and resumed.
    pub kill_share: f64,
    /// Share of subscribers that check each batch's contents (ids and
    /// kinds); the others check versions only (every subscriber does).
    pub contents_share: f64,
    /// Share of subscribers that also ask for the inserts' hashes and check
    /// them against the corpus.
    pub hashes_share: f64,
}

/// How much of each batch a subscriber checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The version only (each once, none missing).
    Versions,
    /// The version and the batch's ids and kinds.
    Contents,
    /// All that, with the inserts' hashes asked for and compared.
    Hashes,
}

#[derive(Debug, Clone, Serialize)]
pub struct FeedResult {
    pub subscribers: usize,
    pub websocket: usize,
    pub sse: usize,
    pub writers: usize,
    pub batch: u32,
    pub seconds: f64,
    /// Changes per second the writers got acknowledged without subscribers.
    pub baseline_changes_per_second: f64,
    /// The same with every subscriber following.
    pub changes_per_second: f64,
    /// `changes_per_second / baseline_changes_per_second`.
    pub throughput_ratio: f64,
    /// Versions acknowledged while the subscribers followed.
    pub versions: u64,
    /// Subscribers that checked batch contents (ids and kinds), hashes
    /// included or not.
    pub checking_contents: usize,
    /// Of those, subscribers that asked for hashes.
    pub with_hashes: usize,
    /// Subscribers that received every acknowledged version, none twice,
    /// each with the contents the writers sent.
    pub complete: usize,
    /// Batches received whose contents differ from what was written (ids,
    /// kinds, or hashes).
    pub wrong_batches: u64,
    /// What the others missed (the first few).
    pub incomplete: Vec<String>,
    pub duplicates: u64,
    /// Subscribers cut off and resumed from their last version.
    pub resumed: u64,
    /// Deliveries measured (subscribers x versions).
    pub deliveries: u64,
    /// Write acknowledgement to delivery, over every delivery.
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    pub latency_max_ms: f64,
    pub rss_anon_before_kb: u64,
    pub rss_anon_connected_kb: u64,
    pub rss_anon_peak_kb: u64,
    /// (connected - before) / subscribers.
    pub rss_anon_per_subscriber_kb: f64,
}

impl std::fmt::Display for FeedResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "feed: {} subscribers ({} WebSocket, {} SSE, {} cut off and resumed; {} checking contents, {} of them with hashes); {} writers x {} changes: {:.0} changes/s with them vs {:.0} without ({:.0}%); {} versions, {} of {} subscribers got every one with its contents ({} duplicates, {} batches with wrong contents); delivery after the write's answer p50 {:.1} ms p99 {:.1} ms p99.9 {:.1} ms max {:.1} ms over {} deliveries; node RssAnon {} -> {} kB connected ({:.1} kB per subscriber), peak {} kB",
            self.subscribers,
            self.websocket,
            self.sse,
            self.resumed,
            self.checking_contents,
            self.with_hashes,
            self.writers,
            self.batch,
            self.changes_per_second,
            self.baseline_changes_per_second,
            self.throughput_ratio * 100.0,
            self.versions,
            self.complete,
            self.subscribers,
            self.duplicates,
            self.wrong_batches,
            self.latency_p50_ms,
            self.latency_p99_ms,
            self.latency_p999_ms,
            self.latency_max_ms,
            self.deliveries,
            self.rss_anon_before_kb,
            self.rss_anon_connected_kb,
            self.rss_anon_per_subscriber_kb,
            self.rss_anon_peak_kb,
        )?;
        for line in &self.incomplete {
            write!(f, "\n  incomplete: {line}")?;
        }
        Ok(())
    }
}

impl FeedResult {
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        if self.complete < self.subscribers || self.duplicates > 0 || self.wrong_batches > 0 {
            f.push(format!(
                "feed: {} of {} subscribers got every version with its contents ({} duplicates, {} batches with wrong contents)",
                self.complete, self.subscribers, self.duplicates, self.wrong_batches
            ));
        }
        f
    }
}

/// One acknowledged `_update`: its version, when its answer came, and the
/// ids it inserted (`first..first + count`, in that order).
#[derive(Clone, Copy)]
struct Write {
    version: u64,
    at: Instant,
    first: u32,
    count: u32,
}

/// What one writer run acknowledged, by version.
struct Acked {
    versions: Vec<Write>,
    changes: u64,
    seconds: f64,
}

/// Runs the writers on a runtime of their own (one thread), so that the
/// load test's 1,000 subscriber tasks do not delay them: the throughput
/// measured is the node's, not this process's scheduling.
async fn write_apart(
    corpus: Corpus,
    url: &str,
    index: &str,
    plan: &FeedPlan,
    next: &Arc<AtomicU64>,
) -> anyhow::Result<Acked> {
    let (url, index, plan, next) = (
        url.to_string(),
        index.to_string(),
        plan.clone(),
        next.clone(),
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(write_for(&corpus, &url, &index, &plan, &next)));
        let _ = tx.send(result);
    });
    rx.await.context("the writers' thread stopped")?
}

async fn write_for(
    corpus: &Corpus,
    url: &str,
    index: &str,
    plan: &FeedPlan,
    next: &Arc<AtomicU64>,
) -> anyhow::Result<Acked> {
    let client = reqwest::Client::new();
    let target = format!("{url}/{index}/_update");
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(plan.seconds);
    let tasks: Vec<_> = (0..plan.writers.max(1))
        .map(|_| {
            let (client, target, next, corpus, batch) = (
                client.clone(),
                target.clone(),
                next.clone(),
                *corpus,
                plan.batch,
            );
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut changes = 0u64;
                while Instant::now() < until {
                    let first = next.fetch_add(u64::from(batch), Ordering::Relaxed);
                    let first = u32::try_from(first)
                        .ok()
                        .filter(|f| f.checked_add(batch).is_some())
                        .context("the writers ran out of u32 ids")?;
                    let body = Update {
                        c: (first..first + batch)
                            .map(|id| InsertChange {
                                i: Insert {
                                    i: id,
                                    h: corpus.fingerprint(id),
                                },
                            })
                            .collect(),
                    };
                    let (status, answer) = post_msgpack(&client, &target, &body).await?;
                    let at = Instant::now();
                    anyhow::ensure!(status == 200, "a write answered {status}: {answer}");
                    let version = answer
                        .get("version")
                        .or_else(|| answer.get("v"))
                        .and_then(Value::as_u64)
                        .with_context(|| format!("a write answered no version: {answer}"))?;
                    acked.push(Write {
                        version,
                        at,
                        first,
                        count: batch,
                    });
                    changes += u64::from(batch);
                }
                anyhow::Ok((acked, changes))
            })
        })
        .collect();
    let mut all = Acked {
        versions: Vec::new(),
        changes: 0,
        seconds: 0.0,
    };
    for t in tasks {
        let (acked, changes) = t.await??;
        all.versions.extend(acked);
        all.changes += changes;
    }
    all.seconds = started.elapsed().as_secs_f64();
    all.versions.sort_unstable_by_key(|w| w.version);
    Ok(all)
}

/// One change of a batch, as the feed sends it (SSE `data:` and WebSocket
/// `change` messages alike).
#[derive(serde::Deserialize)]
struct FeedChange {
    kind: String,
    id: u32,
    #[serde(default)]
    hashes: Option<Vec<u32>>,
}

/// A batch's contents, summed up against what a write can have sent: the
/// ids `first..first + count` in order, all inserts, with the corpus's
/// hashes when they were asked for and none otherwise. `well_formed` is
/// false when any of that does not hold; `first` and `count` are compared
/// with the writers' record afterwards.
#[derive(Clone, Copy)]
struct Contents {
    first: u32,
    count: u32,
    well_formed: bool,
}

impl Contents {
    fn of(changes: &[FeedChange], hashes: Option<&Corpus>) -> Contents {
        let first = changes.first().map_or(0, |c| c.id);
        let well_formed = changes.iter().enumerate().all(|(k, c)| {
            let id_in_order = u32::try_from(k)
                .ok()
                .and_then(|k| first.checked_add(k))
                .is_some_and(|id| id == c.id);
            let hashes_right = match (hashes, &c.hashes) {
                (Some(corpus), Some(h)) => *h == corpus.fingerprint(c.id),
                (None, None) => true,
                _ => false,
            };
            id_in_order && c.kind == "insert" && hashes_right
        });
        Contents {
            first,
            count: u32::try_from(changes.len()).unwrap_or(u32::MAX),
            well_formed,
        }
    }

    /// Whether these are the contents of write `w`.
    fn of_write(&self, w: &Write) -> bool {
        self.well_formed && self.first == w.first && self.count == w.count
    }
}

/// A batch received: when, and its contents if the subscriber checks them.
#[derive(Clone, Copy)]
struct Received {
    version: u64,
    at: Instant,
    contents: Option<Contents>,
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    /// The last version received: where a resume starts.
    last: u64,
    batches: Vec<Received>,
    duplicates: u64,
    resumed: bool,
    error: Option<String>,
}

impl Seen {
    /// Records a batch received at `at` (taken before its contents were
    /// parsed, so the check does not count as delivery delay).
    fn record(&mut self, version: u64, at: Instant, contents: Option<Contents>) {
        if version <= self.last {
            self.duplicates += 1;
            return;
        }
        self.batches.push(Received {
            version,
            at,
            contents,
        });
        self.last = version;
    }
}

/// An SSE `data:` line's batch.
#[derive(serde::Deserialize)]
struct SseBatch {
    #[serde(default)]
    changes: Vec<FeedChange>,
}

struct Shared {
    client: reqwest::Client,
    url: String,
    ws_url: String,
    index: String,
    /// Subscribers connected at least once.
    connected: AtomicUsize,
    /// The version every subscriber must reach, once the writers stopped.
    target: AtomicU64,
    /// Cut-offs happen only while this is false (during the writes).
    writes_over: AtomicBool,
    /// Set when the subscribers had their time to reach the target: one
    /// still behind stops and reports where it is.
    give_up: AtomicBool,
    /// Where the hashes of inserts come from, for the subscribers that ask.
    corpus: Corpus,
}

/// One subscriber: follows from `since`, resuming after a cut-off from the
/// last version it got, until it reaches the target.
async fn subscriber(
    shared: Arc<Shared>,
    websocket: bool,
    check: Check,
    since: u64,
    cut_after: Option<Duration>,
) -> Seen {
    let mut seen = Seen {
        last: since,
        ..Seen::default()
    };
    let mut first_connection = true;
    let started = Instant::now();
    let mut cut = cut_after;
    loop {
        let deadline = cut.map(|d| started + d);
        let outcome = if websocket {
            follow_ws(&shared, deadline, &mut seen, first_connection, check).await
        } else {
            follow_sse(&shared, deadline, &mut seen, first_connection, check).await
        };
        first_connection = false;
        match outcome {
            Ok(Ended::Reached) => return seen,
            Ok(Ended::GaveUp) => {
                seen.error = Some(format!(
                    "still behind when the time was up: at version {} of {}",
                    seen.last,
                    shared.target.load(Ordering::Acquire)
                ));
                return seen;
            }
            Ok(Ended::Cut) => {
                // Cut off: resume from the last version after a pause.
                seen.resumed = true;
                cut = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                seen.error = Some(format!("{e:#}"));
                return seen;
            }
        }
    }
}

enum Ended {
    Reached,
    Cut,
    GaveUp,
}

/// What a follower does next: take an item, or end its connection.
enum Next<T> {
    Item(T),
    End(Ended),
}

/// The next item of a subscriber's connection, unless it reached the target
/// or its cut-off is due (checked at least every 250 ms).
async fn next_or_end<S: futures::Stream + Unpin>(
    items: &mut S,
    shared: &Shared,
    last: u64,
    deadline: Option<Instant>,
) -> anyhow::Result<Next<S::Item>> {
    loop {
        if last >= shared.target.load(Ordering::Acquire) {
            return Ok(Next::End(Ended::Reached));
        }
        if shared.give_up.load(Ordering::Acquire) {
            return Ok(Next::End(Ended::GaveUp));
        }
        if deadline.is_some_and(|d| Instant::now() >= d)
            && !shared.writes_over.load(Ordering::Acquire)
        {
            return Ok(Next::End(Ended::Cut));
        }
        match tokio::time::timeout(Duration::from_millis(250), items.next()).await {
            Err(_) => continue,
            Ok(None) => anyhow::bail!("the connection ended"),
            Ok(Some(item)) => return Ok(Next::Item(item)),
        }
    }
}

async fn follow_sse(
    shared: &Shared,
    deadline: Option<Instant>,
    seen: &mut Seen,
    first: bool,
    check: Check,
) -> anyhow::Result<Ended> {
    let hashes = check == Check::Hashes;
    let res = shared
        .client
        .get(format!(
            "{}/{}/_changes?hashes={hashes}",
            shared.url, shared.index
        ))
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", seen.last.to_string())
        .send()
        .await
        .context("SSE connect")?;
    anyhow::ensure!(res.status() == 200, "SSE answered {}", res.status());
    if first {
        shared.connected.fetch_add(1, Ordering::AcqRel);
    }
    let mut body = res.bytes_stream();
    let mut pending = Vec::new();
    let (mut id, mut event, mut data) = (None::<u64>, String::new(), String::new());
    loop {
        let chunk = match next_or_end(&mut body, shared, seen.last, deadline).await? {
            Next::Item(chunk) => chunk.context("reading events")?,
            Next::End(ended) => return Ok(ended),
        };
        let at = Instant::now();
        pending.extend_from_slice(&chunk);
        let mut consumed = 0;
        while let Some(len) = pending[consumed..].iter().position(|&b| b == b'\n') {
            let line =
                std::str::from_utf8(&pending[consumed..consumed + len]).context("event text")?;
            consumed += len + 1;
            if line.is_empty() {
                if event == "change"
                    && let Some(v) = id
                {
                    let contents = if check == Check::Versions {
                        None
                    } else {
                        let batch: SseBatch = serde_json::from_str(&data).with_context(|| {
                            format!("a change event's data is not a batch: {data}")
                        })?;
                        Some(Contents::of(
                            &batch.changes,
                            hashes.then_some(&shared.corpus),
                        ))
                    };
                    seen.record(v, at, contents);
                } else if event == "error" {
                    anyhow::bail!("error event: {data}");
                }
                (id, event) = (None, String::new());
                data.clear();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = v.trim().parse().ok();
            } else if let Some(e) = line.strip_prefix("event: ") {
                event = e.trim().to_string();
            }
        }
        pending.drain(..consumed);
    }
}

/// The fields of a WebSocket message every subscriber needs (the changes
/// are skipped, not built).
#[derive(serde::Deserialize)]
struct WsMessage {
    #[serde(rename = "type")]
    kind: String,
    version: Option<u64>,
}

/// A `change` message's changes, for the subscribers that check them.
#[derive(serde::Deserialize)]
struct WsBatch {
    #[serde(default)]
    changes: Vec<FeedChange>,
}

async fn follow_ws(
    shared: &Shared,
    deadline: Option<Instant>,
    seen: &mut Seen,
    first: bool,
    check: Check,
) -> anyhow::Result<Ended> {
    let hashes = check == Check::Hashes;
    let (mut socket, _) = tokio_tungstenite::connect_async(shared.ws_url.as_str())
        .await
        .context("WebSocket connect")?;
    let subscribe = json!({
        "op": "subscribe",
        "index": shared.index,
        "since": seen.last,
        "hashes": hashes,
    });
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await?;
    loop {
        let frame = match next_or_end(&mut socket, shared, seen.last, deadline).await? {
            Next::Item(frame) => frame.context("reading the socket")?,
            Next::End(ended) => {
                if matches!(ended, Ended::Reached) {
                    // A clean close; the run is over for this subscriber
                    // whether or not the server acknowledges it.
                    let _ = socket.close(None).await;
                }
                return Ok(ended);
            }
        };
        let at = Instant::now();
        let Message::Text(text) = frame else {
            continue;
        };
        let m: WsMessage = serde_json::from_str(&text).context("a message is not JSON")?;
        match m.kind.as_str() {
            "subscribed" if first => {
                shared.connected.fetch_add(1, Ordering::AcqRel);
            }
            "change" => {
                let contents = if check == Check::Versions {
                    None
                } else {
                    let batch: WsBatch = serde_json::from_str(&text)?;
                    Some(Contents::of(
                        &batch.changes,
                        hashes.then_some(&shared.corpus),
                    ))
                };
                seen.record(m.version.context("change without a version")?, at, contents)
            }
            "error" => anyhow::bail!("error message {text}"),
            _ => {}
        }
    }
}

pub async fn feed(
    corpus: Corpus,
    url: &str,
    index: &str,
    node_pid: u32,
    plan: &FeedPlan,
    next: Arc<AtomicU64>,
) -> anyhow::Result<FeedResult> {
    // The writers alone first: the baseline.
    let baseline = write_apart(corpus, url, index, plan, &next).await?;
    let rss_before = status_kb(node_pid, "RssAnon");
    let since = baseline.versions.last().map_or(0, |w| w.version);
    let current: Value = reqwest::get(format!("{url}/{index}")).await?.json().await?;
    let since = current["version"].as_u64().unwrap_or(since);
    let port = url.rsplit(':').next().unwrap_or_default();
    let shared = Arc::new(Shared {
        client: reqwest::Client::new(),
        url: url.to_string(),
        ws_url: format!("ws://127.0.0.1:{port}/_changes"),
        index: index.to_string(),
        connected: AtomicUsize::new(0),
        target: AtomicU64::new(u64::MAX),
        writes_over: AtomicBool::new(false),
        give_up: AtomicBool::new(false),
        corpus,
    });
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(7);
    let websocket = (plan.subscribers as f64 * plan.websocket_share).round() as usize;
    let (mut checking_contents, mut with_hashes) = (0, 0);
    let tasks: Vec<_> = (0..plan.subscribers)
        .map(|i| {
            let cut = rng
                .gen_bool(plan.kill_share.clamp(0.0, 1.0))
                .then(|| Duration::from_secs_f64(rng.gen_range(0.1..0.9) * plan.seconds));
            let check = if rng.gen_bool(plan.hashes_share.clamp(0.0, 1.0)) {
                Check::Hashes
            } else if rng.gen_bool(plan.contents_share.clamp(0.0, 1.0)) {
                Check::Contents
            } else {
                Check::Versions
            };
            checking_contents += usize::from(check != Check::Versions);
            with_hashes += usize::from(check == Check::Hashes);
            tokio::spawn(subscriber(shared.clone(), i < websocket, check, since, cut))
        })
        .collect();
    let connect_deadline = Instant::now() + Duration::from_secs(60);
    while shared.connected.load(Ordering::Acquire) < plan.subscribers {
        anyhow::ensure!(
            Instant::now() < connect_deadline,
            "only {} of {} subscribers connected within 60 s",
            shared.connected.load(Ordering::Acquire),
            plan.subscribers
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = status_kb(node_pid, "RssAnon");
    // Sample the node's memory while the writes go on.
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut peak = 0;
            while sampling.load(Ordering::Acquire) {
                peak = status_kb(node_pid, "RssAnon").max(peak);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    };
    let with = write_apart(corpus, url, index, plan, &next).await?;
    shared.writes_over.store(true, Ordering::Release);
    let target = with.versions.last().map_or(since, |w| w.version);
    shared.target.store(target, Ordering::Release);
    // Two minutes in all for every subscriber to reach the last version;
    // one still behind then stops and is counted as incomplete, and one that
    // does not even stop within 10 s more is aborted.
    let give_up = {
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(120)).await;
            shared.give_up.store(true, Ordering::Release);
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(130);
    let mut seen = Vec::new();
    for mut t in tasks {
        match tokio::time::timeout_at(deadline, &mut t).await {
            Ok(s) => seen.push(s?),
            Err(_) => {
                t.abort();
                seen.push(Seen {
                    error: Some("did not stop within 130 s".into()),
                    ..Seen::default()
                })
            }
        }
    }
    give_up.abort();
    sampling.store(false, Ordering::Release);
    let peak = sampler.await?.max(rss_connected);
    // Every acknowledged version, delivered once, to everyone, with the
    // contents its write sent.
    let acked: std::collections::HashMap<u64, Write> =
        with.versions.iter().map(|w| (w.version, *w)).collect();
    let mut latency: Histogram<u64> = histogram();
    let (mut complete, mut incomplete, mut duplicates, mut resumed, mut deliveries) =
        (0, Vec::new(), 0, 0, 0u64);
    let mut wrong_batches = 0u64;
    for (i, s) in seen.iter().enumerate() {
        duplicates += s.duplicates;
        resumed += u64::from(s.resumed);
        let got: std::collections::HashSet<u64> = s.batches.iter().map(|b| b.version).collect();
        let missing = acked.keys().filter(|v| !got.contains(v)).count();
        // Only the writers write: any other version is one nobody made.
        let unexpected = got.iter().filter(|v| !acked.contains_key(v)).count();
        let wrong = s
            .batches
            .iter()
            .filter(|b| {
                acked
                    .get(&b.version)
                    .zip(b.contents)
                    .is_some_and(|(w, c)| !c.of_write(w))
            })
            .count();
        wrong_batches += wrong as u64;
        if missing == 0 && unexpected == 0 && wrong == 0 && s.duplicates == 0 && s.error.is_none() {
            complete += 1;
        } else if incomplete.len() < 10 {
            incomplete.push(format!(
                "subscriber {i} ({}): {missing} versions missing, {unexpected} unexpected, {wrong} with wrong contents, {} duplicates{}",
                if i < websocket { "WebSocket" } else { "SSE" },
                s.duplicates,
                s.error
                    .as_ref()
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default()
            ));
        }
        for b in &s.batches {
            if let Some(w) = acked.get(&b.version) {
                let micros = b.at.saturating_duration_since(w.at).as_micros() as u64;
                latency.record(micros.max(1))?;
                deliveries += 1;
            }
        }
    }
    let rate = |a: &Acked| a.changes as f64 / a.seconds.max(1e-9);
    Ok(FeedResult {
        subscribers: plan.subscribers,
        websocket,
        sse: plan.subscribers - websocket,
        writers: plan.writers,
        batch: plan.batch,
        seconds: plan.seconds,
        baseline_changes_per_second: rate(&baseline),
        changes_per_second: rate(&with),
        throughput_ratio: rate(&with) / rate(&baseline).max(1e-9),
        versions: acked.len() as u64,
        checking_contents,
        with_hashes,
        complete,
        wrong_batches,
        incomplete,
        duplicates,
        resumed,
        deliveries,
        latency_p50_ms: ms(&latency, 0.5),
        latency_p99_ms: ms(&latency, 0.99),
        latency_p999_ms: ms(&latency, 0.999),
        latency_max_ms: latency.max() as f64 / 1000.0,
        rss_anon_before_kb: rss_before,
        rss_anon_connected_kb: rss_connected,
        rss_anon_peak_kb: peak,
        rss_anon_per_subscriber_kb: (rss_connected.saturating_sub(rss_before)) as f64
            / plan.subscribers.max(1) as f64,
    })
}
