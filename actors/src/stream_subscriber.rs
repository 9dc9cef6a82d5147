//! StreamSubscriber (replica mode): follows one index's fingerprint subjects in
//! the stream and hands them to the IndexWriter as numbered batches.
//!
//! Steps: on `Poll`, take a credit (at most `CREDITS` batches in flight, so
//! memory stays bounded however far behind it is), make sure a pull consumer
//! exists, starting at the index's applied position + 1 (an ephemeral consumer
//! without acks: correctness never depends on server-side state); fetch up to
//! `max_batch` messages (waiting up to `wait`); turn them into one batch whose
//! position is the stream sequence of its last message and which follows the
//! previous batch's position; send it to the writer and poll again at once, so
//! the next fetch overlaps this apply. The credit comes back when the writer
//! answers.
//!
//! Failure: the writer applies a batch only if it follows the index's position
//! exactly, so a failed batch can never be skipped by a later one. Any failure
//! (NATS error, writer restarting, gap) waits for the batches in flight, drops
//! the consumer and retries after a backoff with jitter from the applied
//! position. A message that is not a fingerprint state is counted and skipped
//! (the position still advances past it).
//!
//! Generations: the index's data is every message of its subjects after its
//! create record. A lifecycle record (`_index`) seen while following means the
//! generation ended (deleted, or deleted and re-created): the subscriber applies
//! what came before it and stops; the IndexRegistry, told by the
//! LifecycleWatcher, drops the index and builds the next generation. So no
//! replica ever mixes two generations.
//!
//! Integrity: if the stream's last sequence is below the index's position, the
//! stream lost messages this index applied (or was recreated): the subscriber
//! stops applying for good and says why (`_status`, log,
//! `fpnode_stream_diverged`). This is checked whenever a consumer is created,
//! so after every reconnection. A message delivered again (a consumer restarted
//! with its server) is not a loss: the subscriber starts over from its position.
//!
//! Bootstrap: while the index is loading, it becomes ready once everything the
//! stream held when the subscriber started is applied (a message at or past
//! that sequence, or nothing pending).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::DeliverPolicy, consumer::pull};
use fpnode_segments::{Batch, Change, MetadataDelta, Position};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;

use crate::handle::IndexHandle;
use crate::messages::BatcherMsg;
pub use crate::messages::SubscriberMsg;
use crate::replication::{Link, backoff, wait_to_retry};
use crate::stream::{
    Deliveries, FingerprintPayload, MetadataPayload, StreamSettings, Subject, decode_payload,
    index_filter, parse_subject,
};

/// Batches in flight between fetch and apply.
const CREDITS: u32 = 2;

pub struct StreamSubscriber;

pub struct SubscriberArgs {
    pub js: jetstream::Context,
    pub settings: StreamSettings,
    pub handle: Arc<IndexHandle>,
    pub max_batch: usize,
    pub wait: Duration,
    /// The node's NATS connection state: retries happen soon after it is back.
    pub link: Option<Arc<Link>>,
}

pub struct SubscriberState {
    args: SubscriberArgs,
    consumer: Option<jetstream::consumer::Consumer<pull::Config>>,
    /// The consumer's messages, pulled continuously (bounded by `max_batch`).
    messages: Option<pull::Stream>,
    /// Stream sequence of the last message fetched: what the next batch follows.
    after: u64,
    /// The consumer's deliveries so far: a hole means messages were lost.
    deliveries: Deliveries,
    credits: Arc<Semaphore>,
    /// Consecutive failures, for the backoff.
    failures: u32,
    epoch: u64,
    /// Stopped for good: the generation ended or the stream diverged.
    parked: bool,
    /// While loading: the stream's last sequence when the subscriber started.
    target: Option<u64>,
    /// The link's reconnect count when the consumer was created.
    created_at_reconnect: u64,
}

impl Actor for StreamSubscriber {
    type Msg = SubscriberMsg;
    type State = SubscriberState;
    type Arguments = SubscriberArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(SubscriberMsg::Poll(0))?;
        Ok(SubscriberState {
            args,
            consumer: None,
            messages: None,
            after: 0,
            deliveries: Deliveries::default(),
            credits: Arc::new(Semaphore::new(CREDITS as usize)),
            failures: 0,
            epoch: 0,
            parked: false,
            target: None,
            created_at_reconnect: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SubscriberMsg::Poll(epoch) if epoch != state.epoch || state.parked => {}
            SubscriberMsg::Poll(epoch) => match state.poll(&myself).await {
                Ok(()) if state.parked => {}
                Ok(()) => myself.cast(SubscriberMsg::Poll(epoch))?,
                Err(why) => state.reset(&myself, &why).await,
            },
            SubscriberMsg::InjectFailure => return Err("injected failure".into()),
            // Several batches may fail for one cause: reset once per consumer.
            SubscriberMsg::Failed(why) => {
                if state.consumer.is_some() {
                    state.reset(&myself, &why).await;
                }
            }
        }
        Ok(())
    }
}

impl SubscriberState {
    /// Waits for the batches in flight, drops the consumer, and polls again
    /// after a backoff from the index's applied position.
    async fn reset(&mut self, myself: &ActorRef<SubscriberMsg>, why: &str) {
        if let Ok(all) = self.credits.acquire_many(CREDITS).await {
            drop(all);
        }
        self.consumer = None;
        self.messages = None;
        self.failures += 1;
        let backoff = backoff(self.failures);
        tracing::warn!(index = %self.args.handle.name, %why, ?backoff, "stream subscriber resynchronising");
        metrics::counter!("fpnode_stream_errors_total").increment(1);
        self.epoch += 1;
        let (epoch, me, link) = (self.epoch, myself.clone(), self.args.link.clone());
        tokio::spawn(async move {
            wait_to_retry(link.as_deref(), backoff).await;
            let _ = me.cast(SubscriberMsg::Poll(epoch));
        });
    }

    /// Stops following for good, with the reason shown in `_status`.
    fn diverge(&mut self, why: String) {
        self.parked = true;
        self.consumer = None;
        self.messages = None;
        match &self.args.handle.replica {
            Some(replica) => replica.diverge(&self.args.handle.name, why),
            None => {
                tracing::error!(index = %self.args.handle.name, reason = %why, "index stopped following the stream")
            }
        }
    }

    fn loading(&self) -> bool {
        self.args.handle.is_loading()
    }

    async fn consumer(
        &mut self,
    ) -> Result<Option<&jetstream::consumer::Consumer<pull::Config>>, String> {
        let reconnects = self.args.link.as_ref().map_or(0, |l| l.reconnects());
        if self.consumer.is_some() && reconnects != self.created_at_reconnect {
            // The connection came back since this consumer was made: its
            // server may have restarted and forgotten our pull requests.
            // Continue after the last batch handed to the writer.
            tracing::info!(index = %self.args.handle.name, after = self.after, "NATS reconnected: new consumer");
            self.consumer = None;
            self.messages = None;
        }
        if self.consumer.is_none() {
            self.created_at_reconnect = reconnects;
            self.after = self.args.handle.version().0;
            let mut stream = self
                .args
                .js
                .get_stream(&self.args.settings.name)
                .await
                .map_err(|e| e.to_string())?;
            let last = stream
                .info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .last_sequence;
            if last < self.after {
                self.diverge(format!(
                    "the stream's last sequence is {last}, below this index's applied version {}: the stream lost acknowledged messages or was recreated",
                    self.after
                ));
                return Ok(None);
            }
            if self.loading() && self.target.is_none() {
                self.target = Some(last);
                self.args.handle.index.set_bulk_load(true);
            }
            let mut consumer = stream
                .create_consumer(pull::Config {
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: self.after + 1,
                    },
                    ack_policy: AckPolicy::None,
                    filter_subject: index_filter(
                        &self.args.settings.prefix,
                        &self.args.handle.name,
                    ),
                    inactive_threshold: Duration::from_secs(30),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            let pending = consumer
                .info()
                .await
                .map_err(|e| e.to_string())?
                .num_pending;
            tracing::debug!(index = %self.args.handle.name, start = self.after + 1, stream_last = last, pending, "consumer created");
            if let Some(replica) = &self.args.handle.replica {
                replica.fetched(pending);
            }
            if pending == 0 {
                self.loaded().await;
            }
            let messages = consumer
                .stream()
                .max_messages_per_batch(self.args.max_batch)
                .expires(Duration::from_secs(30))
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await
                .map_err(|e| e.to_string())?;
            self.consumer = Some(consumer);
            self.messages = Some(messages);
            self.deliveries.restart();
        }
        Ok(self.consumer.as_ref())
    }

    /// Everything the stream held at start is applied: the index is ready.
    async fn loaded(&mut self) {
        if !self.loading() {
            return;
        }
        // Batches still in flight must land first.
        if let Ok(all) = self.credits.acquire_many(CREDITS).await {
            drop(all);
        }
        if let Some(replica) = &self.args.handle.replica
            && self.args.handle.version().0 >= self.after
        {
            replica
                .loading
                .store(false, std::sync::atomic::Ordering::Release);
            self.args.handle.index.set_bulk_load(false);
            tracing::info!(index = %self.args.handle.name, version = self.after, "caught up with the stream");
        }
    }

    /// Fetches one batch and hands it to the writer without waiting for it.
    async fn poll(&mut self, myself: &ActorRef<SubscriberMsg>) -> Result<(), String> {
        let (max_batch, wait) = (self.args.max_batch, self.args.wait);
        let prefix = self.args.settings.prefix.clone();
        if self.consumer().await?.is_none() {
            return Ok(());
        }
        let permit = self
            .credits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let after = self.after;
        let (Some(messages), deliveries) = (self.messages.as_mut(), &mut self.deliveries) else {
            return Ok(());
        };
        let mut changes = Vec::new();
        let mut metadata = MetadataDelta::new();
        let mut last = 0u64;
        let mut count = 0;
        let mut pending = None;
        let mut generation_ended = false;
        let mut redelivered = None;
        let mut first = 0u64;
        // Wait up to `wait` for the first message, then take what follows (up
        // to `max_batch`): while the stream has more (a replay), waiting a
        // little for the next message keeps batches large; once nothing is
        // pending (following), only what already arrived, so a lone write is
        // applied at once.
        let mut next_wait = wait;
        while count < max_batch {
            let message = match tokio::time::timeout(next_wait, messages.next()).await {
                Err(_) => break,
                Ok(None) => return Err("the consumer's message stream ended".into()),
                Ok(Some(message)) => message.map_err(|e| e.to_string())?,
            };
            count += 1;
            let info = message.info().map_err(|e| e.to_string())?;
            // A hole: start over from the applied position (the batch built
            // so far is dropped and fetched again).
            deliveries.next(info.consumer_sequence)?;
            next_wait = if info.pending > 0 {
                Duration::from_millis(5)
            } else {
                Duration::ZERO
            };
            let seq = info.stream_sequence;
            if seq <= last.max(after) {
                // A consumer restarted with the server can deliver again what
                // it delivered before: start over from the applied position
                // (which also checks the stream did not lose anything).
                redelivered = Some(format!(
                    "the consumer delivered sequence {seq} after {}",
                    last.max(after)
                ));
                break;
            }
            pending = Some(info.pending);
            let subject = parse_subject(&prefix, &message.subject);
            if let Some(Subject::Index { .. }) = subject {
                // The generation ended here: apply what came before, stop.
                generation_ended = true;
                break;
            }
            if first == 0 {
                first = seq;
            }
            last = seq;
            match subject {
                Some(Subject::Fingerprint { id, .. }) => {
                    match FingerprintPayload::decode(&message.payload) {
                        Ok(FingerprintPayload { h: Some(hashes) }) => {
                            changes.push(Change::Insert { id, hashes })
                        }
                        Ok(FingerprintPayload { h: None }) => changes.push(Change::Delete { id }),
                        Err(e) => bad_message(&message.subject, seq, &e),
                    }
                }
                Some(Subject::Metadata { key, .. }) => {
                    match decode_payload::<MetadataPayload>(&message.payload) {
                        Ok(m) => {
                            metadata.insert(key, m.v);
                        }
                        Err(e) => bad_message(&message.subject, seq, &e),
                    }
                }
                _ => bad_message(&message.subject, seq, &"not an index subject"),
            }
        }
        if let Some(why) = redelivered {
            return Err(why);
        }
        if let (Some(replica), Some(pending)) = (&self.args.handle.replica, pending) {
            replica.fetched(pending);
        }
        if generation_ended {
            tracing::info!(index = %self.args.handle.name, "generation ended in the stream; waiting to be replaced");
            self.parked = true;
        }
        if last == 0 {
            drop(permit);
            if !generation_ended && self.loading() {
                let nothing_left = match pending {
                    Some(p) => p == 0,
                    // Nothing arrived within `wait`: a pause is no proof of
                    // being caught up; ask the server whether anything is
                    // left that it has not delivered to us.
                    None => match self.consumer.as_mut() {
                        Some(c) => {
                            let info = c.info().await.map_err(|e| e.to_string())?;
                            info.num_pending == 0 && info.delivered.stream_sequence <= self.after
                        }
                        None => false,
                    },
                };
                if nothing_left {
                    self.loaded().await;
                }
            }
            return Ok(());
        }
        let caught_up = pending == Some(0) || self.target.is_some_and(|t| last >= t);
        let batcher = self
            .args
            .handle
            .batcher()
            .ok_or_else(|| "index writer is restarting".to_string())?;
        let after = Position(self.after);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut batch = Batch::new(Position(last), changes);
        batch.metadata = metadata;
        batcher
            .cast(BatcherMsg::Apply(batch, after, tx.into()))
            .map_err(|e| e.to_string())?;
        tracing::debug!(index = %self.args.handle.name, after = self.after, first, last, count, "batch sent");
        self.after = last;
        self.failures = 0;
        let (me, handle) = (myself.clone(), self.args.handle.clone());
        tokio::spawn(async move {
            let outcome = rx.await;
            drop(permit);
            match outcome {
                Ok(Ok(_)) => {
                    if let Some(replica) = &handle.replica {
                        if caught_up {
                            replica
                                .loading
                                .store(false, std::sync::atomic::Ordering::Release);
                            handle.index.set_bulk_load(false);
                        }
                        replica.applied.notify_waiters();
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(index = %handle.name, last, error = %e, "batch refused");
                    let _ = me.cast(SubscriberMsg::Failed(e.to_string()));
                }
                Err(_) => {
                    let _ = me.cast(SubscriberMsg::Failed("index writer stopped".into()));
                }
            }
        });
        Ok(())
    }
}

fn bad_message(subject: &str, seq: u64, error: &dyn std::fmt::Display) {
    tracing::error!(subject, seq, error = %error, "skipping a message that is not an index state");
    metrics::counter!("fpnode_stream_bad_messages_total").increment(1);
}
