//! What a memory segment's filter saves a search, by segment size: 120-hash
//! queries of random hashes (each absent from the segment, as almost every
//! hash of a query is from a small segment) looked up in memory segments of
//! 10 to 16,000 fingerprints x 120 hashes, through the filter and
//! without it: why every memory segment gets one (docs/benchmarks.md
//! "Ingest with filters").
//!   cargo bench -p fpnode-segments --bench memory_probe
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use fpnode_segments::filter::Probe;
use fpnode_segments::memory_segment::build;
use fpnode_segments::{Batch, Change, Position, SegmentId};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const QUERIES: usize = 20_000;
/// Segments per size, probed round-robin (so they do not all sit in cache).
const SEGMENTS: usize = 8;

fn main() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    println!("fingerprints  postings   no filter us/query   filter us/query");
    for fps in [10u32, 100, 1_000, 2_000, 4_000, 16_000] {
        let segments: Vec<_> = (0..SEGMENTS)
            .map(|s| {
                let changes = (1..=fps)
                    .map(|id| Change::Insert {
                        id,
                        hashes: (0..120).map(|_| rng.r#gen::<u32>()).collect(),
                    })
                    .collect();
                build(SegmentId(s as u64), &Batch::new(Position(1), changes)).unwrap()
            })
            .collect();
        let queries: Vec<Vec<u32>> = (0..QUERIES)
            .map(|_| {
                let mut q: Vec<u32> = (0..120).map(|_| rng.r#gen()).collect();
                q.sort_unstable();
                q
            })
            .collect();
        let mut found = 0u64;
        let t = Instant::now();
        for (i, q) in queries.iter().enumerate() {
            segments[i % SEGMENTS]
                .collect_matches(q, &mut |_| found += 1)
                .unwrap();
        }
        let plain = t.elapsed().as_secs_f64() * 1e6 / QUERIES as f64;
        let mut out = Vec::new();
        let t = Instant::now();
        for (i, q) in queries.iter().enumerate() {
            out.clear();
            let segment = &segments[i % SEGMENTS];
            Probe::new(q).candidates(segment.filter().unwrap(), &mut out);
            segment.collect_matches(&out, &mut |_| found += 1).unwrap();
        }
        let filtered = t.elapsed().as_secs_f64() * 1e6 / QUERIES as f64;
        black_box(found);
        println!(
            "{fps:>12}  {:>8}   {plain:>18.2}   {filtered:>15.2}",
            segments[0].info.num_postings
        );
    }
}
