//! SearchPool: the handle requests use to search. Searches run on worker
//! threads owned by the SearchSupervisor (actors/src/search_supervisor.rs),
//! never on the async executor, fed through a bounded queue that sheds load.
//!
//! A request carries the snapshot it searches, its options and its deadline. If
//! the queue is full the request is refused at once (`Overloaded`, answered
//! `503` + `Retry-After`); a request whose deadline passed while it waited is
//! dropped unrun (`Timeout`). Queue depth and shed counts are exported as metrics.
//!
//! Admission by expected wait: the pool keeps a moving average of how long a
//! search takes, and refuses at once (`Overloaded`) a request that could not
//! finish before its deadline behind the searches already queued; a worker
//! also drops a request left with less than one average search of time.
//! Without this, an overloaded pool (offered load above its rate) fills its
//! queue with requests that wait most of their deadline and then time out
//! half-way through: measured at 100M fingerprints, 250 queries/s offered
//! against ~120/s of capacity answered only 12/s. With it, the pool keeps
//! answering at its capacity and refuses the rest quickly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use fpnode_segments::{Error as EngineError, Hit, SearchOptions, Snapshot};
use tokio::sync::oneshot;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error("search queue is full")]
    Overloaded,
    #[error("search timed out")]
    Timeout,
    #[error("search failed: {0}")]
    Failed(String),
    /// The search panicked; its worker was replaced.
    #[error("search panicked: {0}")]
    Panicked(String),
}

pub(crate) struct Job {
    pub(crate) snapshot: Arc<Snapshot>,
    pub(crate) query: Vec<u32>,
    pub(crate) opts: SearchOptions,
    pub(crate) reply: oneshot::Sender<Result<Vec<Hit>, SearchError>>,
}

/// What the pool's handle and its workers share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Searches queued, not yet taken by a worker.
    pub(crate) depth: AtomicUsize,
    /// Moving average of a search's duration, in microseconds (0: none yet).
    pub(crate) average_us: AtomicU64,
    /// Workers running.
    pub(crate) live: AtomicUsize,
    /// Test hook: the next search panics.
    pub(crate) panic_next: AtomicBool,
}

#[derive(Debug, Clone)]
pub struct SearchPool {
    tx: Sender<Job>,
    shared: Arc<Shared>,
    pub threads: usize,
    pub capacity: usize,
}

/// The worker side of a pool, handed to the SearchSupervisor.
#[derive(Clone)]
pub struct SearchWork {
    pub(crate) rx: Receiver<Job>,
    pub(crate) shared: Arc<Shared>,
    pub threads: usize,
}

impl std::fmt::Debug for SearchWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchWork")
            .field("threads", &self.threads)
            .finish()
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl SearchPool {
    /// A pool of `threads` workers behind a queue of `capacity`: the handle,
    /// and the work its SearchSupervisor runs (no thread runs before that).
    pub fn new(threads: usize, capacity: usize) -> (SearchPool, SearchWork) {
        let (tx, rx) = bounded::<Job>(capacity.max(1));
        let shared = Arc::new(Shared::default());
        let pool = SearchPool {
            tx,
            shared: shared.clone(),
            threads: threads.max(1),
            capacity: capacity.max(1),
        };
        let work = SearchWork {
            rx,
            shared,
            threads: threads.max(1),
        };
        (pool, work)
    }

    /// Workers running now.
    pub fn live_workers(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// Test hook: the next search panics (as a bug in the engine would).
    pub fn inject_panic(&self) {
        self.shared.panic_next.store(true, Ordering::Release);
    }

    /// Queues a search; fails at once if the queue is full.
    pub fn submit(
        &self,
        snapshot: Arc<Snapshot>,
        query: Vec<u32>,
        opts: SearchOptions,
    ) -> Result<oneshot::Receiver<Result<Vec<Hit>, SearchError>>, SearchError> {
        if let Some(deadline) = opts.deadline {
            // Behind `depth` queued searches shared by `threads` workers, plus
            // this one's own run.
            let average = self.shared.average_us.load(Ordering::Relaxed);
            let queued = self.shared.depth.load(Ordering::Relaxed) as u64;
            let expected = Duration::from_micros(average * (queued / self.threads as u64 + 1));
            // An idle pool takes the request: whether it can finish in time
            // is then the worker's call, answered as a timeout.
            if queued > 0 && Instant::now() + expected > deadline {
                metrics::counter!("fpnode_shed_requests_total", "kind" => "search_wait")
                    .increment(1);
                return Err(SearchError::Overloaded);
            }
        }
        let (reply, rx) = oneshot::channel();
        let job = Job {
            snapshot,
            query,
            opts,
            reply,
        };
        self.shared.depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shared.depth.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!("fpnode_shed_requests_total", "kind" => "search").increment(1);
                Err(SearchError::Overloaded)
            }
        }
    }

    /// Searches and waits for the answer.
    pub async fn search(
        &self,
        snapshot: Arc<Snapshot>,
        query: Vec<u32>,
        opts: SearchOptions,
    ) -> Result<Vec<Hit>, SearchError> {
        self.submit(snapshot, query, opts)?
            .await
            .map_err(|_| SearchError::Failed("search worker stopped".into()))?
    }

    pub fn queue_depth(&self) -> usize {
        self.shared.depth.load(Ordering::Relaxed)
    }
}

/// Runs one search (on a worker thread).
pub(crate) fn run(job: &Job, shared: &Shared) -> Result<Vec<Hit>, SearchError> {
    let average_us = &shared.average_us;
    let average = Duration::from_micros(average_us.load(Ordering::Relaxed));
    let started = Instant::now();
    // Expired, or too close to its deadline to finish: not worth starting.
    if job.opts.deadline.is_some_and(|d| started + average >= d) {
        metrics::counter!("fpnode_shed_requests_total", "kind" => "search_expired").increment(1);
        return Err(SearchError::Timeout);
    }
    // A plain load first: no write to a shared cache line on every search.
    if shared.panic_next.load(Ordering::Relaxed) && shared.panic_next.swap(false, Ordering::AcqRel)
    {
        panic!("injected search panic");
    }
    let result = job.snapshot.search(&job.query, &job.opts);
    if result.is_ok() {
        // Exponential moving average over ~8 searches; racing updates from
        // two workers lose one sample, which does not matter here.
        let took = started.elapsed().as_micros() as u64;
        let old = average_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            took
        } else {
            old - old / 8 + took / 8
        };
        average_us.store(new, Ordering::Relaxed);
    }
    match result {
        Ok(hits) => Ok(hits),
        Err(EngineError::SearchTimeout) => Err(SearchError::Timeout),
        Err(e) => {
            tracing::error!(error = %e, "search failed");
            Err(SearchError::Failed(e.to_string()))
        }
    }
}
