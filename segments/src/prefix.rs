//! A prefix table over sorted 32-bit keys: for each value of the top `bits` bits,
//! the index of the first key with that prefix or more. Narrows a search for a
//! hash to one bucket (about `target` keys) before a binary search.
//!
//! Used over the block directory of file segments and over the postings of
//! memory segments.

/// Prefix table; `starts[p]..starts[p + 1]` holds the keys with prefix `p`.
#[derive(Clone, Debug, Default)]
pub struct PrefixTable {
    shift: u32,
    starts: Vec<u32>,
}

impl PrefixTable {
    /// Builds the table for `n` sorted keys read through `key`, aiming at
    /// `target` keys per bucket.
    pub fn build(n: u64, target: u64, key: impl Fn(u64) -> u32) -> PrefixTable {
        let bits = (n / target.max(1)).max(1).ilog2().clamp(4, 24);
        let shift = 32 - bits;
        let mut starts = Vec::with_capacity((1usize << bits) + 1);
        let mut j = 0u64;
        for p in 0..(1u64 << bits) {
            let lo = p << shift;
            while j < n && u64::from(key(j)) < lo {
                j += 1;
            }
            starts.push(j as u32);
        }
        starts.push(n as u32);
        PrefixTable { shift, starts }
    }

    /// Index of the first key >= `hash`, given the same `key` as `build`.
    #[inline]
    pub fn lower_bound(&self, hash: u32, key: impl Fn(u64) -> u32) -> u64 {
        let bucket = (hash >> self.shift) as usize;
        let (Some(&lo), Some(&hi)) = (self.starts.get(bucket), self.starts.get(bucket + 1)) else {
            return 0;
        };
        let (mut lo, mut hi) = (u64::from(lo), u64::from(hi));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if key(mid) < hash {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    pub fn heap_bytes(&self) -> usize {
        self.starts.len() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn lower_bound_agrees_with_partition_point(
            mut keys in proptest::collection::vec(any::<u32>(), 0..2000),
            probes in proptest::collection::vec(any::<u32>(), 1..50),
            target in 1u64..100,
        ) {
            keys.sort_unstable();
            let t = PrefixTable::build(keys.len() as u64, target, |i| keys[i as usize]);
            for h in probes.into_iter().chain(keys.iter().copied().take(20)) {
                let want = keys.partition_point(|&k| k < h) as u64;
                prop_assert_eq!(t.lower_bound(h, |i| keys[i as usize]), want);
            }
        }
    }
}
