//! Crash-test driver: applies deterministic batches to an index as fast as it
//! can, with checkpoints and merges running beside it, and prints `ACK <pos>` after
//! each `apply` returns (that is, once the batch is durable). The crash test
//! SIGKILLs it at random moments and checks that every acknowledged batch
//! survived and none was half applied.
//!
//! Usage: `fpseg-torture <index dir>`; continues after the index's applied
//! position, creating the index if needed. Batch `p` is `torture_batch(p)`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fpnode_segments::index::IndexOptions;
use fpnode_segments::merge_policy::TieredMergePolicy;
use fpnode_segments::types::torture_batch;
use fpnode_segments::{Generation, Index, Position};

fn options() -> IndexOptions {
    let small = TieredMergePolicy {
        segments_per_tier: 3,
        max_merge_at_once: 4,
        floor_bytes: 4096,
        max_merged_bytes: u64::MAX,
        max_segments: 8,
    };
    IndexOptions {
        checkpoint_threshold: 2000,
        checkpoint_age: Duration::from_millis(50),
        memory_policy: small.clone(),
        file_policy: small,
        ..IndexOptions::default()
    }
}

fn main() {
    let dir: PathBuf = std::env::args()
        .nth(1)
        .expect("usage: fpseg-torture <dir>")
        .into();
    let index = if dir.join("MANIFEST").exists() {
        Index::open(&dir, options())
    } else {
        std::fs::create_dir_all(&dir).unwrap();
        Index::create(&dir, Generation(1), options())
    }
    .unwrap();
    let index = Arc::new(index);
    for merge in [false, true] {
        let index = index.clone();
        std::thread::spawn(move || {
            loop {
                let did = if merge {
                    index.merge_files().unwrap()
                } else {
                    index.flush().unwrap()
                };
                if !did {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
    }
    let mut out = std::io::stdout().lock();
    let mut pos = index.position().0;
    loop {
        pos += 1;
        // Group commit of one or two batches at a time.
        let batches: Vec<_> = if pos % 3 == 0 {
            let b = vec![
                torture_batch(Position(pos)),
                torture_batch(Position(pos + 1)),
            ];
            pos += 1;
            b
        } else {
            vec![torture_batch(Position(pos))]
        };
        let applied = index.apply(&batches).unwrap();
        writeln!(out, "ACK {}", applied.0).unwrap();
        out.flush().unwrap();
    }
}
