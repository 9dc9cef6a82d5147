//! SearchPool: searches run on threads of their own, never on the async
//! executor, fed through a bounded queue that sheds load.
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
//!
//! Why not a ractor factory: its workers are tokio tasks, and a CPU-bound search
//! on a tokio worker stalls HTTP and NATS I/O; wrapping each in `spawn_blocking`
//! would add a thread hop and lose the fixed bound on concurrent searches.
//! Plain threads on a crossbeam channel give both bounds directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError, bounded};
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
}

struct Job {
    snapshot: Arc<Snapshot>,
    query: Vec<u32>,
    opts: SearchOptions,
    reply: oneshot::Sender<Result<Vec<Hit>, SearchError>>,
}

#[derive(Debug, Clone)]
pub struct SearchPool {
    tx: Sender<Job>,
    depth: Arc<AtomicUsize>,
    /// Moving average of a search's duration, in microseconds (0: none yet).
    average_us: Arc<AtomicU64>,
    pub threads: usize,
    pub capacity: usize,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl SearchPool {
    pub fn new(threads: usize, capacity: usize) -> std::io::Result<SearchPool> {
        let (tx, rx) = bounded::<Job>(capacity.max(1));
        let depth = Arc::new(AtomicUsize::new(0));
        let average_us = Arc::new(AtomicU64::new(0));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let depth = depth.clone();
            let average_us = average_us.clone();
            std::thread::Builder::new()
                .name(format!("search-{i}"))
                .spawn(move || {
                    for job in rx {
                        let d = depth.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
                        metrics::gauge!("fpnode_search_queue_depth").set(d as f64);
                        let result = run(&job, &average_us);
                        let _ = job.reply.send(result);
                    }
                })?;
        }
        Ok(SearchPool {
            tx,
            depth,
            average_us,
            threads: threads.max(1),
            capacity: capacity.max(1),
        })
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
            let average = self.average_us.load(Ordering::Relaxed);
            let queued = self.depth.load(Ordering::Relaxed) as u64;
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
        self.depth.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
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
        self.depth.load(Ordering::Relaxed)
    }
}

fn run(job: &Job, average_us: &AtomicU64) -> Result<Vec<Hit>, SearchError> {
    let average = Duration::from_micros(average_us.load(Ordering::Relaxed));
    let started = Instant::now();
    // Expired, or too close to its deadline to finish: not worth starting.
    if job.opts.deadline.is_some_and(|d| started + average >= d) {
        metrics::counter!("fpnode_shed_requests_total", "kind" => "search_expired").increment(1);
        return Err(SearchError::Timeout);
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
