//! Index archives: the stream `GET /:index/_snapshot` answers and `fpnode
//! restore` reads. An archive is the file segments of one checkpoint, so a
//! restored index is byte-for-byte the source's data, and building it needs no
//! sorting or merging.
//!
//! ```text
//! "FPNODSNP"  u32 version (1)  u32 header length  header (JSON, ArchiveHeader)
//! segment files, in header order, each exactly `size_bytes` long
//! u32 CRC-32 of every byte before it
//! ```
//! Restoring checks the trailing CRC and then every segment (footer, metadata
//! and data checksums) before writing the manifest, so a truncated or damaged
//! archive never becomes an index.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::durable::Fs;
use crate::error::{Error, IoContext, Result};
use crate::file_segment::{self, FileSegment, OpenOptions};
use crate::fsutil::le_u32;
use crate::index::SEGMENTS_DIR;
use crate::manifest::{Manifest, ManifestSegment};
use crate::segment::Segment;
use crate::snapshot::Snapshot;
use crate::types::{Generation, Metadata, Position};

pub const MAGIC: &[u8; 8] = b"FPNODSNP";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveHeader {
    pub generation: Generation,
    /// Every batch up to this version is in the archive.
    pub version: Position,
    pub metadata: Metadata,
    pub segments: Vec<ManifestSegment>,
}

/// What an archive of `snapshot` holds: its file segments (call
/// `Index::checkpoint` first to include everything applied).
pub fn plan(snapshot: &Snapshot) -> (ArchiveHeader, Vec<Arc<Segment>>) {
    let files: Vec<Arc<Segment>> = snapshot
        .segments
        .iter()
        .filter(|v| v.segment.as_file().is_some())
        .map(|v| v.segment.clone())
        .collect();
    let header = ArchiveHeader {
        generation: snapshot.generation,
        version: snapshot.checkpoint_position,
        metadata: (*snapshot.checkpoint_metadata).clone(),
        segments: files
            .iter()
            .map(|s| ManifestSegment {
                id: s.info.id,
                min_position: s.info.min_position,
                max_position: s.info.max_position,
                num_postings: s.info.num_postings,
                size_bytes: s.size_bytes(),
            })
            .collect(),
    };
    (header, files)
}

/// A writer that keeps the CRC of what passed through it.
struct Crc<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the archive of `snapshot` to `out`; returns the bytes written.
pub fn write(snapshot: &Snapshot, out: impl Write) -> std::io::Result<u64> {
    let (header, files) = plan(snapshot);
    let mut out = Crc {
        inner: out,
        hasher: crc32fast::Hasher::new(),
    };
    let json = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&(json.len() as u32).to_le_bytes())?;
    out.write_all(&json)?;
    let mut total = 16 + json.len() as u64;
    for seg in &files {
        let Some(f) = seg.as_file() else { continue };
        let mut file = File::open(f.path())?;
        total += std::io::copy(&mut file, &mut out)?;
    }
    let crc = out.hasher.clone().finalize();
    out.inner.write_all(&crc.to_le_bytes())?;
    out.flush()?;
    Ok(total + 4)
}

/// A reader that keeps the CRC of what passed through it.
struct CrcRead<R> {
    inner: R,
    hasher: crc32fast::Hasher,
}

impl<R: Read> Read for CrcRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Restores an archive from `input` into the empty index directory `dir`,
/// durably (every file and directory entry synced through `fs`).
pub fn restore(input: impl Read, dir: &Path, fs: &Fs) -> Result<ArchiveHeader> {
    let name = Path::new("archive");
    let bad = |offset: u64, reason: &str| Error::corrupt(name, offset, reason);
    if Manifest::load(dir)?.is_some() {
        return Err(Error::InvalidInput(format!(
            "an index already exists in {}",
            dir.display()
        )));
    }
    let mut input = CrcRead {
        inner: input,
        hasher: crc32fast::Hasher::new(),
    };
    let mut fixed = [0u8; 16];
    input
        .read_exact(&mut fixed)
        .map_err(|_| bad(0, "archive too short"))?;
    if &fixed[..8] != MAGIC {
        return Err(bad(0, "not an fpnode archive (bad magic)"));
    }
    if le_u32(&fixed, 8) != VERSION {
        return Err(Error::UnsupportedVersion {
            path: name.to_path_buf(),
            found: le_u32(&fixed, 8),
            supported: VERSION,
        });
    }
    let len = le_u32(&fixed, 12) as usize;
    if len > 1 << 30 {
        return Err(bad(12, "header length out of range"));
    }
    let mut json = vec![0u8; len];
    input
        .read_exact(&mut json)
        .map_err(|_| bad(16, "archive cut in the header"))?;
    let header: ArchiveHeader =
        serde_json::from_slice(&json).map_err(|e| bad(16, &format!("header: {e}")))?;
    let seg_dir = dir.join(SEGMENTS_DIR);
    fs::create_dir_all(&seg_dir).at(&seg_dir)?;
    let mut offset = 16 + len as u64;
    for s in &header.segments {
        let path = seg_dir.join(file_segment::file_name(s.id));
        let mut file = File::create(&path).at(&path)?;
        let copied = std::io::copy(&mut (&mut input).take(s.size_bytes), &mut file).at(&path)?;
        if copied != s.size_bytes {
            return Err(bad(offset + copied, "archive cut in a segment"));
        }
        fs.sync_file(&file, &path)?;
        offset += copied;
    }
    let want = input.hasher.clone().finalize();
    let mut trailer = [0u8; 4];
    input
        .inner
        .read_exact(&mut trailer)
        .map_err(|_| bad(offset, "archive cut before its checksum"))?;
    if u32::from_le_bytes(trailer) != want {
        return Err(bad(offset, "archive checksum mismatch"));
    }
    for s in &header.segments {
        let path = seg_dir.join(file_segment::file_name(s.id));
        FileSegment::open(&path, Some(s.id), OpenOptions::default())?.verify_all()?;
    }
    fs.sync_dir(&seg_dir)?;
    let manifest = Manifest {
        generation: header.generation,
        checkpoint_position: header.version,
        next_segment_id: header
            .segments
            .iter()
            .map(|s| s.id.0 + 1)
            .max()
            .unwrap_or(1),
        segments: header.segments.clone(),
        metadata: header.metadata.clone(),
    };
    manifest.store(dir, fs)?;
    Ok(header)
}
