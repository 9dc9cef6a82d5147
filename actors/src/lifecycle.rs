//! LifecycleWatcher (replica mode): follows every index's lifecycle record
//! (`<prefix>.*._index`) and tells the IndexRegistry, which creates, replaces
//! or drops local indexes to match.
//!
//! Steps: (re)connects by checking the stream's settings (refusing a stream
//! that would lose data, with the reasons logged), then creates an ephemeral
//! pull consumer over all lifecycle subjects from the start of the stream. The
//! stream keeps only the latest record of each index, so the first messages are
//! the current state of every index; once none is pending the registry gets
//! `Reconciled` with the names seen (a local index the stream has no record of
//! means the stream lost data: that index stops following). After that each
//! new record is handed over as it arrives. Any failure drops the consumer and
//! starts over after a backoff with jitter (handling a record twice is
//! harmless: the registry compares generations).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy, pull};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::messages::RegistryMsg;
pub use crate::messages::WatcherMsg;
use crate::replication::{Replication, backoff, wait_to_retry};
use crate::stream::{
    Deliveries, IndexRecord, Subject, decode_payload, ensure_stream, parse_subject,
};

pub struct LifecycleWatcher;

pub struct WatcherArgs {
    pub replication: Arc<Replication>,
    pub registry: ActorRef<RegistryMsg>,
}

pub struct WatcherState {
    args: WatcherArgs,
    consumer: Option<Consumer<pull::Config>>,
    messages: Option<pull::Stream>,
    /// Names seen before the initial records were all delivered.
    seen: BTreeSet<String>,
    reconciled: bool,
    failures: u32,
    /// The consumer's deliveries so far: a hole means records were lost.
    deliveries: Deliveries,
    /// The link's reconnect count when the consumer was created.
    created_at_reconnect: u64,
    epoch: u64,
}

impl Actor for LifecycleWatcher {
    type Msg = WatcherMsg;
    type State = WatcherState;
    type Arguments = WatcherArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(WatcherMsg::Poll(0))?;
        Ok(WatcherState {
            args,
            consumer: None,
            messages: None,
            seen: BTreeSet::new(),
            reconciled: false,
            failures: 0,
            deliveries: Deliveries::default(),
            created_at_reconnect: 0,
            epoch: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let WatcherMsg::Poll(epoch) = msg;
        if epoch != state.epoch {
            return Ok(());
        }
        match state.poll().await {
            Ok(()) => myself.cast(WatcherMsg::Poll(epoch))?,
            Err(why) => {
                state.consumer = None;
                state.messages = None;
                state.failures += 1;
                let wait = backoff(state.failures);
                tracing::warn!(%why, ?wait, "lifecycle watcher resynchronising");
                metrics::counter!("fpnode_stream_errors_total").increment(1);
                state.epoch += 1;
                let (epoch, link) = (state.epoch, state.args.replication.link.clone());
                tokio::spawn(async move {
                    wait_to_retry(Some(&link), wait).await;
                    let _ = myself.cast(WatcherMsg::Poll(epoch));
                });
            }
        }
        Ok(())
    }
}

impl WatcherState {
    async fn poll(&mut self) -> Result<(), String> {
        let replication = self.args.replication.clone();
        let settings = replication.settings();
        let reconnects = replication.link.reconnects();
        if self.consumer.is_some() && reconnects != self.created_at_reconnect {
            // The connection came back: its server may have restarted and
            // lost our pull requests, or records sent just before (a hole
            // seen only at the next record). Start over from the stream's
            // start (records are handled idempotently).
            tracing::info!("NATS reconnected: new lifecycle consumer");
            self.consumer = None;
            self.messages = None;
        }
        if self.consumer.is_none() {
            self.created_at_reconnect = reconnects;
            let stream = ensure_stream(&replication.js, settings)
                .await
                .map_err(|e| e.to_string())?;
            let mut consumer = stream
                .create_consumer(pull::Config {
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::None,
                    filter_subject: format!("{}.*._index", settings.prefix),
                    inactive_threshold: Duration::from_secs(30),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())?;
            self.seen.clear();
            self.reconciled = false;
            self.deliveries.restart();
            let pending = consumer
                .info()
                .await
                .map_err(|e| e.to_string())?
                .num_pending;
            if pending == 0 {
                self.reconcile()?;
            }
            self.messages = Some(
                consumer
                    .stream()
                    .max_messages_per_batch(1000)
                    .expires(Duration::from_secs(30))
                    .heartbeat(Duration::from_secs(5))
                    .messages()
                    .await
                    .map_err(|e| e.to_string())?,
            );
            self.consumer = Some(consumer);
        }
        let Some(messages) = self.messages.as_mut() else {
            return Ok(());
        };
        // One record per poll, waiting at most `fetch_wait` (so the actor
        // stays responsive to stop requests).
        if let Ok(item) = tokio::time::timeout(replication.opts.fetch_wait, messages.next()).await {
            let message = item
                .ok_or("the consumer's message stream ended")?
                .map_err(|e| e.to_string())?;
            let info = message.info().map_err(|e| e.to_string())?;
            // A record lost in transit: start over from the stream's start.
            self.deliveries.next(info.consumer_sequence)?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            match (
                parse_subject(&settings.prefix, &message.subject),
                decode_payload::<IndexRecord>(&message.payload),
            ) {
                (Some(Subject::Index { index }), Ok(record)) => {
                    self.seen.insert(index.clone());
                    self.args
                        .registry
                        .cast(RegistryMsg::Record(index, record, seq))
                        .map_err(|e| e.to_string())?;
                }
                (_, record) => {
                    tracing::error!(subject = %message.subject, seq, ?record, "skipping an unreadable index record");
                    metrics::counter!("fpnode_stream_bad_messages_total").increment(1);
                }
            }
            if pending == 0 && !self.reconciled {
                self.reconcile()?;
            }
        }
        self.failures = 0;
        Ok(())
    }

    fn reconcile(&mut self) -> Result<(), String> {
        self.reconciled = true;
        self.args
            .registry
            .cast(RegistryMsg::Reconciled(std::mem::take(&mut self.seen)))
            .map_err(|e| e.to_string())
    }
}
