//! Search over shapes the random model test rarely produces: very frequent hashes
//! whose postings span many blocks, full-track fingerprints with thousands of
//! hashes, the same data served from memory, from a checkpointed file and from an
//! offline bulk build; and the deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fpnode_segments::bulk::{BulkBuilder, BulkOptions};
use fpnode_segments::index::IndexOptions;
use fpnode_segments::{Batch, Change, Error, Generation, Hit, Index, Position, SearchOptions};

/// 3000 fingerprints: every one carries hash 1, every other one hash 2 (so
/// their postings span dozens of blocks), a few carry 6000 hashes.
fn corpus() -> BTreeMap<u32, Vec<u32>> {
    let mut state = 99u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (1..=3000u32)
        .map(|id| {
            let len = if id % 500 == 0 { 6000 } else { 100 };
            let mut h: Vec<u32> = (0..len).map(|_| (next() % 200_000) as u32 + 10).collect();
            h.push(1);
            if id % 2 == 0 {
                h.push(2);
            }
            (id, h)
        })
        .collect()
}

fn naive(corpus: &BTreeMap<u32, Vec<u32>>, q: &[u32], opts: &SearchOptions) -> Vec<Hit> {
    let q: BTreeSet<u32> = q.iter().copied().collect();
    let min = opts.min_score(q.len()).max(1);
    let mut hits: Vec<Hit> = corpus
        .iter()
        .map(|(&id, h)| Hit {
            id,
            score: h
                .iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|x| q.contains(x))
                .count() as u32,
        })
        .filter(|h| h.score >= min)
        .collect();
    let top = hits.iter().map(|h| h.score).max().unwrap_or(0);
    hits.retain(|h| u64::from(h.score) * 100 >= u64::from(top) * u64::from(opts.score_pct()));
    hits.sort_by(|a, b| b.score.cmp(&a.score).then(a.id.cmp(&b.id)));
    hits.truncate(opts.limit());
    hits
}

fn queries(corpus: &BTreeMap<u32, Vec<u32>>) -> Vec<(Vec<u32>, SearchOptions)> {
    let all = SearchOptions {
        limit: Some(100),
        min_score: Some(1),
        score_pct: Some(0),
        deadline: None,
        prefetch_above: None,
    };
    vec![
        (vec![1], all),
        (vec![2, 1], all),
        (vec![2], SearchOptions::default()),
        (corpus[&500].clone(), SearchOptions::default()),
        (corpus[&1500][..3000].to_vec(), all),
        (corpus[&7].clone(), SearchOptions::default()),
        ([&corpus[&8][..50], &[1, 2][..]].concat(), all),
    ]
}

fn check(index: &Index, corpus: &BTreeMap<u32, Vec<u32>>, what: &str) {
    let snap = index.snapshot();
    for (q, opts) in queries(corpus) {
        assert_eq!(
            snap.search(&q, &opts).unwrap(),
            naive(corpus, &q, &opts),
            "{what}"
        );
    }
}

/// The corpus as inserts.
fn inserts(corpus: &BTreeMap<u32, Vec<u32>>) -> Vec<Change> {
    corpus
        .iter()
        .map(|(&id, h)| Change::Insert {
            id,
            hashes: h.clone(),
        })
        .collect()
}

#[test]
fn frequent_and_long_fingerprints_search_the_same_from_memory_files_and_bulk() {
    let corpus = corpus();
    let dir = tempfile::tempdir().unwrap();
    let index = Index::create(dir.path(), Generation(1), IndexOptions::default()).unwrap();
    let changes = inserts(&corpus);
    for (i, chunk) in changes.chunks(1000).enumerate() {
        index
            .apply(&[Batch::new(Position(i as u64 + 1), chunk.to_vec())])
            .unwrap();
    }
    check(&index, &corpus, "memory segments");
    index.force_merge().unwrap();
    assert_eq!(index.stats().file_segments, 1);
    check(&index, &corpus, "one file segment");
    drop(index);

    let bulk_dir = tempfile::tempdir().unwrap();
    // Small runs force several of them and a k-way merge.
    let mut b = BulkBuilder::new(
        bulk_dir.path(),
        Generation(1),
        Position(1),
        BulkOptions {
            run_postings: 50_000,
            ..BulkOptions::default()
        },
    )
    .unwrap();
    for (&id, h) in &corpus {
        b.add(id, h).unwrap();
    }
    let report = b.finish().unwrap();
    assert!(report.runs > 3, "{report:?}");
    let index = Index::open(bulk_dir.path(), IndexOptions::default()).unwrap();
    check(&index, &corpus, "bulk build");
    assert_eq!(index.stats().file_segments, 1);
    drop(index);

    // Runs merged two at a time: several final segments, the same answers,
    // and no run left behind.
    let grouped = tempfile::tempdir().unwrap();
    let mut b = BulkBuilder::new(
        grouped.path(),
        Generation(1),
        Position(1),
        BulkOptions {
            run_postings: 50_000,
            runs_per_segment: 2,
            ..BulkOptions::default()
        },
    )
    .unwrap();
    for (&id, h) in &corpus {
        b.add(id, h).unwrap();
    }
    let report = b.finish().unwrap();
    let index = Index::open(grouped.path(), IndexOptions::default()).unwrap();
    assert_eq!(index.stats().file_segments, report.runs.div_ceil(2));
    assert_eq!(report.postings, index.stats().file_postings);
    check(&index, &corpus, "bulk build in groups");
    assert!(!grouped.path().join("bulk.tmp").exists());
}

#[test]
fn bulk_build_keeps_the_later_of_two_fingerprints_with_one_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = BulkBuilder::new(
        dir.path(),
        Generation(4),
        Position(9),
        BulkOptions {
            run_postings: 10,
            runs_per_segment: 2,
            ..BulkOptions::default()
        },
    )
    .unwrap();
    b.add(1, &[1, 2, 3]).unwrap();
    b.add(2, &[3, 4]).unwrap();
    b.add(1, &[7, 7, 8]).unwrap();
    // Ids again across groups: the newest still wins.
    b.add(3, &[5]).unwrap();
    b.add(3, &[6]).unwrap();
    b.add(3, &[9, 10]).unwrap();
    assert!(matches!(b.add(0, &[1]), Err(Error::InvalidFingerprintId)));
    b.finish().unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let snap = index.snapshot();
    let dump = snap.dump().unwrap();
    assert_eq!(
        dump,
        BTreeMap::from([(1, vec![7, 8]), (2, vec![3, 4]), (3, vec![9, 10])])
    );
    assert_eq!(snap.generation, Generation(4));
    assert_eq!(snap.get(1).unwrap().version, Position(9));
    assert_eq!(snap.num_docs, 3);
}

#[test]
fn a_search_past_its_deadline_answers_search_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::create(dir.path(), Generation(1), IndexOptions::default()).unwrap();
    index
        .apply(&[Batch::new(
            Position(1),
            vec![Change::Insert {
                id: 1,
                hashes: vec![1, 2],
            }],
        )])
        .unwrap();
    let past = SearchOptions {
        deadline: Some(Instant::now() - Duration::from_millis(1)),
        ..SearchOptions::default()
    };
    assert!(matches!(
        index.snapshot().search(&[1, 2], &past),
        Err(Error::SearchTimeout)
    ));
    let future = SearchOptions {
        deadline: Some(Instant::now() + Duration::from_secs(10)),
        ..SearchOptions::default()
    };
    assert_eq!(index.snapshot().search(&[1, 2], &future).unwrap().len(), 1);
}

/// A compaction told to stop leaves the index as it was (same segments, same
/// answers, no unfinished file); let run, it leaves one segment with the same
/// answers, having reported its progress on the way.
#[test]
fn a_cancelled_compaction_changes_nothing_and_a_finished_one_merges_all() {
    let corpus = corpus();
    let dir = tempfile::tempdir().unwrap();
    let index = Index::create(dir.path(), Generation(1), IndexOptions::default()).unwrap();
    let changes = inserts(&corpus);
    for (i, chunk) in changes.chunks(600).enumerate() {
        index
            .apply(&[Batch::new(Position(i as u64 + 1), chunk.to_vec())])
            .unwrap();
        index.checkpoint().unwrap();
    }
    let before = index.stats().file_segments;
    assert!(before >= 4, "{before} file segments");
    let asked = std::sync::atomic::AtomicU64::new(0);
    let stop = |written: u64, total: u64| {
        asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(written <= total, "{written} of {total}");
        written < 100_000
    };
    match index.compact(&stop) {
        Err(Error::Cancelled) => {}
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(asked.load(std::sync::atomic::Ordering::Relaxed) >= 2);
    assert_eq!(index.stats().file_segments, before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    check(&index, &corpus, "after a cancelled compaction");
    let last = std::sync::atomic::AtomicU64::new(0);
    let merged = index
        .compact(&|written, total| {
            last.store(
                written * 100 / total.max(1),
                std::sync::atomic::Ordering::Relaxed,
            );
            true
        })
        .unwrap();
    assert!(merged);
    assert!(last.load(std::sync::atomic::Ordering::Relaxed) >= 50);
    assert_eq!(index.stats().file_segments, 1);
    check(&index, &corpus, "after a compaction");
}
