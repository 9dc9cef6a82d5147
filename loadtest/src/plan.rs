//! Capacity planning: disk, memory and time for a corpus of N fingerprints,
//! derived from sizes and rates this tool measured (`run` reports), never
//! from guesses. Every figure says which report it came from.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

/// One measured figure and the report (corpus size, scenario) it came from.
#[derive(Debug, Clone)]
struct Measured {
    value: f64,
    source: String,
}

/// The per-unit figures a plan scales.
#[derive(Debug, Default)]
struct Rates {
    hashes: Option<Measured>,
    /// Index bytes per posting (segment files), from the largest import.
    bytes_per_posting: Option<Measured>,
    /// Peak disk of an offline import over the index it built.
    import_disk_ratio: Option<Measured>,
    import_fps: Option<Measured>,
    importer_rss_gb: Option<Measured>,
    /// The serving node's RssAnon (GB) at the largest corpus measured.
    rss_anon_gb: Option<Measured>,
    stream_bytes_per_fp: Option<Measured>,
    replay_fps: Option<Measured>,
    replica_rss_gb: Option<Measured>,
    /// Search p50/p99 (1 client) with the index larger than the page cache
    /// could hold, and the corpus it was measured at.
    cold_search: Option<(f64, f64, String)>,
    ready_ms: Option<Measured>,
}

fn larger(slot: &mut Option<(f64, Measured)>, size: f64, value: Option<f64>, source: &str) {
    if let Some(value) = value
        && slot.as_ref().is_none_or(|(s, _)| size >= *s)
    {
        *slot = Some((
            size,
            Measured {
                value,
                source: source.to_string(),
            },
        ));
    }
}

fn rates(reports: &[(PathBuf, Value)]) -> Rates {
    // For each figure keep the one measured at the largest corpus.
    let mut best: [Option<(f64, Measured)>; 10] = Default::default();
    let mut cold: Option<(f64, (f64, f64, String))> = None;
    for (path, r) in reports {
        let n = r["scenario"]["corpus"]["fingerprints"]
            .as_f64()
            .unwrap_or(0.0);
        // A report is named by its directory (docs/loadtest/<run>/report.json).
        let file = match path.file_name() {
            Some(f) if f == "report.json" => path.parent().and_then(Path::file_name),
            f => f,
        };
        let source = format!(
            "{} at {} ({})",
            r["scenario"]["name"].as_str().unwrap_or("?"),
            human(n),
            file.map_or_else(
                || path.display().to_string(),
                |f| f.to_string_lossy().into_owned()
            )
        );
        larger(
            &mut best[0],
            n,
            r["scenario"]["corpus"]["hashes"].as_f64(),
            &source,
        );
        let empty = Vec::new();
        for o in r["outcomes"].as_array().unwrap_or(&empty) {
            let f = |k: &str| o[k].as_f64();
            match o["kind"].as_str().unwrap_or("") {
                "import" => {
                    larger(&mut best[1], n, f("bytes_per_posting"), &source);
                    let ratio = match (f("disk_peak_bytes"), f("index_bytes")) {
                        (Some(p), Some(i)) if i > 0.0 => Some(p / i),
                        _ => None,
                    };
                    larger(&mut best[2], n, ratio, &source);
                    larger(&mut best[3], n, f("fingerprints_per_second"), &source);
                    larger(
                        &mut best[4],
                        n,
                        f("peak_rss_anon_kb").map(|k| k / 1e6),
                        &source,
                    );
                }
                "measure" => {
                    larger(&mut best[5], n, f("rss_anon_kb").map(|k| k / 1e6), &source);
                    if best[1].is_none() {
                        larger(&mut best[1], n, f("bytes_per_posting"), &source);
                    }
                }
                "bootstrap" => {
                    larger(&mut best[6], n, f("stream_bytes_per_fingerprint"), &source);
                    larger(&mut best[7], n, f("fingerprints_per_second"), &source);
                    larger(
                        &mut best[8],
                        n,
                        f("peak_rss_anon_kb").map(|k| k / 1e6),
                        &source,
                    );
                }
                "start" if o["caches_dropped"].as_bool() == Some(true) => {
                    larger(&mut best[9], n, f("ready_ms"), &source);
                }
                "search" if o["clients"].as_u64() == Some(1) => {
                    if let (Some(p50), Some(p99)) = (f("p50_ms"), f("p99_ms"))
                        && cold.as_ref().is_none_or(|(s, _)| n >= *s)
                    {
                        cold = Some((n, (p50, p99, source.clone())));
                    }
                }
                _ => {}
            }
        }
    }
    let [h, bpp, ratio, ifps, irss, rss, sbytes, rfps, rrss, ready] =
        best.map(|b| b.map(|(_, m)| m));
    Rates {
        hashes: h,
        bytes_per_posting: bpp,
        import_disk_ratio: ratio,
        import_fps: ifps,
        importer_rss_gb: irss,
        rss_anon_gb: rss,
        stream_bytes_per_fp: sbytes,
        replay_fps: rfps,
        replica_rss_gb: rrss,
        cold_search: cold.map(|(_, c)| c),
        ready_ms: ready,
    }
}

/// Memory in GB, or MB below 1 GB.
fn memory(gb: f64) -> String {
    if gb >= 1.0 {
        format!("{gb:.2} GB")
    } else {
        format!("{:.0} MB", gb * 1000.0)
    }
}

fn human(n: f64) -> String {
    if n >= 1e9 {
        format!("{}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{}k", n / 1e3)
    } else {
        format!("{n}")
    }
}

fn duration(seconds: f64) -> String {
    if seconds >= 3600.0 {
        format!("{:.1} h", seconds / 3600.0)
    } else if seconds >= 600.0 {
        format!("{:.0} min", seconds / 60.0)
    } else if seconds >= 60.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{seconds:.0} s")
    }
}

/// Every `report.json` in `paths` (files, or directories searched one level
/// deep).
fn read_reports(paths: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, Value)>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            for e in std::fs::read_dir(p).with_context(|| format!("cannot list {}", p.display()))? {
                let e = e?.path();
                if e.is_dir() && e.join("report.json").is_file() {
                    files.push(e.join("report.json"));
                } else if e.extension().is_some_and(|x| x == "json") {
                    files.push(e);
                }
            }
        } else {
            files.push(p.clone());
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let v: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a report", f.display()))?;
            Ok((f, v))
        })
        .collect()
}

/// The plan for each size in `sizes`, as Markdown.
pub fn plan(sizes: &[u64], reports: &[PathBuf], stream_replicas: u32) -> anyhow::Result<String> {
    let reports = read_reports(reports)?;
    if reports.is_empty() {
        bail!(
            "no reports: run `fpnode-loadtest run 100m-import` and `run 10m-stream` first, or pass their report.json files"
        );
    }
    let r = rates(&reports);
    let Some(bpp) = &r.bytes_per_posting else {
        bail!("no report measured the index size (an import or measure step)");
    };
    let hashes = r.hashes.as_ref().map_or(120.0, |h| h.value);
    let gb = |b: f64| format!("{:.1} GB", b / 1e9);
    let mut rows: Vec<(String, Vec<String>, String)> = Vec::new();
    let mut row =
        |name: &str, f: &dyn Fn(f64) -> Option<String>, source: Option<&Measured>, how: &str| {
            let cells = sizes
                .iter()
                .map(|&n| f(n as f64).unwrap_or_else(|| "-".into()))
                .collect();
            let src = source.map_or("not measured".to_string(), |m| {
                format!("{how} {}", m.source)
            });
            rows.push((name.to_string(), cells, src));
        };
    row(
        "postings",
        &|n| Some(format!("{:.3}G", n * hashes / 1e9)),
        r.hashes.as_ref(),
        "hashes per fingerprint from",
    );
    row(
        "index on disk (segment files)",
        &|n| Some(gb(n * hashes * bpp.value)),
        Some(bpp),
        &format!("{:.3} bytes/posting from", bpp.value),
    );
    row(
        "free disk for an offline import (peak)",
        &|n| {
            r.import_disk_ratio
                .as_ref()
                .map(|m| gb(n * hashes * bpp.value * m.value))
        },
        r.import_disk_ratio.as_ref(),
        &format!(
            "{:.2}x the index, from",
            r.import_disk_ratio.as_ref().map_or(0.0, |m| m.value)
        ),
    );
    row(
        "offline import time (2 cores)",
        &|n| r.import_fps.as_ref().map(|m| duration(n / m.value)),
        r.import_fps.as_ref(),
        &format!(
            "{:.0} fp/s from",
            r.import_fps.as_ref().map_or(0.0, |m| m.value)
        ),
    );
    row(
        "node RssAnon (process memory, not the page cache)",
        &|_| r.rss_anon_gb.as_ref().map(|m| memory(m.value)),
        r.rss_anon_gb.as_ref(),
        "does not grow with the corpus (measured at 1M-100M); largest:",
    );
    row(
        "page cache to hold the whole index (for RAM-speed searches)",
        &|n| Some(gb(n * hashes * bpp.value)),
        Some(bpp),
        "= the index; less works, at disk-read latency: see below. From",
    );
    row(
        "stream on disk, per NATS server",
        &|n| r.stream_bytes_per_fp.as_ref().map(|m| gb(n * m.value)),
        r.stream_bytes_per_fp.as_ref(),
        &format!(
            "{:.0} bytes/fingerprint from",
            r.stream_bytes_per_fp.as_ref().map_or(0.0, |m| m.value)
        ),
    );
    row(
        &format!("stream on disk, all {stream_replicas} NATS servers (R={stream_replicas})"),
        &|n| {
            r.stream_bytes_per_fp
                .as_ref()
                .map(|m| gb(n * m.value * f64::from(stream_replicas)))
        },
        r.stream_bytes_per_fp.as_ref(),
        "the same, times R;",
    );
    row(
        "new replica's bootstrap (stream replay, 2 cores)",
        &|n| r.replay_fps.as_ref().map(|m| duration(n / m.value)),
        r.replay_fps.as_ref(),
        &format!(
            "{:.0} fp/s from",
            r.replay_fps.as_ref().map_or(0.0, |m| m.value)
        ),
    );
    row(
        "replica RssAnon during a bootstrap",
        &|_| r.replica_rss_gb.as_ref().map(|m| memory(m.value)),
        r.replica_rss_gb.as_ref(),
        "bounded (does not hold the stream); largest:",
    );
    let mut s = String::from("| | ");
    s.push_str(
        &sizes
            .iter()
            .map(|&n| human(n as f64))
            .collect::<Vec<_>>()
            .join(" | "),
    );
    s.push_str(" | derived from |\n|---|");
    s.push_str(&"---|".repeat(sizes.len() + 1));
    s.push('\n');
    for (name, cells, src) in rows {
        s.push_str(&format!("| {name} | {} | {src} |\n", cells.join(" | ")));
    }
    s.push('\n');
    if let Some((p50, p99, src)) = &r.cold_search {
        s.push_str(&format!(
            "Search latency measured at the largest corpus (1 client, 30% of hashes replaced): p50 {p50:.2} ms, p99 {p99:.2} ms ({src}).\n"
        ));
    }
    if let Some(m) = &r.ready_ms {
        s.push_str(&format!(
            "Restart to serving with an empty page cache: {:.0} ms ({}).\n",
            m.value, m.source
        ));
    }
    if let Some(m) = &r.importer_rss_gb {
        s.push_str(&format!(
            "The offline importer's peak RssAnon: {} ({}).\n",
            memory(m.value),
            m.source
        ));
    }
    Ok(s)
}

/// The paths `plan` reads when none are given.
pub fn default_reports() -> Vec<PathBuf> {
    vec![Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/loadtest")).to_path_buf()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_scales_the_measured_figures_and_names_their_source() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let import = serde_json::json!({
            "scenario": {"name": "100m-import", "corpus": {"fingerprints": 1_000_000, "hashes": 120}},
            "outcomes": [
                {"kind": "import", "bytes_per_posting": 4.0, "disk_peak_bytes": 600.0, "index_bytes": 480.0,
                 "fingerprints_per_second": 100_000.0, "peak_rss_anon_kb": 1_000_000.0},
                {"kind": "measure", "rss_anon_kb": 2_000.0, "bytes_per_posting": 4.0},
                {"kind": "search", "clients": 1, "p50_ms": 0.5, "p99_ms": 3.0}
            ]
        });
        let stream = serde_json::json!({
            "scenario": {"name": "10m-stream", "corpus": {"fingerprints": 10_000, "hashes": 120}},
            "outcomes": [
                {"kind": "bootstrap", "stream_bytes_per_fingerprint": 700.0, "fingerprints_per_second": 50_000.0,
                 "peak_rss_anon_kb": 500_000.0}
            ]
        });
        std::fs::write(dir.path().join("a.json"), import.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("b.json"), stream.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        let md = plan(&[10_000_000, 1_000_000_000], &[dir.path().to_path_buf()], 3)
            .unwrap_or_else(|e| panic!("{e}"));
        // 10M x 120 x 4 bytes = 4.8 GB; 1B: 480 GB; import peak 1.25x.
        assert!(
            md.contains("| index on disk (segment files) | 4.8 GB | 480.0 GB |"),
            "{md}"
        );
        assert!(md.contains("| 6.0 GB | 600.0 GB |"), "{md}");
        // 10M at 100k fp/s = 100 s; stream 700 B/fp: 7 GB and 700 GB.
        assert!(md.contains("| 1.7 min | 2.8 h |"), "{md}");
        assert!(md.contains("| 2 MB | 2 MB |"), "{md}");
        assert!(md.contains("| 7.0 GB | 700.0 GB |"), "{md}");
        // Replay at 50k fp/s: 200 s and 5.6 h.
        assert!(md.contains("| 3.3 min | 5.6 h |"), "{md}");
        assert!(md.contains("| 500 MB | 500 MB |"), "{md}");
        assert!(md.contains("100m-import at 1M"), "{md}");
        assert!(md.contains("p50 0.50 ms, p99 3.00 ms"), "{md}");
        assert!(plan(&[1], &[dir.path().join("missing.json")], 1).is_err());
    }
}
