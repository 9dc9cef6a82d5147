//! The one place that maps files into memory.
//!
//! Mapping a file is `unsafe` because another process could truncate or modify it
//! while mapped, which would turn reads into SIGBUS or changing bytes. fpnode owns
//! its index directory exclusively (it holds the directory's lock file for as long
//! as the index is open), never modifies a segment file after it is renamed into
//! place, and only deletes a file after the last mapping of it is dropped (unlink
//! keeps the inode alive for existing mappings anyway). Checksums catch damage done
//! behind its back.
#![allow(unsafe_code)]

use std::fs::File;
use std::path::Path;

use memmap2::{Advice, Mmap};

use crate::error::{IoContext, Result};

/// Maps a whole file read-only and tells the kernel that access is random, so it
/// does not read ahead around each block we touch.
pub fn map_readonly(file: &File, path: &Path) -> Result<Mmap> {
    // SAFETY: see the module comment; the file is immutable while fpnode owns it.
    let map = unsafe { Mmap::map(file) }.at(path)?;
    // Advice is a hint; failing to give it is harmless.
    let _ = map.advise(Advice::Random);
    Ok(map)
}

/// Asks the kernel to read the whole mapping now (for `--preload`).
pub fn will_need(map: &Mmap) {
    let _ = map.advise(Advice::WillNeed);
}
