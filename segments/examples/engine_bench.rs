//! Whole-engine measurements for docs/benchmarks.md (in-process, no HTTP).
//!
//! ```text
//! engine_bench build  --dir D --fingerprints N [--run-postings P]
//! engine_bench search --dir D --fingerprints N [--queries Q] [--noise 0.3] [--warm]
//! engine_bench ingest --dir D --fingerprints N [--batch 1000]
//! ```
//! The corpus is deterministic: fingerprint `id` has 120 uniform u32 hashes drawn
//! from a generator seeded with `id`, so `search` can rebuild any stored
//! fingerprint without reading it back. Queries replace `noise` of a stored
//! fingerprint's hashes with random ones; recall@1 counts the source id ranked first.
//! `search` runs in a fresh process so RssAnon is not inflated by the build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fpnode_segments::bulk::{BulkBuilder, BulkOptions};
use fpnode_segments::index::IndexOptions;
use fpnode_segments::{Batch, Change, Generation, Index, Position, SearchOptions};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const HASHES: usize = 120;

fn fingerprint(id: u32, out: &mut Vec<u32>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x5eed_0000_0000 ^ u64::from(id));
    out.clear();
    out.extend((0..HASHES).map(|_| rng.r#gen::<u32>()));
}

struct Args {
    cmd: String,
    dir: PathBuf,
    n: u32,
    queries: usize,
    noise: f64,
    batch: usize,
    run_postings: usize,
    warm: bool,
}

fn args() -> Args {
    let mut a = std::env::args().skip(1);
    let cmd = a.next().unwrap_or_default();
    let mut out = Args {
        cmd,
        dir: PathBuf::from("/tmp/fpnode-bench"),
        n: 1_000_000,
        queries: 10_000,
        noise: 0.3,
        batch: 1000,
        run_postings: BulkOptions::default().run_postings,
        warm: false,
    };
    while let Some(k) = a.next() {
        if k == "--warm" {
            out.warm = true;
            continue;
        }
        let v = a.next().unwrap_or_default();
        match k.as_str() {
            "--dir" => out.dir = v.into(),
            "--fingerprints" => out.n = v.parse().unwrap(),
            "--queries" => out.queries = v.parse().unwrap(),
            "--noise" => out.noise = v.parse().unwrap(),
            "--batch" => out.batch = v.parse().unwrap(),
            "--run-postings" => out.run_postings = v.parse().unwrap(),
            _ => panic!("unknown flag {k}"),
        }
    }
    out
}

fn rss_anon_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let m = e.metadata().unwrap();
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}

fn build(a: &Args) {
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir).unwrap();
    let opts = BulkOptions {
        run_postings: a.run_postings,
        ..BulkOptions::default()
    };
    let mut b = BulkBuilder::new(&a.dir, Generation(1), Position(1), opts).unwrap();
    let mut h = Vec::new();
    let t = Instant::now();
    for id in 1..=a.n {
        fingerprint(id, &mut h);
        b.add(id, &h).unwrap();
        if id.is_multiple_of(10_000_000) {
            eprintln!("  {id} fingerprints added, {:.0?}", t.elapsed());
        }
    }
    let r = b.finish().unwrap();
    let secs = r.elapsed.as_secs_f64();
    println!(
        "build: {} fingerprints, {} postings, {} runs, {:.1} s ({:.0} fp/s), segment {} bytes = {:.3} bytes/posting, write amplification {:.2}",
        r.fingerprints,
        r.postings,
        r.runs,
        secs,
        r.fingerprints as f64 / secs,
        r.segment_bytes,
        r.segment_bytes as f64 / r.postings as f64,
        r.bytes_written as f64 / r.segment_bytes as f64
    );
}

fn search(a: &Args) {
    let rss0 = rss_anon_kb();
    let t = Instant::now();
    let index = Index::open(&a.dir, IndexOptions::default()).unwrap();
    let open = t.elapsed();
    let rss_open = rss_anon_kb();
    let snap = index.snapshot();
    if a.warm {
        // Read (and verify) every byte, so the page cache holds the whole index.
        let t = Instant::now();
        for v in &snap.segments {
            if let Some(f) = v.segment.as_file() {
                f.verify_all().unwrap();
            }
        }
        println!(
            "warm: read and verified every segment in {:.1?}",
            t.elapsed()
        );
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(42);
    let mut hist = Histogram::<u64>::new(3).unwrap();
    let mut correct = 0usize;
    let mut h = Vec::new();
    // Warm the page cache and the verified-chunk bits with one pass of queries
    // from a different seed, so the measured pass is "warm page cache".
    let mut warm = Xoshiro256PlusPlus::seed_from_u64(7);
    let t_warm = Instant::now();
    for _ in 0..a.queries {
        let id = warm.gen_range(1..=a.n);
        fingerprint(id, &mut h);
        snap.search(&h, &SearchOptions::default()).unwrap();
    }
    let warm_time = t_warm.elapsed();
    let total = Instant::now();
    for _ in 0..a.queries {
        let id = rng.gen_range(1..=a.n);
        fingerprint(id, &mut h);
        for x in h.iter_mut() {
            if rng.gen_bool(a.noise) {
                *x = rng.r#gen();
            }
        }
        let t = Instant::now();
        let hits = snap.search(&h, &SearchOptions::default()).unwrap();
        hist.record(t.elapsed().as_nanos() as u64).unwrap();
        if hits.first().map(|x| x.id) == Some(id) {
            correct += 1;
        }
    }
    let total = total.elapsed();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "search: {} fingerprints, {} segments, open {:.0?}, {} queries noise {:.0}%: p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us, mean {:.0} us, {:.0} qps single thread; recall@1 {:.2}%; warm-up pass {:.1?}",
        snap.num_docs,
        snap.num_segments(),
        open,
        a.queries,
        a.noise * 100.0,
        us(0.5),
        us(0.99),
        us(0.999),
        hist.max() as f64 / 1000.0,
        hist.mean() / 1000.0,
        a.queries as f64 / total.as_secs_f64(),
        100.0 * correct as f64 / a.queries as f64,
        warm_time
    );
    println!(
        "memory: RssAnon at start {} kB, after open {} kB, after queries {} kB; index on disk {} bytes",
        rss0,
        rss_open,
        rss_anon_kb(),
        dir_bytes(&a.dir)
    );
}

fn ingest(a: &Args) {
    let _ = std::fs::remove_dir_all(&a.dir);
    std::fs::create_dir_all(&a.dir).unwrap();
    let index = Arc::new(Index::create(&a.dir, Generation(1), IndexOptions::default()).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let max_segments = Arc::new(AtomicUsize::new(0));
    // Maintenance as the node's SegmentMerger runs it: checkpoints, memory
    // merges and file merges each on a thread of their own.
    let maintenance: Vec<_> = (0..3)
        .map(|task| {
            let (index, done) = (index.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    let did = match task {
                        0 => index.checkpoint_due() && index.checkpoint().unwrap(),
                        1 => index.merge_memory().unwrap(),
                        _ => index.merge_files().unwrap(),
                    };
                    if !did {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        })
        .collect();
    // A searcher measures latency while ingest and merges run.
    let searcher = {
        let (index, done, max_segments) = (index.clone(), done.clone(), max_segments.clone());
        let n = a.n;
        std::thread::spawn(move || {
            let mut hist = Histogram::<u64>::new(3).unwrap();
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
            let mut h = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let snap = index.snapshot();
                max_segments.fetch_max(snap.num_segments(), Ordering::Relaxed);
                let applied = snap.position.0 as u32;
                if applied == 0 {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                let id = rng.gen_range(1..=applied.min(n));
                fingerprint(id, &mut h);
                let t = Instant::now();
                snap.search(&h, &SearchOptions::default()).unwrap();
                hist.record(t.elapsed().as_nanos() as u64).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
            hist
        })
    };
    let t = Instant::now();
    let mut next = 1u32;
    let mut pos = 0u64;
    let mut h = Vec::new();
    let mut stalls = 0u64;
    while next <= a.n {
        let end = (next + a.batch as u32 - 1).min(a.n);
        let changes = (next..=end)
            .map(|id| {
                fingerprint(id, &mut h);
                Change::Insert {
                    id,
                    hashes: h.clone(),
                }
            })
            .collect();
        // Position = last id in the batch, so the searcher knows what is applied.
        pos = pos.max(u64::from(end));
        let batch = Batch::new(Position(pos), changes);
        loop {
            match index.apply(std::slice::from_ref(&batch)) {
                Ok(_) => break,
                Err(fpnode_segments::Error::WriteStall { .. }) => stalls += 1,
                Err(e) => panic!("{e}"),
            }
        }
        next = end + 1;
        if end.is_multiple_of(1_000_000) {
            let s = index.stats();
            eprintln!(
                "  {end} ingested in {:.0?}: {} memory + {} file segments",
                t.elapsed(),
                s.memory_segments,
                s.file_segments
            );
        }
    }
    let ingest_time = t.elapsed();
    done.store(true, Ordering::Relaxed);
    for t in maintenance {
        t.join().unwrap();
    }
    let hist = searcher.join().unwrap();
    let s = index.stats();
    let c = &index.counters;
    let written = c.segment_bytes_written.load(Ordering::Relaxed);
    println!(
        "ingest: {} fingerprints in batches of {} in {:.1} s = {:.0} fp/s; max segments seen {}; at end {} memory + {} file segments, {} file bytes; {} checkpoints, {} memory merges, {} file merges; segment bytes written {} = write amplification {:.2} (segments only, WAL excluded); stalled apply calls {}; stall time {:.1} s",
        a.n,
        a.batch,
        ingest_time.as_secs_f64(),
        f64::from(a.n) / ingest_time.as_secs_f64(),
        max_segments.load(Ordering::Relaxed),
        s.memory_segments,
        s.file_segments,
        s.file_bytes,
        c.checkpoints.load(Ordering::Relaxed),
        c.memory_merges.load(Ordering::Relaxed),
        c.file_merges.load(Ordering::Relaxed),
        written,
        written as f64 / s.file_bytes.max(1) as f64,
        stalls,
        c.stall_micros.load(Ordering::Relaxed) as f64 / 1e6,
    );
    println!(
        "search during ingest: {} queries, p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        hist.len(),
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0
    );
}

fn main() {
    let a = args();
    match a.cmd.as_str() {
        "build" => build(&a),
        "search" => search(&a),
        "ingest" => ingest(&a),
        _ => eprintln!("usage: engine_bench build|search|ingest --dir D --fingerprints N"),
    }
}
