//! Block codec: 128 postings, hashes delta-coded and ids bit-packed, each with the
//! narrowest bit width that fits the block.
//!
//! Layout of one block (little-endian, see docs/segment-format.md):
//!
//! ```text
//! u8  hash_bits       width of the hash deltas (0..=32)
//! u8  id_bits         width of the ids (0..=32)
//! [16 * hash_bits]    hash deltas from the block's first hash, BitPacker4x layout
//! [16 * id_bits]      ids, BitPacker4x layout
//! ```
//!
//! The first hash of the block lives in the segment's block directory, not in the
//! block. A partial last block is padded with its last posting; readers know the
//! true length from the posting count. Decoding never panics on bad bytes: widths
//! and lengths are checked first (checksums are verified by the caller).

use bitpacking::{BitPacker, BitPacker4x};

/// Postings per block.
pub const BLOCK_LEN: usize = BitPacker4x::BLOCK_LEN;

const HEADER_LEN: usize = 2;

/// Bytes a block with these widths occupies.
#[inline]
pub fn encoded_len(hash_bits: u8, id_bits: u8) -> usize {
    HEADER_LEN + (BLOCK_LEN / 8) * (hash_bits as usize + id_bits as usize)
}

/// Encodes one block. `hashes` must be sorted and both slices exactly
/// [`BLOCK_LEN`] long. Appends to `out` and returns the number of bytes written.
pub fn encode(
    packer: &BitPacker4x,
    hashes: &[u32; BLOCK_LEN],
    ids: &[u32; BLOCK_LEN],
    out: &mut Vec<u8>,
) -> usize {
    let first = hashes[0];
    let hash_bits = packer.num_bits_sorted(first, hashes);
    let id_bits = packer.num_bits(ids);
    let start = out.len();
    out.push(hash_bits);
    out.push(id_bits);
    let mut buf = [0u8; 4 * BLOCK_LEN];
    let n = packer.compress_sorted(first, hashes, &mut buf, hash_bits);
    out.extend_from_slice(&buf[..n]);
    let n = packer.compress(ids, &mut buf, id_bits);
    out.extend_from_slice(&buf[..n]);
    out.len() - start
}

/// A decoded block. Only the first `len` entries are postings.
#[derive(Clone, Debug)]
pub struct DecodedBlock {
    pub hashes: [u32; BLOCK_LEN],
    pub ids: [u32; BLOCK_LEN],
    pub len: usize,
}

impl Default for DecodedBlock {
    fn default() -> Self {
        DecodedBlock {
            hashes: [0; BLOCK_LEN],
            ids: [0; BLOCK_LEN],
            len: 0,
        }
    }
}

impl DecodedBlock {
    /// Range of entries whose hash equals `hash`.
    #[inline]
    pub fn range_of(&self, hash: u32) -> std::ops::Range<usize> {
        let hashes = &self.hashes[..self.len];
        let start = hashes.partition_point(|&h| h < hash);
        let end = start + hashes[start..].partition_point(|&h| h == hash);
        start..end
    }
}

/// Why a block could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockError {
    Truncated,
    BadWidth,
}

impl BlockError {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockError::Truncated => "block extends past the data region",
            BlockError::BadWidth => "block bit width above 32",
        }
    }
}

/// Returns the encoded length of the block starting at `bytes[0]`.
#[inline]
pub fn peek_len(bytes: &[u8]) -> Result<usize, BlockError> {
    if bytes.len() < HEADER_LEN {
        return Err(BlockError::Truncated);
    }
    let (hash_bits, id_bits) = (bytes[0], bytes[1]);
    if hash_bits > 32 || id_bits > 32 {
        return Err(BlockError::BadWidth);
    }
    let len = encoded_len(hash_bits, id_bits);
    if bytes.len() < len {
        return Err(BlockError::Truncated);
    }
    Ok(len)
}

/// Decodes the block at the start of `bytes` into `out`, keeping `len` postings.
pub fn decode(
    packer: &BitPacker4x,
    bytes: &[u8],
    first_hash: u32,
    len: usize,
    out: &mut DecodedBlock,
) -> Result<(), BlockError> {
    let sections = decode_hashes(packer, bytes, first_hash, len, out)?;
    decode_ids(packer, &sections, out);
    Ok(())
}

/// A block's bit widths and its hash and id sections.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sections<'a> {
    hash_bits: u8,
    hashes: &'a [u8],
    id_bits: u8,
    ids: &'a [u8],
}

fn sections(bytes: &[u8]) -> Result<Sections<'_>, BlockError> {
    let total = peek_len(bytes)?;
    let (hash_bits, id_bits) = (bytes[0], bytes[1]);
    let hash_len = (BLOCK_LEN / 8) * hash_bits as usize;
    let (hashes, ids) = bytes[HEADER_LEN..total].split_at(hash_len);
    Ok(Sections {
        hash_bits,
        hashes,
        id_bits,
        ids,
    })
}

/// The block's hashes (and `len`) only: enough to tell whether, and where,
/// a hash is in it. Returns the block's sections, for [`decode_ids`] when
/// it is.
pub fn decode_hashes<'a>(
    packer: &BitPacker4x,
    bytes: &'a [u8],
    first_hash: u32,
    len: usize,
    out: &mut DecodedBlock,
) -> Result<Sections<'a>, BlockError> {
    let s = sections(bytes)?;
    packer.decompress_sorted(first_hash, s.hashes, &mut out.hashes, s.hash_bits);
    out.len = len.min(BLOCK_LEN);
    Ok(s)
}

/// The block's ids, from the sections [`decode_hashes`] returned.
pub fn decode_ids(packer: &BitPacker4x, sections: &Sections<'_>, out: &mut DecodedBlock) {
    packer.decompress(sections.ids, &mut out.ids, sections.id_bits);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn block_round_trips_any_sorted_hashes_and_ids(
            mut hashes in proptest::collection::vec(any::<u32>(), BLOCK_LEN),
            ids in proptest::collection::vec(any::<u32>(), BLOCK_LEN),
        ) {
            hashes.sort_unstable();
            let packer = BitPacker4x::new();
            let h: [u32; BLOCK_LEN] = hashes.clone().try_into().unwrap();
            let i: [u32; BLOCK_LEN] = ids.clone().try_into().unwrap();
            let mut out = Vec::new();
            let n = encode(&packer, &h, &i, &mut out);
            prop_assert_eq!(n, out.len());
            prop_assert_eq!(peek_len(&out), Ok(n));
            let mut dec = DecodedBlock::default();
            decode(&packer, &out, h[0], BLOCK_LEN, &mut dec).unwrap();
            prop_assert_eq!(&dec.hashes[..], &hashes[..]);
            prop_assert_eq!(&dec.ids[..], &ids[..]);
        }
    }

    #[test]
    fn block_decode_rejects_widths_above_32_and_short_input() {
        let packer = BitPacker4x::new();
        let mut dec = DecodedBlock::default();
        assert_eq!(
            decode(&packer, &[33, 0], 0, 1, &mut dec),
            Err(BlockError::BadWidth)
        );
        assert_eq!(
            decode(&packer, &[1, 1, 0, 0], 0, 1, &mut dec),
            Err(BlockError::Truncated)
        );
        assert_eq!(
            decode(&packer, &[1], 0, 1, &mut dec),
            Err(BlockError::Truncated)
        );
    }

    #[test]
    fn range_of_finds_runs_of_equal_hashes() {
        let mut dec = DecodedBlock::default();
        dec.hashes[..5].copy_from_slice(&[1, 3, 3, 3, 9]);
        dec.len = 5;
        assert_eq!(dec.range_of(3), 1..4);
        assert_eq!(dec.range_of(2), 1..1);
        assert_eq!(dec.range_of(10), 5..5);
    }
}
