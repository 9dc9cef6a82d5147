#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Operation-sequence property test: the engine against a naive in-memory model.
//!
//! Random sequences of inserts, replaces, deletes, metadata changes,
//! checkpoints, memory and file merges and close/reopen are applied to both;
//! after every step random searches (random options) must return identical ids,
//! scores and order, and lookups, doc counts and full dumps must agree.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fpnode_segments::index::IndexOptions;
use fpnode_segments::merge_policy::TieredMergePolicy;
use fpnode_segments::wal::WalOptions;
use fpnode_segments::{Batch, Change, Generation, Hit, Index, Position, SearchOptions};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Apply(Vec<Change>, Vec<(String, Option<String>)>),
    Checkpoint,
    Flush,
    MergeFiles,
    ForceMerge,
    Reopen,
    Search(Vec<u32>, Option<usize>, Option<u32>, Option<u32>),
}

fn hash() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => 0u32..48,
        1 => Just(u32::MAX),
        1 => any::<u32>(),
    ]
}

fn change() -> impl Strategy<Value = Change> {
    let id = 1u32..40;
    prop_oneof![
        4 => (id.clone(), proptest::collection::vec(hash(), 0..24))
            .prop_map(|(id, hashes)| Change::Insert { id, hashes }),
        1 => id.prop_map(|id| Change::Delete { id }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (
            proptest::collection::vec(change(), 1..8),
            proptest::collection::vec((prop_oneof![Just("a"), Just("b")], proptest::option::of("[xy]{1,2}")), 0..2)
        ).prop_map(|(c, m)| Op::Apply(c, m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        2 => Just(Op::Checkpoint),
        2 => Just(Op::Flush),
        2 => Just(Op::MergeFiles),
        1 => Just(Op::ForceMerge),
        2 => Just(Op::Reopen),
        6 => (
            proptest::collection::vec(hash(), 0..30),
            proptest::option::of(0usize..8),
            proptest::option::of(0u32..5),
            proptest::option::of(0u32..101),
        ).prop_map(|(q, l, m, p)| Op::Search(q, l, m, p)),
    ]
}

#[derive(Default)]
struct Model {
    docs: BTreeMap<u32, BTreeSet<u32>>,
    last_write: BTreeMap<u32, u64>,
    metadata: BTreeMap<String, String>,
    position: u64,
}

impl Model {
    fn apply(&mut self, batch: &Batch) {
        for c in &batch.changes {
            match c {
                Change::Insert { id, hashes } => {
                    self.docs.insert(*id, hashes.iter().copied().collect());
                }
                Change::Delete { id } => {
                    self.docs.remove(id);
                }
            }
            self.last_write.insert(c.id(), batch.position.0);
        }
        for (k, v) in &batch.metadata {
            match v {
                Some(v) => self.metadata.insert(k.clone(), v.clone()),
                None => self.metadata.remove(k),
            };
        }
        self.position = batch.position.0;
    }

    /// The obvious, slow search: score every document against the query set.
    fn search(
        &self,
        query: &[u32],
        limit: Option<usize>,
        min_score: Option<u32>,
        pct: Option<u32>,
    ) -> Vec<Hit> {
        let q: BTreeSet<u32> = query.iter().copied().collect();
        let min_score = min_score.unwrap_or(q.len().div_ceil(20) as u32).max(1);
        let mut hits: Vec<Hit> = self
            .docs
            .iter()
            .map(|(&id, h)| Hit {
                id,
                score: h.intersection(&q).count() as u32,
            })
            .filter(|h| h.score >= min_score)
            .collect();
        let top = hits.iter().map(|h| h.score).max().unwrap_or(0);
        let pct = pct.unwrap_or(10);
        hits.retain(|h| h.score as f64 >= top as f64 * pct as f64 / 100.0);
        hits.sort_by(|a, b| b.score.cmp(&a.score).then(a.id.cmp(&b.id)));
        hits.truncate(limit.unwrap_or(40).clamp(1, 100));
        hits
    }
}

fn options() -> IndexOptions {
    let tiny = TieredMergePolicy {
        segments_per_tier: 3,
        max_merge_at_once: 3,
        floor_bytes: 64,
        max_merged_bytes: u64::MAX,
        max_segments: 6,
    };
    IndexOptions {
        checkpoint_threshold: 120,
        checkpoint_age: Duration::from_secs(3600),
        memory_policy: tiny.clone(),
        file_policy: tiny,
        stall_timeout: Duration::ZERO,
        max_memory_segments: 1000,
        max_file_segments: 1000,
        max_memory_factor: 1000,
        // Durability is the crash test's job; keep 1000 cases fast.
        wal: WalOptions {
            fsync: false,
            ..WalOptions::default()
        },
        ..IndexOptions::default()
    }
}

fn check(index: &Index, model: &Model) {
    let snap = index.snapshot();
    assert_eq!(snap.num_docs, model.docs.len() as u64, "num_docs");
    assert_eq!(snap.position.0, model.position, "position");
    assert_eq!(*snap.metadata, model.metadata, "metadata");
    let dump = snap.dump().unwrap();
    let expect: BTreeMap<u32, Vec<u32>> = model
        .docs
        .iter()
        .map(|(&id, h)| (id, h.iter().copied().collect()))
        .collect();
    assert_eq!(dump, expect, "dump");
    for id in 0..42 {
        let got = snap.get(id);
        assert_eq!(got.is_some(), model.docs.contains_key(&id), "get({id})");
        if let Some(info) = got {
            assert!(info.version.0 >= model.last_write[&id] && info.version.0 <= model.position);
        }
    }
    let (min, max) = snap.id_range();
    assert_eq!(min, model.docs.keys().next().copied().unwrap_or(0));
    assert_eq!(max, model.docs.keys().next_back().copied().unwrap_or(0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_naive_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut index = Some(Index::create(dir.path(), Generation(1), options()).unwrap());
        let mut model = Model::default();
        for op in ops {
            let idx = index.as_ref().unwrap();
            match op {
                Op::Apply(changes, meta) => {
                    let batch = Batch {
                        position: Position(model.position + 1 + (changes.len() as u64 % 3)),
                        changes,
                        metadata: meta.into_iter().collect(),
                        replaced: Vec::new(),
                    };
                    idx.apply(std::slice::from_ref(&batch)).unwrap();
                    model.apply(&batch);
                }
                Op::Checkpoint => { idx.checkpoint().unwrap(); }
                Op::Flush => { idx.flush().unwrap(); }
                Op::MergeFiles => { idx.merge_files().unwrap(); }
                Op::ForceMerge => { idx.force_merge().unwrap(); }
                Op::Reopen => {
                    drop(index.take());
                    index = Some(Index::open(dir.path(), options()).unwrap());
                }
                Op::Search(q, limit, min_score, pct) => {
                    let opts = SearchOptions { limit, min_score, score_pct: pct, deadline: None, prefetch_above: Some(0) };
                    let got = idx.snapshot().search(&q, &opts).unwrap();
                    prop_assert_eq!(got, model.search(&q, limit, min_score, pct));
                }
            }
            check(index.as_ref().unwrap(), &model);
        }
        // Everything survives a final reopen, and no orphan files are left.
        drop(index.take());
        let index = Index::open(dir.path(), options()).unwrap();
        check(&index, &model);
    }
}

#[test]
fn replaying_an_already_applied_position_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::create(dir.path(), Generation(1), options()).unwrap();
    let b = Batch::new(
        Position(5),
        vec![Change::Insert {
            id: 1,
            hashes: vec![1, 2],
        }],
    );
    assert_eq!(index.apply(std::slice::from_ref(&b)).unwrap(), Position(5));
    let again = Batch::new(Position(5), vec![Change::Delete { id: 1 }]);
    assert_eq!(index.apply(&[again]).unwrap(), Position(5));
    assert!(index.snapshot().get(1).is_some());
    let older = Batch::new(Position(3), vec![Change::Delete { id: 1 }]);
    assert_eq!(index.apply(&[older]).unwrap(), Position(5));
    assert!(index.snapshot().get(1).is_some());
}
