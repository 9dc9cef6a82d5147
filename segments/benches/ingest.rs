//! The CPU an ingest spends outside the write path: building a memory segment
//! from a group of 1,000 fingerprints x 120 hashes, and merging memory segments
//! (memory merges and checkpoints). `merge/heap` is the cursor-and-heap merge
//! every segment kind supports; `merge/chunked` the one memory segments use.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, black_box, criterion_group, criterion_main};
use fpnode_segments::durable::Fs;
use fpnode_segments::file_segment::{FileSegment, FileSegmentWriter, OpenOptions};
use fpnode_segments::memory_segment::build;
use fpnode_segments::merge::{merge_cursors, merge_postings};
use fpnode_segments::segment::Segment;
use fpnode_segments::snapshot::SegmentView;
use fpnode_segments::{Batch, Change, Position, SegmentId};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use roaring::RoaringBitmap;

const GROUP: u32 = 1000;

fn group(rng: &mut Xoshiro256PlusPlus, n: u32) -> Batch {
    let changes = (1..=GROUP)
        .map(|i| Change::Insert {
            id: n * GROUP + i,
            hashes: (0..120).map(|_| rng.r#gen::<u32>()).collect(),
        })
        .collect();
    Batch::new(Position(u64::from(n) + 1), changes)
}

fn bench(c: &mut Criterion) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let batch = group(&mut rng, 0);
    c.bench_function("build/1000x120", |b| {
        b.iter(|| black_box(build(SegmentId(1), &batch).unwrap()))
    });

    let mut g = c.benchmark_group("merge");
    g.sample_size(10);
    for k in [4u32, 8, 24] {
        let views: Vec<SegmentView> = (0..k)
            .map(|n| SegmentView {
                segment: Arc::new(build(SegmentId(u64::from(n)), &group(&mut rng, n)).unwrap()),
                shadowed: Arc::new(RoaringBitmap::new()),
            })
            .collect();
        let total = u64::from(k * GROUP * 120);
        g.throughput(criterion::Throughput::Elements(total));
        g.bench_with_input(BenchmarkId::new("heap", k), &views, |b, views| {
            b.iter(|| {
                let mut out = Vec::with_capacity(total as usize);
                black_box(merge_cursors(views, &mut out).unwrap())
            })
        });
        g.bench_with_input(BenchmarkId::new("chunked", k), &views, |b, views| {
            b.iter(|| {
                let mut out = Vec::with_capacity(total as usize);
                black_box(merge_postings(views, &mut out).unwrap())
            })
        });
    }
    // File segments (a file merge): blocks decoded into each run's buffer.
    let dir = tempfile::tempdir().unwrap();
    {
        let k = 10u32;
        let views: Vec<SegmentView> = (0..k)
            .map(|n| {
                let mem = build(SegmentId(u64::from(n)), &group(&mut rng, n)).unwrap();
                let info = mem.info;
                let mut w =
                    FileSegmentWriter::create(dir.path(), info.id, Fs::default(), 0).unwrap();
                for p in mem.cursor() {
                    w.push(p.unwrap()).unwrap();
                }
                let (path, _, _) = w
                    .finish(&mem.docs, info.min_position, info.max_position)
                    .unwrap();
                let file = FileSegment::open(&path, Some(info.id), OpenOptions::default()).unwrap();
                SegmentView {
                    segment: Arc::new(Segment::file(file)),
                    shadowed: Arc::new(RoaringBitmap::new()),
                }
            })
            .collect();
        let total = u64::from(k * GROUP * 120);
        g.throughput(criterion::Throughput::Elements(total));
        g.bench_with_input(BenchmarkId::new("files-heap", k), &views, |b, views| {
            b.iter(|| {
                let mut out = Vec::with_capacity(total as usize);
                black_box(merge_cursors(views, &mut out).unwrap())
            })
        });
        g.bench_with_input(BenchmarkId::new("files-chunked", k), &views, |b, views| {
            b.iter(|| {
                let mut out = Vec::with_capacity(total as usize);
                black_box(merge_postings(views, &mut out).unwrap())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
