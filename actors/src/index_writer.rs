//! IndexWriter: turns write requests into durable, applied batches.
//!
//! Steps: each `Write` is queued in the state; the first one also casts a `Flush`
//! to itself. Because the mailbox is FIFO, that `Flush` is handled after every
//! write already waiting, so one flush (one WAL fsync) covers all of them: group
//! commit without timers. A flush numbers the requests (standalone versions
//! count batches: 1, 2, 3...), checks `expected_version`, hands the batches to
//! `Index::apply` on a blocking thread and answers each request.
//!
//! Failure: a write stall is answered `Overloaded` (the caller retries later);
//! an I/O failure answers every request `Unavailable` and crashes the actor
//! (returning the error), so the IndexSupervisor restarts it from durable state.

use std::sync::Arc;

use fpnode_segments::{Batch, Error as EngineError, Index, Position};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::handle::{WriteError, WriteRequest};

/// Where a write's outcome goes: its version, or why it was not applied.
pub type WriteReply = RpcReplyPort<Result<Position, WriteError>>;

pub enum WriterMsg {
    /// A client write: the writer numbers it (standalone versions).
    Write(WriteRequest, WriteReply),
    /// A batch already numbered by the stream (replica mode: position = the
    /// stream sequence of its last message), following position `after`.
    /// Applied only if `after` is where the index is (no gap); a batch at or
    /// before the index's position is already applied and answered as such.
    Apply(Batch, Position, WriteReply),
    Flush,
    /// Test hook: fail the next flush as an I/O error would.
    InjectFailure,
}

pub struct IndexWriter;

pub struct WriterArgs {
    pub index: Arc<Index>,
}

/// A queued unit of work.
enum Pending {
    Request(WriteRequest),
    Numbered(Batch, Position),
}

pub struct WriterState {
    index: Arc<Index>,
    pending: Vec<(Pending, WriteReply)>,
    flush_scheduled: bool,
    fail_next: bool,
}

impl Actor for IndexWriter {
    type Msg = WriterMsg;
    type State = WriterState;
    type Arguments = WriterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(WriterState {
            index: args.index,
            pending: Vec::new(),
            flush_scheduled: false,
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
            WriterMsg::Write(request, reply) => {
                state.queue(&myself, Pending::Request(request), reply)
            }
            WriterMsg::Apply(batch, after, reply) => {
                state.queue(&myself, Pending::Numbered(batch, after), reply)
            }
            WriterMsg::Flush => state.flush().await,
            WriterMsg::InjectFailure => {
                state.fail_next = true;
                Ok(())
            }
        }
    }
}

impl WriterState {
    fn queue(
        &mut self,
        myself: &ActorRef<WriterMsg>,
        work: Pending,
        reply: WriteReply,
    ) -> Result<(), ActorProcessingErr> {
        self.pending.push((work, reply));
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            myself.cast(WriterMsg::Flush)?;
        }
        Ok(())
    }

    /// Numbers the pending requests into batches; answers the ones whose
    /// `expected_version` does not hold.
    fn plan(&mut self) -> (Vec<Batch>, Vec<(Position, WriteReply)>) {
        let mut version = self.index.position().0;
        let mut batches = Vec::new();
        let mut replies = Vec::new();
        for (work, reply) in self.pending.drain(..) {
            let request = match work {
                Pending::Numbered(batch, after) => {
                    if batch.position.0 <= version {
                        let _ = reply.send(Ok(batch.position));
                    } else if after.0 != version {
                        let _ = reply.send(Err(WriteError::Gap {
                            expected: version,
                            got: after.0,
                        }));
                    } else {
                        version = batch.position.0;
                        replies.push((batch.position, reply));
                        batches.push(batch);
                    }
                    continue;
                }
                Pending::Request(request) => request,
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
            version += 1;
            batches.push(Batch {
                position: Position(version),
                changes: request.changes,
                metadata: request.metadata,
            });
            replies.push((Position(version), reply));
        }
        (batches, replies)
    }

    async fn flush(&mut self) -> Result<(), ActorProcessingErr> {
        self.flush_scheduled = false;
        let (batches, replies) = self.plan();
        if batches.is_empty() {
            return Ok(());
        }
        let count = batches.len();
        let index = self.index.clone();
        let fail = std::mem::take(&mut self.fail_next);
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            if fail {
                return Err(EngineError::Poisoned("injected failure".into()));
            }
            index.apply(&batches)
        })
        .await?;
        metrics::histogram!("fpnode_write_flush_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("fpnode_write_group_size").record(count as f64);
        match result {
            Ok(_) => {
                metrics::counter!("fpindex_updates_total").increment(count as u64);
                for (position, reply) in replies {
                    let _ = reply.send(Ok(position));
                }
                Ok(())
            }
            Err(EngineError::WriteStall { segments, limit }) => {
                metrics::counter!("fpnode_write_stalls_total").increment(1);
                for (_, reply) in replies {
                    let _ = reply.send(Err(WriteError::Overloaded(format!(
                        "merges are behind ({segments} segments, limit {limit})"
                    ))));
                }
                Ok(())
            }
            Err(EngineError::InvalidFingerprintId) => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(WriteError::Invalid("fingerprint id 0".into())));
                }
                Ok(())
            }
            Err(e) => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(WriteError::Unavailable(e.to_string())));
                }
                Err(Box::new(e))
            }
        }
    }
}
