#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The write path's three steps (prepare, log, publish) as a pipeline calls
//! them: overlapped, out of lock-step, and interrupted between steps.

use fpnode_segments::{Batch, Change, Error, Generation, Index, IndexOptions, Position};

fn batch(p: u64, id: u32) -> Batch {
    Batch::new(
        Position(p),
        vec![Change::Insert {
            id,
            hashes: vec![id, id + 1],
        }],
    )
}

fn index(dir: &std::path::Path) -> Index {
    Index::create(dir, Generation(1), IndexOptions::default()).unwrap()
}

/// Group 2 is prepared before group 1 is logged (what a pipeline does while
/// group 1 waits on its fsync); both then log in order and publish together.
#[test]
fn groups_prepared_ahead_log_and_publish_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let index = index(tmp.path());
    let one = index.prepare(vec![batch(1, 10), batch(2, 20)]).unwrap();
    let two = index.prepare(vec![batch(3, 30)]).unwrap();
    assert_eq!(index.log(one).unwrap(), Position(2));
    assert_eq!(index.logged_position(), Position(2));
    assert_eq!(index.position(), Position(0), "logged is not yet visible");
    assert_eq!(index.log(two).unwrap(), Position(3));
    assert_eq!(index.publish_logged().unwrap(), Position(3));
    let snap = index.snapshot();
    for id in [10, 20, 30] {
        assert!(snap.get(id).is_some(), "fingerprint {id}");
    }
}

/// A group whose positions do not follow the logged position is refused
/// and leaves the WAL as it was.
#[test]
fn a_group_out_of_order_is_refused_at_log() {
    let tmp = tempfile::tempdir().unwrap();
    let index = index(tmp.path());
    let late = index.prepare(vec![batch(2, 20)]).unwrap();
    let early = index.prepare(vec![batch(1, 10)]).unwrap();
    index.log(late).unwrap();
    assert!(matches!(
        index.log(early),
        Err(Error::PositionNotIncreasing { .. })
    ));
    index.publish_logged().unwrap();
    drop(index);
    let index = Index::open(tmp.path(), IndexOptions::default()).unwrap();
    assert_eq!(index.position(), Position(2));
    assert!(index.snapshot().get(10).is_none());
}

/// Logged but never published by its caller (a writer that crashed between
/// the steps): the next publish, by anyone, makes it visible, and a reopen
/// finds it in the WAL.
#[test]
fn a_logged_group_is_published_by_the_next_publish_and_survives_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let index = index(tmp.path());
    index
        .log(index.prepare(vec![batch(1, 10)]).unwrap())
        .unwrap();
    // The next writer only publishes.
    assert_eq!(index.publish_logged().unwrap(), Position(1));
    assert!(index.snapshot().get(10).is_some());
    index
        .log(index.prepare(vec![batch(2, 20)]).unwrap())
        .unwrap();
    drop(index);
    let index = Index::open(tmp.path(), IndexOptions::default()).unwrap();
    assert_eq!(index.position(), Position(2));
    assert!(index.snapshot().get(20).is_some());
}

/// One thread logs while another prepares and a third publishes (and
/// merges): every group ends up visible exactly once, in order.
#[test]
fn steps_on_three_threads_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let index = std::sync::Arc::new(index(tmp.path()));
    let (to_log, logged) = std::sync::mpsc::sync_channel::<fpnode_segments::Prepared>(2);
    let (to_publish, published) = std::sync::mpsc::sync_channel::<Position>(2);
    let logger = {
        let index = index.clone();
        std::thread::spawn(move || {
            for group in logged {
                to_publish.send(index.log(group).unwrap()).unwrap();
            }
        })
    };
    let publisher = {
        let index = index.clone();
        std::thread::spawn(move || {
            let mut last = Position(0);
            for logged in published {
                let visible = index.publish_logged().unwrap();
                assert!(
                    visible >= logged,
                    "{visible} published after {logged} logged"
                );
                last = visible;
                // Memory merges, as the node's merger would run beside.
                index.maintain().unwrap();
            }
            last
        })
    };
    for g in 0..200u64 {
        let batches = (0..5)
            .map(|i| batch(g * 5 + i + 1, (g * 5 + i + 1) as u32))
            .collect();
        to_log.send(index.prepare(batches).unwrap()).unwrap();
    }
    drop(to_log);
    logger.join().unwrap();
    assert_eq!(publisher.join().unwrap(), Position(1000));
    assert_eq!(index.snapshot().num_docs, 1000);
}

/// A pipeline replaced by a newer one cannot log any more: its groups are
/// refused (`Fenced`), so the new one's numbering, read after the fence,
/// never collides with a late log of the old one.
#[test]
fn a_replaced_pipeline_cannot_log() {
    let tmp = tempfile::tempdir().unwrap();
    let index = index(tmp.path());
    let old = index.fence();
    index
        .log_fenced(old, index.prepare(vec![batch(1, 10)]).unwrap())
        .unwrap();
    let late = index.prepare(vec![batch(2, 20)]).unwrap();
    let new = index.fence();
    assert!(matches!(index.log_fenced(old, late), Err(Error::Fenced)));
    assert_eq!(index.logged_position(), Position(1));
    index
        .log_fenced(new, index.prepare(vec![batch(2, 30)]).unwrap())
        .unwrap();
    assert_eq!(index.publish_logged().unwrap(), Position(2));
    assert!(index.snapshot().get(30).is_some());
    assert!(index.snapshot().get(20).is_none());
}

/// Each logged batch names the ids it inserts that were live before it
/// (`Batch::replaced`: an `update` in the change feed), also when the group
/// that made them live is logged but not yet published, and the change log
/// keeps it across a reopen.
#[test]
fn logged_batches_name_the_fingerprints_they_replace() {
    let tmp = tempfile::tempdir().unwrap();
    let index = index(tmp.path());
    let ins = |id: u32| Change::Insert {
        id,
        hashes: vec![id],
    };
    index
        .apply(&[Batch::new(Position(1), vec![ins(1), ins(2)])])
        .unwrap();
    // Groups A and B are both logged before either is published.
    let a = index
        .prepare(vec![
            Batch::new(Position(2), vec![ins(2), ins(3), Change::Delete { id: 1 }]),
            Batch::new(Position(3), vec![ins(3), ins(1)]),
        ])
        .unwrap();
    let b = index
        .prepare(vec![Batch::new(
            Position(4),
            vec![ins(1), ins(3), Change::Delete { id: 2 }, ins(4)],
        )])
        .unwrap();
    index.log(a).unwrap();
    index.log(b).unwrap();
    index.publish_logged().unwrap();
    index
        .apply(&[Batch::new(Position(5), vec![ins(2), ins(4)])])
        .unwrap();
    let expected: Vec<(u64, Vec<u32>)> = vec![
        (1, vec![]),
        (2, vec![2]),
        (3, vec![3]),
        (4, vec![1, 3]),
        (5, vec![4]),
    ];
    let replaced = |index: &Index| -> Vec<(u64, Vec<u32>)> {
        let page = index.changes_since(Position(0), 1000, None).unwrap();
        page.batches
            .iter()
            .map(|b| (b.position.0, b.replaced.clone()))
            .collect()
    };
    assert_eq!(replaced(&index), expected);
    drop(index);
    let index = Index::open(tmp.path(), IndexOptions::default()).unwrap();
    assert_eq!(replaced(&index), expected, "after a reopen");
    // After the reopen, what is live comes from the recovered snapshot.
    index
        .apply(&[Batch::new(Position(6), vec![ins(1), ins(5)])])
        .unwrap();
    let page = index.changes_since(Position(5), 10, None).unwrap();
    assert_eq!(page.batches[0].replaced, vec![1]);
}
