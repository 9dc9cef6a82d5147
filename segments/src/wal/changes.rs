//! Reading the WAL as a change log: the batches after a version, for the
//! change feed (docs/api.md `_changes`). Checkpointed WAL files are kept for
//! this within `WalOptions::retain_bytes`; a version older than what is kept
//! is `ChangesNotRetained`, and the client resyncs.
//!
//! Reads run beside the writer: only records at or before `upto` (a position
//! the caller knows is durable and published) are returned, so the tail the
//! writer is appending to is never interpreted.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::path::Path;

use super::list_files;
use super::record::{HEADER, MAX_PAYLOAD, RECORD_HEADER_LEN, RECORD_MAGIC};
use crate::error::{Error, IoContext, Result};
use crate::types::{Batch, Change, Position};

/// Where the next page starts: the WAL file (by its first position) and the
/// offset just past the batch at `after`. A feed that keeps it reads only
/// what is new instead of scanning its file from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangesCursor {
    pub file: Position,
    pub offset: u64,
    pub after: Position,
}

/// Hashes per page at most (beyond the first batch): a page of many large
/// fingerprints stays near 16 MiB.
const PAGE_HASHES: usize = 1 << 22;

/// Batches after a version, in order.
#[derive(Debug, Default, Clone)]
pub struct ChangesPage {
    pub batches: Vec<Batch>,
    /// True if more batches at or before `upto` follow the page.
    pub more: bool,
    /// Where the page ended (None if it is empty).
    pub cursor: Option<ChangesCursor>,
}

/// The batches with positions after `since` and at or before `upto`, at most
/// `max_changes` changes (but always a whole batch, and at least one). Files
/// are read through a small buffer, record by record: memory is one page.
/// `hint` (from the previous page's `cursor`, for the same `since`) skips
/// what was read already.
pub fn read_since(
    dir: &Path,
    since: Position,
    upto: Position,
    max_changes: usize,
    hint: Option<ChangesCursor>,
) -> Result<ChangesPage> {
    let mut page = ChangesPage::default();
    if since >= upto {
        return Ok(page);
    }
    let files = list_files(dir)?;
    check_retained(&files, since, upto)?;
    let hint = hint.filter(|h| h.after == since);
    // The newest file starting at or before since + 1 holds it; a hint
    // names the file and offset directly.
    let (start, mut offset) = match hint.and_then(|h| files.iter().position(|(f, _)| *f == h.file))
    {
        Some(i) => (i, hint.map_or(HEADER.len() as u64, |h| h.offset)),
        None => (
            files
                .iter()
                .rposition(|(first, _)| first.0 <= since.0.saturating_add(1))
                .unwrap_or(0),
            HEADER.len() as u64,
        ),
    };
    let mut changes = 0usize;
    let mut hashes = 0usize;
    let newest = files.last().map(|(f, _)| *f);
    for (first, path) in &files[start..] {
        // Only the newest file can end in a record being written.
        let tail_ok = Some(*first) == newest;
        if *first > upto {
            break;
        }
        let file = match File::open(path) {
            Ok(f) => f,
            // Removed by a checkpoint meanwhile: what it held is gone.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::ChangesNotRetained {
                    since: since.0,
                    oldest: first.0,
                });
            }
            Err(e) => return Err(e).at(path),
        };
        let mut r = BufReader::with_capacity(64 << 10, file);
        if offset == HEADER.len() as u64 {
            let mut header = [0u8; HEADER.len()];
            r.read_exact(&mut header)
                .map_err(|_| Error::corrupt(path, 0, "bad WAL file header"))?;
            if header != HEADER {
                return Err(Error::corrupt(path, 0, "bad WAL file header"));
            }
        } else {
            r.seek(SeekFrom::Start(offset)).at(path)?;
        }
        while let Some(record) = next_record(&mut r, path, offset, tail_ok, since)? {
            offset = r.stream_position().at(path)?;
            let Record::Batch(batch) = record else {
                continue;
            };
            if batch.position <= since {
                continue;
            }
            if batch.position > upto {
                return Ok(page);
            }
            let batch_hashes: usize = batch
                .changes
                .iter()
                .map(|c| match c {
                    Change::Insert { hashes, .. } => hashes.len(),
                    Change::Delete { .. } => 0,
                })
                .sum();
            if !page.batches.is_empty()
                && (changes + batch.changes.len() > max_changes
                    || hashes + batch_hashes > PAGE_HASHES)
            {
                page.more = true;
                return Ok(page);
            }
            changes += batch.changes.len();
            hashes += batch_hashes;
            page.cursor = Some(ChangesCursor {
                file: *first,
                offset,
                after: batch.position,
            });
            page.batches.push(batch);
        }
        offset = HEADER.len() as u64;
    }
    Ok(page)
}

/// Whether what follows `since` (up to `upto`) is still in the log, from the
/// file names alone: `ChangesNotRetained` if not.
pub fn retained(dir: &Path, since: Position, upto: Position) -> Result<()> {
    if since >= upto {
        return Ok(());
    }
    check_retained(&list_files(dir)?, since, upto)
}

fn check_retained(
    files: &[(Position, std::path::PathBuf)],
    since: Position,
    upto: Position,
) -> Result<()> {
    let Some(&(oldest, _)) = files.first() else {
        return Err(Error::ChangesNotRetained {
            since: since.0,
            oldest: upto.0,
        });
    };
    // Positions are not contiguous in replica mode, so "retained" means the
    // oldest file starts at or before the first position wanted.
    if oldest.0 > since.0.saturating_add(1) {
        return Err(Error::ChangesNotRetained {
            since: since.0,
            oldest: oldest.0,
        });
    }
    Ok(())
}

/// A record read: its batch, or only the knowledge that it is at or before
/// the position asked for (its changes were not decoded).
enum Record {
    Skipped,
    Batch(Batch),
}

/// The position of an encoded batch (the first field of its MessagePack
/// array), read without decoding its changes; `None` if the bytes are not
/// shaped so (the whole record is then decoded).
fn peek_position(payload: &[u8]) -> Option<u64> {
    let (&head, rest) = payload.split_first()?;
    let rest = match head {
        0x90..=0x9f => rest,
        0xdc => rest.get(2..)?,
        0xdd => rest.get(4..)?,
        _ => return None,
    };
    let (&marker, value) = rest.split_first()?;
    let bytes = |n: usize| -> Option<u64> {
        let mut v = 0u64;
        for &b in value.get(..n)? {
            v = (v << 8) | u64::from(b);
        }
        Some(v)
    };
    match marker {
        0x00..=0x7f => Some(u64::from(marker)),
        0xcc => bytes(1),
        0xcd => bytes(2),
        0xce => bytes(4),
        0xcf => bytes(8),
        _ => None,
    }
}

/// The record at the reader's position, or None at the end of the file. A
/// record at or before `skip_through` is checked (its checksum) but not
/// decoded: a reader resuming deep into a file skips to its place cheaply.
/// A record cut short ends the newest file (`tail_ok`: the writer's unsynced
/// tail, past anything durable); in an older file it is damage.
fn next_record(
    r: &mut BufReader<File>,
    path: &Path,
    at: u64,
    tail_ok: bool,
    skip_through: Position,
) -> Result<Option<Record>> {
    let cut_short = || {
        if tail_ok {
            Ok(None)
        } else {
            Err(Error::corrupt(path, at, "record cut short"))
        }
    };
    let mut head = [0u8; RECORD_HEADER_LEN];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return cut_short(),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).at(path),
        }
    }
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if word(0) != RECORD_MAGIC {
        return Err(Error::corrupt(path, at, "bad record magic"));
    }
    let len = word(4) as usize;
    if len > MAX_PAYLOAD {
        return Err(Error::corrupt(path, at, "record too long"));
    }
    let mut payload = vec![0u8; len];
    if r.read_exact(&mut payload).is_err() {
        return cut_short();
    }
    if crc32fast::hash(&payload) != word(8) {
        return Err(Error::corrupt(path, at, "record checksum mismatch"));
    }
    if peek_position(&payload).is_some_and(|p| p <= skip_through.0) {
        return Ok(Some(Record::Skipped));
    }
    rmp_serde::from_slice::<Batch>(&payload)
        .map(|b| Some(Record::Batch(b)))
        .map_err(|_| Error::corrupt(path, at, "record payload does not decode"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::Fs;
    use crate::wal::{WalOptions, WalWriter};

    fn batch(p: u64, ids: &[u32]) -> Batch {
        Batch::new(
            Position(p),
            ids.iter()
                .map(|&id| Change::Insert {
                    id,
                    hashes: vec![id, id + 1],
                })
                .collect(),
        )
    }

    #[test]
    fn a_batch_position_is_read_without_decoding_its_changes() {
        for p in [0u64, 5, 127, 128, 255, 256, 65_535, 65_536, 5_000_000_000] {
            let mut out = Vec::new();
            crate::wal::record::encode(&batch(p, &[1, 2, 3]), &mut out).unwrap();
            // The record's payload follows its header.
            let payload = &out[RECORD_HEADER_LEN..];
            assert_eq!(peek_position(payload), Some(p), "position {p}");
        }
        assert_eq!(peek_position(&[]), None);
        assert_eq!(peek_position(&[0x93]), None);
        assert_eq!(peek_position(&[0x80, 1]), None);
    }

    fn positions(page: &ChangesPage) -> Vec<u64> {
        page.batches.iter().map(|b| b.position.0).collect()
    }

    /// 20 batches of 3 changes in many small files.
    fn wal(dir: &Path, retain_bytes: u64) -> WalWriter {
        let opts = WalOptions {
            max_file_bytes: 200,
            fsync: false,
            retain_bytes,
        };
        let mut w = WalWriter::open(dir, Position(0), opts, Fs::default()).unwrap();
        for p in 1..=20 {
            w.append(&batch(p, &[p as u32, 100 + p as u32, 200 + p as u32]))
                .unwrap();
            w.sync().unwrap();
        }
        w
    }

    #[test]
    fn pages_follow_each_other_without_gaps_or_doubles() {
        let tmp = tempfile::tempdir().unwrap();
        let _w = wal(tmp.path(), 0);
        assert!(list_files(tmp.path()).unwrap().len() > 3, "several files");
        let mut since = Position(0);
        let mut seen = Vec::new();
        loop {
            let page = read_since(tmp.path(), since, Position(17), 7, None).unwrap();
            assert!(!page.batches.is_empty());
            // Whole batches, 7 changes at most unless one batch is more.
            assert!(page.batches.len() <= 2, "{:?}", positions(&page));
            seen.extend(positions(&page));
            since = page.batches.last().unwrap().position;
            if !page.more {
                break;
            }
        }
        assert_eq!(seen, (1..=17).collect::<Vec<_>>());
        assert!(
            read_since(tmp.path(), Position(17), Position(17), 7, None)
                .unwrap()
                .batches
                .is_empty()
        );
        assert_eq!(
            positions(&read_since(tmp.path(), Position(12), Position(20), 100, None).unwrap()),
            (13..=20).collect::<Vec<_>>()
        );
    }

    /// Following the cursor from page to page reads exactly what reading
    /// from scratch does, across file boundaries; a cursor for another
    /// version is ignored.
    #[test]
    fn pages_read_from_the_cursor_equal_pages_read_from_scratch() {
        let tmp = tempfile::tempdir().unwrap();
        let _w = wal(tmp.path(), 0);
        let (mut since, mut hint) = (Position(0), None);
        let mut seen = Vec::new();
        loop {
            let page = read_since(tmp.path(), since, Position(20), 4, hint).unwrap();
            let scratch = read_since(tmp.path(), since, Position(20), 4, None).unwrap();
            assert_eq!(positions(&page), positions(&scratch));
            assert_eq!(page.more, scratch.more);
            if page.batches.is_empty() {
                break;
            }
            seen.extend(positions(&page));
            since = page.batches.last().unwrap().position;
            hint = page.cursor;
            assert_eq!(hint.map(|h| h.after), Some(since));
        }
        assert_eq!(seen, (1..=20).collect::<Vec<_>>());
        let stale = read_since(tmp.path(), Position(3), Position(20), 4, hint).unwrap();
        assert_eq!(positions(&stale)[0], 4);
    }

    #[test]
    fn checkpointed_files_are_kept_within_the_retention_and_older_versions_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = wal(tmp.path(), 600);
        let before = list_files(tmp.path()).unwrap().len();
        w.remove_covered(Position(20)).unwrap();
        let files = list_files(tmp.path()).unwrap();
        assert!(
            files.len() < before && files.len() > 1,
            "{before} -> {}",
            files.len()
        );
        let oldest = files[0].0.0;
        // From the oldest retained on, everything reads.
        let page = read_since(tmp.path(), Position(oldest - 1), Position(20), 1000, None).unwrap();
        assert_eq!(positions(&page), (oldest..=20).collect::<Vec<_>>());
        // Before it: a named error with the oldest retained version.
        let refused = read_since(tmp.path(), Position(0), Position(20), 1000, None);
        assert!(
            matches!(refused, Err(Error::ChangesNotRetained { since: 0, oldest: o }) if o == oldest),
            "{refused:?}"
        );
        // Without retention every covered file goes.
        let tmp = tempfile::tempdir().unwrap();
        let mut w = wal(tmp.path(), 0);
        w.remove_covered(Position(20)).unwrap();
        assert_eq!(list_files(tmp.path()).unwrap().len(), 1);
    }
}
