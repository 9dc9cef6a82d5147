//! Recovery and corruption: a torn WAL tail is cut off and the index opens; a
//! flipped byte anywhere else in the WAL or in a segment is reported as
//! corruption naming the file, never returned as wrong results.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use fpnode_segments::index::{IndexOptions, SEGMENTS_DIR, WAL_DIR};
use fpnode_segments::types::torture_batch;
use fpnode_segments::{Error, Generation, Index, Position, SearchOptions};

fn files_in(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    v.sort();
    v
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

fn index_with(dir: &Path, batches: u64, checkpoint: bool) {
    let index = Index::create(dir, Generation(1), IndexOptions::default()).unwrap();
    for p in 1..=batches {
        index.apply(&[torture_batch(Position(p))]).unwrap();
        index.flush().unwrap();
    }
    if checkpoint {
        index.checkpoint().unwrap();
    }
}

fn assert_corrupt_naming(err: Error, file: &Path) {
    assert!(err.is_corruption(), "expected corruption, got: {err}");
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    assert!(
        err.to_string().contains(&name),
        "error does not name {name}: {err}"
    );
}

#[test]
fn wal_recovers_the_valid_prefix_of_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    index_with(dir.path(), 10, false);
    let wal = files_in(&dir.path().join(WAL_DIR), "wal").pop().unwrap();
    let len = fs::metadata(&wal).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&wal).unwrap();
    f.set_len(len - 3).unwrap();
    drop(f);
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    assert_eq!(index.position(), Position(9));
    // The index keeps working: batch 10 can be applied again.
    index.apply(&[torture_batch(Position(10))]).unwrap();
    drop(index);
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    assert_eq!(index.position(), Position(10));
}

#[test]
fn wal_tail_of_zeros_is_treated_as_torn() {
    let dir = tempfile::tempdir().unwrap();
    index_with(dir.path(), 4, false);
    let wal = files_in(&dir.path().join(WAL_DIR), "wal").pop().unwrap();
    let mut bytes = fs::read(&wal).unwrap();
    bytes.extend_from_slice(&[0u8; 4096]);
    fs::write(&wal, bytes).unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    assert_eq!(index.position(), Position(4));
}

#[test]
fn wal_flipped_byte_in_a_middle_record_is_corruption_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    index_with(dir.path(), 10, false);
    let wal = files_in(&dir.path().join(WAL_DIR), "wal").pop().unwrap();
    // Past the 16-byte header and the first record's 12-byte header: payload.
    flip(&wal, 16 + 12 + 3);
    let err = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
    assert_corrupt_naming(err, &wal);
}

#[test]
fn segment_flipped_data_byte_is_reported_on_read_never_as_wrong_results() {
    let dir = tempfile::tempdir().unwrap();
    index_with(dir.path(), 200, true);
    let seg = files_in(&dir.path().join(SEGMENTS_DIR), "fpseg")
        .pop()
        .unwrap();
    flip(&seg, 100);
    // Data is verified lazily, so the index opens...
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    let snap = index.snapshot();
    // ...but any search touching the damaged chunk fails, naming the file.
    let all: Vec<u32> = (0..4000).collect();
    let err = snap.search(&all, &SearchOptions::default()).unwrap_err();
    assert_corrupt_naming(err, &seg);
    let err = snap.dump().unwrap_err();
    assert_corrupt_naming(err, &seg);
    let f = snap.segments[0].segment.as_file().unwrap();
    assert_corrupt_naming(f.verify_all().unwrap_err(), &seg);
}

#[test]
fn segment_flipped_metadata_or_footer_byte_fails_open_naming_the_file() {
    for from_end in [1u64, 20, 140, 400] {
        let dir = tempfile::tempdir().unwrap();
        index_with(dir.path(), 200, true);
        let seg = files_in(&dir.path().join(SEGMENTS_DIR), "fpseg")
            .pop()
            .unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        flip(&seg, len - from_end);
        let err = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
        assert_corrupt_naming(err, &seg);
    }
}

#[test]
fn an_index_directory_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::create(dir.path(), Generation(1), IndexOptions::default()).unwrap();
    let err = Index::open(dir.path(), IndexOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    drop(index);
    Index::open(dir.path(), IndexOptions::default()).unwrap();
}

#[test]
fn orphan_segment_files_from_an_interrupted_merge_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    index_with(dir.path(), 20, true);
    let seg_dir = dir.path().join(SEGMENTS_DIR);
    fs::write(seg_dir.join("00000000000000ff.fpseg"), b"partial").unwrap();
    fs::write(seg_dir.join("0000000000000100.fpseg.tmp"), b"partial").unwrap();
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    assert_eq!(index.position(), Position(20));
    assert_eq!(files_in(&seg_dir, "fpseg").len(), 1);
    assert_eq!(files_in(&seg_dir, "tmp").len(), 0);
}

#[test]
fn wal_files_covered_by_a_checkpoint_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = IndexOptions {
        wal: fpnode_segments::wal::WalOptions {
            max_file_bytes: 512,
            fsync: true,
            retain_bytes: 0,
        },
        max_memory_segments: 1000,
        ..IndexOptions::default()
    };
    let index = Index::create(dir.path(), Generation(1), opts.clone()).unwrap();
    for p in 1..=50 {
        index.apply(&[torture_batch(Position(p))]).unwrap();
    }
    let wal_dir = dir.path().join(WAL_DIR);
    assert!(files_in(&wal_dir, "wal").len() > 5);
    index.checkpoint().unwrap();
    assert_eq!(files_in(&wal_dir, "wal").len(), 1);
    let before = index.snapshot().dump().unwrap();
    drop(index);
    let index = Index::open(dir.path(), opts).unwrap();
    assert_eq!(index.snapshot().dump().unwrap(), before);
    assert_eq!(index.position(), Position(50));
}

#[test]
fn a_merged_segment_file_is_deleted_only_after_the_last_reader_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let index = Index::create(dir.path(), Generation(1), IndexOptions::default()).unwrap();
    for p in 1..=3 {
        index.apply(&[torture_batch(Position(p))]).unwrap();
        index.checkpoint().unwrap();
    }
    let seg_dir = dir.path().join(SEGMENTS_DIR);
    assert_eq!(files_in(&seg_dir, "fpseg").len(), 3);
    let reader = index.snapshot();
    let expect = reader.dump().unwrap();
    index.force_merge().unwrap();
    // The old reader still sees its segments, and their files are still there.
    assert_eq!(files_in(&seg_dir, "fpseg").len(), 4);
    assert_eq!(reader.dump().unwrap(), expect);
    drop(reader);
    assert_eq!(files_in(&seg_dir, "fpseg").len(), 1);
    assert_eq!(index.snapshot().dump().unwrap(), expect);
}

#[test]
fn writes_stall_with_a_named_error_when_maintenance_falls_behind_and_resume_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let opts = IndexOptions {
        max_memory_segments: 4,
        stall_timeout: std::time::Duration::from_millis(50),
        ..IndexOptions::default()
    };
    let index = Index::create(dir.path(), Generation(1), opts).unwrap();
    for p in 1..=5 {
        index.apply(&[torture_batch(Position(p))]).unwrap();
    }
    let err = index.apply(&[torture_batch(Position(6))]).unwrap_err();
    assert!(matches!(err, Error::WriteStall { .. }), "{err}");
    assert_eq!(
        index.position(),
        Position(5),
        "a stalled write must not apply"
    );
    index.checkpoint().unwrap();
    index.apply(&[torture_batch(Position(6))]).unwrap();
    assert_eq!(index.position(), Position(6));
}

/// Many small batches holding more than half a checkpoint's postings, but
/// not enough for one: memory merges must still keep the segment count under
/// the stall limit, or every write waits for the checkpoint's age.
#[test]
fn memory_merges_keep_writes_going_when_a_checkpoint_is_not_due_yet() {
    let dir = tempfile::tempdir().unwrap();
    let opts = IndexOptions {
        checkpoint_threshold: 1000,
        max_memory_segments: 8,
        stall_timeout: std::time::Duration::from_millis(50),
        ..IndexOptions::default()
    };
    let index = Index::create(dir.path(), Generation(1), opts).unwrap();
    // 40 batches of 20 postings: 800, past half the threshold, below it.
    for p in 1..=40u64 {
        let batch = fpnode_segments::Batch::new(
            Position(p),
            vec![fpnode_segments::Change::Insert {
                id: p as u32,
                hashes: (0..20).map(|h| p as u32 * 100 + h).collect(),
            }],
        );
        index
            .apply(&[batch])
            .unwrap_or_else(|e| panic!("batch {p}: {e}"));
        assert!(!index.checkpoint_due(), "batch {p}: no checkpoint is due");
        while index.merge_memory().unwrap() {}
    }
    assert_eq!(index.position(), Position(40));
}

fn batch(p: u64, id: u32) -> fpnode_segments::Batch {
    fpnode_segments::Batch::new(
        Position(p),
        vec![fpnode_segments::Change::Insert {
            id,
            hashes: vec![id, id + 1],
        }],
    )
}

/// Bulk load skips the WAL: a crash reopens the index at its last checkpoint
/// (never past a hole), and logging resumes only once a checkpoint covered
/// every unlogged batch.
#[test]
fn a_bulk_load_is_durable_at_checkpoints_and_never_logs_past_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = Index::create(dir.path(), Generation(1), IndexOptions::default()).unwrap();
        index.set_bulk_load(true);
        for p in 1..=5 {
            index.apply(&[batch(p, p as u32)]).unwrap();
        }
        index.checkpoint().unwrap();
        index.apply(&[batch(6, 6)]).unwrap();
        index.apply(&[batch(7, 7)]).unwrap();
        index.set_bulk_load(false);
        // After the bulk load, but 6 and 7 are not durable yet: 8 must not be
        // logged either, or a crash would replay 8 over a hole.
        index.apply(&[batch(8, 8)]).unwrap();
        assert!(
            index.checkpoint_due(),
            "unlogged batches make a checkpoint due"
        );
        assert_eq!(index.position(), Position(8));
    } // crash: no checkpoint
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        assert_eq!(index.position(), Position(5));
        let snap = index.snapshot();
        assert!(snap.get(5).is_some());
        assert!(snap.get(6).is_none() && snap.get(8).is_none());
        // Applied again (as a replica re-reads them), now logged.
        for p in 6..=8 {
            index.apply(&[batch(p, p as u32)]).unwrap();
        }
    }
    {
        let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
        assert_eq!(index.position(), Position(8));
        index.set_bulk_load(true);
        index.apply(&[batch(9, 9)]).unwrap();
        index.set_bulk_load(false);
        assert!(index.checkpoint_due());
        index.checkpoint().unwrap();
        // Covered by a checkpoint: logging resumes.
        index.apply(&[batch(10, 10)]).unwrap();
    }
    let index = Index::open(dir.path(), IndexOptions::default()).unwrap();
    assert_eq!(index.position(), Position(10));
    assert!(index.snapshot().get(9).is_some() && index.snapshot().get(10).is_some());
}

/// Syncs like the OS, and panics on the next sync once armed: a stand-in for
/// a bug anywhere inside a maintenance task.
#[derive(Debug, Default)]
struct PanicOnSync {
    armed: std::sync::atomic::AtomicBool,
}

impl fpnode_segments::durable::SyncFs for PanicOnSync {
    fn sync_file(&self, file: &fs::File, _: fpnode_segments::durable::Site) -> std::io::Result<()> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("injected panic in a sync");
        }
        file.sync_data()
    }

    fn sync_dir(&self, dir: &Path, _: fpnode_segments::durable::Site) -> std::io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }
}

/// A merge that panics halfway releases the segments it took: the next merge
/// takes them (were they left marked busy, no merge would ever pick them
/// again and writes would end in a permanent stall).
#[test]
fn a_merge_that_panics_leaves_its_segments_free_for_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let panics = std::sync::Arc::new(PanicOnSync::default());
    let opts = IndexOptions {
        fs: fpnode_segments::Fs::new(panics.clone()),
        file_policy: fpnode_segments::merge_policy::TieredMergePolicy {
            max_segments: 1,
            ..Default::default()
        },
        ..IndexOptions::default()
    };
    let index = Index::create(tmp.path(), Generation(1), opts).unwrap();
    for p in 1..=2 {
        index.apply(&[batch(p, p as u32)]).unwrap();
        assert!(index.checkpoint().unwrap());
    }
    assert_eq!(index.stats().file_segments, 2);
    panics
        .armed
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| index.merge_files()));
    assert!(panicked.is_err(), "the merge was expected to panic");
    assert_eq!(index.stats().file_segments, 2, "nothing committed");
    assert!(index.merge_files().unwrap(), "the next merge runs");
    assert_eq!(index.stats().file_segments, 1);
    let snap = index.snapshot();
    assert!(snap.get(1).is_some() && snap.get(2).is_some());
}
