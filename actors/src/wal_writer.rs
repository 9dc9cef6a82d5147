//! WalWriter: the second stage of an index's write pipeline
//! (docs/architecture.md). It owns the index's WAL: each prepared group is
//! appended and fsynced once (group commit) on a blocking thread, then handed
//! to the IndexWriter to publish. While it waits on one group's fsync, the
//! Batcher prepares the next and the IndexWriter publishes the previous.
//!
//! A logged group's answers go to the index's `Unanswered`, where they wait
//! for whichever publish comes first (this pipeline's IndexWriter, or the
//! next pipeline's Batcher if this one fails meanwhile).
//!
//! Failure: a failed append or fsync poisons the WAL (docs/durability.md);
//! the group is answered `Unavailable` (never acknowledged) and the actor
//! crashes, so the IndexSupervisor restarts the pipeline, which then fails
//! until the IndexSupervisor gives up and marks the index unhealthy.

use std::sync::Arc;

use fpnode_segments::{Error as EngineError, Index};
use ractor::{Actor, ActorProcessingErr, ActorRef};

pub use crate::messages::WalMsg;
use crate::messages::{Group, Unanswered, WriteError, WriterMsg};

pub struct WalWriter;

pub struct WalWriterArgs {
    pub index: Arc<Index>,
    pub index_writer: ActorRef<WriterMsg>,
    pub unanswered: Arc<Unanswered>,
}

pub struct WalWriterState {
    index: Arc<Index>,
    index_writer: ActorRef<WriterMsg>,
    unanswered: Arc<Unanswered>,
    fail_next: bool,
}

impl Actor for WalWriter {
    type Msg = WalMsg;
    type State = WalWriterState;
    type Arguments = WalWriterArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(WalWriterState {
            index: args.index,
            index_writer: args.index_writer,
            unanswered: args.unanswered,
            fail_next: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WalMsg::Log(group) => {
                let Group {
                    prepared,
                    fence,
                    answers,
                } = *group;
                let (index, unanswered) = (state.index.clone(), state.unanswered.clone());
                let fail = std::mem::take(&mut state.fail_next);
                let count = prepared.len();
                // The answers travel with the blocking work, which runs to its
                // end even if this actor is killed meanwhile (its supervisor
                // died): a group that reaches the WAL is always pushed to
                // `Unanswered`, so whichever pipeline publishes it answers it.
                let logged = tokio::task::spawn_blocking(move || {
                    let logged = if fail {
                        Err(EngineError::Poisoned("injected failure".into()))
                    } else {
                        index.log_fenced(fence, prepared)
                    };
                    match &logged {
                        Ok(_) => {
                            unanswered.push(answers);
                            // A pipeline replacing this one may have published
                            // the group before it was pushed (and so not
                            // answered it): answer what is published already.
                            unanswered.answer_through(index.position());
                        }
                        Err(e) => answers.fail(WriteError::Unavailable(e.to_string())),
                    }
                    logged
                })
                .await?;
                match logged {
                    Ok(_) => {
                        metrics::histogram!("fpnode_write_group_size").record(count as f64);
                        if let Err(e) = state.index_writer.cast(WriterMsg::Publish) {
                            return Err(format!("the index writer is gone: {e}").into());
                        }
                        Ok(())
                    }
                    Err(e) => Err(Box::new(e)),
                }
            }
            WalMsg::InjectFailure => {
                state.fail_next = true;
                Ok(())
            }
        }
    }
}
