//! A replica's change feed read back from the stream (docs/api.md, "Change
//! feeds on replicas").
//!
//! A replica logs what it applies after its bootstrap; what the bootstrap
//! replayed (applied without its WAL) or what its WAL no longer retains is
//! still in the stream, which keeps the latest message of every fingerprint
//! subject. So a feed asked for a `since` older than the replica's own log
//! reads the index's fingerprint subjects from the stream, from `since` + 1
//! up to where the log starts, then goes on from the log. Compaction shapes
//! what it yields: the latest state of every fingerprint changed after
//! `since`, at the sequence of that state; states a later message replaced
//! are gone (CouchDB's rule). Nothing is missed: a fingerprint whose latest
//! message lies past the log's start is in the log.
//!
//! A generation's data is every message after its create record, so a
//! `since` of 0 starts at that record and a `since` between 0 and it belongs
//! to an older generation (the reader must resync). Meeting a lifecycle
//! record while reading means the generation ended.
//!
//! Each reader has its own ordered consumer (ephemeral, in memory, no acks;
//! the client library recreates it from the last sequence on a gap), made
//! when a read starts and dropped once the range is read.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
};
use fpnode_segments::{Batch, Change, Position};
use futures::StreamExt;

use crate::stream::{
    FingerprintPayload, IndexRecord, StreamSettings, Subject, decode_payload, fingerprints_filter,
    index_subject, parse_subject,
};

/// How long a read waits for the stream's next message it knows is there.
const MESSAGE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StreamFeedError {
    /// NATS or the stream cannot be reached or answered oddly; the reader
    /// may retry from its last version.
    #[error("the stream cannot be read: {0}")]
    Unavailable(String),
    /// The index's generation ended in the stream (deleted, or deleted and
    /// created again).
    #[error("the index's generation ended in the stream")]
    GenerationEnded,
}

fn unavailable(e: impl std::fmt::Display) -> StreamFeedError {
    StreamFeedError::Unavailable(e.to_string())
}

/// What one read yields.
#[derive(Debug)]
pub struct StreamPage {
    /// The changes read, as one batch at the sequence of the last message
    /// read; `None` if none.
    pub batch: Option<Batch>,
    /// Where the reader goes on: the last sequence read, or `until` once the
    /// stream holds nothing more of the index up to it.
    pub cursor: u64,
}

/// One reader of one index's fingerprint subjects in the stream.
pub struct StreamFeed {
    js: jetstream::Context,
    settings: StreamSettings,
    index: String,
    generation: u64,
    /// The open consumer's messages and the sequence the next one follows.
    /// (In a mutex only to be `Sync`, as a feed held by an HTTP response
    /// must be: a read takes it out by value.)
    reader: Option<(std::sync::Mutex<pull::Ordered>, u64)>,
}

impl StreamFeed {
    pub fn new(
        js: jetstream::Context,
        settings: StreamSettings,
        index: String,
        generation: u64,
    ) -> StreamFeed {
        StreamFeed {
            js,
            settings,
            index,
            generation,
            reader: None,
        }
    }

    /// The stream sequence of this generation's create record: its data is
    /// every message of the index after it.
    pub async fn generation_start(&self) -> Result<u64, StreamFeedError> {
        let stream = self
            .js
            .get_stream_no_info(&self.settings.name)
            .await
            .map_err(unavailable)?;
        let subject = index_subject(&self.settings.prefix, &self.index);
        let last = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .map_err(unavailable)?;
        let record: IndexRecord = decode_payload(&last.payload).map_err(unavailable)?;
        if record.g != self.generation || record.d {
            return Err(StreamFeedError::GenerationEnded);
        }
        Ok(last.sequence)
    }

    /// The index's changes in the stream after `after` and up to `until`,
    /// at most `limit` of them. `after` must be at or past the generation's
    /// start ([`StreamFeed::generation_start`]).
    pub async fn page(
        &mut self,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<StreamPage, StreamFeedError> {
        if after >= until {
            return Ok(StreamPage {
                batch: None,
                cursor: after,
            });
        }
        let mut messages = match self.reader.take() {
            Some((messages, at)) if at == after => {
                messages.into_inner().unwrap_or_else(|e| e.into_inner())
            }
            _ => match self.open(after).await? {
                Some(messages) => messages,
                None => {
                    return Ok(StreamPage {
                        batch: None,
                        cursor: until,
                    });
                }
            },
        };
        let prefix = self.settings.prefix.clone();
        let mut changes = Vec::new();
        let mut cursor = after;
        let mut read = 0;
        let done = loop {
            if read >= limit.max(1) {
                break false;
            }
            let message = match tokio::time::timeout(MESSAGE_WAIT, messages.next()).await {
                Err(_) => return Err(unavailable("no message from the stream")),
                Ok(None) => return Err(unavailable("the consumer ended")),
                Ok(Some(m)) => m.map_err(unavailable)?,
            };
            let info = message.info().map_err(unavailable)?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            if seq > until {
                // The log has it (and whatever follows).
                break true;
            }
            if seq <= cursor {
                return Err(unavailable(format!(
                    "sequence {seq} after {cursor}: the stream went back"
                )));
            }
            match parse_subject(&prefix, &message.subject) {
                Some(Subject::Fingerprint { id, .. }) => {
                    match decode_payload::<FingerprintPayload>(&message.payload) {
                        Ok(FingerprintPayload { h: Some(hashes) }) => {
                            changes.push(Change::Insert { id, hashes })
                        }
                        Ok(FingerprintPayload { h: None }) => changes.push(Change::Delete { id }),
                        // As the subscriber does: counted, skipped.
                        Err(_) => {
                            metrics::counter!("fpnode_stream_bad_messages_total").increment(1)
                        }
                    }
                }
                Some(Subject::Index { .. }) => return Err(StreamFeedError::GenerationEnded),
                Some(Subject::Metadata { .. }) | None => {}
            }
            cursor = seq;
            read += 1;
            if pending == 0 {
                // Nothing more of the index in the stream now; what comes
                // next lies past `until`.
                break true;
            }
        };
        metrics::counter!("fpnode_change_feed_stream_reads_total").increment(1);
        let batch = (!changes.is_empty()).then(|| Batch::new(Position(cursor), changes));
        if done {
            return Ok(StreamPage {
                batch,
                cursor: until,
            });
        }
        self.reader = Some((std::sync::Mutex::new(messages), cursor));
        Ok(StreamPage { batch, cursor })
    }

    /// A consumer of the index's fingerprints after `after`; `None` if the
    /// stream holds none.
    async fn open(&self, after: u64) -> Result<Option<pull::Ordered>, StreamFeedError> {
        let stream = self
            .js
            .get_stream_no_info(&self.settings.name)
            .await
            .map_err(unavailable)?;
        let mut consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after + 1,
                },
                filter_subject: fingerprints_filter(&self.settings.prefix, &self.index),
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let pending = consumer.info().await.map_err(unavailable)?.num_pending;
        if pending == 0 {
            return Ok(None);
        }
        consumer.messages().await.map(Some).map_err(unavailable)
    }
}
