//! The offline-import step: the corpus, generated here, is piped into
//! `fpnode import` (MessagePack) while a sampler records the import's pace,
//! its peak memory and the disk its data directory takes at its largest.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::corpus::Corpus;
use crate::measure::{dir_bytes, status_kb};
use crate::progress;

#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportResult {
    pub fingerprints: u32,
    pub postings: u64,
    pub seconds: f64,
    pub fingerprints_per_second: f64,
    /// Bytes of the installed index.
    pub index_bytes: u64,
    pub bytes_per_posting: f64,
    /// Largest size of the data directory while the import ran (sorted runs
    /// plus the segments being merged from them).
    pub disk_peak_bytes: u64,
    /// Peak resident memory of the `fpnode import` process (VmHWM).
    pub peak_rss_kb: u64,
    /// Peak anonymous memory of the importer (RssAnon, sampled every 250 ms):
    /// its own buffers, without the pages of the files it maps.
    pub peak_rss_anon_kb: u64,
    /// (seconds since the start, fingerprints read by the importer that second).
    pub timeline: Vec<(f64, f64)>,
    /// (seconds since the start, GB in the data directory) once a second.
    pub disk_timeline: Vec<(f64, f64)>,
    /// (seconds since the start, GB resident in the importer) once a second.
    pub rss_timeline: Vec<(f64, f64)>,
}

impl std::fmt::Display for ImportResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "import: {} fingerprints ({} postings) in {:.1} s = {:.0} fp/s; index {:.2} GB = {:.3} bytes/posting; disk peak {:.2} GB; importer peak RssAnon {:.2} GB (RSS with mapped files {:.2} GB)",
            self.fingerprints,
            self.postings,
            self.seconds,
            self.fingerprints_per_second,
            self.index_bytes as f64 / 1e9,
            self.bytes_per_posting,
            self.disk_peak_bytes as f64 / 1e9,
            self.peak_rss_anon_kb as f64 / 1e6,
            self.peak_rss_kb as f64 / 1e6,
        )
    }
}

/// Knobs passed through to `fpnode import` (its defaults when absent).
#[derive(Debug, Clone, Copy, Default, serde::Deserialize, Serialize)]
pub struct ImportOptions {
    pub run_postings: Option<usize>,
    pub runs_per_segment: Option<usize>,
}

/// Imports fingerprints `1..=n` of `corpus` as index `index` of `data_dir`.
pub fn import(
    corpus: Corpus,
    n: u32,
    binary: &Path,
    data_dir: &Path,
    index: &str,
    opts: ImportOptions,
) -> anyhow::Result<ImportResult> {
    let mut cmd = Command::new(binary);
    cmd.arg("import")
        .arg("--dir")
        .arg(data_dir)
        .args(["--index", index, "--format", "msgpack"]);
    if let Some(p) = opts.run_postings {
        cmd.args(["--run-postings", &p.to_string()]);
    }
    if let Some(r) = opts.runs_per_segment {
        cmd.args(["--runs-per-segment", &r.to_string()]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {} import", binary.display()))?;
    let pid = child.id();
    let stdin = child.stdin.take().context("no stdin")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let stderr = child.stderr.take().context("no stderr")?;
    let started = Instant::now();
    let fed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));

    // Collect the importer's output (its last lines explain a failure).
    let out_reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let err_reader = std::thread::spawn(move || {
        let mut tail = std::collections::VecDeque::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tail.len() == 20 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail.into_iter().collect::<Vec<_>>().join("\n")
    });
    let sampler = {
        let (fed, done, dir) = (fed.clone(), done.clone(), data_dir.to_path_buf());
        std::thread::spawn(move || {
            let bar = progress::bar(u64::from(n), "import");
            let mut s = Samples::default();
            let (mut last_t, mut last_fed) = (Instant::now(), 0u64);
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let disk = dir_bytes(&dir);
                s.disk_peak = s.disk_peak.max(disk);
                s.rss_peak = s.rss_peak.max(status_kb(pid, "VmHWM"));
                s.anon_peak = s.anon_peak.max(status_kb(pid, "RssAnon"));
                let now_fed = fed.load(Ordering::Relaxed);
                bar.set_position(now_fed);
                if last_t.elapsed() >= Duration::from_secs(1) {
                    let t = started.elapsed().as_secs_f64();
                    let rate = (now_fed - last_fed) as f64 / last_t.elapsed().as_secs_f64();
                    s.rate.push((t, rate));
                    s.disk.push((t, disk as f64 / 1e9));
                    s.rss.push((t, status_kb(pid, "RssAnon") as f64 / 1e6));
                    (last_t, last_fed) = (Instant::now(), now_fed);
                }
            }
            bar.finish_and_clear();
            s
        })
    };

    // Feed the corpus; the pipe's back-pressure paces this to the importer.
    let feed = (|| -> anyhow::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, stdin);
        let chunk = 1000;
        let mut first = 1u32;
        while first <= n {
            let last = first.saturating_add(chunk - 1).min(n);
            corpus.write_msgpack(&mut w, first, last)?;
            fed.store(u64::from(last), Ordering::Relaxed);
            if last == n {
                break;
            }
            first = last + 1;
        }
        w.flush()?;
        Ok(())
    })();
    let status = child.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let samples = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    let lines = out_reader.join().unwrap_or_default();
    let errors = err_reader.join().unwrap_or_default();
    if !status.success() {
        bail!("fpnode import failed ({status}):\n{errors}");
    }
    feed.context("feeding the importer")?;
    // "imported N fingerprints (P postings) ..."
    let postings = lines
        .iter()
        .find_map(|l| {
            let rest = l.split_once(" fingerprints (")?.1;
            rest.split_once(' ')?.0.parse::<u64>().ok()
        })
        .with_context(|| format!("no summary from fpnode import: {lines:?}"))?;
    let index_bytes = dir_bytes(&data_dir.join("indexes").join(index));
    Ok(ImportResult {
        fingerprints: n,
        postings,
        seconds,
        fingerprints_per_second: f64::from(n) / seconds,
        index_bytes,
        bytes_per_posting: index_bytes as f64 / postings.max(1) as f64,
        disk_peak_bytes: samples.disk_peak,
        peak_rss_kb: samples.rss_peak,
        peak_rss_anon_kb: samples.anon_peak,
        timeline: samples.rate,
        disk_timeline: samples.disk,
        rss_timeline: samples.rss,
    })
}

/// What the sampler thread saw while the importer ran.
#[derive(Default)]
struct Samples {
    disk_peak: u64,
    rss_peak: u64,
    anon_peak: u64,
    rate: Vec<(f64, f64)>,
    disk: Vec<(f64, f64)>,
    rss: Vec<(f64, f64)>,
}
