//! Crash test: a child process applies batches and acknowledges each durable one;
//! it is SIGKILLed at random moments. After every kill the index must hold exactly
//! the batches up to its applied position (no batch half applied), and that
//! position must cover every acknowledged batch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use fpnode_segments::index::IndexOptions;
use fpnode_segments::types::torture_batch;
use fpnode_segments::{Change, Index, Position, SearchOptions};

#[derive(Default)]
struct Model {
    docs: BTreeMap<u32, Vec<u32>>,
    last: Option<String>,
    position: u64,
}

impl Model {
    fn advance_to(&mut self, position: u64) {
        while self.position < position {
            self.position += 1;
            let b = torture_batch(Position(self.position));
            for c in &b.changes {
                match c {
                    Change::Insert { id, hashes } => {
                        let set: BTreeSet<u32> = hashes.iter().copied().collect();
                        self.docs.insert(*id, set.into_iter().collect());
                    }
                    Change::Delete { id } => {
                        self.docs.remove(id);
                    }
                }
            }
            if let Some(Some(v)) = b.metadata.get("last") {
                self.last = Some(v.clone());
            }
        }
    }
}

#[test]
fn every_acknowledged_batch_survives_sigkill_and_none_is_half_applied() {
    let dir = tempfile::tempdir().unwrap();
    let index_dir = dir.path().join("index");
    let mut model = Model::default();
    let mut seed = 0x1234_5678u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut total_acked = 0u64;
    let mut checkpointed = 0u64;
    const ITERATIONS: usize = 32;
    for iteration in 0..ITERATIONS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fpseg-torture"))
            .arg(&index_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + rand() % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let acked = out
            .lines()
            .filter_map(|l| l.strip_prefix("ACK "))
            .filter_map(|p| p.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        total_acked += out.lines().count() as u64;

        // Killed before it created the index (MANIFEST is written last):
        // there is nothing to open, and nothing may have been acknowledged.
        if !index_dir.join("MANIFEST").exists() {
            assert_eq!(
                total_acked, 0,
                "acknowledged batches of an index never created"
            );
            continue;
        }
        let index = Index::open(&index_dir, IndexOptions::default()).unwrap();
        let snap = index.snapshot();
        assert!(
            snap.position.0 >= acked,
            "iteration {iteration}: acknowledged {acked} but index recovered only to {}",
            snap.position
        );
        assert!(snap.position.0 >= model.position, "position went backwards");
        checkpointed = snap.checkpoint_position.0;
        model.advance_to(snap.position.0);
        assert_eq!(
            snap.dump().unwrap(),
            model.docs,
            "iteration {iteration}: state at {} differs from batches 1..={}",
            snap.position,
            snap.position
        );
        assert_eq!(snap.metadata.get("last"), model.last.as_ref());
        for (&id, hashes) in model.docs.iter().take(5) {
            let hits = snap.search(hashes, &SearchOptions::default()).unwrap();
            assert!(
                hits.iter()
                    .any(|h| h.id == id && h.score as usize == hashes.len())
            );
        }
    }
    assert!(
        checkpointed > 0,
        "no checkpoint ever ran: the test exercised only the WAL"
    );
    assert!(
        total_acked > ITERATIONS as u64 * 5,
        "the child acknowledged too few batches ({total_acked}) for the test to mean much"
    );
}
