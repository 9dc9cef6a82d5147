//! Search cost against segment count (issue 15's "1 and 40 segments of the
//! same corpus differ by < 2x"): 1M fingerprints x 120 uniform hashes
//! (120M postings) built once as 1 file segment and once as 40, then the
//! same 20,000 queries (stored fingerprints with 30% of their hashes
//! replaced) through `Snapshot::search` on each, one thread, warm page
//! cache. Prints p50 / p99 / p99.9 per query and the ratio. Not a criterion
//! bench: the target is about the tail.
//!   cargo bench -p fpnode-segments --bench segment_count
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use fpnode_segments::bulk::{BulkBuilder, BulkOptions};
use fpnode_segments::index::IndexOptions;
use fpnode_segments::search::SearchOptions;
use fpnode_segments::{Generation, Index, Position};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const N: u32 = 1_000_000;
const HASHES: usize = 120;
const QUERIES: usize = 20_000;

fn fingerprint(id: u32) -> Vec<u32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(u64::from(id));
    (0..HASHES).map(|_| rng.r#gen()).collect()
}

/// The corpus as `runs_per_segment`-run segments of `run_postings` each.
fn build(dir: &std::path::Path, run_postings: usize, runs_per_segment: usize) -> Index {
    let opts = BulkOptions {
        run_postings,
        runs_per_segment,
        ..BulkOptions::default()
    };
    let mut b = BulkBuilder::new(dir, Generation(1), Position(1), opts).unwrap();
    for id in 1..=N {
        b.add(id, &fingerprint(id)).unwrap();
    }
    b.finish().unwrap();
    Index::open(dir, IndexOptions::default()).unwrap()
}

fn main() {
    let postings = N as usize * HASHES;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let queries: Vec<(u32, Vec<u32>)> = (0..QUERIES)
        .map(|_| {
            let id = rng.gen_range(1..=N);
            let mut q = fingerprint(id);
            for h in q.iter_mut() {
                if rng.gen_bool(0.3) {
                    *h = rng.r#gen();
                }
            }
            (id, q)
        })
        .collect();
    let mut p99s = Vec::new();
    // One segment: every run merged into it; forty: two runs each.
    for (want, run_postings, runs_per_segment) in
        [(1, postings / 60 + 1, 64), (40, postings / 80 + 1, 2)]
    {
        let dir = tempfile::tempdir().unwrap();
        let index = build(dir.path(), run_postings, runs_per_segment);
        let snap = index.snapshot();
        let segments = snap.segments.len();
        for s in &snap.segments {
            s.segment.as_file().unwrap().verify_all().unwrap();
        }
        let opts = SearchOptions::default();
        let mut hist: Histogram<u64> = Histogram::new(3).unwrap();
        let mut found = 0;
        // A warm-up pass, then the measured one.
        for pass in 0..2 {
            for (id, q) in &queries {
                let t = Instant::now();
                let hits = snap.search(q, &opts).unwrap();
                if pass == 1 {
                    hist.record(t.elapsed().as_nanos() as u64).unwrap();
                    found += usize::from(hits.first().is_some_and(|h| h.id == *id));
                }
            }
        }
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{segments} segments (asked {want}): p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, mean {:.1} us; recall@1 {:.2}%",
            us(0.5),
            us(0.99),
            us(0.999),
            hist.mean() / 1000.0,
            found as f64 * 100.0 / QUERIES as f64
        );
        p99s.push(us(0.99));
    }
    println!(
        "p99 ratio, 40 segments / 1: {:.2}x (target < 2x)",
        p99s[1] / p99s[0]
    );
}
