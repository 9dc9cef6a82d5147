//! SearchSupervisor: owns the search worker threads (docs/architecture.md).
//!
//! Steps: on start it brings the running workers up to the pool's size. Each
//! worker is a plain thread taking searches from the pool's bounded queue
//! (CPU-bound searches never run on the async executor). A search that panics
//! answers its request with `SearchError::Panicked` (a named `500`), and its
//! worker thread ends: its state after a panic is not trusted. A guard in
//! every worker tells the supervisor when it ends (`WorkerExited`), panic or
//! not; the supervisor counts the restart (`fpnode_search_worker_restarts_total`)
//! and starts a replacement, so the pool never shrinks for good.
//! `fpnode_search_workers` is the number of workers running.
//!
//! Failure: the supervisor's only work is starting threads; if that fails it
//! fails, and its parent (the NodeSupervisor) restarts it, which again brings
//! the workers up to the pool's size. Workers report to whichever supervisor
//! is current (a shared slot), so none is lost across a restart.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorProcessingErr, ActorRef};

pub use crate::messages::SearchSupMsg;
use crate::search_pool::{SearchError, SearchWork, run};

pub struct SearchSupervisor;

/// Where workers report: the current supervisor, if any.
pub type SupervisorSlot = Arc<Mutex<Option<ActorRef<SearchSupMsg>>>>;

pub struct SearchSupArgs {
    pub work: SearchWork,
    pub slot: SupervisorSlot,
}

pub struct SearchSupState {
    work: SearchWork,
    slot: SupervisorSlot,
    next_id: usize,
}

impl Actor for SearchSupervisor {
    type Msg = SearchSupMsg;
    type State = SearchSupState;
    type Arguments = SearchSupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        *args.slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(myself);
        let mut state = SearchSupState {
            work: args.work,
            slot: args.slot,
            next_id: 0,
        };
        state.fill()?;
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // The queue closed (shutdown): nothing to replace.
            SearchSupMsg::WorkerExited { panicked: false } => {}
            SearchSupMsg::WorkerExited { panicked: true } => {
                metrics::counter!("fpnode_search_worker_restarts_total").increment(1);
                state.fill()?;
            }
        }
        Ok(())
    }
}

impl SearchSupState {
    /// Starts workers until the pool's size runs.
    fn fill(&mut self) -> Result<(), ActorProcessingErr> {
        let shared = &self.work.shared;
        while shared.live.load(Ordering::Acquire) < self.work.threads {
            shared.live.fetch_add(1, Ordering::AcqRel);
            let id = self.next_id;
            self.next_id += 1;
            let (rx, worker, slot) = (
                self.work.rx.clone(),
                self.work.shared.clone(),
                self.slot.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("search-{id}"))
                .spawn(move || {
                    let mut exit = ExitGuard {
                        shared: worker.clone(),
                        slot,
                        panicked: true,
                    };
                    for job in rx {
                        let d = worker.depth.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
                        metrics::gauge!("fpnode_search_queue_depth").set(d as f64);
                        match crate::panic::catch(|| run(&job, &worker)) {
                            Ok(result) => {
                                let _ = job.reply.send(result);
                            }
                            Err(why) => {
                                tracing::error!(worker = id, %why, "a search panicked; replacing its worker");
                                let _ = job.reply.send(Err(SearchError::Panicked(why)));
                                return;
                            }
                        }
                    }
                    // The queue closed: the pool is gone, nothing to replace.
                    exit.panicked = false;
                });
            if let Err(e) = spawned {
                shared.live.fetch_sub(1, Ordering::AcqRel);
                return Err(format!("cannot start a search worker: {e}").into());
            }
        }
        metrics::gauge!("fpnode_search_workers").set(shared.live.load(Ordering::Acquire) as f64);
        Ok(())
    }
}

/// Counts a worker out and tells the current supervisor, however the worker
/// ends (a caught panic, an uncaught one, the queue closing at shutdown).
struct ExitGuard {
    shared: Arc<crate::search_pool::Shared>,
    slot: SupervisorSlot,
    /// False only when the worker ended because the queue closed.
    panicked: bool,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let live = self
            .shared
            .live
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        metrics::gauge!("fpnode_search_workers").set(live as f64);
        let supervisor = self.slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(s) = supervisor {
            // A caught panic ends the worker by returning; an uncaught one
            // is still unwinding here. Either way it is a restart.
            let _ = s.cast(SearchSupMsg::WorkerExited {
                panicked: self.panicked,
            });
        }
    }
}
