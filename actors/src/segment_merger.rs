//! SegmentMerger: keeps the segment count bounded in the background.
//!
//! Steps: a timer sends `Tick`; for each kind of task that is not already running
//! and has work (a due checkpoint, a memory merge, a file merge) it starts the
//! task on a blocking thread; the task reports `Done`, which frees the slot and,
//! if it did something, looks for more at once. The three kinds run beside each
//! other (the engine serialises what must be serialised), so a long file merge
//! never holds up checkpoints.
//!
//! Failure: a task error or panic crashes the actor (returned from the
//! handler); the IndexSupervisor restarts it, and the engine's state is
//! unchanged by a failed task (outputs are only committed after they are
//! durable; segments a task took are released even if it panics).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fpnode_segments::Index;
use ractor::{Actor, ActorProcessingErr, ActorRef};

pub use crate::messages::{MergerMsg, Task};

pub struct SegmentMerger;

pub struct MergerArgs {
    pub index: Arc<Index>,
    pub tick: Duration,
}

pub struct MergerState {
    index: Arc<Index>,
    running: [bool; 3],
    fail_next: bool,
}

impl Actor for SegmentMerger {
    type Msg = MergerMsg;
    type State = MergerState;
    type Arguments = MergerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(args.tick, || MergerMsg::Tick);
        Ok(MergerState {
            index: args.index,
            running: [false; 3],
            fail_next: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MergerMsg::Tick => {
                for task in Task::ALL {
                    state.start(&myself, task);
                }
                Ok(())
            }
            MergerMsg::Done(task, result, took) => {
                state.running[task.slot()] = false;
                match result {
                    Ok(did) => {
                        if did {
                            metrics::histogram!("fpnode_maintenance_seconds", "task" => task.metric())
                                .record(took.as_secs_f64());
                            match task {
                                Task::Checkpoint => {
                                    metrics::counter!("fpindex_checkpoints_total").increment(1)
                                }
                                Task::MemoryMerge => {
                                    metrics::counter!("fpindex_memory_merges_total").increment(1)
                                }
                                Task::FileMerge => {
                                    metrics::counter!("fpindex_file_merges_total").increment(1)
                                }
                            }
                            state.start(&myself, task);
                        }
                        Ok(())
                    }
                    Err(e) => Err(format!("{} failed: {e}", task.metric()).into()),
                }
            }
            MergerMsg::InjectFailure => {
                state.fail_next = true;
                Ok(())
            }
        }
    }
}

impl MergerState {
    fn start(&mut self, myself: &ActorRef<MergerMsg>, task: Task) {
        if self.running[task.slot()] {
            return;
        }
        if task == Task::Checkpoint && !self.index.checkpoint_due() && !self.fail_next {
            return;
        }
        self.running[task.slot()] = true;
        let index = self.index.clone();
        let fail = std::mem::take(&mut self.fail_next);
        let me = myself.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = if fail {
                Err("injected failure".to_string())
            } else {
                // A panicking task is reported like a failed one (the engine
                // releases what it took), so the slot is freed and the
                // supervisor restarts this actor instead of maintenance
                // stopping for good.
                crate::panic::run(|| match task {
                    Task::Checkpoint => index.checkpoint(),
                    Task::MemoryMerge => index.merge_memory(),
                    Task::FileMerge => index.merge_files(),
                })
            };
            let _ = me.cast(MergerMsg::Done(task, result, started.elapsed()));
        });
    }
}
