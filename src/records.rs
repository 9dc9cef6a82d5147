//! The fingerprint file format of `fpnode import`/`export` and of the import
//! and export jobs (docs/api.md "Jobs"): NDJSON lines `{"id": 1, "hashes":
//! [..]}` or concatenated MessagePack maps `{"i": 1, "h": [..]}` (the full
//! names accepted too). Read one record at a time: memory holds one record,
//! never the file.

use std::io::{BufRead, Read, Write};

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

/// The largest record (an NDJSON line or a MessagePack value) read: as a
/// `_stream` line (docs/api.md), room for the most hashes a change may carry.
pub const MAX_RECORD_BYTES: u64 = 4 << 20;

/// Calls `f(input, record number, id, hashes)` for every record of `input`;
/// answers how many there were. A record longer than [`MAX_RECORD_BYTES`],
/// with more than `max_hashes` hashes, or with id 0 or beyond `u32` is
/// `Invalid`, named by its 1-based number: memory holds one record at most.
pub fn for_each<R: BufRead>(
    input: &mut R,
    format: InputFormat,
    max_hashes: usize,
    mut f: impl FnMut(&mut R, u64, u32, Vec<u32>) -> Result<(), RecordError>,
) -> Result<u64, RecordError> {
    let mut n: u64 = 0;
    let check = |n: u64, r: &Record| {
        if r.hashes.len() > max_hashes {
            return Err(RecordError::Invalid {
                record: n,
                message: format!("{} hashes, more than {max_hashes}", r.hashes.len()),
            });
        }
        u32::try_from(r.id)
            .ok()
            .filter(|&id| id != 0)
            .ok_or_else(|| RecordError::Invalid {
                record: n,
                message: format!("invalid fingerprint id {}", r.id),
            })
    };
    let too_long = |n: u64| RecordError::Invalid {
        record: n,
        message: format!("longer than {MAX_RECORD_BYTES} bytes"),
    };
    match format {
        InputFormat::Ndjson => {
            let mut line = Vec::new();
            loop {
                line.clear();
                let read = input
                    .by_ref()
                    .take(MAX_RECORD_BYTES + 1)
                    .read_until(b'\n', &mut line)?;
                if read == 0 {
                    break;
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                n += 1;
                if read as u64 > MAX_RECORD_BYTES {
                    return Err(too_long(n));
                }
                let r: Record =
                    serde_json::from_slice(&line).map_err(|e| RecordError::Invalid {
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
            let mut value = input.by_ref().take(MAX_RECORD_BYTES);
            let r: Record = rmp_serde::decode::from_read(&mut value).map_err(|e| {
                if value.limit() == 0 {
                    too_long(n)
                } else {
                    RecordError::Invalid {
                        record: n,
                        message: format!("not a fingerprint: {e}"),
                    }
                }
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
