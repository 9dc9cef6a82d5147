//! The scale curve: several `run` reports of the same scenario at different
//! corpus sizes, drawn as one chart (bytes/posting, RssAnon, search latency
//! against corpus size) and one Markdown table.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::charts::{self, Axes, Series};

/// The figures of one report that the scale curve shows.
#[derive(Debug, Default)]
struct Point {
    fingerprints: f64,
    import_s: Option<f64>,
    import_fps: Option<f64>,
    bytes_per_posting: Option<f64>,
    disk_peak_gb: Option<f64>,
    ready_ms: Option<f64>,
    rss_anon_mb: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    recall: Option<f64>,
    qps: Option<(f64, u64)>,
    disk_p50: Option<f64>,
    disk_p99: Option<f64>,
}

impl Point {
    /// The figures of two reports at one corpus size: `later`'s where it has
    /// them (e.g. an import, then searches of it re-run with a newer build).
    fn merge(self, later: Point) -> Point {
        Point {
            fingerprints: later.fingerprints,
            import_s: later.import_s.or(self.import_s),
            import_fps: later.import_fps.or(self.import_fps),
            bytes_per_posting: later.bytes_per_posting.or(self.bytes_per_posting),
            disk_peak_gb: later.disk_peak_gb.or(self.disk_peak_gb),
            ready_ms: later.ready_ms.or(self.ready_ms),
            rss_anon_mb: later.rss_anon_mb.or(self.rss_anon_mb),
            p50: later.p50.or(self.p50),
            p99: later.p99.or(self.p99),
            p999: later.p999.or(self.p999),
            recall: later.recall.or(self.recall),
            // Throughput with the most clients, whichever report has it.
            qps: match (self.qps, later.qps) {
                (Some(a), Some(b)) if a.1 > b.1 => Some(a),
                (a, b) => b.or(a),
            },
            disk_p50: later.disk_p50.or(self.disk_p50),
            disk_p99: later.disk_p99.or(self.disk_p99),
        }
    }
}

fn point(report: &Value) -> Point {
    let mut p = Point {
        fingerprints: report["scenario"]["corpus"]["fingerprints"]
            .as_f64()
            .unwrap_or(0.0),
        ..Point::default()
    };
    let empty = Vec::new();
    for o in report["outcomes"].as_array().unwrap_or(&empty) {
        let f = |k: &str| o[k].as_f64();
        match o["kind"].as_str().unwrap_or("") {
            "import" => {
                p.import_s = f("seconds");
                p.import_fps = f("fingerprints_per_second");
                p.bytes_per_posting = f("bytes_per_posting");
                p.disk_peak_gb = f("disk_peak_bytes").map(|b| b / 1e9);
            }
            "start" if p.ready_ms.is_none() => p.ready_ms = f("ready_ms"),
            "measure" => {
                p.rss_anon_mb = f("rss_anon_kb").map(|kb| kb / 1024.0);
                if p.bytes_per_posting.is_none() {
                    p.bytes_per_posting = f("bytes_per_posting");
                }
            }
            "disk" => {
                p.disk_p50 = f("p50_ms");
                p.disk_p99 = f("p99_ms");
            }
            "search" => {
                let clients = o["clients"].as_u64().unwrap_or(1);
                if clients == 1 && p.p50.is_none() {
                    p.p50 = f("p50_ms");
                    p.p99 = f("p99_ms");
                    p.p999 = f("p999_ms");
                    p.recall = f("recall_at_1");
                }
                if p.qps.is_none_or(|(_, c)| clients > c) {
                    p.qps = f("qps").map(|q| (q, clients));
                }
            }
            _ => {}
        }
    }
    p
}

fn cell(v: Option<f64>, unit: &str, digits: usize) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.digits$}{unit}"))
}

pub fn scale(reports: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    if reports.is_empty() {
        bail!("give the report.json files of the runs to compare");
    }
    let mut points = Vec::new();
    for path in reports {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a report", path.display()))?;
        let p = point(&v);
        // Reports of one size are merged, later ones (on the command line)
        // winning figure by figure.
        match points
            .iter()
            .position(|q: &Point| q.fingerprints == p.fingerprints)
        {
            Some(i) => {
                let earlier = points.swap_remove(i);
                points.push(earlier.merge(p));
            }
            None => points.push(p),
        }
    }
    points.sort_by(|a, b| a.fingerprints.total_cmp(&b.fingerprints));
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;

    let mut md = String::from(
        "| fingerprints | import | import rate | bytes/posting | disk peak | restart-to-ready | RssAnon | search p50 / p99 / p99.9 (1 client) | recall@1 | QPS (clients) | disk 4 KiB read p50 / p99 |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for p in &points {
        md.push_str(&format!(
            "| {:.0}M | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} | {} | {} / {} |\n",
            p.fingerprints / 1e6,
            cell(p.import_s.map(|s| s / 60.0), " min", 1),
            cell(p.import_fps, " fp/s", 0),
            cell(p.bytes_per_posting, "", 3),
            cell(p.disk_peak_gb, " GB", 1),
            cell(p.ready_ms.map(|ms| ms / 1000.0), " s", 2),
            cell(p.rss_anon_mb, " MB", 1),
            cell(p.p50, " ms", 2),
            cell(p.p99, " ms", 2),
            cell(p.p999, " ms", 2),
            cell(p.recall.map(|r| r * 100.0), "%", 2),
            p.qps.map_or("-".into(), |(q, c)| format!("{q:.0} ({c})")),
            cell(p.disk_p50, " ms", 3),
            cell(p.disk_p99, " ms", 3),
        ));
    }
    std::fs::write(out.join("scale.md"), &md)?;

    let series = |name: &str, f: &dyn Fn(&Point) -> Option<f64>| Series {
        name: name.to_string(),
        points: points
            .iter()
            .filter_map(|p| Some((p.fingerprints, f(p)?)))
            .collect(),
    };
    let axes = |title, y| Axes {
        title,
        x: "fingerprints (log scale)",
        y,
        log_x: true,
        log_y: false,
    };
    let panels = vec![
        (
            axes("Index size", "bytes per posting"),
            vec![series("bytes/posting", &|p| p.bytes_per_posting)],
        ),
        (
            axes("Node memory", "RssAnon, MB"),
            vec![series("RssAnon", &|p| p.rss_anon_mb)],
        ),
        (
            Axes {
                log_y: true,
                ..axes("Search latency, 1 client", "ms (log scale)")
            },
            vec![
                series("search p50", &|p| p.p50),
                series("search p99", &|p| p.p99),
                series("search p99.9", &|p| p.p999),
                series("disk 4 KiB read p50", &|p| p.disk_p50),
            ],
        ),
    ];
    charts::stacked(&out.join("scale.svg"), &panels)?;
    print!("{md}");
    eprintln!(
        "wrote {} and {}",
        out.join("scale.md").display(),
        out.join("scale.svg").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_gives_its_scale_figures() {
        let report = serde_json::json!({
            "scenario": {"corpus": {"fingerprints": 1000000}},
            "outcomes": [
                {"kind": "import", "seconds": 60.0, "fingerprints_per_second": 16666.0,
                 "bytes_per_posting": 3.6, "disk_peak_bytes": 6.0e8},
                {"kind": "start", "ready_ms": 40.0},
                {"kind": "measure", "rss_anon_kb": 10240.0, "bytes_per_posting": 9.0},
                {"kind": "search", "clients": 1, "p50_ms": 0.3, "p99_ms": 0.5, "p999_ms": 0.7,
                 "recall_at_1": 1.0, "qps": 2000.0},
                {"kind": "search", "clients": 8, "p50_ms": 1.0, "qps": 6000.0}
            ]
        });
        let p = point(&report);
        assert_eq!(p.fingerprints, 1e6);
        assert_eq!(p.bytes_per_posting, Some(3.6), "the import's figure wins");
        assert_eq!(p.rss_anon_mb, Some(10.0));
        assert_eq!(p.p50, Some(0.3), "the 1-client search");
        assert_eq!(p.qps, Some((6000.0, 8)), "the most clients");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.json");
        std::fs::write(&file, report.to_string()).unwrap();
        // A later run of the searches alone, at the same size.
        let later = serde_json::json!({
            "scenario": {"corpus": {"fingerprints": 1000000}},
            "outcomes": [
                {"kind": "search", "clients": 1, "p50_ms": 0.25, "p99_ms": 0.4, "p999_ms": 0.6,
                 "recall_at_1": 1.0, "qps": 2500.0}
            ]
        });
        let later_file = dir.path().join("later.json");
        std::fs::write(&later_file, later.to_string()).unwrap();
        scale(&[file, later_file], dir.path()).unwrap();
        let md = std::fs::read_to_string(dir.path().join("scale.md")).unwrap();
        assert!(md.contains("| 1M | 1.0 min | 16666 fp/s | 3.600 |"), "{md}");
        assert!(md.contains("0.25 ms / 0.40 ms / 0.60 ms"), "{md}");
        assert_eq!(
            md.lines().filter(|l| l.starts_with("| 1M")).count(),
            1,
            "{md}"
        );
        assert!(md.contains("| 6000 (8) |"), "{md}");
        assert!(dir.path().join("scale.svg").exists());
    }
}
