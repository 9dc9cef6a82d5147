//! The manifest: which file segments make up the index, the position up to which
//! they hold every batch, the index metadata and generation.
//!
//! Replaced atomically (temp file, fsync, rename, fsync directory), so after a
//! crash it is either the old or the new one, never a mix. Layout:
//! `"FPNODMAN"`, u32 version, u32 JSON length, JSON body, u32 CRC-32 of the body.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::durable::Fs;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::le_u32;
use crate::types::{Generation, Metadata, Position, SegmentId};

pub const FILE_NAME: &str = "MANIFEST";
const MAGIC: &[u8; 8] = b"FPNODMAN";
pub const VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSegment {
    pub id: SegmentId,
    pub min_position: Position,
    pub max_position: Position,
    pub num_postings: u64,
    pub size_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub generation: Generation,
    /// Every batch at or before this position is in the file segments below.
    pub checkpoint_position: Position,
    /// Next segment id to hand out (ids are never reused).
    pub next_segment_id: u64,
    /// Oldest first.
    pub segments: Vec<ManifestSegment>,
    pub metadata: Metadata,
}

impl Manifest {
    pub fn encode(&self) -> Result<Vec<u8>> {
        let body = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::InvalidInput(format!("manifest does not encode: {e}")))?;
        let mut out = Vec::with_capacity(body.len() + 20);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        Ok(out)
    }

    pub fn decode(bytes: &[u8], path: &Path) -> Result<Manifest> {
        let corrupt = |offset: u64, reason: &str| Error::corrupt(path, offset, reason);
        if bytes.len() < 20 || &bytes[..8] != MAGIC {
            return Err(corrupt(0, "bad manifest magic"));
        }
        let version = le_u32(bytes, 8);
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: VERSION,
            });
        }
        let len = le_u32(bytes, 12) as usize;
        if bytes.len() != 16 + len + 4 {
            return Err(corrupt(12, "manifest length does not match file size"));
        }
        let body = &bytes[16..16 + len];
        if crc32fast::hash(body) != le_u32(bytes, 16 + len) {
            return Err(corrupt(16, "manifest checksum mismatch"));
        }
        serde_json::from_slice(body).map_err(|e| corrupt(16, &format!("manifest body: {e}")))
    }

    /// Reads the manifest of an index directory, `None` if there is none.
    pub fn load(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => Manifest::decode(&bytes, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at(&path),
        }
    }

    /// Replaces the manifest of `dir` atomically and durably.
    pub fn store(&self, dir: &Path, fs: &Fs) -> Result<()> {
        fs.write_atomic(&dir.join(FILE_NAME), &self.encode()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest {
            generation: Generation(3),
            checkpoint_position: Position(17),
            next_segment_id: 5,
            ..Default::default()
        };
        m.metadata.insert("k".into(), "v".into());
        m.segments.push(ManifestSegment {
            id: SegmentId(4),
            ..Default::default()
        });
        m.store(dir.path(), &Fs::default()).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), Some(m));
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err();
        assert!(err.is_corruption(), "{err}");
        assert!(err.to_string().contains("MANIFEST"), "{err}");
    }
}
