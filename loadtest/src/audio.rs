//! `fpnode-loadtest audio`: library scanners against `fpnode audio-server`
//! (docs/audio.md, "Load"). C clients each send `POST /fingerprint` for the
//! next file of a library (scripts/gen-audio's, every format) for a while;
//! the server's cache is off so every request decodes. Reports throughput,
//! latency, refusals (503, honoured with the Retry-After wait) and the
//! server's resident memory sampled every second; fails when a request
//! errs, when RSS reaches the limit, or when it keeps growing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::measure::status_kb;

#[derive(Debug, Clone)]
pub struct AudioLoad {
    pub library: PathBuf,
    pub clients: usize,
    pub duration: Duration,
    pub rss_limit_mb: u64,
    pub max_decodes: Option<usize>,
    pub out: PathBuf,
}

struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &Path, library: &Path, max_decodes: Option<usize>) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut cmd = Command::new(binary);
    cmd.args([
        "audio-server",
        "--port",
        &port.to_string(),
        "--audio-cache-entries",
        "0",
    ])
    .arg(format!("--media-root={}", library.display()))
    .stdout(Stdio::null());
    if let Some(n) = max_decodes {
        cmd.arg(format!("--max-decodes={n}"));
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(Server { child, port })
}

fn audio_files(library: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in std::fs::read_dir(library)? {
        let dir = dir?.path();
        if dir.is_dir() {
            for f in std::fs::read_dir(&dir)? {
                files.push(std::fs::canonicalize(f?.path())?);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        bail!(
            "no audio files under {} (make them with scripts/gen-audio)",
            library.display()
        );
    }
    Ok(files)
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    refused: u64,
    errors: Vec<String>,
    latency: Option<Histogram<u64>>,
    audio_seconds: f64,
}

pub async fn run(binary: &Path, load: AudioLoad) -> anyhow::Result<String> {
    let files = Arc::new(audio_files(&load.library)?);
    let server = start(binary, &load.library, load.max_decodes)?;
    let base = format!("http://127.0.0.1:{}", server.port);
    let client = reqwest::Client::new();
    let ready = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{base}/health")).send().await.is_err() {
        if Instant::now() > ready {
            bail!("audio-server did not answer /health");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = server.child.id();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let end = started + load.duration;
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        while Instant::now() < end {
            samples.push((started.elapsed().as_secs_f64(), status_kb(pid, "VmRSS")));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        samples
    });
    let mut tasks = Vec::new();
    for _ in 0..load.clients {
        let (client, base, files, next) =
            (client.clone(), base.clone(), files.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally {
                latency: Histogram::new_with_bounds(1, 600_000_000, 3).ok(),
                ..Tally::default()
            };
            while Instant::now() < end {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let file = &files[i % files.len()];
                let sent = Instant::now();
                let r = client
                    .post(format!("{base}/fingerprint"))
                    .json(&json!({"track_id": i, "filepath": file}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => {
                        let body: serde_json::Value = r.json().await.unwrap_or_default();
                        t.audio_seconds += body["metadata"]["duration_sec"].as_f64().unwrap_or(0.0);
                        t.ok += 1;
                        if let Some(h) = t.latency.as_mut() {
                            let _ = h.record(sent.elapsed().as_micros() as u64);
                        }
                    }
                    Ok(r) if r.status() == 503 => {
                        t.refused += 1;
                        let wait = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok()?.parse().ok())
                            .unwrap_or(1);
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                    }
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        t.errors
                            .push(format!("{}: {status} {body}", file.display()));
                    }
                    Err(e) => t.errors.push(format!("{}: {e}", file.display())),
                }
            }
            t
        }));
    }
    let mut total = Tally {
        latency: Histogram::new_with_bounds(1, 600_000_000, 3).ok(),
        ..Tally::default()
    };
    for task in tasks {
        let t = task.await?;
        total.ok += t.ok;
        total.refused += t.refused;
        total.audio_seconds += t.audio_seconds;
        total.errors.extend(t.errors);
        if let (Some(all), Some(h)) = (total.latency.as_mut(), t.latency.as_ref()) {
            let _ = all.add(h);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let samples = sampler.await?;
    drop(server);
    report(&load, &files, &total, elapsed, &samples)
}

fn report(
    load: &AudioLoad,
    files: &[PathBuf],
    t: &Tally,
    elapsed: f64,
    samples: &[(f64, u64)],
) -> anyhow::Result<String> {
    let quantile = |q: f64| {
        t.latency
            .as_ref()
            .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1000.0)
    };
    let rss_mb = |kb: u64| kb as f64 / 1024.0;
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    // Flat: the peak of the last third is not above the first third's by
    // more than 10% + 16 MB (allocator pools settle in the first minute).
    let third = samples.len() / 3;
    let first = samples[..third.max(1).min(samples.len())]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let last = samples[samples.len().saturating_sub(third.max(1))..]
        .iter()
        .map(|s| s.1)
        .max()
        .unwrap_or(0);
    let mut failures = Vec::new();
    if !t.errors.is_empty() {
        failures.push(format!(
            "{} requests failed, first: {}",
            t.errors.len(),
            t.errors[0]
        ));
    }
    if rss_mb(peak) >= load.rss_limit_mb as f64 {
        failures.push(format!(
            "RSS peaked at {:.0} MB (limit {} MB)",
            rss_mb(peak),
            load.rss_limit_mb
        ));
    }
    if last as f64 > first as f64 * 1.1 + 16.0 * 1024.0 {
        failures.push(format!(
            "RSS grew: {:.0} MB in the first third, {:.0} MB in the last",
            rss_mb(first),
            rss_mb(last)
        ));
    }
    let summary = format!(
        "audio: {} clients for {:.0} s over {} files: {} fingerprinted ({:.1}/s, {:.0} s of audio/s), {} refused with 503, {} errors; latency p50 {:.1} ms p99 {:.1} ms max {:.1} ms; server RSS first third max {:.0} MB, last third max {:.0} MB, peak {:.0} MB",
        load.clients,
        elapsed,
        files.len(),
        t.ok,
        t.ok as f64 / elapsed,
        t.audio_seconds / elapsed,
        t.refused,
        t.errors.len(),
        quantile(0.5),
        quantile(0.99),
        quantile(1.0),
        rss_mb(first),
        rss_mb(last),
        rss_mb(peak),
    );
    std::fs::create_dir_all(&load.out)?;
    let json = json!({
        "clients": load.clients,
        "seconds": elapsed,
        "files": files.len(),
        "ok": t.ok,
        "refused": t.refused,
        "errors": t.errors.len(),
        "per_second": t.ok as f64 / elapsed,
        "audio_seconds_per_second": t.audio_seconds / elapsed,
        "latency_ms": {"p50": quantile(0.5), "p99": quantile(0.99), "max": quantile(1.0)},
        "rss_mb": {"first_third_max": rss_mb(first), "last_third_max": rss_mb(last), "peak": rss_mb(peak)},
        "rss_samples_kb": samples,
        "failures": failures,
    });
    std::fs::write(
        load.out.join("report.json"),
        serde_json::to_vec_pretty(&json)?,
    )?;
    let mut md =
        format!("# audio load\n\n{summary}\n\nRSS every 10 s (MB):\n\n| s | MB |\n| --- | --- |\n");
    for (s, kb) in samples.iter().step_by(10) {
        md.push_str(&format!("| {s:.0} | {:.0} |\n", rss_mb(*kb)));
    }
    if !failures.is_empty() {
        md.push_str(&format!("\nFAILED: {}\n", failures.join("; ")));
    }
    std::fs::write(load.out.join("report.md"), md)?;
    if failures.is_empty() {
        Ok(summary)
    } else {
        bail!("{summary}\nFAILED: {}", failures.join("; "))
    }
}
