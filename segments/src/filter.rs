//! Per-segment membership filter: "can this hash be in that segment?",
//! answered from one cache line, so a search skips the directory lookup and
//! block decode of every segment that does not hold a query hash
//! (docs/architecture.md "Search"; layout in docs/segment-format.md "Filter").
//!
//! A split-block Bloom filter, the layout of Apache Parquet's: 32-byte blocks
//! of eight little-endian u32 words; a key sets one bit in each word of one
//! block. Keys are a segment's distinct hashes, mixed by a fixed function
//! (murmur3's 64-bit finalizer, no seed), so every segment of an index puts a
//! given hash at the same relative place: [`Probe`] mixes and sorts a query
//! once and walks every filter forwards. The block is chosen by the mixed
//! key's high half (scaled to the block count), the eight bits by its low
//! half times eight odd salts.
//!
//! Why written out rather than taken from a crate: the bytes are part of the
//! segment file format and must mean the same forever, probes read them
//! straight from the memory map, and the probe order depends on the block
//! choice above. The alternatives measured (xorf's binary fuse filters,
//! fastbloom, a register-blocked Bloom filter, a bitmap of hash prefixes)
//! are in docs/benchmarks.md and `cargo bench --bench filters`.

/// Bytes per block.
pub const BLOCK_BYTES: usize = 32;

/// Filter bits per distinct hash. Measured false-positive rate with uniform
/// hashes: 1.3% at 10 bits, 0.2% at 16 (docs/benchmarks.md).
pub const BITS_PER_KEY: u64 = 12;

/// Segments with more postings than this get no filter: past it a filter
/// costs more memory (1.5 bytes per posting) than the lookups it saves, and
/// a big segment holds most hashes anyway (docs/architecture.md "Search").
pub const MAX_KEYS: u64 = 1 << 27;

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

#[inline]
fn block_of(mixed: u64, blocks: u64) -> usize {
    (((mixed >> 32) * blocks) >> 32) as usize
}

#[inline]
fn bits_of(mixed: u64) -> [u32; 8] {
    let x = mixed as u32;
    SALT.map(|s| 1u32 << (x.wrapping_mul(s) >> 27))
}

/// Keys a builder holds before setting their bits (8 MB).
const PENDING: usize = 1 << 20;

/// Builds a filter from hashes pushed one by one (duplicates are harmless).
///
/// Keys are set in batches sorted by block, so building a filter larger
/// than the caches sweeps it forwards instead of missing the cache on every
/// key (a segment writer pushes hashes in hash order, which is random order
/// for the filter).
#[derive(Debug)]
pub struct FilterBuilder {
    blocks: Vec<[u32; 8]>,
    pending: Vec<u64>,
}

impl FilterBuilder {
    /// A filter sized for up to `keys` distinct hashes; `None` when `keys`
    /// is 0 or above [`MAX_KEYS`] (no filter).
    pub fn for_keys(keys: u64) -> Option<FilterBuilder> {
        if keys == 0 || keys > MAX_KEYS {
            return None;
        }
        let blocks = (keys * BITS_PER_KEY).div_ceil(8 * BLOCK_BYTES as u64);
        Some(FilterBuilder {
            blocks: vec![[0; 8]; blocks as usize],
            pending: Vec::with_capacity(PENDING.min(keys as usize)),
        })
    }

    #[inline]
    pub fn insert(&mut self, hash: u32) {
        self.pending.push(mix(hash));
        if self.pending.len() >= PENDING {
            self.apply();
        }
    }

    fn apply(&mut self) {
        radsort::sort_by_key(&mut self.pending, |m| (m >> 32) as u32);
        let n = self.blocks.len() as u64;
        for &m in &self.pending {
            if let Some(block) = self.blocks.get_mut(block_of(m, n)) {
                for (w, bit) in block.iter_mut().zip(bits_of(m)) {
                    *w |= bit;
                }
            }
        }
        self.pending.clear();
    }

    /// Size of [`FilterBuilder::write_to`]'s output.
    pub fn encoded_len(&self) -> usize {
        self.blocks.len() * BLOCK_BYTES
    }

    /// Appends the filter's bytes (the format's "filter" section).
    pub fn write_to(&mut self, out: &mut Vec<u8>) {
        self.apply();
        out.reserve(self.encoded_len());
        for w in self.blocks.iter().flatten() {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    pub fn into_bytes(mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// The filter in memory, its blocks aligned to cache lines (a block
    /// straddling two lines costs a second miss per probe: 24-34 vs 48-50 ns
    /// measured, docs/benchmarks.md).
    pub fn into_owned(mut self) -> OwnedFilter {
        let len = self.encoded_len();
        let mut buf: Vec<u8> = Vec::with_capacity(len + ALIGN);
        let start = buf.as_ptr().align_offset(ALIGN).min(ALIGN);
        buf.resize(start, 0);
        self.write_to(&mut buf);
        OwnedFilter { buf, start }
    }
}

/// Alignment of a filter's first block, in memory and in a segment file.
pub const ALIGN: usize = 64;

/// A filter held in memory (a memory segment's), cache-line aligned.
#[derive(Debug)]
pub struct OwnedFilter {
    /// Never reallocated: `start` is where the aligned bytes begin.
    buf: Vec<u8>,
    start: usize,
}

impl OwnedFilter {
    pub fn as_filter(&self) -> Option<FilterRef<'_>> {
        self.buf.get(self.start..).and_then(FilterRef::new)
    }

    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }
}

/// A filter's bytes, borrowed (from a memory map or a memory segment).
#[derive(Clone, Copy, Debug)]
pub struct FilterRef<'a> {
    bytes: &'a [u8],
    blocks: u64,
}

impl<'a> FilterRef<'a> {
    /// `None` unless `bytes` is a whole, non-zero number of blocks.
    pub fn new(bytes: &'a [u8]) -> Option<FilterRef<'a>> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(BLOCK_BYTES) {
            return None;
        }
        Some(FilterRef {
            bytes,
            blocks: (bytes.len() / BLOCK_BYTES) as u64,
        })
    }

    /// Whether a hash whose [`mix`] is `mixed` may be in the set (false:
    /// certainly not). Branch-free, so a run of probes keeps many cache
    /// misses in flight.
    #[inline]
    pub fn contains_mixed(&self, mixed: u64) -> bool {
        let start = block_of(mixed, self.blocks) * BLOCK_BYTES;
        let Some(block) = self.bytes.get(start..start + BLOCK_BYTES) else {
            return true;
        };
        let mut missing = 0u32;
        for (word, bit) in block.chunks_exact(4).zip(bits_of(mixed)) {
            let w = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
            missing |= !w & bit;
        }
        missing == 0
    }

    #[inline]
    fn first_byte(&self, mixed: u64) -> u8 {
        let start = block_of(mixed, self.blocks) * BLOCK_BYTES;
        self.bytes.get(start).copied().unwrap_or(0)
    }

    pub fn contains(&self, hash: u32) -> bool {
        self.contains_mixed(mix(hash))
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }
}

/// A query's hashes in filter order: mixed once, sorted by their mix, so
/// that probing segment after segment walks each filter forwards.
#[derive(Debug, Default)]
pub struct Probe {
    keys: Vec<(u64, u32)>,
}

impl Probe {
    pub fn new(sorted_query: &[u32]) -> Probe {
        let mut keys: Vec<(u64, u32)> = sorted_query.iter().map(|&h| (mix(h), h)).collect();
        keys.sort_unstable();
        Probe { keys }
    }

    /// The query hashes `filter` may hold, sorted (as `collect_matches`
    /// wants them), into `out` (cleared first).
    pub fn candidates(&self, filter: FilterRef<'_>, out: &mut Vec<u32>) {
        out.clear();
        // Two passes: touch every block first (a few instructions per hash,
        // so dozens of cache misses overlap), then test the bits in cache.
        let mut touched = 0u8;
        for &(m, _) in &self.keys {
            touched ^= filter.first_byte(m);
        }
        std::hint::black_box(touched);
        for &(m, h) in &self.keys {
            if filter.contains_mixed(m) {
                out.push(h);
            }
        }
        out.sort_unstable();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(keys: &[u32]) -> Vec<u8> {
        let mut b = FilterBuilder::for_keys(keys.len() as u64).unwrap();
        for &k in keys {
            b.insert(k);
        }
        b.into_bytes()
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

    #[test]
    fn false_positive_rate_is_near_the_design() {
        let keys: Vec<u32> = (0..100_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        let bytes = build(&keys);
        let f = FilterRef::new(&bytes).unwrap();
        let absent = (0..1_000_000u32)
            .map(|i| i.wrapping_mul(2_654_435_761).wrapping_add(1))
            .filter(|h| !f.contains(*h))
            .count();
        // 12 bits per key: ~0.5% false positives; a broken mix or block
        // choice gives far more.
        let fp = 1.0 - absent as f64 / 1_000_000.0;
        assert!(fp < 0.01, "false-positive rate {fp}");
    }

    /// The bytes are a file format: a fixed key set must give the same
    /// filter in every version of this code.
    #[test]
    fn bytes_are_stable() {
        let bytes = build(&[1, 2, 3, 0xdead_beef, u32::MAX]);
        assert_eq!(bytes.len(), 32);
        assert_eq!(crc32fast::hash(&bytes), STABLE_CRC);
    }

    const STABLE_CRC: u32 = 0xb92c_866f;

    #[test]
    fn sizes_out_of_range_get_no_filter_and_bad_bytes_are_refused() {
        assert!(FilterBuilder::for_keys(0).is_none());
        assert!(FilterBuilder::for_keys(MAX_KEYS + 1).is_none());
        assert!(FilterRef::new(&[]).is_none());
        assert!(FilterRef::new(&[0; 33]).is_none());
    }
}
