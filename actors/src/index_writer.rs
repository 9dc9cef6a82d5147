//! IndexWriter: the last stage of an index's write pipeline
//! (docs/architecture.md). For each logged group it publishes everything
//! logged into the snapshot searches read, then answers the group's clients:
//! a write is acknowledged only once it is durable and visible.
//!
//! What a previous pipeline logged and did not publish (the engine keeps
//! logged groups until published) is published when the Batcher of the new
//! one starts, right after it fences the old one off, so a crash between the
//! WAL and the publish never leaves a durable write invisible.
//!
//! Failure: publishing does no I/O; an error answers the group `Unavailable`
//! and crashes the actor, so the IndexSupervisor restarts the pipeline.

use std::sync::Arc;

use fpnode_segments::Index;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::messages::WriteError;
pub use crate::messages::WriterMsg;

pub struct IndexWriter;

pub struct WriterArgs {
    pub index: Arc<Index>,
}

pub struct WriterState {
    index: Arc<Index>,
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
            WriterMsg::Publish(answers) => {
                if std::mem::take(&mut state.fail_next) {
                    answers.fail(WriteError::Unavailable("injected failure".into()));
                    return Err("injected failure".into());
                }
                let index = state.index.clone();
                let started = std::time::Instant::now();
                let published = tokio::task::spawn_blocking(move || index.publish_logged()).await?;
                metrics::histogram!("fpnode_write_publish_seconds")
                    .record(started.elapsed().as_secs_f64());
                match published {
                    Ok(_) => {
                        metrics::histogram!("fpnode_write_flush_seconds")
                            .record(answers.cut_at.elapsed().as_secs_f64());
                        metrics::counter!("fpindex_updates_total")
                            .increment(answers.replies.len() as u64);
                        for (position, reply) in answers.replies {
                            let _ = reply.send(Ok(position));
                        }
                        Ok(())
                    }
                    Err(e) => {
                        answers.fail(WriteError::Unavailable(e.to_string()));
                        Err(Box::new(e))
                    }
                }
            }
            WriterMsg::InjectFailure => {
                state.fail_next = true;
                Ok(())
            }
        }
    }
}
