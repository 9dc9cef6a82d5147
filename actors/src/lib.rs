#![allow(missing_debug_implementations)] // actor messages and states carry reply ports and actor refs
//! fpnode's supervised actors (ractor on tokio).
//!
//! ```text
//! NodeSupervisor
//! ├── SearchSupervisor              search worker threads behind a bounded queue;
//! │                                 a panicking search's worker is replaced
//! └── IndexRegistry                 create / delete / look up indexes
//!     ├── LifecycleWatcher          (replica) index records from the stream
//!     └── IndexSupervisor(name)     restarts its children from durable state
//!         ├── Batcher               cuts writes into groups, prepares them
//!         ├── WalWriter             logs a group: WAL append + one fsync
//!         ├── IndexWriter           publishes logged groups, answers clients
//!         ├── SegmentMerger         checkpoints, memory merges, file merges
//!         └── StreamSubscriber      (replica) applies the index's stream
//! ```
//!
//! Blocking work (fsync, merges, searches) never runs on the async executor:
//! writers and mergers hand it to `spawn_blocking`, searches run on the pool's
//! own threads. Every hop that can be flooded is bounded: writes hold a permit
//! from [`IndexHandle::write_permits`] until answered, the search queue has a
//! fixed depth and sheds load.

pub mod batcher;
pub mod events;
pub mod feed;
pub mod feed_stream;
pub mod handle;
pub mod index_supervisor;
pub mod index_writer;
pub mod jobs;
pub mod lifecycle;
pub mod messages;
pub mod nats_auth;
pub mod node;
pub mod panic;
pub mod registry;
pub mod replication;
pub mod restart;
pub mod search_pool;
pub mod search_supervisor;
pub mod segment_merger;
pub mod stream;
pub mod stream_subscriber;
pub mod wal_writer;

pub use handle::{IndexHandle, PendingWrite, WriteError, WriteRequest};
pub use node::{Node, NodeOptions};
pub use registry::{CreateIndex, CreateOutcome, RegistryError};
pub use search_pool::{SearchError, SearchPool};
