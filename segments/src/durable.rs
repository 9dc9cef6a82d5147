//! Every step that makes something durable goes through [`Fs`].
//!
//! The engine writes files with `std::fs` as usual, but every fsync of a file
//! and of a directory is a call on an [`Fs`] handle (held by the index options,
//! the WAL, the segment writer, the catalog). In production that is [`OsFs`]:
//! plain `fsync`/`fdatasync`. A test can put [`crate::power_cut::PowerCutFs`] in
//! its place, which remembers what each sync made durable and can produce the
//! disk as a power cut would leave it: every byte not fsynced lost, every
//! directory entry whose directory was not fsynced lost (docs/durability.md).
//! An fsync issued behind this layer's back counts as missing in that model, so
//! the power-loss tests catch it.
//!
//! Each sync carries its call site (`#[track_caller]`), which lets a test skip
//! one site and check that the tests then fail (every sync is needed).

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::panic::Location;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{IoContext, Result};

/// Where a sync was asked for: the engine's call site and the step of it
/// (one call such as [`Fs::write_atomic`] syncs a file and a directory).
#[derive(Clone, Copy, Debug)]
pub struct Site {
    pub location: &'static Location<'static>,
    pub step: &'static str,
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} {}",
            self.location.file(),
            self.location.line(),
            self.step
        )
    }
}

#[track_caller]
fn site(step: &'static str) -> Site {
    Site {
        location: Location::caller(),
        step,
    }
}

/// The durability steps of a file system.
pub trait SyncFs: Send + Sync + fmt::Debug {
    /// Makes a file's data, and the size needed to read it back, durable.
    fn sync_file(&self, file: &File, site: Site) -> io::Result<()>;
    /// Makes a directory's entries (files created, renamed or removed in it)
    /// durable.
    fn sync_dir(&self, dir: &Path, site: Site) -> io::Result<()>;
}

/// The operating system's `fdatasync` and directory `fsync`.
#[derive(Debug, Default)]
pub struct OsFs;

impl SyncFs for OsFs {
    fn sync_file(&self, file: &File, _site: Site) -> io::Result<()> {
        // fdatasync: the data and the size (needed to read it), not timestamps.
        file.sync_data()
    }

    fn sync_dir(&self, dir: &Path, _site: Site) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A cheap, cloneable handle on the [`SyncFs`] in use.
#[derive(Clone)]
pub struct Fs(Arc<dyn SyncFs>);

impl Default for Fs {
    fn default() -> Self {
        Fs(Arc::new(OsFs))
    }
}

impl fmt::Debug for Fs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Fs {
    pub fn new(inner: Arc<dyn SyncFs>) -> Fs {
        Fs(inner)
    }

    /// fsyncs `file` (found at `path`, for the error message).
    #[track_caller]
    pub fn sync_file(&self, file: &File, path: &Path) -> Result<()> {
        self.0.sync_file(file, site("file")).at(path)
    }

    /// fsyncs a directory so that creations, renames and removals inside it
    /// are durable.
    #[track_caller]
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.0.sync_dir(dir, site("dir")).at(dir)
    }

    /// Creates `dir` and its missing parents; each directory created is made
    /// durable in its parent before the next one is created below it.
    #[track_caller]
    pub fn create_dir_all(&self, dir: &Path) -> Result<()> {
        let site = site("new directory's parent");
        let mut missing: Vec<&Path> = Vec::new();
        let mut at = Some(dir);
        while let Some(p) = at {
            if p.as_os_str().is_empty() || p.is_dir() {
                break;
            }
            missing.push(p);
            at = p.parent();
        }
        for p in missing.into_iter().rev() {
            match fs::create_dir(p) {
                Ok(()) => {}
                // Made by someone else meanwhile, who may not have synced
                // its parent yet: sync it here too before relying on it.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => {}
                Err(e) => return Err(e).at(p),
            }
            let parent = parent_of(p);
            self.0.sync_dir(&parent, site).at(&parent)?;
        }
        Ok(())
    }

    /// Replaces `path` with `bytes` atomically: write a temp file, fsync it,
    /// rename it over the target, fsync the directory. After a crash `path` is
    /// the old or the new content, never a mix.
    #[track_caller]
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let (file_site, dir_site) = (site("atomic write's file"), site("atomic write's rename"));
        let tmp = path.with_extension("tmp");
        {
            let mut f = File::create(&tmp).at(&tmp)?;
            f.write_all(bytes).at(&tmp)?;
            self.0.sync_file(&f, file_site).at(&tmp)?;
        }
        fs::rename(&tmp, path).at(path)?;
        let dir = parent_of(path);
        self.0.sync_dir(&dir, dir_site).at(&dir)
    }

    /// Renames `from` to `to` and makes the rename durable (the directories of
    /// both are fsynced; once if they are the same).
    #[track_caller]
    pub fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let (to_site, from_site) = (site("rename's target"), site("rename's source"));
        fs::rename(from, to).at(to)?;
        let (a, b) = (parent_of(from), parent_of(to));
        self.0.sync_dir(&b, to_site).at(&b)?;
        if a != b {
            self.0.sync_dir(&a, from_site).at(&a)?;
        }
        Ok(())
    }
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
