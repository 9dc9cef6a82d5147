//! The engine's error type. Corruption is its own variant and always names the
//! file and byte offset, so an operator knows what to restore.

use std::io;
use std::path::PathBuf;

use crate::types::Position;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("corrupt data in {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("unsupported format version {found} in {path} (this build reads up to {supported})")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("invalid fingerprint id 0")]
    InvalidFingerprintId,

    /// A change feed asked for changes after `since`, but the oldest change
    /// still retained is `oldest`: the client must resync (docs/api.md).
    #[error("changes after version {since} are no longer retained (oldest retained: {oldest})")]
    ChangesNotRetained { since: u64, oldest: u64 },

    #[error("invalid input: {0}")]
    InvalidInput(String),

    #[error("batch position {got} is not after the last applied position {last}")]
    PositionNotIncreasing { last: Position, got: Position },

    #[error("index directory {path} is locked by another process")]
    Locked { path: PathBuf },

    #[error("search timed out")]
    SearchTimeout,

    #[error("write stalled: merges are behind ({segments} segments, limit {limit})")]
    WriteStall { segments: usize, limit: usize },

    #[error("index is poisoned after an earlier failure: {0}")]
    Poisoned(String),
    /// A write pipeline that another one replaced tried to log.
    #[error("this write pipeline was replaced by a newer one")]
    Fenced,
    /// A long operation (a compaction) was stopped by its caller.
    #[error("cancelled")]
    Cancelled,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an `io::Error`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}

impl Error {
    pub(crate) fn corrupt(
        path: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Error::Corrupt {
            path: path.into(),
            offset,
            reason: reason.into(),
        }
    }

    /// True if this error means data on disk is damaged.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::UnsupportedVersion { .. }
        )
    }
}
