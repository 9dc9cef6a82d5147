//! Offline bulk build: turns a stream of fingerprints into one final file segment
//! with little write amplification, for importing very large corpora without the
//! WAL -> memory segment -> checkpoint -> merge path.
//!
//! Steps: postings are collected in a run buffer; a full run is sorted (in
//! parallel) and written as a temporary file segment; at the end the runs are
//! k-way merged, `runs_per_segment` at a time, into the index's segments (one
//! for most corpora), each group's runs deleted as soon as it is merged, and a
//! manifest is written. Every posting is written twice (run, final) whatever
//! the corpus size; with a single run it is written once. Disk: the runs plus
//! one group's output at the peak (~1.3 x the index with groups of 16 runs,
//! instead of 2 x with one merge of everything: what lets 100M fingerprints be
//! built on a disk not much larger than the index). RAM: the run buffer (8
//! bytes per posting) plus the writer's 12 bytes per 128-posting block.
//!
//! If an id appears twice, the later one wins (the run holding it is cut, so the
//! newer run shadows the older one in the merge, as in the index).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayon::slice::ParallelSliceMut;

use crate::durable::Fs;
use crate::error::{Error, IoContext, Result};
use crate::file_segment::{FileSegment, FileSegmentWriter, OpenOptions};
use crate::index::SEGMENTS_DIR;
use crate::manifest::{Manifest, ManifestSegment};
use crate::merge::{input_postings, merge_postings, merged_docs};
use crate::segment::{DocSets, Segment, SegmentInfo};
use crate::snapshot::compute_shadows;
use crate::types::{FingerprintId, Generation, Metadata, PackedPosting, Position, SegmentId, pack};

#[derive(Clone, Debug)]
pub struct BulkOptions {
    /// Postings per sorted run (8 bytes of RAM each).
    pub run_postings: usize,
    /// Runs merged into one final segment (at least 2).
    pub runs_per_segment: usize,
    /// Where the final segments and manifest are made durable.
    pub fs: Fs,
}

impl Default for BulkOptions {
    fn default() -> Self {
        BulkOptions {
            run_postings: 256 << 20,
            runs_per_segment: 16,
            fs: Fs::default(),
        }
    }
}

/// What a bulk build did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkReport {
    pub fingerprints: u64,
    pub postings: u64,
    pub runs: usize,
    pub segment_bytes: u64,
    /// Bytes written to runs and the final segment together.
    pub bytes_written: u64,
    pub elapsed: Duration,
}

pub struct BulkBuilder {
    dir: PathBuf,
    tmp_dir: PathBuf,
    generation: Generation,
    position: Position,
    opts: BulkOptions,
    buf: Vec<PackedPosting>,
    defined: roaring::RoaringBitmap,
    hashes: Vec<u32>,
    runs: Vec<Arc<Segment>>,
    runs_written: usize,
    fingerprints: u64,
    bytes_written: u64,
    started: Instant,
    metadata: Metadata,
}

impl std::fmt::Debug for BulkBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkBuilder")
            .field("dir", &self.dir)
            .finish()
    }
}

impl BulkBuilder {
    /// Starts building a new index in `dir`, which must not hold one. All data
    /// gets `position` as its version.
    pub fn new(
        dir: &Path,
        generation: Generation,
        position: Position,
        opts: BulkOptions,
    ) -> Result<Self> {
        if Manifest::load(dir)?.is_some() {
            return Err(Error::InvalidInput(format!(
                "an index already exists in {}",
                dir.display()
            )));
        }
        let tmp_dir = dir.join("bulk.tmp");
        if tmp_dir.exists() {
            fs::remove_dir_all(&tmp_dir).at(&tmp_dir)?;
        }
        fs::create_dir_all(&tmp_dir).at(&tmp_dir)?;
        fs::create_dir_all(dir.join(SEGMENTS_DIR)).at(dir)?;
        Ok(BulkBuilder {
            dir: dir.to_path_buf(),
            tmp_dir,
            generation,
            position,
            buf: Vec::with_capacity(opts.run_postings.min(1 << 24)),
            opts,
            defined: roaring::RoaringBitmap::new(),
            hashes: Vec::new(),
            runs: Vec::new(),
            runs_written: 0,
            fingerprints: 0,
            bytes_written: 0,
            started: Instant::now(),
            metadata: Metadata::new(),
        })
    }

    /// Sets the index metadata written with the manifest.
    pub fn set_metadata(&mut self, metadata: Metadata) {
        self.metadata = metadata;
    }

    /// Adds one fingerprint; repeated hashes count once.
    pub fn add(&mut self, id: FingerprintId, hashes: &[u32]) -> Result<()> {
        if id == 0 {
            return Err(Error::InvalidFingerprintId);
        }
        if self.defined.contains(id) {
            self.flush_run()?;
        }
        self.hashes.clear();
        self.hashes.extend_from_slice(hashes);
        self.hashes.sort_unstable();
        self.hashes.dedup();
        self.buf.extend(self.hashes.iter().map(|&h| pack(h, id)));
        self.defined.insert(id);
        self.fingerprints += 1;
        if self.buf.len() >= self.opts.run_postings {
            self.flush_run()?;
        }
        Ok(())
    }

    /// Sorts the run buffer and writes it, with the run's ids, as segment `id`
    /// in `dir`; leaves the buffer and id set empty. A run to be merged
    /// (`searched` false) gets no membership filter: nobody searches it.
    fn write_buffer(
        &mut self,
        dir: &Path,
        id: SegmentId,
        searched: bool,
    ) -> Result<(PathBuf, SegmentInfo, u64)> {
        self.buf.par_sort_unstable();
        let filter_keys = if searched { self.buf.len() as u64 } else { 0 };
        let mut w = FileSegmentWriter::create(dir, id, self.opts.fs.clone(), filter_keys)?;
        for &p in &self.buf {
            w.push(p)?;
        }
        self.buf.clear();
        let docs = DocSets {
            defined: std::mem::take(&mut self.defined),
            deleted: Default::default(),
        };
        let written = w.finish(&docs, self.position, self.position)?;
        self.bytes_written += written.2;
        Ok(written)
    }

    fn flush_run(&mut self) -> Result<()> {
        if self.buf.is_empty() && self.defined.is_empty() {
            return Ok(());
        }
        let id = SegmentId(self.runs.len() as u64 + 1);
        let tmp_dir = self.tmp_dir.clone();
        let (path, _, _) = self.write_buffer(&tmp_dir, id, false)?;
        let seg = FileSegment::open(&path, Some(id), OpenOptions::default())?;
        self.runs.push(Arc::new(Segment::file(seg)));
        Ok(())
    }

    /// Merges the runs into the final segment and writes the manifest.
    pub fn finish(mut self) -> Result<BulkReport> {
        let seg_dir = self.dir.join(SEGMENTS_DIR);
        let mut segments = Vec::new();
        let final_id;
        let mut postings = 0;
        let mut segment_bytes = 0;
        if self.runs.is_empty() {
            // Everything fit one run: write it straight into place, once.
            final_id = SegmentId(1);
            if !self.buf.is_empty() || !self.defined.is_empty() {
                let (_, info, size) = self.write_buffer(&seg_dir, final_id, true)?;
                segments.push(manifest_entry(info, size));
                (postings, segment_bytes) = (info.num_postings, size);
            }
        } else {
            self.flush_run()?;
            self.buf = Vec::new();
            self.runs_written = self.runs.len();
            let mut next_id = self.runs.len() as u64 + 1;
            let mut runs = std::mem::take(&mut self.runs).into_iter();
            loop {
                let group: Vec<Arc<Segment>> = runs
                    .by_ref()
                    .take(self.opts.runs_per_segment.max(2))
                    .collect();
                if group.is_empty() {
                    break;
                }
                // Ids repeated across groups stay in both segments: the newer
                // segment shadows the older one, as for any index.
                let id = SegmentId(next_id);
                next_id += 1;
                let views = compute_shadows(&group);
                let most = input_postings(&views);
                let mut w = FileSegmentWriter::create(&seg_dir, id, self.opts.fs.clone(), most)?;
                merge_postings(&views, &mut w)?;
                let (_, info, size) =
                    w.finish(&merged_docs(&views, true), self.position, self.position)?;
                segments.push(manifest_entry(info, size));
                postings += info.num_postings;
                segment_bytes += size;
                self.bytes_written += size;
                drop(views);
                for run in group {
                    let path = run.as_file().map(|f| f.path().to_path_buf());
                    drop(run);
                    if let Some(path) = path {
                        fs::remove_file(&path).at(&path)?;
                    }
                }
            }
            final_id = SegmentId(next_id - 1);
        }
        self.buf = Vec::new();
        self.runs.clear();
        fs::remove_dir_all(&self.tmp_dir).at(&self.tmp_dir)?;
        let manifest = Manifest {
            generation: self.generation,
            checkpoint_position: self.position,
            next_segment_id: final_id.0 + 1,
            segments,
            metadata: std::mem::take(&mut self.metadata),
        };
        manifest.store(&self.dir, &self.opts.fs)?;
        Ok(BulkReport {
            fingerprints: self.fingerprints,
            postings,
            runs: self.runs_written,
            segment_bytes,
            bytes_written: self.bytes_written,
            elapsed: self.started.elapsed(),
        })
    }
}

fn manifest_entry(info: crate::segment::SegmentInfo, size: u64) -> ManifestSegment {
    ManifestSegment {
        id: info.id,
        min_position: info.min_position,
        max_position: info.max_position,
        num_postings: info.num_postings,
        size_bytes: size,
    }
}
