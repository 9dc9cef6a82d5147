//! Search: which live fingerprints share the most distinct hashes with a query.
//!
//! Semantics (docs/architecture.md, search): the query is a set (a repeated hash counts once), and
//! so is each fingerprint (stored deduplicated). Score = number of distinct query
//! hashes the fingerprint contains. Results: score >= `min_score` (default
//! ceil(n/20), n = distinct query hashes), score >= top score * `score_pct`/100
//! (default 10), sorted by score descending then id ascending, at most `limit`
//! (default 40, clamped to 1..=100). A deadline turns into `Error::SearchTimeout`.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::filter::Probe;
use crate::snapshot::Snapshot;
use crate::types::FingerprintId;

pub const DEFAULT_LIMIT: usize = 40;
pub const MAX_LIMIT: usize = 100;
pub const DEFAULT_SCORE_PCT: u32 = 10;

/// Options as a client gives them; `None` takes the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct SearchOptions {
    pub limit: Option<usize>,
    pub min_score: Option<u32>,
    pub score_pct: Option<u32>,
    pub deadline: Option<Instant>,
    /// Prefetch the blocks of file segments (all segments' reads in flight
    /// at once) when their total size is at least this many bytes: worth it
    /// once the index outgrows the page cache, a small cost (one madvise per
    /// block) before. `None`: never.
    pub prefetch_above: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hit {
    pub id: FingerprintId,
    pub score: u32,
}

/// Sorts and deduplicates query hashes.
pub fn normalize_query(query: &[u32]) -> Vec<u32> {
    let mut q = query.to_vec();
    q.sort_unstable();
    q.dedup();
    q
}

impl SearchOptions {
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
    }

    pub fn min_score(&self, distinct_query_len: usize) -> u32 {
        self.min_score
            .unwrap_or_else(|| distinct_query_len.div_ceil(20) as u32)
    }

    pub fn score_pct(&self) -> u32 {
        self.score_pct.unwrap_or(DEFAULT_SCORE_PCT)
    }

    fn check_deadline(&self) -> Result<()> {
        match self.deadline {
            Some(d) if Instant::now() >= d => Err(Error::SearchTimeout),
            _ => Ok(()),
        }
    }
}

impl Snapshot {
    pub fn search(&self, query: &[u32], opts: &SearchOptions) -> Result<Vec<Hit>> {
        let q = normalize_query(query);
        let mut matches: Vec<u32> = Vec::with_capacity(q.len() * 4);
        // Each segment is asked only for the query hashes its filter may
        // hold: `keys[span]`, or the whole query (`None`) without a filter.
        let mut probe: Option<Probe<'_>> = None;
        let mut keys: Vec<u32> = Vec::new();
        let spans: Vec<Option<std::ops::Range<usize>>> = self
            .segments
            .iter()
            .map(|view| {
                let filter = view.segment.filter()?;
                let start = keys.len();
                probe
                    .get_or_insert_with(|| Probe::new(&q))
                    .candidates(filter, &mut keys);
                Some(start..keys.len())
            })
            .collect();
        let keys_of = |span: &Option<std::ops::Range<usize>>| match span {
            Some(span) => &keys[span.clone()],
            None => &q[..],
        };
        if let Some(above) = opts.prefetch_above
            && self.file_bytes() >= above
        {
            for (view, span) in self.segments.iter().zip(&spans) {
                view.segment.prefetch(keys_of(span));
            }
        }
        for (view, span) in self.segments.iter().zip(&spans) {
            let keys = keys_of(span);
            if keys.is_empty() {
                continue;
            }
            opts.check_deadline()?;
            if view.shadowed.is_empty() {
                view.segment
                    .collect_matches(keys, &mut |id| matches.push(id))?;
            } else {
                let shadowed = &view.shadowed;
                view.segment.collect_matches(keys, &mut |id| {
                    if !shadowed.contains(id) {
                        matches.push(id)
                    }
                })?;
            }
        }
        opts.check_deadline()?;
        Ok(rank(
            matches,
            opts.min_score(q.len()),
            opts.score_pct(),
            opts.limit(),
        ))
    }
}

/// Below this many matches a comparison sort beats a radix sort's passes.
const RADIX_ABOVE: usize = 512;

/// Turns one id per matched posting into ranked hits: the ids sorted (a
/// radix sort for a query of frequent hashes matching many postings), then
/// runs counted.
pub fn rank(mut matches: Vec<u32>, min_score: u32, score_pct: u32, limit: usize) -> Vec<Hit> {
    if matches.len() > RADIX_ABOVE {
        radsort::sort(&mut matches);
    } else {
        matches.sort_unstable();
    }
    // Runs of one id, counted; only those reaching `min_score` become hits.
    let min_score = min_score.max(1);
    let mut hits: Vec<Hit> = Vec::new();
    for run in matches.chunk_by(|a, b| a == b) {
        let score = run.len() as u32;
        if score >= min_score {
            hits.push(Hit { id: run[0], score });
        }
    }
    let Some(top) = hits.iter().map(|h| h.score).max() else {
        return hits;
    };
    let floor = u64::from(top) * u64::from(score_pct);
    hits.retain(|h| u64::from(h.score) * 100 >= floor);
    let order = |a: &Hit, b: &Hit| b.score.cmp(&a.score).then(a.id.cmp(&b.id));
    if hits.len() > limit {
        hits.select_nth_unstable_by(limit, order);
        hits.truncate(limit);
    }
    hits.sort_unstable_by(order);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_orders_by_score_then_id_and_applies_limits() {
        // id 5 x3, id 2 x3, id 9 x1, id 1 x2
        let m = vec![5, 2, 9, 1, 5, 2, 1, 5, 2];
        let hits = rank(m.clone(), 1, 0, 40);
        assert_eq!(
            hits,
            vec![
                Hit { id: 2, score: 3 },
                Hit { id: 5, score: 3 },
                Hit { id: 1, score: 2 },
                Hit { id: 9, score: 1 }
            ]
        );
        assert_eq!(rank(m.clone(), 2, 0, 40).len(), 3);
        // 50% of top score 3 is 1.5: score 1 is dropped, 2 is kept.
        assert_eq!(rank(m.clone(), 1, 50, 40).len(), 3);
        assert_eq!(rank(m, 1, 0, 1), vec![Hit { id: 2, score: 3 }]);
    }

    #[test]
    fn options_defaults_follow_fpindex() {
        let o = SearchOptions::default();
        assert_eq!(o.limit(), 40);
        assert_eq!(o.min_score(120), 6);
        assert_eq!(o.min_score(121), 7);
        assert_eq!(o.score_pct(), 10);
        let o = SearchOptions {
            limit: Some(1000),
            ..o
        };
        assert_eq!(o.limit(), 100);
        let o = SearchOptions {
            limit: Some(0),
            ..o
        };
        assert_eq!(o.limit(), 1);
    }

    /// Above `RADIX_ABOVE` matches the radix path must rank exactly as
    /// counting with a map does.
    #[test]
    fn rank_of_many_matches_agrees_with_a_plain_count() {
        let mut x = 12345u32;
        let matches: Vec<u32> = (0..20_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                // Skewed: small ids much more often.
                1 + (x % 1000) % (1 + x % 300)
            })
            .collect();
        let mut counts = std::collections::BTreeMap::new();
        for &id in &matches {
            *counts.entry(id).or_insert(0u32) += 1;
        }
        let top = counts.values().copied().max().unwrap_or(0);
        let mut want: Vec<Hit> = counts
            .iter()
            .map(|(&id, &score)| Hit { id, score })
            .filter(|h| h.score >= 7 && h.score * 100 >= top)
            .collect();
        want.sort_by(|a, b| b.score.cmp(&a.score).then(a.id.cmp(&b.id)));
        want.truncate(40);
        assert!(matches.len() > RADIX_ABOVE && want.len() == 40);
        assert_eq!(rank(matches, 7, 1, 40), want);
    }
}
