//! Creating an index, and opening one: verify its segments, remove orphans,
//! replay the WAL into memory segments.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File};
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::{
    Counters, Index, IndexOptions, LOCK_FILE, MemoryEntry, SEGMENTS_DIR, State, WAL_DIR, WalState,
};
use crate::error::{Error, IoContext, Result};
use crate::file_segment::{self, FileSegment};
use crate::manifest::Manifest;
use crate::memory_segment;
use crate::segment::Segment;
use crate::snapshot::Snapshot;
use crate::types::{Batch, Generation, Position, SegmentId, apply_metadata_delta};
use crate::wal::{self, WalWriter};

impl Index {
    /// Creates a new, empty index in `dir` (which must not hold one yet).
    pub fn create(dir: &Path, generation: Generation, opts: IndexOptions) -> Result<Index> {
        Index::create_at(dir, generation, Position(0), opts)
    }

    /// Creates a new, empty index whose position starts at `start` (a replica's
    /// index starts at the stream sequence of its create record), so the first
    /// batch it accepts is the one after `start`.
    pub fn create_at(
        dir: &Path,
        generation: Generation,
        start: Position,
        opts: IndexOptions,
    ) -> Result<Index> {
        // Not synced here: both subdirectories exist before the manifest is
        // stored, whose directory sync makes them durable with it. Whoever
        // made `dir` made it durable in its parent (the catalog does).
        for sub in [SEGMENTS_DIR, WAL_DIR] {
            fs::create_dir_all(dir.join(sub)).at(dir.join(sub))?;
        }
        if Manifest::load(dir)?.is_some() {
            return Err(Error::InvalidInput(format!(
                "an index already exists in {}",
                dir.display()
            )));
        }
        let manifest = Manifest {
            generation,
            checkpoint_position: start,
            next_segment_id: 1,
            ..Manifest::default()
        };
        manifest.store(dir, &opts.fs)?;
        Index::open(dir, opts)
    }

    /// Opens the index in `dir`: verifies its segments, replays the WAL.
    pub fn open(dir: &Path, opts: IndexOptions) -> Result<Index> {
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = File::create(&lock_path).at(&lock_path)?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(e).at(&lock_path),
        }
        let mut manifest = Manifest::load(dir)?.ok_or_else(|| Error::Io {
            path: dir.join(crate::manifest::FILE_NAME),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no index manifest"),
        })?;
        let seg_dir = dir.join(SEGMENTS_DIR);
        opts.fs.create_dir_all(&seg_dir)?;
        let mut files = Vec::with_capacity(manifest.segments.len());
        for s in &manifest.segments {
            let path = seg_dir.join(file_segment::file_name(s.id));
            let f = FileSegment::open(&path, Some(s.id), opts.open)?;
            files.push(Arc::new(Segment::file(f)));
        }
        remove_orphans(&seg_dir, &manifest)?;

        // Replay the WAL into memory segments of about checkpoint_threshold postings.
        let wal_dir = dir.join(WAL_DIR);
        let mut pending: Vec<Batch> = Vec::new();
        let mut pending_postings = 0u64;
        let mut memory = Vec::new();
        let mut metadata = manifest.metadata.clone();
        let mut flush = |pending: &mut Vec<Batch>, manifest: &mut Manifest| -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let id = SegmentId(manifest.next_segment_id);
            manifest.next_segment_id += 1;
            let seg = memory_segment::build_many(id, pending)?;
            memory.push(MemoryEntry {
                segment: Arc::new(seg),
                created: Instant::now(),
            });
            pending.clear();
            Ok(())
        };
        let outcome = wal::replay(&wal_dir, manifest.checkpoint_position, |batch| {
            apply_metadata_delta(&mut metadata, &batch.metadata);
            pending_postings += batch.num_hashes() as u64;
            pending.push(batch);
            if pending_postings >= opts.checkpoint_threshold.max(1) {
                pending_postings = 0;
                flush(&mut pending, &mut manifest)?;
            }
            Ok(())
        })?;
        flush(&mut pending, &mut manifest)?;
        if let Some((path, offset)) = &outcome.truncated {
            tracing::warn!(path = %path.display(), offset, "recovered from a torn WAL tail");
        }
        let wal = WalWriter::open(&wal_dir, outcome.last_position, opts.wal, opts.fs.clone())?;
        let applied = outcome.last_position.max(manifest.checkpoint_position);

        let wal = WalState {
            writer: wal,
            logged: applied,
            unlogged: None,
            fence: 0,
            recent: Default::default(),
        };
        let state = State {
            manifest,
            files,
            memory,
            busy: HashSet::new(),
            applied,
            metadata,
            poisoned: None,
        };
        let base = Snapshot {
            generation: state.manifest.generation,
            position: applied,
            checkpoint_position: state.manifest.checkpoint_position,
            metadata: Arc::new(state.metadata.clone()),
            checkpoint_metadata: Arc::new(state.manifest.metadata.clone()),
            ..Snapshot::default()
        };
        let snapshot = base.with_segments(&state.all_segments());
        Ok(Index {
            dir: dir.to_path_buf(),
            opts,
            _lock: lock_file,
            state: Mutex::new(state),
            wal: Mutex::new(wal),
            logged: Mutex::new(VecDeque::new()),
            unlogged: AtomicU64::new(0),
            apply_lock: Mutex::new(()),
            maintained: Condvar::new(),
            checkpoint_lock: Mutex::new(()),
            memory_merge_lock: Mutex::new(()),
            merge_lock: Mutex::new(()),
            snapshot: ArcSwap::from_pointee(snapshot),
            counters: Counters::default(),
            bulk: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// Deletes segment files the manifest does not list (outputs of merges or
/// checkpoints that crashed before their manifest was written) and temp files.
fn remove_orphans(seg_dir: &Path, manifest: &Manifest) -> Result<()> {
    let live: HashSet<SegmentId> = manifest.segments.iter().map(|s| s.id).collect();
    for entry in fs::read_dir(seg_dir).at(seg_dir)? {
        let entry = entry.at(seg_dir)?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let orphan = match file_segment::parse_file_name(&name) {
            Some(id) => !live.contains(&id),
            None => name.ends_with(".tmp"),
        };
        if orphan {
            tracing::info!(file = %name, "removing orphan segment file");
            fs::remove_file(entry.path()).at(entry.path())?;
        }
    }
    Ok(())
}
