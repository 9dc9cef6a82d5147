//! Reading the WAL as a change log: the batches after a version, for the
//! change feed (docs/api.md `_changes`). Checkpointed WAL files are kept for
//! this within `WalOptions::retain_bytes`; a version older than what is kept
//! is `ChangesNotRetained`, and the client resyncs.
//!
//! Reads run beside the writer: only records at or before `upto` (a position
//! the caller knows is durable and published) are returned, so the tail the
//! writer is appending to is never interpreted.

use std::path::Path;

use super::list_files;
use super::record::{self, HEADER, Parsed};
use crate::error::{Error, IoContext, Result};
use crate::types::{Batch, Position};

/// Batches after a version, in order.
#[derive(Debug, Default, Clone)]
pub struct ChangesPage {
    pub batches: Vec<Batch>,
    /// True if more batches at or before `upto` follow the page.
    pub more: bool,
}

/// The batches with positions after `since` and at or before `upto`, at most
/// `max_changes` changes (but always a whole batch, and at least one).
pub fn read_since(
    dir: &Path,
    since: Position,
    upto: Position,
    max_changes: usize,
) -> Result<ChangesPage> {
    let mut page = ChangesPage::default();
    if since >= upto {
        return Ok(page);
    }
    let files = list_files(dir)?;
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
    // The newest file starting at or before since + 1 holds it.
    let start = files
        .iter()
        .rposition(|(first, _)| first.0 <= since.0.saturating_add(1))
        .unwrap_or(0);
    let mut changes = 0usize;
    for (first, path) in &files[start..] {
        if *first > upto {
            break;
        }
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            // Removed by a checkpoint meanwhile: what it held is gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::ChangesNotRetained {
                    since: since.0,
                    oldest: first.0,
                });
            }
            Err(e) => return Err(e).at(path),
        };
        if bytes.len() < HEADER.len() || bytes[..HEADER.len()] != HEADER {
            return Err(Error::corrupt(path, 0, "bad WAL file header"));
        }
        let mut at = HEADER.len();
        loop {
            match record::parse(&bytes, at) {
                Parsed::End => break,
                Parsed::Record(batch, next) => {
                    at = next;
                    if batch.position <= since {
                        continue;
                    }
                    if batch.position > upto {
                        return Ok(page);
                    }
                    if !page.batches.is_empty() && changes + batch.changes.len() > max_changes {
                        page.more = true;
                        return Ok(page);
                    }
                    changes += batch.changes.len();
                    page.batches.push(*batch);
                }
                // Past `upto` only the writer's unsynced tail can be bad; a
                // bad record before it is damage.
                Parsed::Bad(reason) => {
                    if page.batches.last().is_some_and(|b| b.position >= upto) {
                        return Ok(page);
                    }
                    return Err(Error::corrupt(path, at as u64, reason));
                }
            }
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::Fs;
    use crate::types::Change;
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
            let page = read_since(tmp.path(), since, Position(17), 7).unwrap();
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
            read_since(tmp.path(), Position(17), Position(17), 7)
                .unwrap()
                .batches
                .is_empty()
        );
        assert_eq!(
            positions(&read_since(tmp.path(), Position(12), Position(20), 100).unwrap()),
            (13..=20).collect::<Vec<_>>()
        );
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
        let page = read_since(tmp.path(), Position(oldest - 1), Position(20), 1000).unwrap();
        assert_eq!(positions(&page), (oldest..=20).collect::<Vec<_>>());
        // Before it: a named error with the oldest retained version.
        let refused = read_since(tmp.path(), Position(0), Position(20), 1000);
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
