//! IndexSupervisor: one per open index; owns its write pipeline (Batcher,
//! WalWriter, IndexWriter) and its SegmentMerger.
//!
//! Steps: spawns its children linked (in replica mode also the index's
//! StreamSubscriber). The three pipeline actors are restarted together (one
//! for all): the Batcher numbers writes from what the engine has logged, so
//! it must not outlive the stages after it. When a child fails, the failure is
//! counted (`fpnode_actor_restarts_total`) and the child is restarted after an
//! exponential backoff, from durable state (the engine's WAL and manifest; a
//! writer's unanswered requests are answered `Unavailable`, never acknowledged).
//! More than `max_restarts` failures of one child within `window` escalate: the
//! index is marked unhealthy (`503` on `/:index/_health` and writes) and the
//! child is left stopped, while the process and other indexes keep running.

use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::batcher::{Batcher, BatcherArgs};
use crate::handle::IndexHandle;
use crate::index_writer::{IndexWriter, WriterArgs};
use crate::messages::{BatcherMsg, MergerMsg, SubscriberMsg, WalMsg, WriterMsg};
pub use crate::messages::{Child, IndexSupMsg, SupervisionOptions};
use crate::replication::Replication;
use crate::restart::RestartTracker;
use crate::segment_merger::{MergerArgs, SegmentMerger};
use crate::stream_subscriber::{StreamSubscriber, SubscriberArgs};
use crate::wal_writer::{WalWriter, WalWriterArgs};

pub struct IndexSupervisor;

pub struct IndexSupArgs {
    pub handle: Arc<IndexHandle>,
    pub opts: SupervisionOptions,
    pub replication: Option<Arc<Replication>>,
}

pub struct IndexSupState {
    handle: Arc<IndexHandle>,
    opts: SupervisionOptions,
    replication: Option<Arc<Replication>>,
    writer: Option<ActorRef<WriterMsg>>,
    wal_writer: Option<ActorRef<WalMsg>>,
    batcher: Option<ActorRef<BatcherMsg>>,
    merger: Option<ActorRef<MergerMsg>>,
    subscriber: Option<ActorRef<SubscriberMsg>>,
    failures: [RestartTracker; 3],
}

impl Actor for IndexSupervisor {
    type Msg = IndexSupMsg;
    type State = IndexSupState;
    type Arguments = IndexSupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = IndexSupState {
            failures: [
                RestartTracker::new(&args.opts),
                RestartTracker::new(&args.opts),
                RestartTracker::new(&args.opts),
            ],
            handle: args.handle,
            opts: args.opts,
            replication: args.replication,
            writer: None,
            wal_writer: None,
            batcher: None,
            merger: None,
            subscriber: None,
        };
        // Boxed: the nested actor start-ups make a future too deep for the
        // compiler's layout limit otherwise.
        // An index given up on (unhealthy) keeps serving reads, but gets no
        // write pipeline again, even from a restarted registry or supervisor:
        // its `Unanswered` is closed, so a write would be applied and then
        // answered as refused.
        if state.handle.is_healthy() {
            Box::pin(state.spawn(myself.get_cell(), Child::Writer)).await?;
            Box::pin(state.spawn(myself.get_cell(), Child::Merger)).await?;
            Box::pin(state.spawn(myself.get_cell(), Child::Subscriber)).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            IndexSupMsg::Restart(child) => {
                if state.handle.is_healthy() {
                    Box::pin(state.spawn(myself.get_cell(), child)).await?;
                }
            }
            IndexSupMsg::InjectFailure(Child::Writer) => {
                if let Some(w) = &state.writer {
                    w.cast(WriterMsg::InjectFailure)?;
                }
            }
            IndexSupMsg::InjectFailure(Child::WalWriter) => {
                if let Some(w) = &state.wal_writer {
                    w.cast(WalMsg::InjectFailure)?;
                }
            }
            IndexSupMsg::InjectFailure(Child::Batcher) => {
                if let Some(b) = &state.batcher {
                    b.cast(BatcherMsg::InjectFailure)?;
                }
            }
            IndexSupMsg::InjectFailure(Child::Merger) => {
                if let Some(m) = &state.merger {
                    m.cast(MergerMsg::InjectFailure)?;
                }
            }
            IndexSupMsg::InjectFailure(Child::Subscriber) => {
                if let Some(s) = &state.subscriber {
                    s.cast(SubscriberMsg::InjectFailure)?;
                }
            }
            IndexSupMsg::InjectFailure(Child::Supervisor) => {
                return Err("injected failure".into());
            }
            IndexSupMsg::InjectFailure(Child::Registry | Child::SearchWorker) => {}
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = event {
            let Some(child) = state.which(&cell) else {
                return Ok(());
            };
            tracing::error!(index = %state.handle.name, child = child.name(), error = %err, "child failed");
            metrics::counter!("fpnode_actor_restarts_total", "actor" => child.name()).increment(1);
            let (child, slot) = match child {
                Child::Merger => (Child::Merger, 1),
                Child::Subscriber => (Child::Subscriber, 2),
                // One for all: the rest of the pipeline stops with it.
                _ => (Child::Writer, 0),
            };
            state.clear(child);
            let tracker = &mut state.failures[slot];
            let Some(backoff) = tracker.failed() else {
                state.handle.mark_unhealthy(child.name());
                return Ok(());
            };
            myself.send_after(backoff, move || IndexSupMsg::Restart(child));
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.clear(Child::Writer);
        if let Some(s) = state.subscriber.take() {
            s.stop(None);
        }
        Ok(())
    }
}

impl IndexSupState {
    async fn spawn(&mut self, me: ActorCell, child: Child) -> Result<(), ActorProcessingErr> {
        let index = self.handle.index.clone();
        match child {
            Child::Writer | Child::Batcher | Child::WalWriter => {
                // Last stage first: each stage is given the next one.
                let (w, _) = Actor::spawn_linked(
                    None,
                    IndexWriter,
                    WriterArgs {
                        index: index.clone(),
                        unanswered: self.handle.unanswered.clone(),
                        published: self.handle.published.clone(),
                    },
                    me.clone(),
                )
                .await?;
                self.writer = Some(w.clone());
                let args = WalWriterArgs {
                    index: index.clone(),
                    index_writer: w,
                    unanswered: self.handle.unanswered.clone(),
                };
                let (l, _) = Actor::spawn_linked(None, WalWriter, args, me.clone()).await?;
                self.wal_writer = Some(l.clone());
                let args = BatcherArgs {
                    index,
                    wal_writer: l,
                    max_group_changes: self.opts.max_group_changes,
                    group_credits: self.opts.group_credits,
                    unanswered: self.handle.unanswered.clone(),
                    published: self.handle.published.clone(),
                };
                let (b, _) = Actor::spawn_linked(None, Batcher, args, me).await?;
                *self
                    .handle
                    .batcher
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
                self.batcher = Some(b);
            }
            Child::Supervisor | Child::Registry | Child::SearchWorker => {}
            Child::Subscriber => {
                let Some(r) = &self.replication else {
                    return Ok(());
                };
                let args = SubscriberArgs {
                    js: r.js.clone(),
                    settings: r.settings().clone(),
                    handle: self.handle.clone(),
                    max_batch: r.opts.fetch_max,
                    wait: r.opts.fetch_wait,
                    link: Some(r.link.clone()),
                };
                let (s, _) = Actor::spawn_linked(None, StreamSubscriber, args, me).await?;
                self.subscriber = Some(s);
            }
            Child::Merger => {
                let args = MergerArgs {
                    index,
                    tick: self.opts.merger_tick,
                };
                let (m, _) = Actor::spawn_linked(None, SegmentMerger, args, me).await?;
                self.merger = Some(m);
            }
        }
        Ok(())
    }

    fn which(&self, cell: &ActorCell) -> Option<Child> {
        let id = cell.get_id();
        if self.writer.as_ref().is_some_and(|w| w.get_id() == id) {
            Some(Child::Writer)
        } else if self.wal_writer.as_ref().is_some_and(|w| w.get_id() == id) {
            Some(Child::WalWriter)
        } else if self.batcher.as_ref().is_some_and(|b| b.get_id() == id) {
            Some(Child::Batcher)
        } else if self
            .merger
            .as_ref()
            .is_some_and(|m| m.get_id() == cell.get_id())
        {
            Some(Child::Merger)
        } else if self
            .subscriber
            .as_ref()
            .is_some_and(|s| s.get_id() == cell.get_id())
        {
            Some(Child::Subscriber)
        } else {
            None
        }
    }

    fn clear(&mut self, child: Child) {
        match child {
            Child::Writer | Child::Batcher | Child::WalWriter => {
                *self
                    .handle
                    .batcher
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                // Whichever stage failed, the others stop with it; their
                // unanswered clients are answered `Unavailable` when their
                // reply ports drop.
                if let Some(b) = self.batcher.take() {
                    b.stop(None);
                }
                if let Some(l) = self.wal_writer.take() {
                    l.stop(None);
                }
                if let Some(w) = self.writer.take() {
                    w.stop(None);
                }
            }
            Child::Merger => self.merger = None,
            Child::Subscriber => self.subscriber = None,
            Child::Supervisor | Child::Registry | Child::SearchWorker => {}
        }
    }
}
