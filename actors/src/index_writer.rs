//! IndexWriter: the last stage of an index's write pipeline
//! (docs/architecture.md). For each logged group it publishes everything
//! logged into the snapshot searches read, then answers the clients of the
//! groups published (they wait in the index's `Unanswered`): a write is
//! acknowledged only once it is durable and visible.
//!
//! What a previous pipeline logged and did not publish (the engine keeps
//! logged groups until published) is published, and its clients answered,
//! when the Batcher of the new one starts, right after it fences the old one
//! off: a crash between the WAL and the answer never leaves a durable write
//! invisible, nor answered as refused.
//!
//! Failure: publishing does no I/O; an error crashes the actor, so the
//! IndexSupervisor restarts the pipeline, whose Batcher publishes and
//! answers the groups.

use std::sync::Arc;

use fpnode_segments::Index;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::messages::Unanswered;
pub use crate::messages::WriterMsg;

pub struct IndexWriter;

pub struct WriterArgs {
    pub index: Arc<Index>,
    pub unanswered: Arc<Unanswered>,
    /// Woken after each publish (change feeds wait on it).
    pub published: Arc<tokio::sync::Notify>,
}

pub struct WriterState {
    index: Arc<Index>,
    unanswered: Arc<Unanswered>,
    published: Arc<tokio::sync::Notify>,
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
            unanswered: args.unanswered,
            published: args.published,
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
            WriterMsg::Publish => {
                if std::mem::take(&mut state.fail_next) {
                    // The group stays unanswered: the next pipeline answers it.
                    return Err("injected failure".into());
                }
                let index = state.index.clone();
                let started = std::time::Instant::now();
                let published = tokio::task::spawn_blocking(move || index.publish_logged()).await?;
                metrics::histogram!("fpnode_write_publish_seconds")
                    .record(started.elapsed().as_secs_f64());
                let published = published?;
                state.unanswered.answer_through(published);
                state.published.notify_waiters();
                Ok(())
            }
            WriterMsg::InjectFailure => {
                state.fail_next = true;
                Ok(())
            }
        }
    }
}
