//! Opening files a request names, confined to a directory: open without
//! blocking (a FIFO must not wait for a writer), then ask the kernel where the
//! open file really is, never resolving the name again (it could have been
//! swapped since). Used by imports (`--import-dir`) and audio (`--media-root`).

use std::fs::File;
use std::path::{Path, PathBuf};

/// Opens `path` for reading, non-blocking and without becoming a
/// controlling terminal.
pub fn open_nonblocking(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// The real path of an open file (`/proc/self/fd`).
pub fn real_path(file: &File) -> std::io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
}
