//! Decoding one 128-posting block with the widths a 10M-fingerprint corpus of
//! uniform hashes produces (~5-bit hash deltas, 24-bit ids).
#![allow(clippy::unwrap_used)]

use bitpacking::{BitPacker, BitPacker4x};
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use fpnode_segments::block::{self, BLOCK_LEN, DecodedBlock};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

fn bench(c: &mut Criterion) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let mut hashes = [0u32; BLOCK_LEN];
    let mut h = rng.r#gen::<u32>() >> 1;
    for x in hashes.iter_mut() {
        h += rng.gen_range(0..8);
        *x = h;
    }
    let ids: [u32; BLOCK_LEN] = std::array::from_fn(|_| rng.gen_range(1..10_000_000));
    let packer = BitPacker4x::new();
    let mut bytes = Vec::new();
    block::encode(&packer, &hashes, &ids, &mut bytes);
    let mut out = DecodedBlock::default();
    let mut g = c.benchmark_group("block");
    g.throughput(Throughput::Elements(BLOCK_LEN as u64));
    g.bench_function("decode_128_postings", |b| {
        b.iter(|| {
            block::decode(&packer, black_box(&bytes), hashes[0], BLOCK_LEN, &mut out).unwrap();
            black_box(out.ids[5])
        })
    });
    g.bench_function("encode_128_postings", |b| {
        let mut buf = Vec::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            block::encode(&packer, black_box(&hashes), black_box(&ids), &mut buf)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
