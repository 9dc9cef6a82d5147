//! Write-ahead log: every batch is appended and fsynced here before it is applied,
//! so nothing acknowledged is lost by a crash.
//!
//! Split by responsibility (as fjall's journal): `record` frames one batch,
//! `writer` appends with group commit and rotates files, `reader` replays and
//! recovers. Files live in `<index>/wal/` named after the position of their first
//! record (20 decimal digits), so names sort in log order. A file whose records
//! are all covered by a checkpoint is deleted, unless the newest such files are
//! kept for the change feed (`WalOptions::retain_bytes`, read by `changes`).

mod changes;
mod reader;
mod record;
mod writer;

pub use changes::{ChangesCursor, ChangesPage, read_since, retained};
pub use reader::{ReplayOutcome, replay};
pub use record::{HEADER, RECORD_MAGIC};
pub use writer::{WalOptions, WalWriter};

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::types::Position;

const EXTENSION: &str = "wal";

fn file_name(first: Position) -> String {
    format!("{:020}.{EXTENSION}", first.0)
}

/// WAL files in log order with the position their name gives.
fn list_files(dir: &Path) -> Result<Vec<(Position, PathBuf)>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e).at(dir),
    };
    for entry in entries {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".wal") else {
            continue;
        };
        if let Ok(p) = stem.parse::<u64>() {
            files.push((Position(p), entry.path()));
        }
    }
    files.sort();
    Ok(files)
}
