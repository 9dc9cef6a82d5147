//! Membership filters for "is this hash in that segment?" (issue 15): the
//! alternatives tried before one went into the segment format, on the shape
//! of the `segment_count` bench's 40-segment case: 40 filters of 3M distinct
//! uniform 32-bit hashes each, probed by 2,000 queries x 120 hashes (every
//! hash against every filter, as a search does). Prints, per kind: build
//! ns per key, bits per key, probe ns, measured false-positive rate. Not a
//! criterion bench: one pass over a working set far larger than the caches
//! is the case that matters.
//!   cargo bench -p fpnode-segments --bench filters
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use xorf::{BinaryFuse8, BinaryFuse16, Filter};

const FILTERS: usize = 40;
const KEYS: usize = 3_000_000;
const QUERIES: usize = 2_000;
const HASHES: usize = 120;

/// The fixed mix fpnode's filter uses, widened for the 64-bit keys here.
fn mix(k: u64) -> u64 {
    fpnode_segments::filter::mix(k as u32)
}

/// One filter kind under test.
trait Probe {
    fn contains(&self, hash: u32) -> bool;
    fn bytes(&self) -> usize;
    /// Probes by a key `mix`ed beforehand, if the kind can.
    fn contains_mixed(&self, _mixed: u64) -> bool {
        unreachable!()
    }
    /// Loads the word a probe for `mixed` will read.
    fn touch(&self, _mixed: u64) -> u32 {
        0
    }
}

impl Probe for BinaryFuse8 {
    fn contains(&self, hash: u32) -> bool {
        Filter::contains(self, &u64::from(hash))
    }
    fn bytes(&self) -> usize {
        self.fingerprints.len()
    }
}

impl Probe for BinaryFuse16 {
    fn contains(&self, hash: u32) -> bool {
        Filter::contains(self, &u64::from(hash))
    }
    fn bytes(&self) -> usize {
        self.fingerprints.len() * 2
    }
}

struct Bloom(fastbloom::BloomFilter);

impl Probe for Bloom {
    fn contains(&self, hash: u32) -> bool {
        self.0.contains_hash(mix(u64::from(hash)))
    }
    fn bytes(&self) -> usize {
        self.0.num_bits() / 8
    }
}

/// A split-block Bloom filter (Parquet's: 256-bit blocks, one bit in each
/// of eight 32-bit words), the one-cache-line design, written out.
struct SplitBlock(Vec<[u32; 8]>);

const SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

impl SplitBlock {
    fn new(keys: &[u32], bits_per_key: usize) -> Self {
        let blocks = (keys.len() * bits_per_key).div_ceil(256).max(1);
        let mut b = SplitBlock(vec![[0; 8]; blocks]);
        for &k in keys {
            let (i, m) = b.locate(k);
            for (w, bit) in b.0[i].iter_mut().zip(m) {
                *w |= bit;
            }
        }
        b
    }
    fn locate(&self, key: u32) -> (usize, [u32; 8]) {
        self.locate_mixed(mix(u64::from(key)))
    }
    /// Block and bits for an already mixed key: the block index grows with
    /// the mixed key, so probes sorted by it walk every filter forwards.
    fn locate_mixed(&self, h: u64) -> (usize, [u32; 8]) {
        let i = (((h >> 32) * self.0.len() as u64) >> 32) as usize;
        let x = h as u32;
        (i, SALT.map(|s| 1u32 << (x.wrapping_mul(s) >> 27)))
    }
}

impl Probe for SplitBlock {
    fn contains(&self, hash: u32) -> bool {
        let (i, m) = self.locate(hash);
        self.0[i]
            .iter()
            .zip(m)
            .fold(true, |all, (w, bit)| all & (w & bit == bit))
    }
    fn bytes(&self) -> usize {
        self.0.len() * 32
    }
}

/// The split-block filter probed in the order of the mixed keys: a query's
/// hashes are mixed and sorted once, then every filter is walked forwards
/// (same mix everywhere), instead of jumping around each one.
struct Ordered(SplitBlock);

impl Probe for Ordered {
    fn contains(&self, mixed: u32) -> bool {
        unreachable!("{mixed}: probed through contains_mixed")
    }
    fn touch(&self, h: u64) -> u32 {
        self.0.0[(((h >> 32) * self.0.0.len() as u64) >> 32) as usize][0]
    }
    fn contains_mixed(&self, h: u64) -> bool {
        let (i, m) = self.0.locate_mixed(h);
        self.0.0[i]
            .iter()
            .zip(m)
            .fold(true, |all, (w, bit)| all & (w & bit == bit))
    }
    fn bytes(&self) -> usize {
        self.0.bytes()
    }
}

/// A register-blocked Bloom filter: each key sets `k` bits of one 64-bit
/// word, chosen by the high half of its mixed value (so probes sorted by it
/// walk forwards), the bits by the low half. One load per probe.
struct Register {
    words: Vec<u64>,
    k: u32,
}

impl Register {
    fn new(keys: &[u32], bits_per_key: usize, k: u32) -> Self {
        let mut r = Register {
            words: vec![0; (keys.len() * bits_per_key).div_ceil(64).max(1)],
            k,
        };
        for &key in keys {
            let h = mix(u64::from(key));
            let i = r.word(h);
            r.words[i] |= r.mask(h);
        }
        r
    }
    fn word(&self, h: u64) -> usize {
        (((h >> 32) * self.words.len() as u64) >> 32) as usize
    }
    fn mask(&self, h: u64) -> u64 {
        (0..self.k).fold(0, |m, i| m | 1 << ((h >> (6 * i)) & 63))
    }
}

impl Probe for Register {
    fn contains(&self, mixed: u32) -> bool {
        unreachable!("{mixed}: probed through contains_mixed")
    }
    fn contains_mixed(&self, h: u64) -> bool {
        let m = self.mask(h);
        self.words[self.word(h)] & m == m
    }
    fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// A presence bitmap over the top bits of the hash itself (no hashing):
/// one bit per prefix, ~16 bits per key.
struct PrefixBitmap {
    shift: u32,
    words: Vec<u64>,
}

impl PrefixBitmap {
    fn new(keys: &[u32]) -> Self {
        let bits = (keys.len() * 16).next_power_of_two().ilog2().min(32);
        let mut m = PrefixBitmap {
            shift: 32 - bits,
            words: vec![0; (1usize << bits).div_ceil(64)],
        };
        for &k in keys {
            let p = (k >> m.shift) as usize;
            m.words[p / 64] |= 1 << (p % 64);
        }
        m
    }
}

impl Probe for PrefixBitmap {
    fn contains(&self, hash: u32) -> bool {
        let p = (hash >> self.shift) as usize;
        self.words[p / 64] & (1 << (p % 64)) != 0
    }
    fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// A BinaryFuse8 whose fingerprints sit in memory advised for transparent
/// huge pages (fewer TLB misses over a working set of 100+ MB).
struct Huge {
    descriptor: Vec<u8>,
    map: memmap2::MmapMut,
}

impl Huge {
    fn new(f: BinaryFuse8) -> Self {
        use xorf::DmaSerializable;
        let mut descriptor = vec![0; BinaryFuse8::DESCRIPTOR_LEN];
        f.dma_copy_descriptor_to(&mut descriptor);
        let fp = f.dma_fingerprints();
        let mut map = memmap2::MmapOptions::new()
            .len(fp.len())
            .map_anon()
            .unwrap();
        map.advise(memmap2::Advice::HugePage).unwrap();
        map.copy_from_slice(fp);
        Huge { descriptor, map }
    }
}

impl Probe for Huge {
    fn contains(&self, hash: u32) -> bool {
        use xorf::FilterRef;
        let f = xorf::BinaryFuse8Ref::from_dma(&self.descriptor, &self.map);
        Filter::contains(&f, &u64::from(hash))
    }
    fn bytes(&self) -> usize {
        self.map.len()
    }
}

fn run<F: Probe>(name: &str, sets: &[Vec<u32>], queries: &[u32], build: impl Fn(&[u32]) -> F) {
    run_with(name, sets, queries, build, false)
}

fn run_with<F: Probe>(
    name: &str,
    sets: &[Vec<u32>],
    queries: &[u32],
    build: impl Fn(&[u32]) -> F,
    mixed: bool,
) {
    let t = Instant::now();
    let filters: Vec<F> = sets.iter().map(|s| build(s)).collect();
    let build_ns = t.elapsed().as_nanos() as f64 / (FILTERS * KEYS) as f64;
    for (f, s) in filters.iter().zip(sets) {
        let has = |k: u32| {
            if mixed {
                f.contains_mixed(mix(u64::from(k)))
            } else {
                f.contains(k)
            }
        };
        assert!(
            s.iter().step_by(997).all(|&k| has(k)),
            "{name}: a false negative"
        );
    }
    let bytes: usize = filters.iter().map(Probe::bytes).sum();
    // Query by query, every filter, every hash: as `Snapshot::search` does.
    let t = Instant::now();
    let mut positives = 0u64;
    let mut order: Vec<u64> = Vec::with_capacity(HASHES);
    for q in queries.chunks(HASHES) {
        if mixed {
            // Mixed and sorted once per query (timed), probed in that order.
            order.clear();
            order.extend(q.iter().map(|&h| mix(u64::from(h))));
            order.sort_unstable();
            for f in &filters {
                // Two passes: touch every probe's cache line first (cheap
                // loads, all in flight at once), then check the bits.
                let mut touched = 0u32;
                for &m in &order {
                    touched ^= f.touch(m);
                }
                std::hint::black_box(touched);
                for &m in &order {
                    positives += u64::from(f.contains_mixed(m));
                }
            }
            continue;
        }
        for f in &filters {
            for &h in q {
                positives += u64::from(f.contains(h));
            }
        }
    }
    let probes = (queries.len() * FILTERS) as f64;
    let probe_ns = t.elapsed().as_nanos() as f64 / probes;
    // Queries are random, so almost all are absent: the positive share is
    // the false-positive rate (true positives: ~KEYS / 2^32 = 0.07%).
    println!(
        "{name:<28} build {build_ns:>6.1} ns/key, {:>5.2} bits/key, probe {probe_ns:>5.1} ns, positives {:.3}%",
        bytes as f64 * 8.0 / (FILTERS * KEYS) as f64,
        positives as f64 * 100.0 / probes,
    );
}

/// The filter fpnode uses (`fpnode_segments::filter`), as a search uses it:
/// each sorted query mixed once, then `Probe::candidates` per filter.
fn run_chosen(sets: &[Vec<u32>], queries: &[u32]) {
    use fpnode_segments::filter::{BITS_PER_KEY, FilterBuilder, OwnedFilter, Probe};
    let t = Instant::now();
    let filters: Vec<OwnedFilter> = sets
        .iter()
        .map(|s| {
            let mut b = FilterBuilder::for_keys(s.len() as u64).unwrap();
            for &k in s {
                b.insert(k);
            }
            b.into_owned().unwrap()
        })
        .collect();
    let build_ns = t.elapsed().as_nanos() as f64 / (FILTERS * KEYS) as f64;
    let bytes: usize = filters
        .iter()
        .map(|f| f.as_filter().unwrap().len_bytes())
        .sum();
    let t = Instant::now();
    let mut positives = 0u64;
    let mut out = Vec::new();
    for q in queries.chunks(HASHES) {
        let mut probe = Probe::new(q);
        for f in &filters {
            out.clear();
            probe.candidates(f.as_filter().unwrap(), &mut out);
            positives += out.len() as u64;
        }
    }
    let probes = (queries.len() * FILTERS) as f64;
    println!(
        "{:<28} build {build_ns:>6.1} ns/key, {:>5.2} bits/key, probe {:>5.1} ns, positives {:.3}%",
        format!("fpnode filter, {BITS_PER_KEY} bits/key"),
        bytes as f64 * 8.0 / (FILTERS * KEYS) as f64,
        t.elapsed().as_nanos() as f64 / probes,
        positives as f64 * 100.0 / probes,
    );
}

fn main() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(15);
    let sets: Vec<Vec<u32>> = (0..FILTERS)
        .map(|_| {
            let mut s: Vec<u32> = (0..KEYS).map(|_| rng.r#gen()).collect();
            s.sort_unstable();
            s.dedup();
            s
        })
        .collect();
    // Each query's hashes sorted, as `Snapshot::search` probes them.
    let mut queries: Vec<u32> = (0..QUERIES * HASHES).map(|_| rng.r#gen()).collect();
    for q in queries.chunks_mut(HASHES) {
        q.sort_unstable();
    }
    println!("{FILTERS} filters x {KEYS} keys, {QUERIES} queries x {HASHES} hashes against each");
    if std::env::args().any(|a| a == "chosen") {
        run_chosen(&sets, &queries);
        return;
    }
    let keys64 = |s: &[u32]| s.iter().map(|&k| u64::from(k)).collect::<Vec<u64>>();
    run("xorf BinaryFuse8", &sets, &queries, |s| {
        BinaryFuse8::try_from(keys64(s)).unwrap()
    });
    run("xorf BinaryFuse8, huge pages", &sets, &queries, |s| {
        Huge::new(BinaryFuse8::try_from(keys64(s)).unwrap())
    });
    run("xorf BinaryFuse16", &sets, &queries, |s| {
        BinaryFuse16::try_from(keys64(s)).unwrap()
    });
    for bits in [10, 16] {
        run(
            &format!("fastbloom, {bits} bits/key"),
            &sets,
            &queries,
            |s| {
                let mut b =
                    fastbloom::BloomFilter::with_num_bits(s.len() * bits).expected_items(s.len());
                for &k in s {
                    b.insert_hash(mix(u64::from(k)));
                }
                Bloom(b)
            },
        );
        run(
            &format!("split block, {bits} bits/key"),
            &sets,
            &queries,
            |s| SplitBlock::new(s, bits),
        );
        run_with(
            &format!("split block, {bits}, ordered"),
            &sets,
            &queries,
            |s| Ordered(SplitBlock::new(s, bits)),
            true,
        );
    }
    for (bits, k) in [(12, 3), (16, 4), (20, 5)] {
        run_with(
            &format!("register, {bits} bits/key, k {k}"),
            &sets,
            &queries,
            |s| Register::new(s, bits, k),
            true,
        );
    }
    run(
        "prefix bitmap, ~16 bits/key",
        &sets,
        &queries,
        PrefixBitmap::new,
    );
    run_chosen(&sets, &queries);
}
