//! Opens, verifies and searches a file segment through a read-only memory map.
//!
//! On open: header, footer, section layout and a CRC over every metadata section
//! (chunk table, directory, offsets, id sets) are checked, and the two id sets are
//! loaded into RAM as roaring bitmaps. Block data is verified lazily: each 4 KiB
//! chunk is checked against its CRC the first time any block in it is read, and a
//! bit remembers that it was. A mismatch is a `Corrupt` error naming the file and
//! offset, never wrong results.
//!
//! Locating a hash: a prefix table in RAM (first block of every top-bits bucket,
//! sized so a bucket spans ~8 blocks) narrows the binary search over the mmapped
//! block directory to a few cache lines. RAM used is that table, the id sets and
//! one bit per chunk; everything else stays in the page cache.
//!
//! Thread safety: immutable after open except the verified-chunk bits (atomics)
//! and the delete-on-drop flag; shared across search threads behind an `Arc`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bitpacking::{BitPacker, BitPacker4x};
use memmap2::{Advice, Mmap};
use roaring::RoaringBitmap;

use super::format::{self, FORMAT_VERSION, Footer, HEADER_LEN, MAGIC};
use crate::block::{self, BLOCK_LEN, DecodedBlock};
use crate::error::{Error, IoContext, Result};
use crate::filter::FilterRef;
use crate::fsutil::{le_u32, le_u64};
use crate::mmap;
use crate::prefix::PrefixTable;
use crate::segment::{DocSets, SegmentInfo};
use crate::types::{PackedPosting, Position, SegmentId, pack};

/// Target number of blocks per prefix-table bucket: 8 first hashes, 32
/// bytes of directory (64 took 6 dependent probes over 4-6 cache lines;
/// docs/benchmarks.md "Membership filters").
const BLOCKS_PER_BUCKET: u64 = 8;

#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Ask the kernel to read the whole file into the page cache now.
    pub preload: bool,
}

pub struct FileSegment {
    path: PathBuf,
    map: Mmap,
    footer: Footer,
    docs: DocSets,
    prefix: PrefixTable,
    verified: Vec<AtomicU64>,
    delete_on_drop: AtomicBool,
    packer: BitPacker4x,
}

impl std::fmt::Debug for FileSegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSegment")
            .field("path", &self.path)
            .field("num_postings", &self.footer.num_postings)
            .finish()
    }
}

impl FileSegment {
    /// Opens and verifies the segment file at `path`. If `expect_id` is given, the
    /// id recorded in the file must match it.
    pub fn open(path: &Path, expect_id: Option<SegmentId>, opts: OpenOptions) -> Result<Self> {
        let file = File::open(path).at(path)?;
        let map = mmap::map_readonly(&file, path)?;
        let len = map.len() as u64;
        let corrupt = |offset: u64, reason: &str| Error::corrupt(path, offset, reason);
        if len < HEADER_LEN + format::TRAILER_LEN {
            return Err(corrupt(0, "file too short for a segment"));
        }
        if map[..8] != MAGIC {
            return Err(corrupt(0, "bad magic in header"));
        }
        let (version, magic) = Footer::trailer(&map);
        if magic != MAGIC {
            return Err(corrupt(len - 8, "bad magic in footer"));
        }
        let footer_len = format::footer_len(version)
            .filter(|_| le_u32(&map, 8) == version)
            .ok_or_else(|| Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            })?;
        if len < HEADER_LEN + footer_len {
            return Err(corrupt(0, "file too short for a segment"));
        }
        let footer_start = len - footer_len;
        let footer = Footer::decode(&map[footer_start as usize..], version)
            .ok_or_else(|| corrupt(footer_start, "footer checksum mismatch"))?;
        footer
            .check_layout(len, footer_len)
            .map_err(|reason| corrupt(footer_start, &reason))?;
        if let Some(id) = expect_id
            && footer.segment_id != id.0
        {
            return Err(corrupt(
                footer_start,
                &format!(
                    "file holds segment {:016x}, expected {id}",
                    footer.segment_id
                ),
            ));
        }
        // Checksummed through read(2), not the map: the map is advised
        // `Random`, so reading the metadata (the filter is most of it) through
        // it faulted in one page at a time: 11 s instead of 0.5-0.65 s to
        // open 3M fingerprints with the page cache dropped
        // (docs/benchmarks.md "Cold open"). The pages stay cached for the map.
        if crc_at(&file, footer.chunks_offset, footer_start).at(path)? != footer.metadata_crc {
            return Err(corrupt(footer.chunks_offset, "metadata checksum mismatch"));
        }
        let section = |off: u64, n: u64| &map[off as usize..(off + n) as usize];
        let defined =
            RoaringBitmap::deserialize_from(section(footer.defined_offset, footer.defined_len))
                .map_err(|e| corrupt(footer.defined_offset, &format!("defined ids: {e}")))?;
        let deleted =
            RoaringBitmap::deserialize_from(section(footer.deleted_offset, footer.deleted_len))
                .map_err(|e| corrupt(footer.deleted_offset, &format!("deleted ids: {e}")))?;

        let dir_off = footer.directory_offset;
        let prefix = PrefixTable::build(footer.num_blocks, BLOCKS_PER_BUCKET, |i| {
            le_u32(&map, (dir_off + 4 * i) as usize)
        });

        if footer.filter_len > 0
            && FilterRef::new(section(footer.filter_offset, footer.filter_len)).is_none()
        {
            return Err(corrupt(footer.filter_offset, "malformed membership filter"));
        }

        let verified = (0..footer.num_chunks().div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        if opts.preload {
            mmap::will_need(&map);
        }
        Ok(FileSegment {
            path: path.to_path_buf(),
            map,
            footer,
            docs: DocSets { defined, deleted },
            prefix,
            verified,
            delete_on_drop: AtomicBool::new(false),
            packer: BitPacker4x::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn info(&self) -> SegmentInfo {
        SegmentInfo {
            id: SegmentId(self.footer.segment_id),
            min_position: Position(self.footer.min_position),
            max_position: Position(self.footer.max_position),
            num_postings: self.footer.num_postings,
        }
    }

    pub fn docs(&self) -> &DocSets {
        &self.docs
    }

    /// The segment's membership filter, if it has one (format version 2,
    /// segments up to `filter::MAX_KEYS` postings); checked at open with
    /// the rest of the metadata.
    pub fn filter(&self) -> Option<FilterRef<'_>> {
        if self.footer.filter_len == 0 {
            return None;
        }
        let start = self.footer.filter_offset as usize;
        let bytes = self
            .map
            .get(start..start + self.footer.filter_len as usize)?;
        // Checked whole by `FilterRef::new` at open: only the header here.
        FilterRef::parse(bytes)
    }

    pub fn file_size(&self) -> u64 {
        self.map.len() as u64
    }

    /// Bytes of RAM this reader holds outside the page cache.
    pub fn heap_bytes(&self) -> u64 {
        (self.prefix.heap_bytes()
            + self.verified.len() * 8
            + self.docs.defined.serialized_size()
            + self.docs.deleted.serialized_size()) as u64
    }

    pub(crate) fn delete_on_drop(&self) {
        self.delete_on_drop.store(true, Ordering::Release);
    }

    /// Reads every chunk of the data region and checks it (used by `inspect`
    /// and tests; searches verify lazily).
    pub fn verify_all(&self) -> Result<()> {
        let n = self.footer.data_end - HEADER_LEN;
        if n > 0 {
            self.verify(HEADER_LEN, n)?;
        }
        Ok(())
    }

    /// Reads and checks every chunk of the data region again, even those
    /// already verified, telling `keep_going(bytes checked, bytes in all)`
    /// after every [`VERIFY_STEP`] bytes; `false` stops it with
    /// [`Error::Cancelled`] (the `verify` job).
    pub fn reverify_all(&self, keep_going: &mut dyn FnMut(u64, u64) -> bool) -> Result<()> {
        let total = self.footer.data_end - HEADER_LEN;
        let cs = u64::from(self.footer.chunk_size).max(1);
        let chunks = total.div_ceil(cs);
        let per_step = (VERIFY_STEP / cs).max(1);
        let mut c = 0;
        while c < chunks {
            let last = (c + per_step).min(chunks);
            for chunk in c..last {
                let start = HEADER_LEN + chunk * cs;
                let end = (start + cs).min(self.footer.data_end);
                let want = le_u32(&self.map, (self.footer.chunks_offset + 4 * chunk) as usize);
                if crc32fast::hash(&self.map[start as usize..end as usize]) != want {
                    return Err(Error::corrupt(&self.path, start, "data checksum mismatch"));
                }
            }
            c = last;
            if !keep_going((c * cs).min(total), total) {
                return Err(Error::Cancelled);
            }
        }
        Ok(())
    }

    #[inline]
    fn first_hash(&self, block: u64) -> u32 {
        le_u32(
            &self.map,
            (self.footer.directory_offset + 4 * block) as usize,
        )
    }

    /// Index of the first block whose first hash is >= `hash`.
    #[inline]
    fn lower_bound(&self, hash: u32) -> u64 {
        self.prefix.lower_bound(hash, |b| self.first_hash(b))
    }

    fn verify(&self, offset: u64, len: u64) -> Result<()> {
        let cs = u64::from(self.footer.chunk_size);
        let first = (offset - HEADER_LEN) / cs;
        let last = (offset + len - 1 - HEADER_LEN) / cs;
        for c in first..=last {
            let (word, bit) = ((c / 64) as usize, 1u64 << (c % 64));
            let Some(w) = self.verified.get(word) else {
                return Err(Error::corrupt(
                    &self.path,
                    offset,
                    "block outside data region",
                ));
            };
            if w.load(Ordering::Acquire) & bit != 0 {
                continue;
            }
            let start = HEADER_LEN + c * cs;
            let end = (start + cs).min(self.footer.data_end);
            let want = le_u32(&self.map, (self.footer.chunks_offset + 4 * c) as usize);
            if crc32fast::hash(&self.map[start as usize..end as usize]) != want {
                return Err(Error::corrupt(&self.path, start, "data checksum mismatch"));
            }
            w.fetch_or(bit, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Where block `b`'s bytes start (from the offsets table, unchecked).
    #[inline]
    fn block_offset(&self, b: u64) -> u64 {
        le_u64(&self.map, (self.footer.offsets_offset + 8 * b) as usize)
    }

    /// Decodes block `b` into `out`, verifying its chunk(s) first.
    fn decode(&self, b: u64, out: &mut DecodedBlock) -> Result<()> {
        let sections = self.decode_hashes(b, out)?;
        block::decode_ids(&self.packer, &sections, out);
        Ok(())
    }

    /// Block `b`'s bytes (from its start to the data's end) and offset,
    /// checked: in range, its length readable, its chunk's checksum verified.
    fn block_bytes(&self, b: u64) -> Result<(&[u8], u64)> {
        let offset = self.block_offset(b);
        if offset < HEADER_LEN || offset >= self.footer.data_end {
            return Err(Error::corrupt(
                &self.path,
                offset,
                "block offset out of range",
            ));
        }
        let bytes = &self.map[offset as usize..self.footer.data_end as usize];
        let len =
            block::peek_len(bytes).map_err(|e| Error::corrupt(&self.path, offset, e.as_str()))?;
        self.verify(offset, len as u64)?;
        Ok((bytes, offset))
    }

    /// The hashes of block `b` (its bytes checked first); returns its
    /// sections, for its ids.
    fn decode_hashes(&self, b: u64, out: &mut DecodedBlock) -> Result<block::Sections<'_>> {
        let (bytes, offset) = self.block_bytes(b)?;
        let n = (self.footer.num_postings - b * BLOCK_LEN as u64).min(BLOCK_LEN as u64) as usize;
        block::decode_hashes(&self.packer, bytes, self.first_hash(b), n, out)
            .map_err(|e| Error::corrupt(&self.path, offset, e.as_str()))
    }

    /// Asks the kernel to start reading every block `collect_matches` will
    /// decode for `sorted_query` (madvise WILLNEED on each block's bytes), all
    /// at once. The reads then run in parallel on the device instead of one
    /// page fault after another: what a search of an index larger than the
    /// page cache waits for. Only the directory and the offsets table are
    /// read here (small, and hot).
    pub fn prefetch(&self, sorted_query: &[u32]) {
        let nb = self.footer.num_blocks;
        let mut last = u64::MAX;
        for &hash in sorted_query {
            let mut b = self.lower_bound(hash).saturating_sub(1);
            while b < nb && self.first_hash(b) <= hash {
                if b != last {
                    let start = self.block_offset(b);
                    let end = if b + 1 < nb {
                        self.block_offset(b + 1)
                    } else {
                        self.footer.data_end
                    };
                    if start < end && end <= self.footer.data_end {
                        // A hint: failing to give it only costs speed.
                        let _ = self.map.advise_range(
                            Advice::WillNeed,
                            start as usize,
                            (end - start) as usize,
                        );
                    }
                    last = b;
                }
                b += 1;
            }
        }
    }

    /// Calls `found(id)` for every posting whose hash is in `sorted_query`.
    pub fn collect_matches(&self, sorted_query: &[u32], found: &mut dyn FnMut(u32)) -> Result<()> {
        let nb = self.footer.num_blocks;
        if nb == 0 {
            return Ok(());
        }
        let mut block = DecodedBlock::default();
        // The block whose hashes are decoded, and the one whose ids are:
        // a block's ids are decoded only when a query hash is in it (most
        // lookups in a small segment find nothing).
        let (mut current, mut ids_of) = (u64::MAX, u64::MAX);
        let mut sections = block::Sections::default();
        for &hash in sorted_query {
            let mut b = self.lower_bound(hash).saturating_sub(1);
            while b < nb && self.first_hash(b) <= hash {
                if b != current {
                    sections = self.decode_hashes(b, &mut block)?;
                    current = b;
                }
                let range = block.range_of(hash);
                if !range.is_empty() && ids_of != b {
                    block::decode_ids(&self.packer, &sections, &mut block);
                    ids_of = b;
                }
                for &id in &block.ids[range.clone()] {
                    found(id);
                }
                if range.end < block.len {
                    break;
                }
                b += 1;
            }
        }
        Ok(())
    }

    /// All postings in order.
    pub fn cursor(&self) -> FileCursor<'_> {
        FileCursor {
            segment: self,
            block: DecodedBlock::default(),
            next_block: 0,
            pos: 0,
            failed: false,
        }
    }
}

impl Drop for FileSegment {
    fn drop(&mut self) {
        if self.delete_on_drop.load(Ordering::Acquire) {
            if let Err(e) = fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not delete retired segment");
            } else {
                tracing::debug!(path = %self.path.display(), "deleted retired segment");
            }
        }
    }
}

/// Sequential reader over all postings of a file segment.
#[derive(Debug)]
pub struct FileCursor<'a> {
    segment: &'a FileSegment,
    block: DecodedBlock,
    next_block: u64,
    pos: usize,
    failed: bool,
}

/// The CRC-32 of the file's bytes `start..end`, read in 1 MiB pieces.
fn crc_at(file: &File, start: u64, end: u64) -> std::io::Result<u32> {
    use std::os::unix::fs::FileExt;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; (end.saturating_sub(start)).min(1 << 20) as usize];
    let mut at = start;
    while at < end {
        let n = ((end - at) as usize).min(buf.len());
        let piece = buf.get_mut(..n).unwrap_or_default();
        file.read_exact_at(piece, at)?;
        hasher.update(piece);
        at += n as u64;
    }
    Ok(hasher.finalize())
}

impl FileCursor<'_> {
    /// Decodes the next block once the current one is used up; false when
    /// there is none left (or a decode failed before).
    #[inline]
    fn refill(&mut self) -> Result<bool> {
        if self.pos < self.block.len {
            return Ok(true);
        }
        if self.failed || self.next_block >= self.segment.footer.num_blocks {
            return Ok(false);
        }
        if let Err(e) = self.segment.decode(self.next_block, &mut self.block) {
            self.failed = true;
            return Err(e);
        }
        self.next_block += 1;
        self.pos = 0;
        Ok(true)
    }

    /// Appends the postings left in the current block, or else all of the
    /// next block's, to `out`; false when none are left.
    pub fn next_block(&mut self, out: &mut Vec<PackedPosting>) -> Result<bool> {
        if !self.refill()? {
            return Ok(false);
        }
        let range = self.pos..self.block.len;
        let (hashes, ids) = (
            self.block.hashes.get(range.clone()).unwrap_or_default(),
            self.block.ids.get(range).unwrap_or_default(),
        );
        out.extend(hashes.iter().zip(ids).map(|(&h, &id)| pack(h, id)));
        self.pos = self.block.len;
        Ok(true)
    }
}

impl Iterator for FileCursor<'_> {
    type Item = Result<PackedPosting>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        match self.refill() {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => return Some(Err(e)),
        }
        let p = pack(self.block.hashes[self.pos], self.block.ids[self.pos]);
        self.pos += 1;
        Some(Ok(p))
    }
}

/// How many bytes [`FileSegment::reverify_all`] checks between reports.
pub const VERIFY_STEP: u64 = 16 << 20;
