//! The change feed's source: an index's changes after a version, read from its
//! WAL, across checkpoints (within the retention) and a reopen.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fpnode_segments::index::{Index, IndexOptions};
use fpnode_segments::wal::WalOptions;
use fpnode_segments::{Batch, Change, Error, Generation, Position};

fn options(retain_bytes: u64) -> IndexOptions {
    IndexOptions {
        wal: WalOptions {
            max_file_bytes: 300,
            fsync: false,
            retain_bytes,
        },
        ..IndexOptions::default()
    }
}

fn apply(index: &Index, from: u64, to: u64) {
    for p in from..=to {
        let id = p as u32;
        let mut changes = vec![Change::Insert {
            id,
            hashes: vec![id, id + 1],
        }];
        if p % 5 == 0 {
            changes.push(Change::Delete { id: id - 1 });
        }
        index.apply(&[Batch::new(Position(p), changes)]).unwrap();
    }
}

/// Every batch after `since`, page by page.
fn all_since(index: &Index, since: u64) -> Result<Vec<u64>, Error> {
    let mut since = Position(since);
    let mut out = Vec::new();
    loop {
        let page = index.changes_since(since, 10, None)?;
        let Some(last) = page.batches.last() else {
            return Ok(out);
        };
        since = last.position;
        out.extend(page.batches.iter().map(|b| b.position.0));
        if !page.more {
            return Ok(out);
        }
    }
}

#[test]
fn changes_read_across_checkpoints_within_the_retention_and_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    {
        let index = Index::create(&dir, Generation(1), options(1 << 20)).unwrap();
        apply(&index, 1, 30);
        index.checkpoint().unwrap();
        apply(&index, 31, 40);
        assert_eq!(all_since(&index, 0).unwrap(), (1..=40).collect::<Vec<_>>());
        assert_eq!(
            all_since(&index, 35).unwrap(),
            (36..=40).collect::<Vec<_>>()
        );
        // The changes themselves, deletes included.
        let page = index.changes_since(Position(24), 1000, None).unwrap();
        assert_eq!(
            page.batches[0].changes,
            vec![
                Change::Insert {
                    id: 25,
                    hashes: vec![25, 26]
                },
                Change::Delete { id: 24 }
            ]
        );
    }
    let index = Index::open(&dir, options(1 << 20)).unwrap();
    assert_eq!(
        all_since(&index, 10).unwrap(),
        (11..=40).collect::<Vec<_>>()
    );
}

#[test]
fn without_retention_a_checkpointed_version_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let index = Index::create(&tmp.path().join("idx"), Generation(1), options(0)).unwrap();
    apply(&index, 1, 30);
    index.checkpoint().unwrap();
    apply(&index, 31, 33);
    match all_since(&index, 0) {
        Err(Error::ChangesNotRetained { since: 0, oldest }) => {
            assert!(oldest > 1 && oldest <= 31, "oldest {oldest}");
            assert_eq!(
                all_since(&index, oldest - 1).unwrap(),
                (oldest..=33).collect::<Vec<_>>()
            );
        }
        other => panic!("{other:?}"),
    }
}
