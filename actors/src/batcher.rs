//! Batcher: the first stage of an index's write pipeline (docs/architecture.md).
//!
//! Steps: client writes (`Write`, from HTTP) and numbered batches (`Apply`,
//! from the StreamSubscriber in replica mode) are queued; the first one casts
//! a `Cut` to itself. The mailbox is FIFO, so that `Cut` is handled after every
//! write already waiting: a group is cut when nothing more is waiting, or at
//! once when it reaches `max_group_changes` changes. Cutting a group takes one
//! of the group credits (waiting for one is the backpressure: meanwhile writes
//! gather in the mailbox for the next group), numbers the writes (standalone
//! versions count batches), checks `expected_version` and gaps, and has the
//! engine prepare the group (stall wait, memory segments built) on a blocking
//! thread while the WalWriter syncs the previous group. The prepared group
//! goes to the WalWriter.
//!
//! Numbering follows the engine's logged position, read when the actor
//! starts after taking a new fence (`Index::fence`): a log the replaced
//! pipeline still had on its way is refused from then on, so a restarted
//! pipeline continues after what is durable and never reuses a position;
//! what the old one logged and did not publish is published first, and its
//! clients (waiting in the index's `Unanswered`) answered.
//!
//! Failure: a write stall answers the group `Overloaded`, an invalid id
//! `Invalid`, and the numbering is not advanced; any other error answers the
//! group `Unavailable` and crashes the actor, so the IndexSupervisor restarts
//! the pipeline from durable state.

use std::sync::Arc;
use std::time::Instant;

use fpnode_segments::{Batch, Error as EngineError, Fence, Index, Position};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;

pub use crate::messages::BatcherMsg;
use crate::messages::{Answers, Group, Unanswered, WalMsg, WriteError, WriteReply, WriteRequest};

pub struct Batcher;

pub struct BatcherArgs {
    pub index: Arc<Index>,
    pub wal_writer: ActorRef<WalMsg>,
    /// A group is cut at once when its writes hold this many changes.
    pub max_group_changes: usize,
    /// Groups between the cut and the answer.
    pub group_credits: usize,
    pub unanswered: Arc<Unanswered>,
    /// Woken after the start's publish (change feeds wait on it).
    pub published: Arc<tokio::sync::Notify>,
}

enum Work {
    Request(WriteRequest),
    Numbered(Batch, Position),
}

pub struct BatcherState {
    index: Arc<Index>,
    wal_writer: ActorRef<WalMsg>,
    max_group_changes: usize,
    credits: Arc<Semaphore>,
    pending: Vec<(Work, WriteReply)>,
    pending_changes: usize,
    cut_scheduled: bool,
    /// Position of the last batch numbered (sent down the pipeline).
    numbered: u64,
    fence: Fence,
    fail_next: bool,
}

impl Actor for Batcher {
    type Msg = BatcherMsg;
    type State = BatcherState;
    type Arguments = BatcherArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Fences off the pipeline this one replaces, publishes what it
        // logged, and numbers after everything logged.
        let index = args.index.clone();
        let (fence, published, logged) = tokio::task::spawn_blocking(move || {
            let fence = index.fence();
            index
                .publish_logged()
                .map(|published| (fence, published, index.logged_position()))
        })
        .await??;
        args.unanswered.answer_through(published);
        args.published.notify_waiters();
        Ok(BatcherState {
            index: args.index,
            wal_writer: args.wal_writer,
            max_group_changes: args.max_group_changes.max(1),
            credits: Arc::new(Semaphore::new(args.group_credits.max(1))),
            pending: Vec::new(),
            pending_changes: 0,
            cut_scheduled: false,
            numbered: logged.0,
            fence,
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
            BatcherMsg::Write(request, reply) => {
                state.pending_changes += request.changes.len();
                state.pending.push((Work::Request(request), reply));
                state.after_queue(&myself).await
            }
            BatcherMsg::Apply(batch, after, reply) => {
                state.pending_changes += batch.changes.len();
                state.pending.push((Work::Numbered(batch, after), reply));
                state.after_queue(&myself).await
            }
            BatcherMsg::Cut => {
                state.cut_scheduled = false;
                state.cut().await
            }
            BatcherMsg::InjectFailure => {
                state.fail_next = true;
                Ok(())
            }
        }
    }
}

impl BatcherState {
    async fn after_queue(
        &mut self,
        myself: &ActorRef<BatcherMsg>,
    ) -> Result<(), ActorProcessingErr> {
        if self.pending_changes >= self.max_group_changes {
            return self.cut().await;
        }
        if !self.cut_scheduled {
            self.cut_scheduled = true;
            myself.cast(BatcherMsg::Cut)?;
        }
        Ok(())
    }

    /// Numbers the pending writes into batches; answers the ones that cannot
    /// be taken (version mismatch, gap, invalid id, already taken).
    fn number(&mut self) -> (Vec<Batch>, Vec<(Position, WriteReply)>) {
        let mut version = self.numbered;
        let mut batches = Vec::new();
        let mut replies = Vec::new();
        self.pending_changes = 0;
        for (work, reply) in self.pending.drain(..) {
            let request = match work {
                Work::Numbered(batch, after) => {
                    if batch.position <= self.index.position() {
                        // Published already (a resent batch): taken.
                        let _ = reply.send(Ok(batch.position));
                    } else if batch.position.0 <= version {
                        // Numbered and on its way, not yet durable: the
                        // sender must not take it as applied; it resyncs.
                        let _ = reply.send(Err(WriteError::Unavailable(format!(
                            "batch {} is being applied",
                            batch.position.0
                        ))));
                    } else if after.0 != version {
                        let _ = reply.send(Err(WriteError::Gap {
                            expected: version,
                            got: after.0,
                        }));
                    } else if batch.changes.iter().any(|c| c.id() == 0) {
                        let _ = reply.send(Err(WriteError::Invalid("fingerprint id 0".into())));
                    } else {
                        tracing::debug!(
                            after = after.0,
                            position = batch.position.0,
                            changes = batch.changes.len(),
                            "numbered batch taken"
                        );
                        version = batch.position.0;
                        replies.push((batch.position, reply));
                        batches.push(batch);
                    }
                    continue;
                }
                Work::Request(request) => request,
            };
            if let Some(expected) = request.expected_version
                && expected != version
            {
                let _ = reply.send(Err(WriteError::VersionMismatch {
                    expected,
                    actual: version,
                }));
                continue;
            }
            if request.changes.iter().any(|c| c.id() == 0) {
                let _ = reply.send(Err(WriteError::Invalid("fingerprint id 0".into())));
                continue;
            }
            version += 1;
            batches.push(Batch {
                position: Position(version),
                changes: request.changes,
                metadata: request.metadata,
                replaced: Vec::new(),
            });
            replies.push((Position(version), reply));
        }
        (batches, replies)
    }

    async fn cut(&mut self) -> Result<(), ActorProcessingErr> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // Waiting here is the backpressure: writes arriving meanwhile stay in
        // the mailbox (bounded by the write permits) and make the next group.
        let credit = self.credits.clone().acquire_owned().await?;
        let cut_at = Instant::now();
        let (batches, replies) = self.number();
        let Some(last) = batches.last().map(|b| b.position) else {
            return Ok(());
        };
        let answers = Answers {
            replies,
            credit,
            cut_at,
        };
        let index = self.index.clone();
        let fail = std::mem::take(&mut self.fail_next);
        let prepared = tokio::task::spawn_blocking(move || {
            if fail {
                return Err(EngineError::Poisoned("injected failure".into()));
            }
            index.prepare(batches)
        })
        .await?;
        metrics::histogram!("fpnode_write_prepare_seconds").record(cut_at.elapsed().as_secs_f64());
        match prepared {
            Ok(prepared) => {
                self.numbered = last.0;
                let group = Group {
                    prepared,
                    fence: self.fence,
                    answers,
                };
                if let Err(e) = self.wal_writer.cast(WalMsg::Log(Box::new(group))) {
                    return Err(format!("the WAL writer is gone: {e}").into());
                }
                Ok(())
            }
            Err(EngineError::WriteStall { segments, limit }) => {
                metrics::counter!("fpnode_write_stalls_total").increment(1);
                answers.fail(WriteError::Overloaded(format!(
                    "merges are behind ({segments} segments, limit {limit})"
                )));
                Ok(())
            }
            Err(e) => {
                answers.fail(WriteError::Unavailable(e.to_string()));
                Err(Box::new(e))
            }
        }
    }
}
