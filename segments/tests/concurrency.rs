//! Concurrency: a writer, checkpoints, memory merges and file merges on threads of
//! their own, and a reader that checks every snapshot it takes against the model
//! at that snapshot's position. Whatever the interleaving, each snapshot must
//! equal "batches 1..=position applied in order".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fpnode_segments::index::IndexOptions;
use fpnode_segments::merge_policy::TieredMergePolicy;
use fpnode_segments::types::torture_batch;
use fpnode_segments::{Change, Generation, Index, Position};

const BATCHES: u64 = 1500;

/// The model state after each position, computed up front.
fn model_states() -> Vec<BTreeMap<u32, Vec<u32>>> {
    let mut docs: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut states = vec![docs.clone()];
    for p in 1..=BATCHES {
        for c in torture_batch(Position(p)).changes {
            match c {
                Change::Insert { id, hashes } => {
                    let set: BTreeSet<u32> = hashes.into_iter().collect();
                    docs.insert(id, set.into_iter().collect());
                }
                Change::Delete { id } => {
                    docs.remove(&id);
                }
            }
        }
        states.push(docs.clone());
    }
    states
}

#[test]
fn snapshots_taken_during_concurrent_maintenance_always_equal_the_model() {
    let states = Arc::new(model_states());
    let dir = tempfile::tempdir().unwrap();
    let small = TieredMergePolicy {
        segments_per_tier: 3,
        max_merge_at_once: 4,
        floor_bytes: 2048,
        max_merged_bytes: u64::MAX,
        max_segments: 6,
    };
    let opts = IndexOptions {
        checkpoint_threshold: 1500,
        checkpoint_age: Duration::from_millis(20),
        memory_policy: small.clone(),
        file_policy: small,
        stall_timeout: Duration::from_secs(30),
        ..IndexOptions::default()
    };
    let index = Arc::new(Index::create(dir.path(), Generation(1), opts.clone()).unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for task in 0..3 {
        let (index, done) = (index.clone(), done.clone());
        threads.push(std::thread::spawn(move || {
            let mut did_any = 0u32;
            while !done.load(Ordering::Relaxed) {
                let did = match task {
                    0 => index.checkpoint_due() && index.checkpoint().unwrap(),
                    1 => index.merge_memory().unwrap(),
                    _ => index.merge_files().unwrap(),
                };
                did_any += u32::from(did);
                if !did {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            did_any
        }));
    }
    let reader = {
        let (index, done, states) = (index.clone(), done.clone(), states.clone());
        std::thread::spawn(move || {
            let mut checked = 0;
            while !done.load(Ordering::Relaxed) {
                let snap = index.snapshot();
                let expect = &states[snap.position.0 as usize];
                assert_eq!(
                    &snap.dump().unwrap(),
                    expect,
                    "snapshot at {}",
                    snap.position
                );
                assert_eq!(snap.num_docs, expect.len() as u64);
                checked += 1;
            }
            checked
        })
    };
    for p in 1..=BATCHES {
        index.apply(&[torture_batch(Position(p))]).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let work: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let checked = reader.join().unwrap();
    assert!(
        work.iter().all(|&n| n > 0),
        "every maintenance task must have run: {work:?}"
    );
    assert!(checked > 10, "reader checked only {checked} snapshots");
    let last = &states[BATCHES as usize];
    assert_eq!(&index.snapshot().dump().unwrap(), last);
    drop(index);
    let index = Index::open(dir.path(), opts).unwrap();
    assert_eq!(&index.snapshot().dump().unwrap(), last);
    assert_eq!(index.position(), Position(BATCHES));
}
