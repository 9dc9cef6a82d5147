//! Index archives: the stream `GET /:index/_snapshot` answers and `fpnode
//! restore` reads. An archive is the file segments of one checkpoint, so a
//! restored index is byte-for-byte the source's data, and building it needs no
//! sorting or merging.
//!
//! Written in fpindex's snapshot framing (docs/segment-format.md, "Index
//! archive"): one self-delimiting MessagePack map, then the payloads.
//!
//! ```text
//! {"f": 1, "g": generation, "s": [{"i": segment info, "s": size}, ...],
//!  "v": version, "m": metadata, "t": "fpnode"}
//! segment files, in header order, each exactly its "s" bytes long
//! ```
//! Restoring checks every segment (sizes, then footer, metadata and data
//! checksums) before writing the manifest, so a truncated or damaged archive
//! never becomes an index. Archives of the first fpnode format ("FPNODSNP",
//! a JSON header and a trailing CRC-32) are still restored.

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

/// The first fpnode archive format (restored, no longer written).
pub const MAGIC_V1: &[u8; 8] = b"FPNODSNP";
pub const VERSION_V1: u32 = 1;
/// fpindex's snapshot format number (`f`).
pub const FORMAT: u32 = 1;
/// `t`: whose segments the payloads are (fpindex's cannot be restored here).
pub const KIND: &str = "fpnode";
/// The largest header read.
const MAX_HEADER: u64 = 1 << 30;

/// A segment in the header: `{"i": info, "s": size}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WireSegment {
    i: SegmentInfo,
    s: u64,
}

/// A segment's identity and contents, as in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SegmentInfo {
    id: crate::types::SegmentId,
    min_position: Position,
    max_position: Position,
    num_postings: u64,
}

/// The header, with fpindex's one-letter keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WireHeader {
    f: u32,
    g: Generation,
    s: Vec<WireSegment>,
    v: Position,
    m: Metadata,
    t: String,
}

impl WireHeader {
    fn from(h: &ArchiveHeader) -> WireHeader {
        WireHeader {
            f: FORMAT,
            g: h.generation,
            s: h.segments
                .iter()
                .map(|m| WireSegment {
                    i: SegmentInfo {
                        id: m.id,
                        min_position: m.min_position,
                        max_position: m.max_position,
                        num_postings: m.num_postings,
                    },
                    s: m.size_bytes,
                })
                .collect(),
            v: h.version,
            m: h.metadata.clone(),
            t: KIND.to_string(),
        }
    }

    fn into_header(self) -> ArchiveHeader {
        ArchiveHeader {
            generation: self.g,
            version: self.v,
            metadata: self.m,
            segments: self
                .s
                .into_iter()
                .map(|w| ManifestSegment {
                    id: w.i.id,
                    min_position: w.i.min_position,
                    max_position: w.i.max_position,
                    num_postings: w.i.num_postings,
                    size_bytes: w.s,
                })
                .collect(),
        }
    }
}

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

/// Writes the archive of `snapshot` to `out`; returns the bytes written.
pub fn write(snapshot: &Snapshot, mut out: impl Write) -> std::io::Result<u64> {
    let (header, files) = plan(snapshot);
    let bytes =
        rmp_serde::to_vec_named(&WireHeader::from(&header)).map_err(std::io::Error::other)?;
    out.write_all(&bytes)?;
    let mut total = bytes.len() as u64;
    for seg in &files {
        let Some(f) = seg.as_file() else { continue };
        let mut file = File::open(f.path())?;
        total += std::io::copy(&mut file, &mut out)?;
    }
    out.flush()?;
    Ok(total)
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
pub fn restore(mut input: impl Read, dir: &Path, fs: &Fs) -> Result<ArchiveHeader> {
    let name = Path::new("archive");
    let bad = |offset: u64, reason: &str| Error::corrupt(name, offset, reason);
    if Manifest::load(dir)?.is_some() {
        return Err(Error::InvalidInput(format!(
            "an index already exists in {}",
            dir.display()
        )));
    }
    let mut first = [0u8; 1];
    input
        .read_exact(&mut first)
        .map_err(|_| bad(0, "archive is empty"))?;
    let mut input = std::io::Cursor::new(first).chain(input);
    if first[0] == MAGIC_V1[0] {
        return restore_v1(input, dir, fs);
    }
    let mut counted = Counted {
        inner: (&mut input).take(MAX_HEADER),
        read: 0,
    };
    let wire: WireHeader = rmp_serde::from_read(&mut counted)
        .map_err(|e| bad(counted.read, &format!("not an index archive header: {e}")))?;
    if wire.f != FORMAT {
        return Err(Error::UnsupportedVersion {
            path: name.to_path_buf(),
            found: wire.f,
            supported: FORMAT,
        });
    }
    if wire.t != KIND {
        return Err(bad(
            0,
            &format!("an archive of {:?} segments, not fpnode's", wire.t),
        ));
    }
    let offset = counted.read;
    let header = wire.into_header();
    let mut ids: Vec<u64> = header.segments.iter().map(|s| s.id.0).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(0, &format!("segment {} listed twice", w[0])));
    }
    let offset = write_segments(&mut input, &header, dir, fs, offset)?;
    let mut more = [0u8; 1];
    if input.read(&mut more).at(name)? != 0 {
        return Err(bad(offset, "bytes after the last segment"));
    }
    finish(&header, dir, fs)?;
    Ok(header)
}

/// Counts the bytes read through it (for error offsets).
struct Counted<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Copies the header's segments from `input` into `dir`, synced; returns
/// the offset after them.
fn write_segments(
    input: &mut impl Read,
    header: &ArchiveHeader,
    dir: &Path,
    fs: &Fs,
    mut offset: u64,
) -> Result<u64> {
    let seg_dir = dir.join(SEGMENTS_DIR);
    fs::create_dir_all(&seg_dir).at(&seg_dir)?;
    for s in &header.segments {
        let path = seg_dir.join(file_segment::file_name(s.id));
        let mut file = File::create(&path).at(&path)?;
        let copied = std::io::copy(&mut input.take(s.size_bytes), &mut file).at(&path)?;
        if copied != s.size_bytes {
            return Err(Error::corrupt(
                Path::new("archive"),
                offset + copied,
                "archive cut in a segment",
            ));
        }
        fs.sync_file(&file, &path)?;
        offset += copied;
    }
    Ok(offset)
}

/// Verifies every segment written, then stores the manifest.
fn finish(header: &ArchiveHeader, dir: &Path, fs: &Fs) -> Result<()> {
    let seg_dir = dir.join(SEGMENTS_DIR);
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
    manifest.store(dir, fs)
}

/// The first format: `"FPNODSNP"`, u32 version, u32 header length, a JSON
/// header, the segments, a CRC-32 of every byte before it.
fn restore_v1(input: impl Read, dir: &Path, fs: &Fs) -> Result<ArchiveHeader> {
    let name = Path::new("archive");
    let bad = |offset: u64, reason: &str| Error::corrupt(name, offset, reason);
    let mut input = CrcRead {
        inner: input,
        hasher: crc32fast::Hasher::new(),
    };
    let mut fixed = [0u8; 16];
    input
        .read_exact(&mut fixed)
        .map_err(|_| bad(0, "archive too short"))?;
    if &fixed[..8] != MAGIC_V1 {
        return Err(bad(0, "not an fpnode archive (bad magic)"));
    }
    if le_u32(&fixed, 8) != VERSION_V1 {
        return Err(Error::UnsupportedVersion {
            path: name.to_path_buf(),
            found: le_u32(&fixed, 8),
            supported: VERSION_V1,
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
    let offset = write_segments(&mut input, &header, dir, fs, 16 + len as u64)?;
    let want = input.hasher.clone().finalize();
    let mut trailer = [0u8; 4];
    input
        .inner
        .read_exact(&mut trailer)
        .map_err(|_| bad(offset, "archive cut before its checksum"))?;
    if u32::from_le_bytes(trailer) != want {
        return Err(bad(offset, "archive checksum mismatch"));
    }
    finish(&header, dir, fs)?;
    Ok(header)
}
