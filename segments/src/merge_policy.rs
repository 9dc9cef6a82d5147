//! Which segments to merge next: a pure function from segment sizes to a
//! contiguous run, in the spirit of Lucene's TieredMergePolicy.
//!
//! Segments are ordered by age and masking depends on that order, so only
//! contiguous runs are merged (Lucene may merge any set; see docs/architecture.md).
//! A segment's tier is `floor(log_{segments_per_tier}(max(size, floor)/floor))`.
//! A run of `segments_per_tier` adjacent segments of one tier is merged (up to
//! `max_merge_at_once` of them, lowest tier first). Independently, when there are
//! more than `max_segments`, the cheapest window of `max_merge_at_once` adjacent
//! segments is merged, so the count stays bounded whatever the sizes.

use std::ops::Range;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TieredMergePolicy {
    pub segments_per_tier: usize,
    pub max_merge_at_once: usize,
    /// Segments smaller than this count as this size.
    pub floor_bytes: u64,
    /// Never produce a segment larger than this (by the inputs' sizes).
    pub max_merged_bytes: u64,
    /// Above this many segments, merge the cheapest window regardless of tiers.
    pub max_segments: usize,
}

impl Default for TieredMergePolicy {
    fn default() -> Self {
        TieredMergePolicy {
            segments_per_tier: 10,
            max_merge_at_once: 10,
            floor_bytes: 16 << 20,
            max_merged_bytes: u64::MAX,
            max_segments: 40,
        }
    }
}

/// What the policy sees of one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeInput {
    pub size_bytes: u64,
    /// Already part of a running merge.
    pub merging: bool,
}

impl TieredMergePolicy {
    fn tier(&self, size: u64) -> u32 {
        let floor = self.floor_bytes.max(1);
        let ratio = size.max(floor) / floor;
        let base = self.segments_per_tier.max(2) as u64;
        let mut tier = 0;
        let mut r = ratio;
        while r >= base {
            r /= base;
            tier += 1;
        }
        tier
    }

    /// The next run to merge, if any.
    pub fn find_merge(&self, segments: &[MergeInput]) -> Option<Range<usize>> {
        let per_tier = self.segments_per_tier.max(2);
        let at_once = self.max_merge_at_once.max(2);
        let mut best: Option<(u32, Range<usize>)> = None;
        let mut i = 0;
        while i < segments.len() {
            if segments[i].merging {
                i += 1;
                continue;
            }
            let tier = self.tier(segments[i].size_bytes);
            let mut j = i + 1;
            while j < segments.len()
                && !segments[j].merging
                && self.tier(segments[j].size_bytes) == tier
            {
                j += 1;
            }
            if j - i >= per_tier {
                let run = self.fit(segments, i, (i + at_once).min(j));
                if run.len() >= 2 && best.as_ref().is_none_or(|(t, _)| tier < *t) {
                    best = Some((tier, run));
                }
            }
            i = j;
        }
        if let Some((_, run)) = best {
            return Some(run);
        }
        let live = segments.iter().filter(|s| !s.merging).count();
        if live > self.max_segments {
            return self.cheapest_window(segments, at_once);
        }
        None
    }

    /// Shrinks `start..end` from the end until it fits `max_merged_bytes`.
    fn fit(&self, segments: &[MergeInput], start: usize, mut end: usize) -> Range<usize> {
        while end > start + 1 {
            let total: u64 = segments[start..end].iter().map(|s| s.size_bytes).sum();
            if total <= self.max_merged_bytes {
                break;
            }
            end -= 1;
        }
        start..end
    }

    fn cheapest_window(&self, segments: &[MergeInput], at_once: usize) -> Option<Range<usize>> {
        let mut best: Option<(u64, Range<usize>)> = None;
        for start in 0..segments.len() {
            let mut total = 0u64;
            let mut end = start;
            while end < segments.len() && end - start < at_once && !segments[end].merging {
                total = total.saturating_add(segments[end].size_bytes);
                end += 1;
            }
            if end - start >= 2
                && total <= self.max_merged_bytes
                && best.as_ref().is_none_or(|(t, r)| {
                    // Prefer more segments per byte merged.
                    (total as f64 / (end - start) as f64) < (*t as f64 / r.len() as f64)
                })
            {
                best = Some((total, start..end));
            }
        }
        best.map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(sizes: &[u64]) -> Vec<MergeInput> {
        sizes
            .iter()
            .map(|&s| MergeInput {
                size_bytes: s,
                merging: false,
            })
            .collect()
    }

    #[test]
    fn merges_a_full_tier_of_adjacent_small_segments() {
        let p = TieredMergePolicy {
            segments_per_tier: 3,
            max_merge_at_once: 3,
            floor_bytes: 10,
            ..TieredMergePolicy::default()
        };
        assert_eq!(p.find_merge(&inputs(&[1000, 5, 5])), None);
        assert_eq!(p.find_merge(&inputs(&[1000, 5, 5, 5, 5])), Some(1..4));
        // Lowest tier wins when two are full.
        assert_eq!(p.find_merge(&inputs(&[30, 30, 30, 5, 5, 5])), Some(3..6));
    }

    #[test]
    fn segments_already_merging_are_skipped() {
        let p = TieredMergePolicy {
            segments_per_tier: 2,
            max_merge_at_once: 2,
            floor_bytes: 10,
            ..TieredMergePolicy::default()
        };
        let mut s = inputs(&[5, 5, 5]);
        s[0].merging = true;
        assert_eq!(p.find_merge(&s), Some(1..3));
        s[1].merging = true;
        assert_eq!(p.find_merge(&s), None);
    }

    #[test]
    fn too_many_segments_of_mixed_tiers_still_get_merged() {
        let p = TieredMergePolicy {
            segments_per_tier: 10,
            max_merge_at_once: 4,
            floor_bytes: 10,
            max_segments: 5,
            ..TieredMergePolicy::default()
        };
        // Alternating tiers never form a run of 10.
        let s = inputs(&[1000, 10, 1000, 10, 1000, 10]);
        let r = p.find_merge(&s).unwrap();
        assert!(r.len() >= 2);
    }

    #[test]
    fn merged_size_respects_the_maximum() {
        let p = TieredMergePolicy {
            segments_per_tier: 3,
            max_merge_at_once: 5,
            floor_bytes: 10,
            max_merged_bytes: 12,
            ..TieredMergePolicy::default()
        };
        assert_eq!(p.find_merge(&inputs(&[5, 5, 5, 5])), Some(0..2));
    }
}
