//! Framing of one WAL record and of a WAL file's header.
//!
//! ```text
//! file header  8 B "FPNODWAL", u32 version (1), u32 flags (0)
//! record       u32 magic "FNWR", u32 payload length, u32 CRC-32 of payload,
//!              payload = the batch in MessagePack (rmp-serde)
//! ```
//! The per-record magic lets recovery tell a torn tail (nothing valid after the
//! damage) from a corrupt middle (a valid record follows the damage).

use crate::fsutil::le_u32;
use crate::types::Batch;

pub const HEADER: [u8; 16] = *b"FPNODWAL\x01\x00\x00\x00\x00\x00\x00\x00";
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"FNWR");
pub const RECORD_HEADER_LEN: usize = 12;
/// Largest payload accepted when reading (a bound on damage, not on batch size).
pub const MAX_PAYLOAD: usize = 1 << 30;

/// Appends the framed record of `batch` to `out`.
pub fn encode(batch: &Batch, out: &mut Vec<u8>) -> Result<(), rmp_serde::encode::Error> {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    rmp_serde::encode::write(out, batch)?;
    let payload_len = out.len() - start - RECORD_HEADER_LEN;
    let crc = crc32fast::hash(&out[start + RECORD_HEADER_LEN..]);
    out[start..start + 4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// What sits at an offset of a WAL file.
#[derive(Debug)]
pub enum Parsed {
    /// A valid record: the batch and the offset just past it.
    Record(Box<Batch>, usize),
    /// Clean end of file.
    End,
    /// Bytes that are not a valid record.
    Bad(&'static str),
}

/// Parses the record at `at`.
pub fn parse(bytes: &[u8], at: usize) -> Parsed {
    if at == bytes.len() {
        return Parsed::End;
    }
    if bytes.len() - at < RECORD_HEADER_LEN {
        return Parsed::Bad("record header cut short");
    }
    if le_u32(bytes, at) != RECORD_MAGIC {
        return Parsed::Bad("bad record magic");
    }
    let len = le_u32(bytes, at + 4) as usize;
    let crc = le_u32(bytes, at + 8);
    let start = at + RECORD_HEADER_LEN;
    if len > MAX_PAYLOAD || bytes.len() - start < len {
        return Parsed::Bad("record extends past end of file");
    }
    let payload = &bytes[start..start + len];
    if crc32fast::hash(payload) != crc {
        return Parsed::Bad("record checksum mismatch");
    }
    match rmp_serde::from_slice::<Batch>(payload) {
        Ok(b) => Parsed::Record(Box::new(b), start + len),
        Err(_) => Parsed::Bad("record payload does not decode"),
    }
}

/// True if a valid record starts anywhere after `from`.
pub fn valid_record_after(bytes: &[u8], from: usize) -> bool {
    let magic = RECORD_MAGIC.to_le_bytes();
    let mut i = from;
    while i + RECORD_HEADER_LEN <= bytes.len() {
        match bytes[i..].windows(4).position(|w| w == magic) {
            None => return false,
            Some(k) => {
                if matches!(parse(bytes, i + k), Parsed::Record(..)) {
                    return true;
                }
                i += k + 1;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Change, MetadataDelta, Position};

    /// A record written before `Batch::replaced` existed (three fields)
    /// still decodes, with nothing replaced.
    #[test]
    fn a_record_without_replaced_decodes() {
        let changes = vec![Change::Insert {
            id: 7,
            hashes: vec![1, 2],
        }];
        let old = (Position(3), changes.clone(), MetadataDelta::new());
        let payload = rmp_serde::to_vec(&old).unwrap();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let Parsed::Record(batch, end) = parse(&bytes, 0) else {
            panic!("the old record does not parse");
        };
        assert_eq!(end, bytes.len());
        assert_eq!(*batch, Batch::new(Position(3), changes));
        // And a new one round-trips its `replaced`.
        let mut new = Batch::new(Position(4), vec![Change::Delete { id: 1 }]);
        new.replaced = vec![5, 9];
        let mut out = Vec::new();
        encode(&new, &mut out).unwrap();
        assert!(matches!(parse(&out, 0), Parsed::Record(b, _) if *b == new));
    }
}
