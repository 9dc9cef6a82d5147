//! Appends batches to the WAL with group commit.
//!
//! `append` only buffers; `sync` writes everything buffered and fsyncs once, so
//! one fsync covers every batch that was waiting (group commit). A batch is
//! durable, and may be acknowledged, only after the `sync` that follows its
//! `append` returned Ok. A failed write or fsync poisons the writer: the state of
//! the file is unknown, so every later call fails until the index is reopened
//! (fjall's poison rule; retrying an fsync after failure can silently lose data).
//!
//! Single owner: the index serialises access (it holds the writer in its lock).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::record::{self, HEADER, MAX_PAYLOAD, RECORD_HEADER_LEN};
use super::{file_name, list_files};
use crate::durable::Fs;
use crate::error::{Error, IoContext, Result};
use crate::types::{Batch, Position};

#[derive(Clone, Copy, Debug)]
pub struct WalOptions {
    /// Start a new file once the current one is this large.
    pub max_file_bytes: u64,
    /// fsync on every sync (true in production; tests of non-durability only).
    pub fsync: bool,
    /// Files a checkpoint covers are kept while the newest of them add up to
    /// at most this many bytes: the change feed reads them (docs/api.md
    /// `_changes`). 0 deletes every covered file.
    pub retain_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            max_file_bytes: 64 << 20,
            fsync: true,
            retain_bytes: 0,
        }
    }
}

#[derive(Debug)]
pub struct WalWriter {
    dir: PathBuf,
    opts: WalOptions,
    fs: Fs,
    file: Option<(PathBuf, File)>,
    file_bytes: u64,
    buf: Vec<u8>,
    /// Position of the newest batch appended (buffered or durable).
    last_appended: Position,
    /// Position of the newest batch made durable.
    durable: Position,
    poisoned: Option<String>,
    /// Files started so far (tells whether a group spans a roll).
    rolls: u64,
    /// How long the last `sync` spent in fsync.
    pub last_sync_duration: Duration,
    pub syncs: u64,
}

impl WalWriter {
    /// Opens the WAL in `dir` for appending after `last_position` (as found by
    /// replay). Appends continue in the newest existing file.
    pub fn open(dir: &Path, last_position: Position, opts: WalOptions, fs: Fs) -> Result<Self> {
        fs.create_dir_all(dir)?;
        let mut w = WalWriter {
            dir: dir.to_path_buf(),
            opts,
            fs,
            file: None,
            file_bytes: 0,
            buf: Vec::with_capacity(1 << 20),
            last_appended: last_position,
            durable: last_position,
            poisoned: None,
            rolls: 0,
            last_sync_duration: Duration::ZERO,
            syncs: 0,
        };
        if let Some((_, path)) = list_files(dir)?.pop() {
            let mut file = OpenOptions::new().append(true).open(&path).at(&path)?;
            let len = file.metadata().at(&path)?.len();
            if len < HEADER.len() as u64 {
                // Not synced here: the first append's sync makes the header
                // durable with it, and until then a power cut leaves the same
                // short file, which replay and this repair handle again.
                file.set_len(0).at(&path)?;
                file.write_all(&HEADER).at(&path)?;
            }
            w.file_bytes = len.max(HEADER.len() as u64);
            w.file = Some((path, file));
        }
        Ok(w)
    }

    pub fn durable_position(&self) -> Position {
        self.durable
    }

    fn check_poison(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Buffers `batch`. Its position must be after every batch appended before.
    /// A batch that does not encode, or whose record the reader would refuse
    /// (a payload over 1 GiB), is refused here and leaves nothing behind.
    pub fn append(&mut self, batch: &Batch) -> Result<()> {
        self.check_poison()?;
        if batch.position <= self.last_appended {
            return Err(Error::PositionNotIncreasing {
                last: self.last_appended,
                got: batch.position,
            });
        }
        if self.file.is_none() || self.file_bytes >= self.opts.max_file_bytes {
            self.rotate(batch.position)?;
        }
        let before = self.buf.len();
        if let Err(e) = record::encode(batch, &mut self.buf) {
            self.buf.truncate(before);
            return Err(Error::InvalidInput(format!("batch does not encode: {e}")));
        }
        let payload = self.buf.len() - before - RECORD_HEADER_LEN;
        if payload > MAX_PAYLOAD {
            self.buf.truncate(before);
            return Err(Error::InvalidInput(format!(
                "batch too large for one WAL record: {payload} bytes encoded, at most {MAX_PAYLOAD}"
            )));
        }
        self.file_bytes += (self.buf.len() - before) as u64;
        self.last_appended = batch.position;
        Ok(())
    }

    /// Buffers a group of batches, all or none: if one is refused, the ones
    /// before it are taken back. If the group had to start a new file on the
    /// way (so part of it already reached the old file), the writer is
    /// poisoned instead: that part cannot be taken back.
    pub fn append_group(&mut self, batches: &[Batch]) -> Result<()> {
        let (buf, bytes, last, rolls) = (
            self.buf.len(),
            self.file_bytes,
            self.last_appended,
            self.rolls,
        );
        for b in batches {
            if let Err(e) = self.append(b) {
                if self.rolls == rolls {
                    self.buf.truncate(buf);
                    self.file_bytes = bytes;
                    self.last_appended = last;
                } else {
                    self.poisoned = Some(format!("a group failed after a file roll: {e}"));
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes everything buffered and fsyncs once. Returns the durable position.
    pub fn sync(&mut self) -> Result<Position> {
        self.check_poison()?;
        if self.durable == self.last_appended {
            return Ok(self.durable);
        }
        let started = Instant::now();
        let result = self.write_and_sync();
        if let Err(e) = &result {
            self.poisoned = Some(e.to_string());
        }
        result?;
        self.last_sync_duration = started.elapsed();
        metrics::histogram!("fpnode_wal_fsync_seconds")
            .record(self.last_sync_duration.as_secs_f64());
        self.syncs += 1;
        self.durable = self.last_appended;
        // One very large group must not keep its buffer for good.
        if self.buf.capacity() > 16 << 20 {
            self.buf = Vec::with_capacity(1 << 20);
        }
        Ok(self.durable)
    }

    fn write_and_sync(&mut self) -> Result<()> {
        let Some((path, file)) = self.file.as_mut() else {
            return Ok(());
        };
        file.write_all(&self.buf).at(&*path)?;
        self.buf.clear();
        if self.opts.fsync {
            self.fs.sync_file(file, path)?;
        }
        Ok(())
    }

    /// Makes what is buffered durable, then starts a new file named `first`.
    /// Any failure poisons the writer: a half-made file (created, header
    /// written, its name perhaps not durable) must not be appended to nor
    /// created again.
    fn rotate(&mut self, first: Position) -> Result<()> {
        self.try_rotate(first)
            .inspect_err(|e| self.poisoned = Some(e.to_string()))
    }

    fn try_rotate(&mut self, first: Position) -> Result<()> {
        // The old file is made durable whole before a newer one exists, even
        // with nothing buffered: a torn tail cut off at open is only gone
        // for good once synced, and it must not come back in a file that is
        // no longer the newest (replay would call it corruption).
        if self.file.is_some() {
            self.write_and_sync()?;
        }
        self.rolls += 1;
        let path = self.dir.join(file_name(first));
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .at(&path)?;
        file.write_all(&HEADER).at(&path)?;
        // The new name must be durable before a record in this file is
        // acknowledged. The header is not synced on its own: the first
        // record's sync covers it, and a newest file cut short before that is
        // repaired on open.
        self.fs.sync_dir(&self.dir)?;
        self.file = Some((path, file));
        self.file_bytes = HEADER.len() as u64;
        Ok(())
    }

    /// Deletes files whose every record is at or before `checkpoint`. The
    /// current file is never deleted.
    pub fn remove_covered(&mut self, checkpoint: Position) -> Result<usize> {
        let files = list_files(&self.dir)?;
        // Covered: every record of the file is at or before the checkpoint
        // (the next file starts at or before checkpoint + 1).
        let covered: Vec<&PathBuf> = files
            .windows(2)
            .filter(|pair| pair[1].0.0 <= checkpoint.0.saturating_add(1))
            .map(|pair| &pair[0].1)
            .collect();
        // The newest covered files within the retention stay, for the
        // change feed; older ones go.
        let mut kept = 0u64;
        let mut keep = covered.len();
        while keep > 0 && self.opts.retain_bytes > 0 {
            let path = covered[keep - 1];
            let len = std::fs::metadata(path).at(path)?.len();
            if kept + len > self.opts.retain_bytes {
                break;
            }
            kept += len;
            keep -= 1;
        }
        let mut removed = 0;
        for path in &covered[..keep] {
            std::fs::remove_file(path).at(path)?;
            removed += 1;
        }
        // The removals are not synced: a file that comes back after a power
        // cut holds only positions the checkpoint covers, which replay skips,
        // and the next call removes it again.
        Ok(removed)
    }

    /// Total bytes of WAL files on disk.
    pub fn disk_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for (_, p) in list_files(&self.dir)? {
            total += std::fs::metadata(&p).at(&p)?.len();
        }
        Ok(total)
    }
}
