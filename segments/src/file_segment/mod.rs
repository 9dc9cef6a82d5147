//! Memory-mapped, block-compressed file segments.
//!
//! `format` holds the byte layout (documented in docs/segment-format.md),
//! `writer` serialises a sorted posting stream into a new file, `reader` opens,
//! verifies and searches one. A file is immutable once renamed into place.

mod format;
mod reader;
mod writer;

pub use format::{FORMAT_VERSION, MAGIC, file_name, parse_file_name};
pub use reader::{FileCursor, FileSegment, OpenOptions};
pub use writer::FileSegmentWriter;
