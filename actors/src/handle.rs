//! What the HTTP layer holds for one open index: the engine (for searches and
//! reads, straight from the published snapshot), the current writer actor, the
//! write permits and the health flag the supervisor sets.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fpnode_segments::{Generation, Index, Position};
use ractor::{ActorRef, RpcReplyPort};
use tokio::sync::Semaphore;

use crate::messages::{BatcherMsg, Unanswered};
pub use crate::messages::{WriteError, WriteRequest};

/// How a replica's index follows the stream (replica mode only).
#[derive(Debug, Default)]
pub struct ReplicaStatus {
    /// Bootstrapping: not caught up with the stream as of when it started.
    pub(crate) loading: AtomicBool,
    /// Messages of this index in the stream after the last one fetched.
    pub(crate) pending: AtomicU64,
    /// Why the index stopped following the stream, if it did (integrity).
    pub(crate) diverged: Mutex<Option<String>>,
    /// When the subscriber last fetched from the stream successfully.
    pub(crate) last_fetch: Mutex<Option<Instant>>,
    /// Woken whenever the subscriber applied a batch.
    pub(crate) applied: tokio::sync::Notify,
}

impl ReplicaStatus {
    pub fn loading(&self) -> bool {
        self.loading.load(Ordering::Acquire)
    }

    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    pub fn diverged(&self) -> Option<String> {
        self.diverged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Time since the last successful fetch.
    pub fn since_last_fetch(&self) -> Option<Duration> {
        self.last_fetch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    /// Stops the index following the stream, for good: logged, counted, shown
    /// in `_status`. Reads keep answering from the data applied so far.
    pub(crate) fn diverge(&self, index: &str, why: String) {
        tracing::error!(index, reason = %why, "index stopped following the stream: it would diverge");
        *self.diverged.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    pub(crate) fn fetched(&self, pending: u64) {
        self.pending.store(pending, Ordering::Release);
        *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
}

#[derive(Debug)]
pub struct IndexHandle {
    pub name: String,
    pub generation: Generation,
    pub index: Arc<Index>,
    /// The first stage of the index's write pipeline, while it runs.
    pub(crate) batcher: RwLock<Option<ActorRef<BatcherMsg>>>,
    /// Logged groups whose clients wait for the publish: beyond any one
    /// pipeline, so a restarted one answers them.
    pub(crate) unanswered: Arc<Unanswered>,
    /// Woken after every publish (and when the index is deleted): change
    /// feeds wait on it instead of polling.
    pub published: Arc<tokio::sync::Notify>,
    /// The recent batches of its change log, shared by its feed subscribers.
    pub feed: crate::feed::FeedRing,
    /// Writes in flight (queued or being applied) for this index: the
    /// Batcher's admission bound.
    pub write_permits: Arc<Semaphore>,
    pub(crate) healthy: AtomicBool,
    pub(crate) deleted: AtomicBool,
    /// Replica mode: how the index follows the stream.
    pub replica: Option<ReplicaStatus>,
}

impl IndexHandle {
    pub fn new(name: String, index: Arc<Index>, max_writes_in_flight: usize) -> Self {
        IndexHandle {
            name,
            generation: index.generation(),
            index,
            batcher: RwLock::new(None),
            unanswered: Arc::default(),
            published: Arc::default(),
            feed: Default::default(),
            write_permits: Arc::new(Semaphore::new(max_writes_in_flight)),
            healthy: AtomicBool::new(true),
            deleted: AtomicBool::new(false),
            replica: None,
        }
    }

    /// A replica's index; `loading` while it bootstraps from the stream.
    pub fn new_replica(
        name: String,
        index: Arc<Index>,
        max_writes_in_flight: usize,
        loading: bool,
    ) -> Self {
        let mut handle = IndexHandle::new(name, index, max_writes_in_flight);
        handle.replica = Some(ReplicaStatus {
            loading: AtomicBool::new(loading),
            ..ReplicaStatus::default()
        });
        handle
    }

    /// True while a replica bootstraps (searches and `_health` answer `503 LOADING`).
    pub fn is_loading(&self) -> bool {
        self.replica.as_ref().is_some_and(ReplicaStatus::loading)
    }

    /// Replica mode, read-your-writes: waits until the index applied `version`
    /// (true), or `timeout` passed, or the index was deleted (false).
    pub async fn wait_applied(&self, version: u64, timeout: Duration) -> bool {
        let Some(replica) = &self.replica else {
            return self.version().0 >= version;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = replica.applied.notified();
            if self.version().0 >= version {
                return true;
            }
            if self.is_deleted() || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.version().0 >= version;
            }
        }
    }

    /// False once the supervisor gave up restarting a failing child.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire) && !self.deleted.load(Ordering::Acquire)
    }

    /// The index's write pipeline, if it is running.
    pub fn batcher(&self) -> Option<ActorRef<BatcherMsg>> {
        self.batcher
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
        // No pipeline will publish them here any more: refused, not lost
        // (they are in the WAL, applied when the index is opened again).
        self.unanswered.close(WriteError::Unavailable(format!(
            "index {} is unhealthy",
            self.name
        )));
    }

    /// True once the index was deleted (a request may still hold its handle).
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub fn version(&self) -> Position {
        self.index.position()
    }

    /// Waits until the index is past version `since` (true), or `until`
    /// passes or the index is deleted (false). Woken by publishes, never
    /// polling: a change feed waits here.
    pub async fn wait_past(&self, since: Position, until: tokio::time::Instant) -> bool {
        loop {
            let notified = self.published.notified();
            tokio::pin!(notified);
            // Registered before the check, so a publish in between wakes it.
            notified.as_mut().enable();
            if self.version() > since {
                return true;
            }
            if self.is_deleted() {
                return false;
            }
            if tokio::time::timeout_at(until, notified).await.is_err() {
                return self.version() > since;
            }
        }
    }

    /// Sends a write to the index writer and waits for it to be durable and
    /// applied. Waits at most `permit_wait` for a write slot, so a flood gets
    /// `Overloaded` instead of an unbounded queue.
    pub async fn write(
        &self,
        request: WriteRequest,
        permit_wait: Duration,
    ) -> Result<Position, WriteError> {
        self.submit(request, permit_wait).await?.wait().await
    }

    /// Sends a write to the index writer without waiting for its answer:
    /// writes submitted one after the other are applied in that order (a
    /// stream of groups keeps several in flight, docs/api.md `_stream`).
    /// Waits at most `permit_wait` for a write slot; the slot is held until
    /// the answer is taken from the [`PendingWrite`].
    pub async fn submit(
        &self,
        request: WriteRequest,
        permit_wait: Duration,
    ) -> Result<PendingWrite<'_>, WriteError> {
        self.submit_inner(request, permit_wait)
            .await
            .map_err(|e| self.explain(e))
    }

    async fn submit_inner(
        &self,
        request: WriteRequest,
        permit_wait: Duration,
    ) -> Result<PendingWrite<'_>, WriteError> {
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
        let batcher = self
            .batcher()
            .ok_or_else(|| WriteError::Unavailable("index writer is restarting".into()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reply: RpcReplyPort<Result<Position, WriteError>> = tx.into();
        batcher
            .cast(BatcherMsg::Write(request, reply))
            .map_err(|_| WriteError::Unavailable("index writer is restarting".into()))?;
        Ok(PendingWrite {
            handle: self,
            rx,
            _permit: permit,
        })
    }

    /// A write racing a delete of its index: the index is gone, say so.
    fn explain(&self, e: WriteError) -> WriteError {
        if self.deleted.load(Ordering::Acquire) {
            WriteError::IndexDeleted
        } else {
            e
        }
    }
}

/// A write sent to the index writer, its answer still to come.
pub struct PendingWrite<'a> {
    handle: &'a IndexHandle,
    rx: tokio::sync::oneshot::Receiver<Result<Position, WriteError>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl PendingWrite<'_> {
    /// Waits until the write is durable and visible (its version), or why not.
    pub async fn wait(self) -> Result<Position, WriteError> {
        let result = self
            .rx
            .await
            .map_err(|_| WriteError::Unavailable("index writer stopped before answering".into()))
            .and_then(|r| r);
        result.map_err(|e| self.handle.explain(e))
    }
}
