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

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::DeliverPolicy, consumer::pull};
use fpnode_segments::{Batch, Change, Position};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;

use crate::handle::IndexHandle;
use crate::index_writer::WriterMsg;
use crate::stream::{FingerprintPayload, StreamSettings, Subject, parse_subject};

/// Batches in flight between fetch and apply.
const CREDITS: u32 = 2;

pub enum SubscriberMsg {
    /// Fetch the next batch. Carries the epoch it was sent in: a reset starts a
    /// new epoch, and polls of an older one are ignored (one poll chain only).
    Poll(u64),
    /// A batch handed to the writer failed: resynchronise from the index.
    Failed(String),
}

pub struct StreamSubscriber;

pub struct SubscriberArgs {
    pub js: jetstream::Context,
    pub settings: StreamSettings,
    pub handle: Arc<IndexHandle>,
    pub max_batch: usize,
    pub wait: Duration,
}

pub struct SubscriberState {
    args: SubscriberArgs,
    consumer: Option<jetstream::consumer::Consumer<pull::Config>>,
    /// Stream sequence of the last message fetched: what the next batch follows.
    after: u64,
    credits: Arc<Semaphore>,
    /// Consecutive failures, for the backoff.
    failures: u32,
    epoch: u64,
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
            after: 0,
            credits: Arc::new(Semaphore::new(CREDITS as usize)),
            failures: 0,
            epoch: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SubscriberMsg::Poll(epoch) if epoch != state.epoch => {}
            SubscriberMsg::Poll(epoch) => match state.poll(&myself).await {
                Ok(()) => myself.cast(SubscriberMsg::Poll(epoch))?,
                Err(why) => state.reset(&myself, &why).await,
            },
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

/// 100 ms doubling to 5 s, with up to 50% jitter so replicas do not retry in step.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(5));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

impl SubscriberState {
    /// Waits for the batches in flight, drops the consumer, and polls again
    /// after a backoff from the index's applied position.
    async fn reset(&mut self, myself: &ActorRef<SubscriberMsg>, why: &str) {
        if let Ok(all) = self.credits.acquire_many(CREDITS).await {
            drop(all);
        }
        self.consumer = None;
        self.failures += 1;
        let backoff = backoff(self.failures);
        tracing::warn!(index = %self.args.handle.name, %why, ?backoff, "stream subscriber resynchronising");
        metrics::counter!("fpnode_stream_errors_total").increment(1);
        self.epoch += 1;
        let epoch = self.epoch;
        myself.send_after(backoff, move || SubscriberMsg::Poll(epoch));
    }

    async fn consumer(&mut self) -> Result<&jetstream::consumer::Consumer<pull::Config>, String> {
        if self.consumer.is_none() {
            self.after = self.args.handle.version().0;
            let stream = self
                .args
                .js
                .get_stream(&self.args.settings.name)
                .await
                .map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(pull::Config {
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: self.after + 1,
                    },
                    ack_policy: AckPolicy::None,
                    filter_subject: format!(
                        "{}.{}.*",
                        self.args.settings.prefix, self.args.handle.name
                    ),
                    inactive_threshold: Duration::from_secs(30),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            self.consumer = Some(consumer);
        }
        self.consumer
            .as_ref()
            .ok_or_else(|| "no consumer".to_string())
    }

    /// Fetches one batch and hands it to the writer without waiting for it.
    async fn poll(&mut self, myself: &ActorRef<SubscriberMsg>) -> Result<(), String> {
        let permit = self
            .credits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (max_batch, wait) = (self.args.max_batch, self.args.wait);
        let prefix = self.args.settings.prefix.clone();
        let consumer = self.consumer().await?;
        let mut messages = consumer
            .batch()
            .max_messages(max_batch)
            .expires(wait)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut changes = Vec::new();
        let mut last = 0u64;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|e| e.to_string())?;
            let seq = message.info().map_err(|e| e.to_string())?.stream_sequence;
            last = last.max(seq);
            // Only fingerprint subjects carry changes; the `_index` lifecycle
            // subject is the registry's business (replica lifecycle: issue #4).
            let Some(Subject::Fingerprint { id, .. }) = parse_subject(&prefix, &message.subject)
            else {
                continue;
            };
            match FingerprintPayload::decode(&message.payload) {
                Ok(FingerprintPayload { h: Some(hashes) }) => {
                    changes.push(Change::Insert { id, hashes })
                }
                Ok(FingerprintPayload { h: None }) => changes.push(Change::Delete { id }),
                Err(e) => {
                    tracing::error!(subject = %message.subject, seq, error = %e, "skipping a message that is not a fingerprint state");
                    metrics::counter!("fpnode_stream_bad_messages_total").increment(1);
                }
            }
        }
        if last == 0 {
            return Ok(());
        }
        let writer = self
            .args
            .handle
            .writer()
            .ok_or_else(|| "index writer is restarting".to_string())?;
        let after = Position(self.after);
        let (tx, rx) = tokio::sync::oneshot::channel();
        writer
            .cast(WriterMsg::Apply(
                Batch::new(Position(last), changes),
                after,
                tx.into(),
            ))
            .map_err(|e| e.to_string())?;
        self.after = last;
        self.failures = 0;
        let (me, name) = (myself.clone(), self.args.handle.name.clone());
        tokio::spawn(async move {
            let outcome = rx.await;
            drop(permit);
            match outcome {
                Ok(Ok(applied)) => {
                    metrics::gauge!("fpnode_stream_applied_sequence", "index" => name)
                        .set(applied.0 as f64);
                }
                Ok(Err(e)) => {
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
