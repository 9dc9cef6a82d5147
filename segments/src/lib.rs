//! fpnode's storage engine: an inverted index from 32-bit hashes to fingerprint
//! ids, kept as an ordered list of immutable segments.
//!
//! Synchronous, no actors, no network: the node drives it from its actors. Layers,
//! bottom up: [`block`] (128-posting codec) and [`filter`] (membership) <
//! [`file_segment`] (mmapped files) and [`memory_segment`] < [`segment`] < [`snapshot`] + [`search`] < [`merge`] +
//! [`merge_policy`] < [`wal`] + [`manifest`] < [`index`]; [`bulk`] builds final
//! segments offline. See docs/architecture.md and docs/segment-format.md.

pub mod archive;
pub mod block;
pub mod bulk;
pub mod catalog;
pub mod durable;
pub mod error;
pub mod file_segment;
pub mod filter;
mod fsutil;
pub mod index;
pub mod manifest;
pub mod memory_segment;
pub mod merge;
pub mod merge_policy;
mod mmap;
pub mod power_cut;
pub mod prefix;
pub mod search;
pub mod segment;
pub mod snapshot;
pub mod types;
pub mod wal;

pub use durable::Fs;
pub use error::{Error, Result};
pub use index::{Fence, Index, IndexOptions, IndexStats, Prepared};
pub use search::{Hit, SearchOptions};
pub use snapshot::{DocInfo, Snapshot};
pub use types::{
    Batch, Change, FingerprintId, Generation, Metadata, MetadataDelta, Position, SegmentId,
};
