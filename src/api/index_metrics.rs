//! The per-index gauges of `/_metrics` (docs/metrics.md), rendered from the
//! open indexes at each scrape instead of kept in the recorder: an index
//! deleted (or dropped by a replica) leaves no series behind.

use std::fmt::Write;

use fpnode_actors::IndexHandle;

use crate::metrics_catalog;

/// One family's samples: `(labels, value)`.
struct Family {
    name: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str) -> Family {
        Family {
            name,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: String, value: f64) {
        self.samples.push((labels, value));
    }
}

fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Prometheus text for the per-index gauges of `indexes`. Index names are
/// `[A-Za-z0-9_-]` (checked at creation): no label escaping is needed.
pub fn render(indexes: &[std::sync::Arc<IndexHandle>]) -> String {
    let mut docs = Family::new("fpindex_docs");
    let mut version = Family::new("fpindex_version");
    let mut segments = Family::new("fpnode_segments");
    let mut segment_bytes = Family::new("fpnode_segment_bytes");
    let mut memory_postings = Family::new("fpnode_memory_postings");
    let mut permits = Family::new("fpnode_write_permits_available");
    let mut applied = Family::new("fpnode_stream_applied_sequence");
    let mut diverged = Family::new("fpnode_stream_diverged");
    let mut lag = Family::new("fpnode_stream_lag");
    let mut loading = Family::new("fpnode_index_loading");
    let mut since_fetch = Family::new("fpnode_stream_last_fetch_age_seconds");
    for h in indexes {
        let index = format!("index=\"{}\"", h.name);
        let snap = h.index.snapshot();
        let stats = h.index.stats();
        docs.add(index.clone(), snap.num_docs as f64);
        version.add(index.clone(), snap.position.0 as f64);
        segments.add(
            format!("{index},kind=\"memory\""),
            stats.memory_segments as f64,
        );
        segments.add(format!("{index},kind=\"file\""), stats.file_segments as f64);
        segment_bytes.add(index.clone(), stats.file_bytes as f64);
        memory_postings.add(index.clone(), stats.memory_postings as f64);
        permits.add(index.clone(), h.write_permits.available_permits() as f64);
        if let Some(replica) = &h.replica {
            applied.add(index.clone(), snap.position.0 as f64);
            diverged.add(index.clone(), bool_value(replica.diverged().is_some()));
            lag.add(index.clone(), replica.pending() as f64);
            loading.add(index.clone(), bool_value(replica.loading()));
            if let Some(age) = replica.since_last_fetch() {
                since_fetch.add(index, age.as_secs_f64());
            }
        }
    }
    let mut out = String::new();
    for family in [
        docs,
        version,
        segments,
        segment_bytes,
        memory_postings,
        permits,
        applied,
        diverged,
        lag,
        loading,
        since_fetch,
    ] {
        if family.samples.is_empty() {
            continue;
        }
        let help = metrics_catalog::help(family.name).unwrap_or("");
        let _ = writeln!(out, "# HELP {} {help}", family.name);
        let _ = writeln!(out, "# TYPE {} gauge", family.name);
        for (labels, value) in family.samples {
            let _ = writeln!(out, "{}{{{labels}}} {value}", family.name);
        }
        out.push('\n');
    }
    out
}
