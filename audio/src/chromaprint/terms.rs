//! AcoustID's query terms: the hashes AcoustID indexes for a fingerprint and
//! searches with (`acoustid_extract_query` in pg_acoustid, the same in
//! acoustid-index and acoustid-server; docs/audio.md, "Query terms").

/// Chromaprint's item for digital silence; never a term.
pub const SILENCE: u32 = 627_964_279;
/// Terms per fingerprint.
pub const QUERY_SIZE: usize = 120;
/// Items skipped at the start of a long fingerprint (about 10 s).
pub const QUERY_START: usize = 80;
/// The top 28 bits of an item are kept.
pub const QUERY_MASK: u32 = 0xFFFF_FFF0;

/// Up to 120 distinct masked items, in the order first seen, starting 80
/// items in when the fingerprint has at least 200 non-silent items, earlier
/// when shorter. Silence items are skipped and do not count.
pub fn query_terms(items: &[u32]) -> Vec<u32> {
    let clean = items.iter().filter(|&&h| h != SILENCE).count();
    let mut terms = Vec::with_capacity(QUERY_SIZE);
    if clean == 0 {
        return terms;
    }
    // As upstream, the start counts non-silent items but indexes all items.
    let start = clean.saturating_sub(QUERY_SIZE).min(QUERY_START);
    for &h in items.iter().skip(start) {
        if terms.len() >= QUERY_SIZE {
            break;
        }
        if h == SILENCE {
            continue;
        }
        let x = h & QUERY_MASK;
        if !terms.contains(&x) {
            terms.push(x);
        }
    }
    terms
}

/// Every distinct masked, non-silent item, in the order first seen: the
/// hashes to index for a recording so that the query terms of any excerpt
/// of it (not only of its start) find it (docs/audio.md, "Query terms").
pub fn index_hashes(items: &[u32]) -> Vec<u32> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items
        .iter()
        .filter(|&&h| h != SILENCE)
        .map(|&h| h & QUERY_MASK)
        .filter(|h| seen.insert(*h))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_fingerprints_start_80_items_in() {
        let items: Vec<u32> = (0..300u32).map(|i| i << 4 | 0xF).collect();
        let terms = query_terms(&items);
        assert_eq!(terms.len(), 120);
        assert_eq!(terms[0], 80 << 4);
        assert_eq!(terms[119], 199 << 4);
    }

    #[test]
    fn short_fingerprints_start_earlier_and_skip_silence_and_repeats() {
        let mut items: Vec<u32> = (0..130u32).map(|i| i << 4).collect();
        items[12] = SILENCE;
        items[13] = items[14] | 3; // the same term once masked
        let terms = query_terms(&items);
        // 129 non-silent items: start at 9.
        assert_eq!(terms[0], 9 << 4);
        assert!(!terms.contains(&(SILENCE & QUERY_MASK)));
        assert_eq!(terms.iter().filter(|&&t| t == 14 << 4).count(), 1);
        assert_eq!(terms.len(), 130 - 9 - 2);
        assert!(query_terms(&[SILENCE, SILENCE]).is_empty());
    }
}
