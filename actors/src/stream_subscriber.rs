//! StreamSubscriber (replica mode): follows one index's fingerprint subjects in
//! the stream and hands them to the IndexWriter as numbered batches.
//!
//! Steps: on `Poll`, make sure a pull consumer exists, starting at the index's
//! applied position + 1 (an ephemeral consumer without acks: correctness never
//! depends on server-side state); fetch up to `max_batch` messages (waiting up
//! to `wait`); turn them into one batch whose position is the stream sequence of
//! its last message; send it to the writer and wait for it to be applied (the
//! one batch in flight is the subscriber's credit: memory stays bounded however
//! far behind it is); poll again.
//!
//! Failure: NATS errors drop the consumer and retry after a backoff with jitter,
//! resuming from the applied position; a message that is not a fingerprint
//! state is counted and skipped (the position still advances past it).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::DeliverPolicy, consumer::pull};
use fpnode_segments::{Batch, Change, Position};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::handle::IndexHandle;
use crate::index_writer::WriterMsg;
use crate::stream::{FingerprintPayload, StreamSettings, Subject, parse_subject};

pub enum SubscriberMsg {
    Poll,
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
    failures: u32,
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
        myself.cast(SubscriberMsg::Poll)?;
        Ok(SubscriberState {
            args,
            consumer: None,
            failures: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SubscriberMsg::Poll => match state.poll().await {
                Ok(()) => {
                    state.failures = 0;
                    myself.cast(SubscriberMsg::Poll)?;
                }
                Err(why) => {
                    state.consumer = None;
                    state.failures += 1;
                    let backoff = backoff(state.failures);
                    tracing::warn!(index = %state.args.handle.name, %why, ?backoff, "stream subscriber retrying");
                    metrics::counter!("fpnode_stream_errors_total").increment(1);
                    myself.send_after(backoff, || SubscriberMsg::Poll);
                }
            },
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
    async fn consumer(&mut self) -> Result<&jetstream::consumer::Consumer<pull::Config>, String> {
        if self.consumer.is_none() {
            let start = self.args.handle.version().0 + 1;
            let stream = self
                .args
                .js
                .get_stream(&self.args.settings.name)
                .await
                .map_err(|e| e.to_string())?;
            let consumer = stream
                .create_consumer(pull::Config {
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: start,
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

    /// Fetches one batch and waits until the writer applied it.
    async fn poll(&mut self) -> Result<(), String> {
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
        let batch = Batch::new(Position(last), changes);
        let applied = ractor::call!(writer, WriterMsg::Apply, batch)
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        metrics::gauge!("fpnode_stream_applied_sequence", "index" => self.args.handle.name.clone())
            .set(applied.0 as f64);
        Ok(())
    }
}
