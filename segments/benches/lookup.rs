//! Looking up a 120-hash query in one file segment of 200k fingerprints x 120
//! uniform hashes (24M postings): the per-segment cost of a search, without
//! ranking. Built once in a temp dir; warm page cache.
#![allow(clippy::unwrap_used)]

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use fpnode_segments::bulk::{BulkBuilder, BulkOptions};
use fpnode_segments::index::IndexOptions;
use fpnode_segments::search::normalize_query;
use fpnode_segments::{Generation, Index, Position};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const N: u32 = 200_000;

fn fingerprint(id: u32) -> Vec<u32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(u64::from(id));
    (0..120).map(|_| rng.r#gen()).collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut b = BulkBuilder::new(
        dir.path(),
        Generation(1),
        Position(1),
        BulkOptions::default(),
    )
    .unwrap();
    for id in 1..=N {
        b.add(id, &fingerprint(id)).unwrap();
    }
    b.finish().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let snap = index.snapshot();
    let segment = &snap.segments[0].segment;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let queries: Vec<Vec<u32>> = (0..256)
        .map(|_| normalize_query(&fingerprint(rng.gen_range(1..=N))))
        .collect();
    // Touch everything once so chunk checksums are verified before measuring.
    segment.as_file().unwrap().verify_all().unwrap();
    let mut i = 0;
    c.bench_function("lookup_120_hashes_one_segment_24m_postings", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            let mut n = 0u32;
            segment
                .collect_matches(black_box(&queries[i]), &mut |id| n = n.wrapping_add(id))
                .unwrap();
            black_box(n)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
