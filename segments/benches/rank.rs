//! Scoring and top-k: turning matched ids into ranked hits. A typical AcoustID
//! query matches ~120 postings; a query full of very frequent hashes (silence,
//! hum) can match hundreds of thousands.
#![allow(clippy::unwrap_used)]

use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use fpnode_segments::search::rank;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("rank");
    for matches in [120usize, 10_000, 1_000_000] {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(matches as u64);
        // One true match with ~84 hits, the rest spread over many ids.
        let mut ids: Vec<u32> = (0..matches.saturating_sub(84))
            .map(|_| rng.gen_range(1..(matches as u32 * 4)))
            .collect();
        ids.extend(std::iter::repeat_n(7u32, 84.min(matches)));
        g.bench_with_input(BenchmarkId::from_parameter(matches), &ids, |b, ids| {
            b.iter(|| black_box(rank(ids.clone(), 6, 10, 40)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
