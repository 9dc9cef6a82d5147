//! Background jobs: import, snapshot, compact, verify, export, resync
//! (docs/api.md "Jobs", docs/architecture.md "Background jobs").
//!
//! The HTTP layer turns a request into a [`JobWork`] (a future given the
//! job's [`JobCtl`]) and submits it; the [`JobSupervisor`](supervisor) runs
//! each job in a JobRunner actor of its own, at most `max_running` at once,
//! the others waiting in a bounded queue. Every state change is written to
//! disk ([`store`]) before anyone can see it, so a restart shows a job that
//! was queued or running as `interrupted` and never forgets one. A job stops
//! at its next step once cancelled ([`JobCtl::check`]); what it leaves behind
//! is each kind's to define (docs/api.md).

pub mod store;
mod supervisor;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use supervisor::JobsMsg;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Queued or running when the node stopped.
    Interrupted,
}

impl JobState {
    pub fn is_finished(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }

    pub fn name(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Interrupted => "interrupted",
        }
    }
}

/// How far a job is: `done` of `total` (when known) `unit`s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
    pub unit: String,
}

/// A job as recorded on disk and shown by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: u64,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// The request's parameters, as given.
    #[serde(default)]
    pub params: Value,
    pub state: JobState,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub progress: Progress,
    #[serde(default)]
    pub cancel_requested: bool,
    pub result: Option<Value>,
    pub error: Option<String>,
}

/// A record with what is computed when it is read: the rate (units per
/// second since the job started) and the time left at that rate.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub record: JobRecord,
    pub rate: Option<f64>,
    pub eta_seconds: Option<f64>,
}

/// What to run: the kind and index name it is listed under, its
/// parameters (kept in the record) and the unit its progress counts.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub kind: String,
    pub index: Option<String>,
    pub params: Value,
    pub unit: &'static str,
    /// At most this many units per second (`None`: as fast as it goes).
    pub max_rate: Option<f64>,
}

/// How a job ends other than with a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    #[error("cancelled")]
    Cancelled,
    #[error("{0}")]
    Failed(String),
}

/// The work of a job: a future given its control block, answering the
/// job's result (a JSON value, kept in its record).
pub type JobWork =
    Box<dyn FnOnce(Arc<JobCtl>) -> BoxFuture<'static, Result<Value, JobError>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("no job {0}")]
    NotFound(u64),
    #[error("job {0} has already finished")]
    Finished(u64),
    #[error("{0} jobs are queued: try again later")]
    QueueFull(usize),
    #[error("the job supervisor is not running")]
    Unavailable,
    #[error("job records in {path}: {message}")]
    Store { path: PathBuf, message: String },
}

/// A running job's progress and cancel flag, shared by the job (which
/// advances it) and the API (which reads it and cancels).
#[derive(Debug)]
pub struct JobCtl {
    pub id: u64,
    cancelled: AtomicBool,
    done: AtomicU64,
    /// `u64::MAX`: unknown.
    total: AtomicU64,
    max_rate: Option<f64>,
    started: Instant,
}

/// The longest a paced job sleeps before looking at its cancel flag again.
const PACE_SLICE: Duration = Duration::from_millis(100);

impl JobCtl {
    fn new(id: u64, max_rate: Option<f64>) -> JobCtl {
        JobCtl {
            id,
            cancelled: AtomicBool::new(false),
            done: AtomicU64::new(0),
            total: AtomicU64::new(u64::MAX),
            max_rate: max_rate.filter(|r| r.is_finite() && *r > 0.0),
            started: Instant::now(),
        }
    }

    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn set_done(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// `Err(Cancelled)` once the job was cancelled.
    pub fn check(&self) -> Result<(), JobError> {
        if self.is_cancelled() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn progress(&self, unit: &str) -> Progress {
        let total = self.total.load(Ordering::Relaxed);
        Progress {
            done: self.done.load(Ordering::Relaxed),
            total: (total != u64::MAX).then_some(total),
            unit: unit.to_string(),
        }
    }

    /// How long until `upto` units in all are allowed by the job's rate
    /// (`None`: now, or no rate).
    fn wait_until(&self, upto: u64) -> Option<Duration> {
        let rate = self.max_rate?;
        // A rate so small that the wait overflows waits for ever (until a cancel).
        let due = Duration::try_from_secs_f64(upto as f64 / rate).unwrap_or(Duration::MAX);
        due.checked_sub(self.started.elapsed())
            .filter(|d| !d.is_zero())
    }

    /// How long to wait before `n` more units count as done.
    fn wait_for(&self, n: u64) -> Option<Duration> {
        self.wait_until(self.done.load(Ordering::Relaxed) + n)
    }

    /// Counts `n` more units done, first waiting (on a blocking thread) as
    /// the job's rate asks; `Err(Cancelled)` once cancelled.
    pub fn advance_blocking(&self, n: u64) -> Result<(), JobError> {
        while let Some(wait) = self.wait_for(n) {
            self.check()?;
            std::thread::sleep(wait.min(PACE_SLICE));
        }
        self.done.fetch_add(n, Ordering::Relaxed);
        self.check()
    }

    /// Waits until `upto` units in all are allowed by the job's rate,
    /// without counting anything done (a job that starts work ahead of
    /// its acknowledgement paces the start); `Err(Cancelled)` once cancelled.
    pub async fn pace(&self, upto: u64) -> Result<(), JobError> {
        while let Some(wait) = self.wait_until(upto) {
            self.check()?;
            tokio::time::sleep(wait.min(PACE_SLICE)).await;
        }
        self.check()
    }

    /// Counts `n` more units done, without waiting.
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// [`JobCtl::advance_blocking`] for async jobs.
    pub async fn advance(&self, n: u64) -> Result<(), JobError> {
        while let Some(wait) = self.wait_for(n) {
            self.check()?;
            tokio::time::sleep(wait.min(PACE_SLICE)).await;
        }
        self.done.fetch_add(n, Ordering::Relaxed);
        self.check()
    }
}

#[derive(Debug, Clone)]
pub struct JobsOptions {
    /// Where the records live (`<data>/jobs`).
    pub dir: PathBuf,
    /// Jobs running at once.
    pub max_running: usize,
    /// Jobs waiting for a turn; more are refused (`QueueFull`).
    pub max_queued: usize,
    /// Finished records kept (the oldest are removed).
    pub keep_finished: usize,
    /// How often a running job's progress is written to its record.
    pub persist_every: Duration,
    /// The node's event log: every state change of a job is an event.
    pub events: Option<Arc<crate::events::NodeEvents>>,
}

impl JobsOptions {
    pub fn new(dir: PathBuf) -> JobsOptions {
        JobsOptions {
            dir,
            max_running: 1,
            max_queued: 64,
            keep_finished: 1000,
            persist_every: Duration::from_secs(1),
            events: None,
        }
    }
}

struct Entry {
    record: JobRecord,
    ctl: Option<Arc<JobCtl>>,
}

/// What the supervisor and the handles share: the table of jobs (written
/// by the supervisor only) and a counter bumped at every state change.
struct Shared {
    table: Mutex<BTreeMap<u64, Entry>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Where the HTTP layer submits, lists, reads and cancels jobs.
#[derive(Clone)]
pub struct Jobs {
    actor: ActorRef<JobsMsg>,
    shared: Arc<Shared>,
    uploads: PathBuf,
    max_queued: usize,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jobs")
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn view(e: &Entry) -> JobView {
    let mut record = e.record.clone();
    if let Some(ctl) = &e.ctl {
        record.progress = ctl.progress(&record.progress.unit);
        record.cancel_requested |= ctl.is_cancelled();
    }
    let (mut rate, mut eta_seconds) = (None, None);
    if let Some(started) = record.started_ms {
        let end = record.finished_ms.unwrap_or_else(now_ms);
        let seconds = end.saturating_sub(started) as f64 / 1000.0;
        if seconds > 0.0 {
            let r = record.progress.done as f64 / seconds;
            rate = Some((r * 10.0).round() / 10.0);
            if record.state == JobState::Running
                && r > 0.0
                && let Some(total) = record.progress.total
            {
                let left = total.saturating_sub(record.progress.done) as f64 / r;
                eta_seconds = Some((left * 10.0).round() / 10.0);
            }
        }
    }
    JobView {
        record,
        rate,
        eta_seconds,
    }
}

impl Jobs {
    /// Loads the records (a job that was queued or running is recorded as
    /// interrupted) and starts the supervisor.
    pub async fn start(opts: JobsOptions) -> Result<Jobs, JobsError> {
        supervisor::start(opts).await
    }

    /// Queues a job; answers its record at once (queued or running).
    pub async fn submit(&self, spec: JobSpec, work: JobWork) -> Result<JobView, JobsError> {
        let id = ractor::call!(self.actor, JobsMsg::Submit, spec, work)
            .map_err(|_| JobsError::Unavailable)??;
        self.get(id).ok_or(JobsError::NotFound(id))
    }

    /// Whether a job submitted now would find room in the queue (advisory:
    /// lets a large upload be refused before it is read).
    pub fn has_room(&self) -> bool {
        let queued = self
            .shared
            .table()
            .values()
            .filter(|e| e.record.state == JobState::Queued)
            .count();
        queued < self.max_queued
    }

    /// Every job recorded, newest first.
    pub fn list(&self) -> Vec<JobView> {
        self.shared.table().values().rev().map(view).collect()
    }

    pub fn get(&self, id: u64) -> Option<JobView> {
        self.shared.table().get(&id).map(view)
    }

    /// Cancels a job: a queued one at once, a running one at its next step.
    /// Waits up to `wait` for it to end; answers its record as it is then.
    pub async fn cancel(&self, id: u64, wait: Duration) -> Result<JobView, JobsError> {
        let mut changed = self.shared.changed.subscribe();
        ractor::call!(self.actor, JobsMsg::Cancel, id).map_err(|_| JobsError::Unavailable)??;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let job = self.get(id).ok_or(JobsError::NotFound(id))?;
            if job.record.state.is_finished() {
                return Ok(job);
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                return Ok(job);
            }
        }
    }

    /// A receiver that sees a new value at every state change of any job.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Stops the jobs for a node shutdown: queued ones are recorded as
    /// interrupted at once, running ones are cancelled and waited for up
    /// to `wait` (a job that ends in that time is recorded as it ended; one
    /// that stops because of the cancel, as interrupted), then whatever
    /// still runs is recorded as interrupted and the supervisor stops.
    pub async fn shutdown(&self, wait: Duration) {
        let mut changed = self.shared.changed.subscribe();
        let _ = ractor::call!(self.actor, JobsMsg::Stopping);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let running = self
                .shared
                .table()
                .values()
                .any(|e| e.record.state == JobState::Running);
            if !running
                || tokio::time::timeout_at(deadline, changed.changed())
                    .await
                    .is_err()
            {
                break;
            }
        }
        let _ = ractor::call!(self.actor, JobsMsg::Shutdown);
        let _ = self
            .actor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
    }

    /// Where an import's uploaded body waits for its job.
    pub fn uploads_dir(&self) -> PathBuf {
        self.uploads.clone()
    }
}

#[cfg(test)]
mod tests;
