#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The WAL writer's own guarantees: it never writes a record the reader would
//! refuse, and a failed fsync poisons it instead of being retried.

use std::sync::Arc;

use fpnode_segments::power_cut::PowerCutFs;
use fpnode_segments::wal::{self, WalOptions, WalWriter};
use fpnode_segments::{Batch, Change, Error, Fs, Position};

fn batch(p: u64, hashes: Vec<u32>) -> Batch {
    Batch::new(
        Position(p),
        vec![Change::Insert {
            id: p as u32,
            hashes,
        }],
    )
}

fn replayed(dir: &std::path::Path) -> Vec<u64> {
    let mut seen = Vec::new();
    wal::replay(dir, Position(0), |b| {
        seen.push(b.position.0);
        Ok(())
    })
    .unwrap();
    seen
}

/// The reader refuses a record over 1 GiB as damage (a torn tail): written, it
/// would be acknowledged and then dropped on replay. The writer refuses it up
/// front, names why, and the WAL goes on as if it had not been offered.
#[test]
fn a_record_the_reader_would_refuse_is_refused_at_append_and_the_wal_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let mut w = WalWriter::open(&dir, Position(0), WalOptions::default(), Fs::default()).unwrap();
    w.append(&batch(1, vec![7, 8, 9])).unwrap();
    // Each hash above 65,535 takes 5 bytes of MessagePack: 215M of them
    // encode to just over 1 GiB.
    let huge = batch(2, vec![1_000_000; 215_000_000]);
    match w.append(&huge) {
        Err(Error::InvalidInput(why)) => assert!(why.contains("too large"), "{why}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    drop(huge);
    w.append(&batch(2, vec![10, 11])).unwrap();
    assert_eq!(w.sync().unwrap(), Position(2));
    drop(w);
    assert_eq!(replayed(&dir), vec![1, 2]);
}

/// After a failed fsync the file's state is unknown: every later append and
/// sync fails with `Poisoned`, and the durable disk holds exactly what was
/// acknowledged before.
#[test]
fn a_failed_fsync_poisons_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let pfs = Arc::new(PowerCutFs::new(tmp.path()).unwrap());
    let dir = tmp.path().join("wal");
    let mut w = WalWriter::open(
        &dir,
        Position(0),
        WalOptions::default(),
        Fs::new(pfs.clone()),
    )
    .unwrap();
    w.append(&batch(1, vec![1])).unwrap();
    assert_eq!(w.sync().unwrap(), Position(1));
    w.append(&batch(2, vec![2])).unwrap();
    pfs.fail_sync(1);
    assert!(w.sync().is_err(), "the injected fsync failure is reported");
    assert!(matches!(
        w.append(&batch(3, vec![3])),
        Err(Error::Poisoned(_))
    ));
    assert!(matches!(w.sync(), Err(Error::Poisoned(_))));
    assert_eq!(w.durable_position(), Position(1));
    drop(w);
    let cut = tempfile::tempdir().unwrap();
    pfs.image().materialize(cut.path()).unwrap();
    assert_eq!(replayed(&cut.path().join("wal")), vec![1]);
}

/// A new WAL file whose directory entry could not be made durable is never
/// written to: the writer is poisoned, not left to recreate the file and add
/// a second header to it.
#[test]
fn a_failed_directory_sync_when_starting_a_file_poisons_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let pfs = Arc::new(PowerCutFs::new(tmp.path()).unwrap());
    let dir = tmp.path().join("wal");
    let opts = WalOptions {
        max_file_bytes: 1,
        fsync: true,
        retain_bytes: 0,
    };
    let mut w = WalWriter::open(&dir, Position(0), opts, Fs::new(pfs.clone())).unwrap();
    w.append(&batch(1, vec![1])).unwrap();
    assert_eq!(w.sync().unwrap(), Position(1));
    // The next append rolls to a new file: the old file is synced whole
    // (sync 1), then the new file's directory entry (sync 2), which fails.
    let count = |step: &str| -> u64 {
        pfs.sites()
            .iter()
            .filter(|(k, _)| k.starts_with("segments/src/wal/writer.rs") && k.ends_with(step))
            .map(|(_, n)| n)
            .sum()
    };
    let (files, dirs) = (count(" file"), count(" dir"));
    pfs.fail_sync(2);
    assert!(w.append(&batch(2, vec![2])).is_err());
    // Both were asked for (a site is counted even when its sync fails), so
    // the second, the failing one, was the directory's.
    assert_eq!((count(" file"), count(" dir")), (files + 1, dirs + 1));
    assert!(matches!(
        w.append(&batch(2, vec![2])),
        Err(Error::Poisoned(_))
    ));
    drop(w);
    // The real directory opens and replays cleanly: no doubled header.
    assert_eq!(replayed(&dir), vec![1]);
}
