//! Serialises a sorted posting stream into a new file segment.
//!
//! Postings are pushed in strictly increasing `(hash, id)` order; the writer packs
//! them into blocks, checksums the data region chunk by chunk as it goes, and on
//! `finish` appends the chunk table, block directory, offsets, id sets and footer,
//! fsyncs, and renames the temp file into place (then fsyncs the directory). Memory
//! held: one block plus 12 bytes per block for the directory and offsets, and the
//! membership filter (1.5 bytes per posting for segments that get one, twice
//! that at `finish`, where it is copied into the metadata).

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bitpacking::{BitPacker, BitPacker4x};

use super::format::{self, CHUNK_SIZE, Footer, HEADER_LEN};
use crate::block::{self, BLOCK_LEN};
use crate::durable::Fs;
use crate::error::{Error, IoContext, Result};
use crate::filter::{ALIGN, FilterBuilder};
use crate::segment::{DocSets, SegmentInfo};
use crate::types::{PackedPosting, Position, SegmentId, unpack};

pub struct FileSegmentWriter {
    fs: Fs,
    tmp_path: PathBuf,
    path: PathBuf,
    id: SegmentId,
    /// `None` only after `finish` took it.
    out: Option<BufWriter<File>>,
    packer: BitPacker4x,
    hashes: [u32; BLOCK_LEN],
    ids: [u32; BLOCK_LEN],
    fill: usize,
    last: Option<PackedPosting>,
    num_postings: u64,
    offset: u64,
    directory: Vec<u32>,
    offsets: Vec<u64>,
    chunk_hasher: crc32fast::Hasher,
    chunk_fill: u32,
    chunk_crcs: Vec<u32>,
    block_buf: Vec<u8>,
    filter: Option<FilterBuilder>,
}

impl std::fmt::Debug for FileSegmentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSegmentWriter")
            .field("path", &self.path)
            .finish()
    }
}

impl FileSegmentWriter {
    /// Starts writing segment `id` into `dir` (as a temp file until `finish`).
    /// `filter_keys` is the most postings it will hold, or 0 for no
    /// membership filter (a run nobody searches); none either above
    /// `filter::MAX_KEYS`. It sets the filter's region count; regions are
    /// sized by the hashes they get, so more postings than announced cost
    /// larger regions (memory while building), not false positives, and
    /// past `filter::MAX_KEYS` distinct hashes the filter is given up.
    pub fn create(dir: &Path, id: SegmentId, fs: Fs, filter_keys: u64) -> Result<Self> {
        let path = dir.join(format::file_name(id));
        let tmp_path = path.with_extension("fpseg.tmp");
        let file = File::create(&tmp_path).at(&tmp_path)?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&format::header()).at(&tmp_path)?;
        Ok(FileSegmentWriter {
            fs,
            tmp_path,
            path,
            id,
            out: Some(out),
            packer: BitPacker4x::new(),
            hashes: [0; BLOCK_LEN],
            ids: [0; BLOCK_LEN],
            fill: 0,
            last: None,
            num_postings: 0,
            offset: HEADER_LEN,
            directory: Vec::new(),
            offsets: Vec::new(),
            chunk_hasher: crc32fast::Hasher::new(),
            chunk_fill: 0,
            chunk_crcs: Vec::new(),
            block_buf: Vec::with_capacity(block::encoded_len(32, 32)),
            filter: FilterBuilder::for_keys(filter_keys),
        })
    }

    /// Adds a posting; postings must arrive in strictly increasing order.
    #[inline]
    pub fn push(&mut self, posting: PackedPosting) -> Result<()> {
        if self.last.is_some_and(|last| posting <= last) {
            return Err(Error::InvalidInput(format!(
                "postings out of order writing {}",
                self.path.display()
            )));
        }
        let (hash, id) = unpack(posting);
        if let Some(f) = self.filter.as_mut() {
            f.insert(hash);
        }
        self.last = Some(posting);
        self.hashes[self.fill] = hash;
        self.ids[self.fill] = id;
        self.fill += 1;
        self.num_postings += 1;
        if self.fill == BLOCK_LEN {
            self.flush_block()?;
        }
        Ok(())
    }

    pub fn num_postings(&self) -> u64 {
        self.num_postings
    }

    fn flush_block(&mut self) -> Result<()> {
        if self.fill == 0 {
            return Ok(());
        }
        // Pad a partial block with its last posting: deltas of 0 cost no width.
        for i in self.fill..BLOCK_LEN {
            self.hashes[i] = self.hashes[self.fill - 1];
            self.ids[i] = self.ids[self.fill - 1];
        }
        self.block_buf.clear();
        block::encode(&self.packer, &self.hashes, &self.ids, &mut self.block_buf);
        self.directory.push(self.hashes[0]);
        self.offsets.push(self.offset);
        let buf = std::mem::take(&mut self.block_buf);
        let r = self.write_data(&buf);
        self.block_buf = buf;
        self.fill = 0;
        r
    }

    fn writer(&mut self) -> Result<&mut BufWriter<File>> {
        match self.out.as_mut() {
            Some(out) => Ok(out),
            None => Err(Error::InvalidInput(
                "segment writer already finished".into(),
            )),
        }
    }

    fn write_data(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.writer()?.write_all(bytes).at(&self.tmp_path)?;
        self.offset += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = bytes.len().min((CHUNK_SIZE - self.chunk_fill) as usize);
            self.chunk_hasher.update(&bytes[..take]);
            self.chunk_fill += take as u32;
            bytes = &bytes[take..];
            if self.chunk_fill == CHUNK_SIZE {
                let h = std::mem::take(&mut self.chunk_hasher);
                self.chunk_crcs.push(h.finalize());
                self.chunk_fill = 0;
            }
        }
        Ok(())
    }

    /// Writes the trailing sections, makes the file durable and renames it into
    /// place. Returns its final path and size.
    pub fn finish(
        mut self,
        docs: &DocSets,
        min_position: Position,
        max_position: Position,
    ) -> Result<(PathBuf, SegmentInfo, u64)> {
        self.flush_block()?;
        if self.chunk_fill > 0 {
            let h = std::mem::take(&mut self.chunk_hasher);
            self.chunk_crcs.push(h.finalize());
        }
        let data_end = self.offset;
        let mut meta =
            Vec::with_capacity(self.chunk_crcs.len() * 4 + self.directory.len() * 12 + 1024);
        for c in &self.chunk_crcs {
            meta.extend_from_slice(&c.to_le_bytes());
        }
        let directory_offset = data_end + meta.len() as u64;
        for h in &self.directory {
            meta.extend_from_slice(&h.to_le_bytes());
        }
        let offsets_offset = data_end + meta.len() as u64;
        for o in &self.offsets {
            meta.extend_from_slice(&o.to_le_bytes());
        }
        let defined_offset = data_end + meta.len() as u64;
        docs.defined.serialize_into(&mut meta).at(&self.tmp_path)?;
        let deleted_offset = data_end + meta.len() as u64;
        docs.deleted.serialize_into(&mut meta).at(&self.tmp_path)?;
        let deleted_end = data_end + meta.len() as u64;
        let (mut filter_offset, mut filter_len) = (deleted_end, 0);
        if let Some(f) = self.filter.take() {
            // Zero padding puts the filter's blocks on cache lines once mapped.
            let pad = deleted_end.next_multiple_of(ALIGN as u64) - deleted_end;
            let before = meta.len();
            meta.resize(before + pad as usize, 0);
            match f.write_to(&mut meta) {
                0 => meta.truncate(before),
                n => (filter_offset, filter_len) = (deleted_end + pad, n as u64),
            }
        }
        let end = data_end + meta.len() as u64;
        let segment_id = self.id;
        let footer = Footer {
            segment_id: segment_id.0,
            min_position: min_position.0,
            max_position: max_position.0,
            num_postings: self.num_postings,
            num_blocks: self.directory.len() as u64,
            data_end,
            chunks_offset: data_end,
            directory_offset,
            offsets_offset,
            defined_offset,
            defined_len: deleted_offset - defined_offset,
            deleted_offset,
            deleted_len: deleted_end - deleted_offset,
            filter_offset,
            filter_len,
            chunk_size: CHUNK_SIZE,
            metadata_crc: crc32fast::hash(&meta),
        };
        let tmp_path = self.tmp_path.clone();
        self.writer()?.write_all(&meta).at(&tmp_path)?;
        let footer = footer.encode();
        self.writer()?.write_all(&footer).at(&tmp_path)?;
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::InvalidInput("segment writer already finished".into()))?;
        let file = out
            .into_inner()
            .map_err(|e| e.into_error())
            .at(&self.tmp_path)?;
        self.fs.sync_file(&file, &self.tmp_path)?;
        drop(file);
        self.fs.rename(&self.tmp_path, &self.path)?;
        let info = SegmentInfo {
            id: segment_id,
            min_position,
            max_position,
            num_postings: self.num_postings,
        };
        Ok((self.path.clone(), info, end + footer.len() as u64))
    }
}

impl Drop for FileSegmentWriter {
    fn drop(&mut self) {
        // An unfinished writer leaves no temp file behind (finish renamed it away).
        if self.out.is_some() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}
