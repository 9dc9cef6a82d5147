//! What the HTTP layer holds for one open index: the engine (for searches and
//! reads, straight from the published snapshot), the current writer actor, the
//! write permits and the health flag the supervisor sets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fpnode_segments::{Change, Generation, Index, MetadataDelta, Position};
use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::Semaphore;

use crate::index_writer::WriterMsg;

/// One `_update` (or single-fingerprint write) as the writer receives it.
#[derive(Debug, Clone, Default)]
pub struct WriteRequest {
    pub changes: Vec<Change>,
    pub metadata: MetadataDelta,
    /// Apply only if the index's version is exactly this.
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("expected version {expected}, index is at {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("index is overloaded: {0}")]
    Overloaded(String),
    #[error("index is not available: {0}")]
    Unavailable(String),
    #[error("invalid write: {0}")]
    Invalid(String),
    #[error("index was deleted")]
    IndexDeleted,
    /// A numbered batch does not follow the index's position: applying it
    /// would skip whatever lies between (replica mode).
    #[error("batch follows position {got}, index is at {expected}")]
    Gap { expected: u64, got: u64 },
}

#[derive(Debug)]
pub struct IndexHandle {
    pub name: String,
    pub generation: Generation,
    pub index: Arc<Index>,
    pub(crate) writer: RwLock<Option<ActorRef<WriterMsg>>>,
    /// Writes in flight (queued or being applied) for this index.
    pub write_permits: Arc<Semaphore>,
    pub(crate) healthy: AtomicBool,
    pub(crate) deleted: AtomicBool,
}

impl IndexHandle {
    pub fn new(name: String, index: Arc<Index>, max_writes_in_flight: usize) -> Self {
        IndexHandle {
            name,
            generation: index.generation(),
            index,
            writer: RwLock::new(None),
            write_permits: Arc::new(Semaphore::new(max_writes_in_flight)),
            healthy: AtomicBool::new(true),
            deleted: AtomicBool::new(false),
        }
    }

    /// False once the supervisor gave up restarting a failing child.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && !self.deleted.load(Ordering::Acquire)
    }

    /// The index's current writer, if it is running.
    pub fn writer(&self) -> Option<ActorRef<WriterMsg>> {
        self.writer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Escalation: `actor` failed too often, so writes stop (`503`) while reads
    /// keep answering from the index's data. Logged and counted.
    pub(crate) fn mark_unhealthy(&self, actor: &str) {
        tracing::error!(index = %self.name, actor, "too many failures: marking index unhealthy");
        self.healthy.store(false, Ordering::Release);
        metrics::counter!("fpnode_index_escalations_total").increment(1);
    }

    /// True once the index was deleted (a request may still hold its handle).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn version(&self) -> Position {
        self.index.position()
    }

    /// Sends a write to the index writer and waits for it to be durable and
    /// applied. Waits at most `permit_wait` for a write slot, so a flood gets
    /// `Overloaded` instead of an unbounded queue.
    pub async fn write(
        &self,
        request: WriteRequest,
        permit_wait: Duration,
    ) -> Result<Position, WriteError> {
        let result = self.write_inner(request, permit_wait).await;
        // A write racing a delete of its index: the index is gone, say so.
        if result.is_err() && self.deleted.load(Ordering::Acquire) {
            return Err(WriteError::IndexDeleted);
        }
        result
    }

    async fn write_inner(
        &self,
        request: WriteRequest,
        permit_wait: Duration,
    ) -> Result<Position, WriteError> {
        if !self.is_healthy() {
            return Err(WriteError::Unavailable(format!(
                "index {} is unhealthy",
                self.name
            )));
        }
        let permit = tokio::time::timeout(permit_wait, self.write_permits.clone().acquire_owned())
            .await
            .map_err(|_| WriteError::Overloaded("too many writes in flight".into()))?
            .map_err(|_| WriteError::Unavailable("index is closing".into()))?;
        let writer = self
            .writer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| WriteError::Unavailable("index writer is restarting".into()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply: RpcReplyPort<Result<Position, WriteError>> = tx.into();
        writer
            .cast(WriterMsg::Write(request, reply))
            .map_err(|_| WriteError::Unavailable("index writer is restarting".into()))?;
        let result = rx
            .await
            .map_err(|_| WriteError::Unavailable("index writer stopped before answering".into()))?;
        drop(permit);
        result
    }
}
