//! Byte layout of a file segment, version 2 (see docs/segment-format.md);
//! version 1, the same without the filter, is still read.
//!
//! ```text
//! header     16 B   magic "FPNODSEG", u32 version, u32 flags (0)
//! data              blocks back to back (block.rs)
//! chunks            u32 CRC-32 per CHUNK_SIZE bytes of the data region
//! directory         u32 first hash of each block
//! offsets           u64 file offset of each block
//! defined           roaring bitmap (portable format): ids the segment defines
//! deleted           roaring bitmap: ids the segment deletes
//! filter            split-block Bloom filter over the hashes (filter.rs), or empty
//! footer    144 B   see `Footer` (128 B in version 1)
//! ```
//! All integers little-endian. The footer ends with its own CRC, the version and
//! the magic, so a file is identified and checked from its end.

use crate::filter;
use crate::fsutil::{le_u32, le_u64};
use crate::types::SegmentId;

pub const MAGIC: [u8; 8] = *b"FPNODSEG";
/// The version written.
pub const FORMAT_VERSION: u32 = 2;
/// Version 1: no filter section.
pub const FORMAT_VERSION_1: u32 = 1;
pub const HEADER_LEN: u64 = 16;

/// Bytes at the very end of the file: u32 version, then the magic.
pub const TRAILER_LEN: u64 = 12;

/// The u64 fields a footer of `version` starts with; `None` for a version
/// this code cannot read.
fn footer_words(version: u32) -> Option<usize> {
    match version {
        FORMAT_VERSION_1 => Some(13),
        FORMAT_VERSION => Some(15),
        _ => None,
    }
}

/// Footer size of a format version: its u64 fields, chunk size, metadata
/// CRC, footer CRC, then the trailer. `None` for a version this code cannot
/// read.
pub fn footer_len(version: u32) -> Option<u64> {
    footer_words(version).map(|w| 8 * w as u64 + 12 + TRAILER_LEN)
}
/// Granularity of data checksums: each chunk is verified the first time any block
/// in it is read.
pub const CHUNK_SIZE: u32 = 4096;

pub const EXTENSION: &str = "fpseg";

pub fn file_name(id: SegmentId) -> String {
    format!("{id}.{EXTENSION}")
}

/// Parses `<16 hex>.fpseg`.
pub fn parse_file_name(name: &str) -> Option<SegmentId> {
    let stem = name.strip_suffix(".fpseg")?;
    if stem.len() != 16 {
        return None;
    }
    u64::from_str_radix(stem, 16).ok().map(SegmentId)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Footer {
    pub segment_id: u64,
    pub min_position: u64,
    pub max_position: u64,
    pub num_postings: u64,
    pub num_blocks: u64,
    pub data_end: u64,
    pub chunks_offset: u64,
    pub directory_offset: u64,
    pub offsets_offset: u64,
    pub defined_offset: u64,
    pub defined_len: u64,
    pub deleted_offset: u64,
    pub deleted_len: u64,
    /// The filter section (version 2; 0 and 0 in version 1, or when the
    /// segment has no filter).
    pub filter_offset: u64,
    pub filter_len: u64,
    pub chunk_size: u32,
    /// CRC-32 of bytes `[chunks_offset, footer start)`.
    pub metadata_crc: u32,
}

impl Footer {
    /// Encodes a version-2 footer.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(footer_len(FORMAT_VERSION).unwrap_or(0) as usize);
        for v in [
            self.segment_id,
            self.min_position,
            self.max_position,
            self.num_postings,
            self.num_blocks,
            self.data_end,
            self.chunks_offset,
            self.directory_offset,
            self.offsets_offset,
            self.defined_offset,
            self.defined_len,
            self.deleted_offset,
            self.deleted_len,
            self.filter_offset,
            self.filter_len,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        b.extend_from_slice(&self.metadata_crc.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&MAGIC);
        debug_assert_eq!(Some(b.len() as u64), footer_len(FORMAT_VERSION));
        b
    }

    /// Decodes a footer of `version` (a version [`footer_len`] knows); the
    /// caller has checked the magic. Returns `None` if the footer's own
    /// checksum does not match.
    pub fn decode(b: &[u8], version: u32) -> Option<Footer> {
        let len = footer_len(version)?;
        if b.len() as u64 != len {
            return None;
        }
        let words = footer_words(version)?;
        let body = words * 8 + 8;
        if crc32fast::hash(&b[..body]) != le_u32(b, body) {
            return None;
        }
        let u = |i: usize| le_u64(b, i * 8);
        let (filter_offset, filter_len) = if version == FORMAT_VERSION_1 {
            (0, 0)
        } else {
            (u(13), u(14))
        };
        Some(Footer {
            segment_id: u(0),
            min_position: u(1),
            max_position: u(2),
            num_postings: u(3),
            num_blocks: u(4),
            data_end: u(5),
            chunks_offset: u(6),
            directory_offset: u(7),
            offsets_offset: u(8),
            defined_offset: u(9),
            defined_len: u(10),
            deleted_offset: u(11),
            deleted_len: u(12),
            filter_offset,
            filter_len,
            chunk_size: le_u32(b, words * 8),
            metadata_crc: le_u32(b, words * 8 + 4),
        })
    }

    /// Version and magic sit in the last [`TRAILER_LEN`] bytes of the file.
    pub fn trailer(b: &[u8]) -> (u32, [u8; 8]) {
        let n = b.len();
        let mut magic = [0u8; 8];
        if n as u64 >= TRAILER_LEN {
            magic.copy_from_slice(&b[n - 8..]);
            (le_u32(b, n - TRAILER_LEN as usize), magic)
        } else {
            (0, magic)
        }
    }

    /// Checks that the sections tile the file exactly (`footer_len` bytes of
    /// footer at its end); returns what is wrong.
    pub fn check_layout(&self, file_len: u64, footer_len: u64) -> Result<(), String> {
        let blocks = self.num_postings.div_ceil(crate::block::BLOCK_LEN as u64);
        if blocks != self.num_blocks {
            return Err(format!(
                "{} postings need {} blocks, footer says {}",
                self.num_postings, blocks, self.num_blocks
            ));
        }
        if self.chunk_size == 0 {
            return Err("chunk size 0".into());
        }
        // In u128: offsets and lengths come from the file, and sums of
        // crafted u64s must not wrap into a layout that seems to add up.
        let w = u128::from;
        let chunks =
            w(self.data_end.saturating_sub(HEADER_LEN)).div_ceil(w(self.chunk_size.into()));
        let deleted_end = w(self.deleted_offset) + w(self.deleted_len);
        let filter_at = deleted_end.next_multiple_of(filter::ALIGN as u128);
        let sections_end = if self.filter_len == 0 {
            deleted_end
        } else {
            w(self.filter_offset) + w(self.filter_len)
        };
        let expect = [
            ("data end", self.data_end >= HEADER_LEN),
            ("chunk table", self.chunks_offset == self.data_end),
            (
                "directory",
                w(self.directory_offset) == w(self.chunks_offset) + 4 * chunks,
            ),
            (
                "offsets",
                w(self.offsets_offset) == w(self.directory_offset) + 4 * w(self.num_blocks),
            ),
            (
                "defined ids",
                w(self.defined_offset) == w(self.offsets_offset) + 8 * w(self.num_blocks),
            ),
            (
                "deleted ids",
                w(self.deleted_offset) == w(self.defined_offset) + w(self.defined_len),
            ),
            (
                "filter",
                self.filter_len == 0
                    || (w(self.filter_offset) == filter_at
                        && self.filter_len.is_multiple_of(filter::BLOCK_BYTES as u64)),
            ),
            ("footer", sections_end + w(footer_len) == w(file_len)),
        ];
        for (what, ok) in expect {
            if !ok {
                return Err(format!("section layout does not add up at: {what}"));
            }
        }
        Ok(())
    }

    pub fn num_chunks(&self) -> u64 {
        (self.data_end - HEADER_LEN).div_ceil(u64::from(self.chunk_size))
    }
}

pub fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn footer_round_trips_and_detects_a_flipped_bit() {
        let f = Footer {
            segment_id: 3,
            num_postings: 5,
            num_blocks: 1,
            chunk_size: CHUNK_SIZE,
            metadata_crc: 77,
            ..Footer::default()
        };
        let mut b = f.encode();
        assert_eq!(Footer::decode(&b, FORMAT_VERSION), Some(f));
        assert_eq!(Footer::trailer(&b), (FORMAT_VERSION, MAGIC));
        assert_eq!(Footer::decode(&b, FORMAT_VERSION_1), None);
        assert_eq!(Footer::decode(&b, 3), None);
        b[3] ^= 1;
        assert_eq!(Footer::decode(&b, FORMAT_VERSION), None);
    }

    #[test]
    fn file_names_round_trip() {
        let id = SegmentId(0xabc);
        assert_eq!(parse_file_name(&file_name(id)), Some(id));
        assert_eq!(parse_file_name("x.fpseg"), None);
        assert_eq!(parse_file_name("0000000000000abc.tmp"), None);
    }
}
