//! Per-segment membership filter: "can this hash be in that segment?",
//! answered from two loads (a region-table entry, then one cache-line
//! block), so a search skips the directory lookup and
//! block decode of every segment that does not hold a query hash
//! (docs/architecture.md "Search"; layout in docs/segment-format.md "Filter").
//!
//! A split-block Bloom filter (32-byte blocks of eight little-endian u32
//! words, as Apache Parquet's; a key sets one bit in each word of one block) over a segment's distinct hashes, cut into regions by the hashes'
//! top bits. Each region gets blocks in proportion to the hashes it holds
//! (12 bits each), so:
//! - it is built in one pass over hashes in sorted order, as a segment
//!   writer pushes them, holding one region's hashes at a time: every block
//!   is written once, in order, with no random access into a large filter;
//! - a sorted query walks every filter forwards;
//! - hashes bunched in part of the space (real fingerprints are not
//!   uniform) still get 12 bits each, and a region with no hash answers
//!   "absent" without touching a block.
//!
//! Within a region a hash's block and bits come from a fixed mix (murmur3's
//! 64-bit finalizer, no seed): the block from its high 32 bits, the eight
//! bits from eight 5-bit fields of its low 40 (no multiplies: a filter is
//! rebuilt by every merge, so building it must be cheap).
//!
//! Why written out rather than taken from a crate: the bytes are part of the
//! segment file format and must mean the same forever, probes read them
//! straight from the memory map, and the region layout is what makes the
//! build sequential. The alternatives measured (xorf's binary fuse filters,
//! fastbloom, a register-blocked Bloom filter, a bitmap of hash prefixes)
//! are in docs/benchmarks.md and `cargo bench --bench filters`.

use crate::fsutil::le_u32;

/// Bytes per block.
pub const BLOCK_BYTES: usize = 32;

/// Filter bits per distinct hash. Measured false-positive rate with uniform
/// hashes: ~0.6% (docs/benchmarks.md).
pub const BITS_PER_KEY: u64 = 12;

/// Segments with more postings than this get no filter: past it a filter
/// costs more memory (1.5 bytes per posting) than the lookups it saves, and
/// a big segment holds most hashes anyway (docs/architecture.md "Search").
pub const MAX_KEYS: u64 = 1 << 27;

/// Alignment of a filter's first block, in memory and in a segment file.
pub const ALIGN: usize = 64;

/// Hashes per region the builder aims at, and the most region bits.
const KEYS_PER_REGION: u64 = 4096;
const MAX_REGION_BITS: u32 = 14;

/// The fixed key mix (murmur3's fmix64).
#[inline]
pub fn mix(hash: u32) -> u64 {
    let mut k = u64::from(hash);
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The bit a mixed hash sets in word `i` of its block: five bits of the
/// mix's low 40 (the block comes from its high 32).
#[inline]
fn bit_of(mixed: u64, i: usize) -> u32 {
    1u32 << ((mixed >> (5 * i)) & 31)
}

/// The block, among a region's `n`, of a mixed hash.
#[inline]
fn block_in_region(mixed: u64, n: u32) -> u32 {
    (((mixed >> 32) * u64::from(n)) >> 32) as u32
}

#[inline]
fn region_of(hash: u32, region_bits: u32) -> usize {
    // A u64 shift: by 32 (no region bits) it gives region 0.
    (u64::from(hash) >> (32 - region_bits)) as usize
}

/// Bytes before the first block: region bits, a zero word, the region
/// table, padded to [`ALIGN`].
fn header_len(region_bits: u32) -> usize {
    (8 + 4 * ((1usize << region_bits) + 1)).next_multiple_of(ALIGN)
}

/// Builds a filter from hashes pushed in nondecreasing order (repeats are
/// harmless). A hash out of order spoils the build: the segment then gets
/// no filter, which costs speed, never an answer.
#[derive(Debug)]
pub struct FilterBuilder {
    region_bits: u32,
    /// First block of each region, for the regions done so far.
    starts: Vec<u32>,
    blocks: Vec<[u32; 8]>,
    /// The current region's distinct hashes.
    region: Vec<u32>,
    current: usize,
    /// Distinct hashes so far: past [`MAX_KEYS`] the build is given up.
    keys: u64,
    spoiled: bool,
}

impl FilterBuilder {
    /// A filter for a segment announced at `keys` postings (its regions are
    /// set from it); `None` when `keys` is 0 or above [`MAX_KEYS`] (no
    /// filter).
    pub fn for_keys(keys: u64) -> Option<FilterBuilder> {
        if keys == 0 || keys > MAX_KEYS {
            return None;
        }
        let region_bits = (keys / KEYS_PER_REGION).max(1).ilog2().min(MAX_REGION_BITS);
        let blocks = (keys * BITS_PER_KEY).div_ceil(8 * BLOCK_BYTES as u64) as usize;
        Some(FilterBuilder {
            region_bits,
            starts: Vec::with_capacity((1 << region_bits) + 1),
            blocks: Vec::with_capacity(blocks + (1 << region_bits)),
            region: Vec::new(),
            current: 0,
            keys: 0,
            spoiled: false,
        })
    }

    #[inline]
    pub fn insert(&mut self, hash: u32) {
        if self.spoiled {
            return;
        }
        let r = region_of(hash, self.region_bits);
        if r != self.current {
            if r < self.current {
                self.spoiled = true;
                return;
            }
            self.close_region();
            self.current = r;
        }
        match self.region.last() {
            Some(&last) if last > hash => self.spoiled = true,
            Some(&last) if last == hash => {}
            // Defensive: callers announce at least the real count.
            _ if self.keys >= MAX_KEYS => self.spoiled = true,
            _ => {
                self.region.push(hash);
                self.keys += 1;
            }
        }
    }

    /// Gives the current region its blocks and sets its hashes' bits; opens
    /// the (empty) regions up to the current one.
    fn close_region(&mut self) {
        while self.starts.len() <= self.current {
            self.starts.push(self.blocks.len() as u32);
        }
        let n = (self.region.len() as u64 * BITS_PER_KEY).div_ceil(8 * BLOCK_BYTES as u64) as u32;
        let first = self.blocks.len();
        self.blocks.resize(first + n as usize, [0; 8]);
        if let Some(blocks) = self.blocks.get_mut(first..) {
            set_bits(blocks, &self.region);
        }
        self.region.clear();
    }

    /// The finished filter, or `None` if a hash came out of order, too many
    /// came, or none.
    fn finish(mut self) -> Option<Built> {
        if self.spoiled {
            return None;
        }
        self.close_region();
        let regions = 1usize << self.region_bits;
        while self.starts.len() <= regions {
            self.starts.push(self.blocks.len() as u32);
        }
        (!self.blocks.is_empty()).then_some(Built {
            region_bits: self.region_bits,
            starts: self.starts,
            blocks: self.blocks,
        })
    }

    /// Appends the filter's bytes (the format's "filter" section) to `out`,
    /// which must end on an [`ALIGN`] boundary of the file or buffer;
    /// returns how many bytes it appended (0: no filter).
    pub fn write_to(self, out: &mut Vec<u8>) -> usize {
        self.finish().map_or(0, |f| f.write_to(out))
    }

    /// The filter in memory (a memory segment's), its blocks aligned to cache
    /// lines (a block straddling two lines costs a second miss per probe:
    /// 24-34 vs 48-50 ns measured, docs/benchmarks.md).
    pub fn into_owned(self) -> Option<OwnedFilter> {
        let built = self.finish()?;
        // One allocation that will not move: an aligned start, then the bytes.
        let mut buf: Vec<u8> = Vec::with_capacity(built.len() + ALIGN);
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        buf.resize(start, 0);
        built.write_to(&mut buf);
        Some(OwnedFilter { buf, start })
    }
}

/// Sets the bits of `keys` in a region's `blocks`: the same loop compiled
/// for AVX2 where the CPU has it (the compiler turns a key's eight shifts
/// into vector shifts: 5.1-6.3 vs 8.5-12.0 ns/key, docs/benchmarks.md
/// "Ingest with filters"), and for the baseline CPU otherwise.
fn set_bits(blocks: &mut [[u32; 8]], keys: &[u32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        #[allow(unsafe_code)]
        unsafe {
            set_bits_avx2(blocks, keys)
        };
        return;
    }
    set_bits_portable(blocks, keys);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn set_bits_avx2(blocks: &mut [[u32; 8]], keys: &[u32]) {
    set_bits_portable(blocks, keys);
}

#[inline(always)]
fn set_bits_portable(blocks: &mut [[u32; 8]], keys: &[u32]) {
    let n = blocks.len() as u32;
    for &h in keys {
        let m = mix(h);
        if let Some(block) = blocks.get_mut(block_in_region(m, n) as usize) {
            let bits: [u32; 8] = std::array::from_fn(|i| bit_of(m, i));
            for (w, b) in block.iter_mut().zip(bits) {
                *w |= b;
            }
        }
    }
}

/// A finished filter, before it is serialised.
struct Built {
    region_bits: u32,
    starts: Vec<u32>,
    blocks: Vec<[u32; 8]>,
}

impl Built {
    /// Bytes [`Built::write_to`] appends.
    fn len(&self) -> usize {
        header_len(self.region_bits) + self.blocks.len() * BLOCK_BYTES
    }

    fn write_to(&self, out: &mut Vec<u8>) -> usize {
        let before = out.len();
        out.reserve(self.len());
        out.extend_from_slice(&self.region_bits.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for s in &self.starts {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.resize(before + header_len(self.region_bits), 0);
        for w in self.blocks.iter().flatten() {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.len() - before
    }
}

/// A filter held in memory (a memory segment's), cache-line aligned.
#[derive(Debug)]
pub struct OwnedFilter {
    /// Never reallocated: `start` is where the aligned bytes begin.
    buf: Vec<u8>,
    start: usize,
}

impl OwnedFilter {
    /// The filter (built here, so only its header is parsed).
    pub fn as_filter(&self) -> Option<FilterRef<'_>> {
        self.buf.get(self.start..).and_then(FilterRef::parse)
    }

    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }
}

/// A filter's bytes, borrowed (from a memory map or a memory segment),
/// checked by [`FilterRef::new`].
#[derive(Clone, Copy, Debug)]
pub struct FilterRef<'a> {
    region_bits: u32,
    /// The region table: `regions + 1` little-endian u32 block starts.
    starts: &'a [u8],
    blocks: &'a [u8],
}

impl<'a> FilterRef<'a> {
    /// `None` unless `bytes` is a well-formed filter: region bits in range,
    /// a nondecreasing region table ending at the block count, whole blocks.
    /// Walks the whole region table: check once (at open), then [`parse`].
    ///
    /// [`parse`]: FilterRef::parse
    pub fn new(bytes: &'a [u8]) -> Option<FilterRef<'a>> {
        let f = FilterRef::parse(bytes)?;
        if f.blocks.is_empty() || bytes.get(4..8) != Some(&[0; 4][..]) {
            return None;
        }
        let mut prev = 0u32;
        for s in f.starts.chunks_exact(4) {
            let s = le_u32(s, 0);
            if s < prev {
                return None;
            }
            prev = s;
        }
        (prev as usize == f.blocks.len() / BLOCK_BYTES).then_some(f)
    }

    /// The filter in bytes checked before by [`FilterRef::new`]: only the
    /// header and lengths are read. (Bytes that were not checked can give
    /// wrong answers, never a panic: every read is bounds-checked.)
    pub fn parse(bytes: &'a [u8]) -> Option<FilterRef<'a>> {
        if bytes.len() < 8 {
            return None;
        }
        let region_bits = le_u32(bytes, 0);
        if region_bits > MAX_REGION_BITS {
            return None;
        }
        let starts = bytes.get(8..8 + 4 * ((1 << region_bits) + 1))?;
        let blocks = bytes.get(header_len(region_bits)..)?;
        if !blocks.len().is_multiple_of(BLOCK_BYTES) {
            return None;
        }
        Some(FilterRef {
            region_bits,
            starts,
            blocks,
        })
    }

    /// Where `hash`'s block starts in `blocks`, or `None` when its region
    /// holds no hash.
    #[inline]
    fn block_at(&self, hash: u32, mixed: u64) -> Option<usize> {
        // Region r's blocks: table entries r and r + 1, one 8-byte read.
        let r = region_of(hash, self.region_bits);
        let pair = self.starts.get(4 * r..4 * r + 8)?;
        let (first, end) = (le_u32(pair, 0), le_u32(pair, 4));
        let n = end.wrapping_sub(first);
        (n != 0 && n <= end).then(|| (first + block_in_region(mixed, n)) as usize * BLOCK_BYTES)
    }

    /// Whether `hash` may be in the set (false: certainly not).
    #[inline]
    pub fn contains(&self, hash: u32) -> bool {
        let m = mix(hash);
        self.block_at(hash, m)
            .is_some_and(|at| self.has_bits(at, m))
    }

    /// Whether the block at byte `at` has all of `mixed`'s bits. Branch-free,
    /// so a run of probes keeps many cache misses in flight.
    #[inline]
    fn has_bits(&self, at: usize, mixed: u64) -> bool {
        let Some(block) = self.blocks.get(at..at + BLOCK_BYTES) else {
            return true;
        };
        let mut missing = 0u32;
        for i in 0..8 {
            missing |= !le_u32(block, 4 * i) & bit_of(mixed, i);
        }
        missing == 0
    }

    pub fn len_bytes(&self) -> usize {
        header_len(self.region_bits) + self.blocks.len()
    }
}

/// A query as the filters see it: its sorted hashes, mixed once for every
/// segment's filter.
#[derive(Debug, Default)]
pub struct Probe<'q> {
    hashes: &'q [u32],
    mixed: Vec<u64>,
    /// Per hash, the byte where its block starts in the filter at hand
    /// (`usize::MAX`: its region is empty).
    at: Vec<usize>,
}

impl<'q> Probe<'q> {
    pub fn new(sorted_query: &'q [u32]) -> Probe<'q> {
        Probe {
            hashes: sorted_query,
            mixed: sorted_query.iter().map(|&h| mix(h)).collect(),
            at: Vec::with_capacity(sorted_query.len()),
        }
    }

    /// Appends the query hashes `filter` may hold, in order, to `out`.
    /// Two passes: find and touch every probed block first (a few
    /// instructions per hash, so dozens of cache misses overlap), then test
    /// the bits, in cache by then.
    pub fn candidates(&mut self, filter: FilterRef<'_>, out: &mut Vec<u32>) {
        self.at.clear();
        let mut touched = 0u8;
        for (&h, &m) in self.hashes.iter().zip(&self.mixed) {
            let at = filter.block_at(h, m).unwrap_or(usize::MAX);
            touched ^= filter.blocks.get(at).copied().unwrap_or(0);
            self.at.push(at);
        }
        std::hint::black_box(touched);
        for ((&h, &m), &at) in self.hashes.iter().zip(&self.mixed).zip(&self.at) {
            if at != usize::MAX && filter.has_bits(at, m) {
                out.push(h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(keys: &[u32]) -> Vec<u8> {
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        let mut b = FilterBuilder::for_keys(keys.len() as u64).unwrap();
        for &k in &sorted {
            b.insert(k);
        }
        let mut out = Vec::new();
        b.write_to(&mut out);
        out
    }

    proptest! {
        #[test]
        fn no_false_negatives(keys in proptest::collection::vec(any::<u32>(), 1..3000)) {
            let bytes = build(&keys);
            let f = FilterRef::new(&bytes).unwrap();
            for &k in &keys {
                prop_assert!(f.contains(k));
            }
            let mut q = keys.clone();
            q.sort_unstable();
            q.dedup();
            let mut out = Vec::new();
            Probe::new(&q).candidates(f, &mut out);
            prop_assert_eq!(out, q);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Many regions (the hint sets them, whatever the keys), keys
        /// bunched or spread, repeats and region edges: all found, in
        /// files' bytes and through `Probe`.
        #[test]
        fn no_false_negatives_across_regions(
            spread in proptest::collection::vec(any::<u32>(), 0..20_000),
            bunch_at in any::<u32>(),
            bunch in 0u32..5_000,
            hint in 1u64..2_000_000,
        ) {
            let mut keys = spread;
            keys.extend((0..bunch).map(|i| bunch_at.wrapping_add(i * 7)));
            keys.extend([0, u32::MAX, 1 << 31, (1 << 31) - 1, 1 << 20, (1 << 20) - 1]);
            keys.extend_from_slice(&keys.clone()[..keys.len().min(100)]);
            keys.sort_unstable();
            let mut b = FilterBuilder::for_keys(hint).unwrap();
            for &k in &keys {
                b.insert(k);
            }
            let mut bytes = Vec::new();
            prop_assert!(b.write_to(&mut bytes) > 0);
            let f = FilterRef::new(&bytes).unwrap();
            keys.dedup();
            for &k in &keys {
                prop_assert!(f.contains(k), "{k:#x} lost");
            }
            let mut out = Vec::new();
            Probe::new(&keys).candidates(f, &mut out);
            prop_assert_eq!(out, keys);
        }
    }

    #[test]
    fn false_positive_rate_is_near_the_design() {
        let keys: Vec<u32> = (0..100_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let bytes = build(&keys);
        let f = FilterRef::new(&bytes).unwrap();
        let passed = (0..1_000_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(1))
            .filter(|h| f.contains(*h))
            .count();
        // 12 bits per key: ~0.6% false positives; a broken mix or block
        // choice gives far more.
        let fp = passed as f64 / 1_000_000.0;
        assert!(fp < 0.01, "false-positive rate {fp}");
    }

    #[test]
    fn bunched_hashes_keep_their_bits_per_key() {
        // Every key in 1/64 of the hash space: regions elsewhere are empty
        // (and answer "absent" for free), the bunch keeps ~0.6%.
        let keys: Vec<u32> = (0..100_000u32).map(|i| 0x0400_0000 + i * 661).collect();
        let bytes = build(&keys);
        let f = FilterRef::new(&bytes).unwrap();
        let near = (0..100_000u32)
            .filter(|i| f.contains(0x0400_0000 + i * 661 + 330))
            .count();
        assert!(
            near < 1_000,
            "{near} false positives among 100,000 hashes in the bunch"
        );
        assert!(!f.contains(0x8000_0000));
    }

    /// Both compilations of the bit-setting loop set the same bits (on a
    /// CPU with AVX2, `set_bits` takes the AVX2 one). They share one source,
    /// so this guards the dispatch; the bytes themselves are pinned by
    /// `bytes_are_stable`.
    #[test]
    fn portable_and_dispatched_bit_setting_agree() {
        let keys: Vec<u32> = (0..5000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        for n in [1usize, 7, 64, 200] {
            let mut portable = vec![[0u32; 8]; n];
            set_bits_portable(&mut portable, &keys);
            let mut dispatched = vec![[0u32; 8]; n];
            set_bits(&mut dispatched, &keys);
            assert_eq!(portable, dispatched, "{n} blocks");
            assert!(portable.iter().flatten().all(|&w| w != 0), "{n} blocks");
        }
    }

    #[test]
    fn out_of_order_hashes_give_no_filter() {
        let mut b = FilterBuilder::for_keys(100_000).unwrap();
        b.insert(u32::MAX);
        b.insert(1);
        assert_eq!(b.write_to(&mut Vec::new()), 0);
        let mut b = FilterBuilder::for_keys(10).unwrap();
        b.insert(9);
        b.insert(8);
        assert!(b.into_owned().is_none());
    }

    /// The bytes are a file format: a fixed key set must give the same
    /// filter in every version of this code.
    #[test]
    fn bytes_are_stable() {
        let bytes = build(&[1, 2, 3, 0xdead_beef, u32::MAX]);
        assert_eq!(bytes.len(), 64 + 32);
        assert_eq!(crc32fast::hash(&bytes), STABLE_CRC);
    }

    const STABLE_CRC: u32 = 0x7a86_c1f6;

    #[test]
    fn sizes_out_of_range_get_no_filter_and_bad_bytes_are_refused() {
        assert!(FilterBuilder::for_keys(0).is_none());
        assert!(FilterBuilder::for_keys(MAX_KEYS + 1).is_none());
        assert!(FilterRef::new(&[]).is_none());
        let good = build(&[5, 6, 7]);
        assert!(FilterRef::new(&good).is_some());
        let mut short = good.clone();
        short.pop();
        assert!(FilterRef::new(&short).is_none(), "a partial block");
        let mut bits = good.clone();
        bits[0] = 17;
        assert!(FilterRef::new(&bits).is_none(), "region bits out of range");
        let mut table = good.clone();
        table[8] = 9;
        assert!(
            FilterRef::new(&table).is_none(),
            "a region table not ending at the block count"
        );
    }
}
