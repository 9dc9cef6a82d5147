//! Replays the WAL on open and recovers from a crash.
//!
//! Records are read in log order. A damaged record is a torn tail if it is in the
//! newest file and no valid record follows it anywhere in that file: the file is
//! truncated there (those batches were never acknowledged: their fsync did not
//! complete). Anything else (damage followed by a valid record, damage in an older
//! file, positions going backwards) is corruption, reported with file and offset.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use super::list_files;
use super::record::{self, HEADER, Parsed};
use crate::error::{Error, IoContext, Result};
use crate::types::{Batch, Position};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Position of the newest valid record (or `after` if there is none).
    pub last_position: Position,
    /// Batches handed to the callback.
    pub replayed: u64,
    /// Where a torn tail was cut off, if one was.
    pub truncated: Option<(PathBuf, u64)>,
}

/// Calls `apply` for every batch with a position after `after`, in order.
pub fn replay(
    dir: &Path,
    after: Position,
    mut apply: impl FnMut(Batch) -> Result<()>,
) -> Result<ReplayOutcome> {
    let files = list_files(dir)?;
    let mut out = ReplayOutcome {
        last_position: after,
        ..Default::default()
    };
    let mut last_seen = Position(0);
    for (i, (_, path)) in files.iter().enumerate() {
        let is_last = i + 1 == files.len();
        // Every record of this file is at or before `after` (the next file
        // starts by after + 1): a file kept for the change feed, not read.
        if files
            .get(i + 1)
            .is_some_and(|(next, _)| next.0 <= after.0.saturating_add(1))
        {
            continue;
        }
        let bytes = std::fs::read(path).at(path)?;
        if bytes.len() < HEADER.len() || bytes[..HEADER.len()] != HEADER {
            if is_last && (bytes.len() < HEADER.len() || bytes.iter().all(|&b| b == 0)) {
                truncate(path, 0)?;
                out.truncated = Some((path.clone(), 0));
                continue;
            }
            return Err(Error::corrupt(path, 0, "bad WAL file header"));
        }
        let mut at = HEADER.len();
        loop {
            match record::parse(&bytes, at) {
                Parsed::End => break,
                Parsed::Record(batch, next) => {
                    if batch.position <= last_seen {
                        return Err(Error::corrupt(
                            path,
                            at as u64,
                            format!("position {} does not follow {}", batch.position, last_seen),
                        ));
                    }
                    last_seen = batch.position;
                    if batch.position > after {
                        out.last_position = batch.position;
                        out.replayed += 1;
                        apply(*batch)?;
                    }
                    at = next;
                }
                Parsed::Bad(reason) => {
                    if is_last && !record::valid_record_after(&bytes, at + 1) {
                        tracing::warn!(path = %path.display(), offset = at, reason, "truncating torn WAL tail");
                        truncate(path, at as u64)?;
                        out.truncated = Some((path.clone(), at as u64));
                        break;
                    }
                    return Err(Error::corrupt(path, at as u64, reason));
                }
            }
        }
    }
    if last_seen > out.last_position {
        out.last_position = last_seen;
    }
    Ok(out)
}

/// Cuts a torn tail. Not synced: the next append's sync makes the new length
/// durable, and if the power goes first, replay finds and cuts the same tail.
fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).at(path)?;
    f.set_len(len).at(path)
}
