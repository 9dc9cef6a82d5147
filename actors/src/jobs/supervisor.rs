//! JobSupervisor and JobRunner actors.
//!
//! The supervisor owns the job table's state changes and their records: it
//! queues a submitted job (bounded), starts up to `max_running` JobRunners
//! (linked children, one per job), records each end, and a runner that
//! panics as a failed job. Record writes (a few hundred bytes, fsynced) run
//! on a blocking thread; the supervisor waits for each, so a state is on disk
//! before anyone reads it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde_json::Value;

use super::store::Store;
use super::{
    Entry, JobCtl, JobError, JobRecord, JobSpec, JobState, JobWork, Jobs, JobsError, JobsOptions,
    Progress, Shared, now_ms,
};
use crate::events::EventKind;

/// Why a job is interrupted.
pub(super) const STOPPED: &str = "the node stopped while the job was queued or running";

pub enum JobsMsg {
    Submit(JobSpec, JobWork, RpcReplyPort<Result<u64, JobsError>>),
    Cancel(u64, RpcReplyPort<Result<(), JobsError>>),
    /// From a runner: its job's outcome.
    Done(u64, Result<Value, JobError>),
    /// Writes running jobs' progress to their records (then arms the next).
    Persist,
    /// The node is stopping: queued jobs are recorded as interrupted,
    /// running ones cancelled; no new job starts.
    Stopping(RpcReplyPort<()>),
    /// The node stops: what still runs is recorded as interrupted.
    Shutdown(RpcReplyPort<()>),
}

struct JobSupervisor;

struct SupState {
    opts: JobsOptions,
    store: Store,
    shared: Arc<Shared>,
    next_id: u64,
    queue: VecDeque<(u64, JobWork, Option<f64>)>,
    /// Runner actor id -> job id.
    running: HashMap<ractor::ActorId, u64>,
    stopping: bool,
}

pub(super) async fn start(opts: JobsOptions) -> Result<Jobs, JobsError> {
    let dir = opts.dir.clone();
    let events = opts.events.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let opened = Store::open(&dir, fpnode_segments::Fs::default())?;
        if let Some(events) = events {
            for r in &opened.records {
                if opened.interrupted.contains(&r.id) {
                    events.emit(EventKind::Job {
                        job: r.id,
                        kind: r.kind.clone(),
                        index: r.index.clone(),
                        state: r.state.name().to_string(),
                    });
                }
            }
        }
        Ok::<_, JobsError>(opened)
    })
    .await
    .map_err(|e| JobsError::Store {
        path: opts.dir.clone(),
        message: e.to_string(),
    })??;
    let (store, records) = (opened.store, opened.records);
    let uploads = store.uploads();
    let _ = std::fs::remove_dir_all(&uploads);
    let next_id = opened.highest_id + 1;
    let table = records
        .into_iter()
        .map(|record| (record.id, Entry { record, ctl: None }))
        .collect();
    let shared = Arc::new(Shared {
        table: std::sync::Mutex::new(table),
        changed: tokio::sync::watch::Sender::new(0),
    });
    let max_queued = opts.max_queued;
    let state = SupState {
        opts,
        store,
        shared: shared.clone(),
        next_id,
        queue: VecDeque::new(),
        running: HashMap::new(),
        stopping: false,
    };
    let (actor, _) = Actor::spawn(None, JobSupervisor, state)
        .await
        .map_err(|_| JobsError::Unavailable)?;
    Ok(Jobs {
        actor,
        shared,
        uploads,
        max_queued,
    })
}

impl SupState {
    /// Records `r` on disk, then shows it.
    async fn commit(&self, r: JobRecord, ctl: Option<Arc<JobCtl>>) -> Result<(), JobsError> {
        self.write(r, ctl, false).await
    }

    /// [`SupState::commit`] for a state that must be shown even if it
    /// could not be written (a job that ended must not look running for
    /// ever): the failure is logged, the record shown (and its event sent)
    /// anyway.
    async fn commit_anyway(&self, r: JobRecord) {
        if let Err(e) = self.write(r.clone(), None, true).await {
            tracing::error!(job = r.id, error = %e, "job record not written; shown anyway");
        }
    }

    /// Writes `r` (unless the write fails and `anyway` is false), shows it
    /// in the table, then records the node event of a state change: a
    /// client woken by the event reads the new state.
    async fn write(
        &self,
        r: JobRecord,
        ctl: Option<Arc<JobCtl>>,
        anyway: bool,
    ) -> Result<(), JobsError> {
        let store = self.store.clone();
        let shared = self.shared.clone();
        let events = self.opts.events.clone();
        let written = tokio::task::spawn_blocking(move || {
            let saved = store.save(&r);
            if saved.is_err() && !anyway {
                return saved;
            }
            let mut table = shared.table();
            let moved = table.get(&r.id).is_none_or(|e| e.record.state != r.state);
            let event = moved.then(|| EventKind::Job {
                job: r.id,
                kind: r.kind.clone(),
                index: r.index.clone(),
                state: r.state.name().to_string(),
            });
            match table.get_mut(&r.id) {
                Some(e) => {
                    let finished = r.state.is_finished();
                    e.record = r;
                    if ctl.is_some() {
                        e.ctl = ctl;
                    } else if finished {
                        e.ctl = None;
                    }
                }
                None => {
                    table.insert(r.id, Entry { record: r, ctl });
                }
            }
            drop(table);
            if let (Some(events), Some(event)) = (events, event) {
                events.emit(event);
            }
            saved
        })
        .await
        .map_err(|e| JobsError::Store {
            path: self.opts.dir.clone(),
            message: e.to_string(),
        });
        self.shared.bump();
        written?
    }

    fn record(&self, id: u64) -> Option<(JobRecord, Option<Arc<JobCtl>>)> {
        self.shared
            .table()
            .get(&id)
            .map(|e| (e.record.clone(), e.ctl.clone()))
    }

    fn gauges(&self) {
        metrics::gauge!("fpnode_jobs_running").set(self.running.len() as f64);
        metrics::gauge!("fpnode_jobs_queued").set(self.queue.len() as f64);
    }

    /// Starts queued jobs while there is room.
    async fn start_next(&mut self, me: &ActorRef<JobsMsg>) {
        while !self.stopping && self.running.len() < self.opts.max_running.max(1) {
            let Some((id, work, max_rate)) = self.queue.pop_front() else {
                break;
            };
            let Some((mut r, _)) = self.record(id) else {
                continue;
            };
            let ctl = Arc::new(JobCtl::new(id, max_rate));
            r.state = JobState::Running;
            r.started_ms = Some(now_ms());
            if let Err(e) = self.commit(r.clone(), Some(ctl.clone())).await {
                r.state = JobState::Failed;
                r.finished_ms = Some(now_ms());
                r.error = Some(format!("the job's record could not be written: {e}"));
                self.commit_anyway(r).await;
                continue;
            }
            let args = RunnerArgs {
                work: Some(work),
                ctl,
                supervisor: me.clone(),
            };
            match Actor::spawn_linked(None, JobRunner, args, me.get_cell()).await {
                Ok((runner, _)) => {
                    self.running.insert(runner.get_id(), id);
                    tracing::info!(job = id, kind = %r.kind, index = ?r.index, "job started");
                }
                Err(e) => self.finish(id, Err(JobError::Failed(e.to_string()))).await,
            }
        }
        self.gauges();
    }

    /// Records a job's end.
    async fn finish(&mut self, id: u64, outcome: Result<Value, JobError>) {
        let Some((mut r, ctl)) = self.record(id) else {
            return;
        };
        if r.state.is_finished() {
            return;
        }
        if let Some(ctl) = &ctl {
            r.progress = ctl.progress(&r.progress.unit);
            r.cancel_requested |= ctl.is_cancelled();
        }
        r.finished_ms = Some(now_ms());
        match outcome {
            Ok(result) => {
                r.state = JobState::Succeeded;
                r.result = Some(result);
            }
            // Cancelled by the node stopping, not by a client.
            Err(JobError::Cancelled) if self.stopping => {
                r.state = JobState::Interrupted;
                r.error = Some(STOPPED.into());
            }
            Err(JobError::Cancelled) => r.state = JobState::Cancelled,
            Err(JobError::Failed(e)) => {
                r.state = JobState::Failed;
                r.error = Some(e);
            }
        }
        if let Some(started) = r.started_ms {
            metrics::histogram!("fpnode_job_duration_seconds", "kind" => r.kind.clone())
                .record(now_ms().saturating_sub(started) as f64 / 1000.0);
        }
        metrics::counter!("fpnode_jobs_finished_total", "kind" => r.kind.clone(), "state" => r.state.name())
            .increment(1);
        tracing::info!(job = id, kind = %r.kind, state = r.state.name(), error = ?r.error, "job ended");
        self.commit_anyway(r).await;
        self.prune();
    }

    /// Removes the oldest finished records beyond `keep_finished`.
    fn prune(&self) {
        let mut table = self.shared.table();
        let finished: Vec<u64> = table
            .values()
            .filter(|e| e.record.state.is_finished())
            .map(|e| e.record.id)
            .collect();
        let excess = finished.len().saturating_sub(self.opts.keep_finished);
        for id in finished.into_iter().take(excess) {
            table.remove(&id);
            self.store.remove(id);
        }
    }

    async fn submit(&mut self, spec: JobSpec, work: JobWork) -> Result<u64, JobsError> {
        if self.stopping {
            return Err(JobsError::Unavailable);
        }
        if self.queue.len() >= self.opts.max_queued {
            return Err(JobsError::QueueFull(self.queue.len()));
        }
        let id = self.next_id;
        self.next_id += 1;
        let r = JobRecord {
            id,
            kind: spec.kind.clone(),
            index: spec.index,
            params: spec.params,
            state: JobState::Queued,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            progress: Progress {
                done: 0,
                total: None,
                unit: spec.unit.to_string(),
            },
            cancel_requested: false,
            result: None,
            error: None,
        };
        self.commit(r, None).await?;
        metrics::counter!("fpnode_jobs_submitted_total", "kind" => spec.kind).increment(1);
        self.queue.push_back((id, work, spec.max_rate));
        Ok(id)
    }

    async fn cancel(&mut self, id: u64) -> Result<(), JobsError> {
        let (mut r, ctl) = self.record(id).ok_or(JobsError::NotFound(id))?;
        if r.state.is_finished() {
            return Err(JobsError::Finished(id));
        }
        r.cancel_requested = true;
        if let Some(pos) = self.queue.iter().position(|(q, ..)| *q == id) {
            self.queue.remove(pos);
            self.gauges();
            return {
                self.commit(r, None).await?;
                self.finish(id, Err(JobError::Cancelled)).await;
                Ok(())
            };
        }
        if let Some(ctl) = &ctl {
            ctl.cancel();
        }
        self.commit(r, None).await
    }

    /// Records a job that will not run (on) as interrupted.
    async fn interrupt(&self, id: u64) {
        let Some((mut r, ctl)) = self.record(id) else {
            return;
        };
        if r.state.is_finished() {
            return;
        }
        if let Some(ctl) = &ctl {
            ctl.cancel();
            r.progress = ctl.progress(&r.progress.unit);
        }
        r.state = JobState::Interrupted;
        r.finished_ms = Some(now_ms());
        r.error = Some(STOPPED.into());
        self.commit_anyway(r).await;
    }

    /// Writes the progress of running jobs that moved since it was last written.
    async fn persist(&self) {
        let moved: Vec<(JobRecord, Arc<JobCtl>)> = self
            .shared
            .table()
            .values()
            .filter(|e| e.record.state == JobState::Running)
            .filter_map(|e| {
                let ctl = e.ctl.clone()?;
                let progress = ctl.progress(&e.record.progress.unit);
                (progress != e.record.progress).then(|| {
                    let mut r = e.record.clone();
                    r.progress = progress;
                    (r, ctl)
                })
            })
            .collect();
        for (r, ctl) in moved {
            if let Err(e) = self.commit(r, Some(ctl)).await {
                tracing::warn!(error = %e, "job progress not recorded");
            }
        }
    }
}

impl Actor for JobSupervisor {
    type Msg = JobsMsg;
    type State = SupState;
    type Arguments = SupState;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: SupState,
    ) -> Result<SupState, ActorProcessingErr> {
        myself.send_after(state.opts.persist_every, || JobsMsg::Persist);
        state.gauges();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            JobsMsg::Submit(spec, work, reply) => {
                let submitted = state.submit(spec, work).await;
                let _ = reply.send(submitted);
                state.start_next(&myself).await;
            }
            JobsMsg::Cancel(id, reply) => {
                let _ = reply.send(state.cancel(id).await);
            }
            JobsMsg::Done(id, outcome) => {
                state.running.retain(|_, j| *j != id);
                state.finish(id, outcome).await;
                state.start_next(&myself).await;
            }
            JobsMsg::Persist => {
                state.persist().await;
                // Armed after each write: a slow disk never piles these up.
                myself.send_after(state.opts.persist_every, || JobsMsg::Persist);
            }
            JobsMsg::Stopping(reply) => {
                state.stopping = true;
                let queued: Vec<u64> = state.queue.drain(..).map(|(id, ..)| id).collect();
                for id in queued {
                    state.interrupt(id).await;
                }
                for e in state.shared.table().values() {
                    if let Some(ctl) = &e.ctl {
                        ctl.cancel();
                    }
                }
                state.gauges();
                let _ = reply.send(());
            }
            JobsMsg::Shutdown(reply) => {
                state.stopping = true;
                let left: Vec<u64> = state.running.values().copied().collect();
                for id in left {
                    state.interrupt(id).await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = event
            && let Some(id) = state.running.remove(&cell.get_id())
        {
            tracing::error!(job = id, error = %err, "job runner failed");
            state
                .finish(id, Err(JobError::Failed(format!("the job failed: {err}"))))
                .await;
            state.start_next(&myself).await;
        }
        Ok(())
    }
}

struct JobRunner;

struct RunnerArgs {
    work: Option<JobWork>,
    ctl: Arc<JobCtl>,
    supervisor: ActorRef<JobsMsg>,
}

impl Actor for JobRunner {
    type Msg = ();
    type State = RunnerArgs;
    type Arguments = RunnerArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: RunnerArgs,
    ) -> Result<RunnerArgs, ActorProcessingErr> {
        Ok(args)
    }

    /// Runs the job to its end, reports it, and stops.
    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut RunnerArgs,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(work) = state.work.take() {
            let outcome = work(state.ctl.clone()).await;
            state
                .supervisor
                .cast(JobsMsg::Done(state.ctl.id, outcome))?;
        }
        myself.stop(None);
        Ok(())
    }
}
