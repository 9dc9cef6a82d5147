//! The fingerprint file format of `fpnode import`/`export` and of the import
//! and export jobs (docs/api.md "Jobs"): NDJSON lines `{"id": 1, "hashes":
//! [..]}` or concatenated MessagePack maps `{"i": 1, "h": [..]}` (the full
//! names accepted too). Read one record at a time: memory holds one record,
//! never the file.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::cli::InputFormat;

/// Fingerprints read per pass of an export: each pass reads every posting
/// once and holds this many fingerprints (about 500 bytes each at 120
/// hashes), so an export's memory does not grow with the index.
pub const EXPORT_PASS: usize = 200_000;

#[derive(Debug, Deserialize)]
struct Record {
    #[serde(alias = "i")]
    id: u64,
    #[serde(alias = "h")]
    hashes: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("reading input: {0}")]
    Io(#[from] std::io::Error),
    #[error("record {record}: {message}")]
    Invalid { record: u64, message: String },
    /// The caller's `f` stopped the reading.
    #[error("{0}")]
    Stopped(String),
}

/// Counts the bytes read through it.
pub struct Counted<R> {
    inner: R,
    pub bytes: u64,
}

impl<R> Counted<R> {
    pub fn new(inner: R) -> Counted<R> {
        Counted { inner, bytes: 0 }
    }
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.bytes += n as u64;
        self.inner.consume(n);
    }
}

/// Calls `f(record number, id, hashes)` for every record of `input`;
/// answers how many there were. A record with id 0 or beyond `u32` is
/// `Invalid`, named by its 1-based number.
pub fn for_each<R: BufRead>(
    input: &mut R,
    format: InputFormat,
    mut f: impl FnMut(&mut R, u64, u32, Vec<u32>) -> Result<(), RecordError>,
) -> Result<u64, RecordError> {
    let mut n: u64 = 0;
    let check = |n: u64, r: &Record| {
        u32::try_from(r.id)
            .ok()
            .filter(|&id| id != 0)
            .ok_or_else(|| RecordError::Invalid {
                record: n,
                message: format!("invalid fingerprint id {}", r.id),
            })
    };
    match format {
        InputFormat::Ndjson => {
            let mut line = String::new();
            loop {
                line.clear();
                if input.read_line(&mut line)? == 0 {
                    break;
                }
                if line.trim().is_empty() {
                    continue;
                }
                n += 1;
                let r: Record = serde_json::from_str(&line).map_err(|e| RecordError::Invalid {
                    record: n,
                    message: format!("not a fingerprint: {e}"),
                })?;
                let id = check(n, &r)?;
                f(input, n, id, r.hashes)?;
            }
        }
        InputFormat::Msgpack => loop {
            if input.fill_buf()?.is_empty() {
                break;
            }
            n += 1;
            let r: Record =
                rmp_serde::decode::from_read(&mut *input).map_err(|e| RecordError::Invalid {
                    record: n,
                    message: format!("not a fingerprint: {e}"),
                })?;
            let id = check(n, &r)?;
            f(input, n, id, r.hashes)?;
        },
    }
    Ok(n)
}

/// Writes one record in `format`.
pub fn write(
    out: &mut impl Write,
    format: InputFormat,
    id: u32,
    hashes: &[u32],
) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct Full<'a> {
        id: u32,
        hashes: &'a [u32],
    }
    #[derive(Serialize)]
    struct Short<'a> {
        i: u32,
        h: &'a [u32],
    }
    match format {
        InputFormat::Ndjson => {
            serde_json::to_writer(&mut *out, &Full { id, hashes })?;
            out.write_all(b"\n")
        }
        InputFormat::Msgpack => rmp_serde::encode::write_named(out, &Short { i: id, h: hashes })
            .map_err(std::io::Error::other),
    }
}
