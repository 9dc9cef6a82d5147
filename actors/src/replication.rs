//! A node's link to the replication stream (replica and proxy modes): the NATS
//! connection and its state, and every write a node publishes
//! (docs/replication.md).
//!
//! Writes: an `_update` becomes one message per changed fingerprint
//! (`<prefix>.<index>.<id>`) and per metadata key (`<prefix>.<index>._m.k<hex>`),
//! sent as atomic batches of at most [`CHANGES_PER_BATCH`] messages, each
//! closed by a request marker (`<prefix>.~req.<hash>.<chunk>`) that expects its
//! subject to be empty and expires after the duplicate window. The hash is of
//! the index and the request's idempotency key, so a retry of the same request
//! (or the same request relayed by two gateways) fails the marker's
//! expectation and the whole batch is refused; the error names the first
//! attempt's marker, and the answer is the version that attempt produced.
//!
//! Lifecycle: `<prefix>.<index>._index` holds the index's latest
//! [`IndexRecord`]; creates and deletes are published with the sequence of the
//! record they replace as the subject's expected last sequence, so two racing
//! lifecycle changes cannot both win.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::OutboundMessage, stream::Stream};
use bytes::Bytes;
use fpnode_segments::Change;
use jetstream_extra::batch_publish::BatchPublishExt;
use sha2::{Digest, Sha256};

use crate::messages::{CreateIndex, RegistryError, WriteRequest};
use crate::stream::{
    FingerprintPayload, IndexRecord, MetadataPayload, PayloadError, StreamSettings, decode_payload,
    encode_payload, fingerprint_subject, index_filter, index_subject, marker_subject,
    metadata_subject,
};

/// Messages of one atomic batch that carry changes: the server takes at most
/// 1000 messages per batch, and the request marker is one of them.
pub const CHANGES_PER_BATCH: usize = 999;

const EXPECTED_LAST_SUBJECT_SEQ: &str = "Nats-Expected-Last-Subject-Sequence";
const EXPECTED_LAST_SUBJECT_SEQ_SUBJECT: &str = "Nats-Expected-Last-Subject-Sequence-Subject";

#[derive(Debug, Clone)]
pub struct ReplicationOptions {
    pub url: String,
    pub settings: StreamSettings,
    /// Messages per fetch of a StreamSubscriber.
    pub fetch_max: usize,
    /// How long a fetch waits for messages.
    pub fetch_wait: Duration,
    /// How long a write waits for JetStream's acknowledgement before `503`.
    pub publish_timeout: Duration,
    /// How long a write waits for this node to apply it (read-your-writes).
    pub apply_wait: Duration,
    /// Credentials and TLS for the NATS connection.
    pub auth: crate::nats_auth::NatsAuth,
}

impl Default for ReplicationOptions {
    fn default() -> Self {
        ReplicationOptions {
            url: "nats://127.0.0.1:4222".into(),
            settings: StreamSettings::default(),
            fetch_max: 16_000,
            fetch_wait: Duration::from_millis(500),
            publish_timeout: Duration::from_secs(2),
            apply_wait: Duration::from_secs(10),
            auth: crate::nats_auth::NatsAuth::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("expected version {expected} is not the index's version")]
    VersionMismatch { expected: u64 },
    #[error("{0}")]
    Conflict(RegistryError),
    #[error("stream unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Encode(#[from] PayloadError),
}

/// Whether the node is connected to NATS, and since when it is not.
#[derive(Debug)]
pub struct Link {
    disconnected_since: Mutex<Option<Instant>>,
    /// Woken when the connection comes (back) up.
    connected: tokio::sync::Notify,
    /// Times the connection came (back) up. A pull consumer does not survive
    /// a restart of its server unnoticed: its outstanding pull requests are
    /// gone, and the client only finds out when heartbeats go missing (10 s
    /// later). Subscribers compare this count with the one they created
    /// their consumer at, and create a new one at once when it moved.
    reconnects: std::sync::atomic::AtomicU64,
}

impl Link {
    fn set(&self, connected: bool) {
        let mut since = self
            .disconnected_since
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match (connected, *since) {
            (true, _) => {
                *since = None;
                self.reconnects
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                self.connected.notify_waiters();
            }
            (false, None) => *since = Some(Instant::now()),
            (false, Some(_)) => {}
        }
        metrics::gauge!("fpnode_nats_connected").set(if connected { 1.0 } else { 0.0 });
    }

    /// How many times the connection came (back) up.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(std::sync::atomic::Ordering::Acquire)
    }

    /// `None` while connected.
    pub fn disconnected_for(&self) -> Option<Duration> {
        self.disconnected_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }
}

/// The node's connection to the stream.
#[derive(Debug)]
pub struct Replication {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub opts: ReplicationOptions,
    pub link: Arc<Link>,
    stream: tokio::sync::Mutex<Option<Stream>>,
}

/// 100 ms doubling to 5 s, with up to 50% jitter so nodes do not retry in step.
pub fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1 << failures.min(6))
        .min(Duration::from_secs(5));
    base + base.mul_f64(jitter())
}

/// Waits `backoff` before a retry, or less while disconnected: when the
/// connection comes back, retries after a short jitter (so many indexes do
/// not all retry in the same instant), instead of sleeping out a backoff that
/// grew during the outage.
pub async fn wait_to_retry(link: Option<&Link>, backoff: Duration) {
    let Some(link) = link else {
        return tokio::time::sleep(backoff).await;
    };
    let reconnected = link.connected.notified();
    if link.disconnected_for().is_none() {
        return tokio::time::sleep(backoff).await;
    }
    tokio::select! {
        _ = reconnected => {
            tokio::time::sleep(Duration::from_millis(20).mul_f64(1.0 + 20.0 * jitter())).await;
        }
        _ = tokio::time::sleep(backoff) => {}
    }
}

/// A number in [0, 0.5) that differs between calls and processes.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from((nanos ^ std::process::id().wrapping_mul(2_654_435_761)) % 1000) / 2000.0
}

fn unavailable<E: std::fmt::Display>(e: E) -> PublishError {
    PublishError::Unavailable(e.to_string())
}

/// The sequence named by a JetStream "wrong last sequence: N" refusal.
fn wrong_last_sequence(error: &str) -> Option<u64> {
    let rest = &error[error.find("wrong last sequence: ")? + "wrong last sequence: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `nats://a:4222,nats://b:4222`: every server of a cluster (the client also
/// learns the others from the one it reaches).
fn servers(urls: &str) -> Result<Vec<async_nats::ServerAddr>, PublishError> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| PublishError::Unavailable(format!("bad NATS URL {u:?}: {e}")))
        })
        .collect()
}

/// Hex of the first 16 bytes of SHA-256(index, 0, key).
pub fn request_hash(index: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(index.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A key for a request that came without an `Idempotency-Key`: unique, so the
/// node's own retries are deduplicated but two separate requests never are.
pub fn fresh_request_key() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("fpnode:{}:{t}:{n}", std::process::id())
}

impl Replication {
    /// Connects to NATS. Returns at once even if the server is down: the
    /// client keeps reconnecting (backoff with jitter) and the node serves its
    /// local data meanwhile.
    pub async fn connect(opts: ReplicationOptions) -> Result<Arc<Replication>, PublishError> {
        let link = Arc::new(Link {
            disconnected_since: Mutex::new(Some(Instant::now())),
            connected: tokio::sync::Notify::new(),
            reconnects: std::sync::atomic::AtomicU64::new(0),
        });
        let events = link.clone();
        let base = opts
            .auth
            .apply(async_nats::ConnectOptions::new())
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        let client = base
            .name("fpnode")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            // 100 ms doubling to 2 s, with jitter: back within ~3 s of the
            // server's return, without a reconnect storm.
            .reconnect_delay_callback(|attempts| {
                backoff(attempts as u32).min(Duration::from_secs(2).mul_f64(1.0 + jitter()))
            })
            .event_callback(move |event| {
                let link = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("connected to NATS");
                            link.set(true);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            tracing::warn!("disconnected from NATS");
                            link.set(false);
                        }
                        // Refused credentials and the like: say so loudly,
                        // the client keeps retrying.
                        async_nats::Event::ServerError(e) => {
                            tracing::error!(error = %e, "NATS server error")
                        }
                        async_nats::Event::ClientError(e) => {
                            tracing::warn!(error = %e, "NATS client error")
                        }
                        other => tracing::debug!(event = %other, "NATS event"),
                    }
                }
            })
            .connect(servers(&opts.url)?)
            .await
            .map_err(unavailable)?;
        if client.connection_state() == async_nats::connection::State::Connected {
            link.set(true);
        }
        let js = jetstream::new(client.clone());
        Ok(Arc::new(Replication {
            client,
            js,
            opts,
            link,
            stream: tokio::sync::Mutex::new(None),
        }))
    }

    pub fn settings(&self) -> &StreamSettings {
        &self.opts.settings
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Fails fast while disconnected, so writes answer `503` at once instead of
    /// queueing behind a dead connection.
    fn check_connected(&self) -> Result<(), PublishError> {
        if self.is_connected() {
            return Ok(());
        }
        let since = self.link.disconnected_for().unwrap_or_default();
        Err(PublishError::Unavailable(format!(
            "not connected to NATS (for {} ms)",
            since.as_millis()
        )))
    }

    /// The stream handle, looked up once.
    pub async fn stream(&self) -> Result<Stream, PublishError> {
        let mut cached = self.stream.lock().await;
        if let Some(s) = cached.as_ref() {
            return Ok(s.clone());
        }
        let s = tokio::time::timeout(
            self.opts.publish_timeout,
            self.js.get_stream(&self.opts.settings.name),
        )
        .await
        .map_err(|_| PublishError::Unavailable("JetStream did not answer".into()))?
        .map_err(unavailable)?;
        *cached = Some(s.clone());
        Ok(s)
    }

    /// The sequence of the last message on `subject`, if any.
    async fn last_on(&self, subject: &str) -> Result<Option<(u64, Bytes)>, PublishError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let stream = self.stream().await?;
        match tokio::time::timeout(
            self.opts.publish_timeout,
            stream.direct_get_last_for_subject(subject),
        )
        .await
        {
            Err(_) => Err(PublishError::Unavailable("JetStream did not answer".into())),
            Ok(Ok(m)) => Ok(Some((m.sequence, m.payload))),
            Ok(Err(e)) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Ok(Err(e)) => Err(unavailable(e)),
        }
    }

    /// The index's latest lifecycle record and its sequence.
    pub async fn index_record(
        &self,
        index: &str,
    ) -> Result<Option<(IndexRecord, u64)>, PublishError> {
        let subject = index_subject(&self.opts.settings.prefix, index);
        match self.last_on(&subject).await? {
            None => Ok(None),
            Some((seq, payload)) => {
                let record = decode_payload::<IndexRecord>(&payload).map_err(|e| {
                    PublishError::Unavailable(format!("record on {subject} is unreadable: {e}"))
                })?;
                Ok(Some((record, seq)))
            }
        }
    }

    /// Publishes a write; answers the stream sequence of its last change (the
    /// index's version once applied), or `None` if there was nothing to write.
    pub async fn publish_update(
        &self,
        index: &str,
        request: &WriteRequest,
        key: &str,
    ) -> Result<Option<u64>, PublishError> {
        self.check_connected()?;
        let prefix = &self.opts.settings.prefix;
        let mut latest: BTreeMap<u32, &Change> = BTreeMap::new();
        for change in &request.changes {
            latest.insert(change.id(), change);
        }
        let mut messages: Vec<(String, Bytes)> = latest
            .into_iter()
            .map(|(id, change)| {
                let payload = match change {
                    Change::Insert { hashes, .. } => FingerprintPayload::insert(hashes.clone()),
                    Change::Delete { .. } => FingerprintPayload::delete(),
                };
                Ok((fingerprint_subject(prefix, index, id), payload.encode()?))
            })
            .collect::<Result<_, PayloadError>>()?;
        for (key, value) in &request.metadata {
            messages.push((
                metadata_subject(prefix, index, key),
                encode_payload(&MetadataPayload { v: value.clone() })?,
            ));
        }
        if messages.is_empty() {
            return Ok(None);
        }
        let hash = request_hash(index, key);
        let mut version = 0;
        for (n, chunk) in messages.chunks(CHANGES_PER_BATCH).enumerate() {
            let marker = marker_subject(prefix, &hash, n);
            let expected = if n == 0 {
                request.expected_version
            } else {
                None
            };
            let started = Instant::now();
            let result = tokio::time::timeout(
                self.opts.publish_timeout,
                self.publish_chunk(index, chunk, &marker, expected),
            )
            .await;
            metrics::histogram!("fpnode_publish_seconds").record(started.elapsed().as_secs_f64());
            version = match result {
                Err(_) => {
                    return Err(PublishError::Unavailable(format!(
                        "JetStream did not acknowledge within {} ms",
                        self.opts.publish_timeout.as_millis()
                    )));
                }
                Ok(Ok(marker_seq)) => marker_seq - 1,
                Ok(Err(e)) => {
                    let Some(seq) = wrong_last_sequence(&e) else {
                        return Err(PublishError::Unavailable(e));
                    };
                    // Refused by the marker (a retry: answer what the first
                    // attempt produced) or by expected_version.
                    match expected {
                        None => seq - 1,
                        Some(expected) => match self.last_on(&marker).await? {
                            Some((marker_seq, _)) => marker_seq - 1,
                            None => return Err(PublishError::VersionMismatch { expected }),
                        },
                    }
                }
            };
        }
        Ok(Some(version))
    }

    /// One atomic batch: the changes, then the marker. Answers the marker's sequence.
    async fn publish_chunk(
        &self,
        index: &str,
        chunk: &[(String, Bytes)],
        marker: &str,
        expected: Option<u64>,
    ) -> Result<u64, String> {
        let mut batch = self
            .js
            .batch_publish()
            .timeout(self.opts.publish_timeout)
            // Flow control is not needed for <= 1000 messages; skipping the
            // first message's acknowledgement saves a round trip per write.
            .ack_first(false)
            .build();
        for (i, (subject, payload)) in chunk.iter().enumerate() {
            let headers = match expected {
                Some(v) if i == 0 => {
                    let mut h = HeaderMap::new();
                    h.insert(EXPECTED_LAST_SUBJECT_SEQ, v.to_string().as_str());
                    h.insert(
                        EXPECTED_LAST_SUBJECT_SEQ_SUBJECT,
                        index_filter(&self.opts.settings.prefix, index).as_str(),
                    );
                    Some(h)
                }
                _ => None,
            };
            batch
                .add_message(OutboundMessage::new(
                    subject.clone().into(),
                    payload.clone(),
                    headers,
                ))
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut h = HeaderMap::new();
        h.insert(EXPECTED_LAST_SUBJECT_SEQ, "0");
        h.insert(
            "Nats-TTL",
            format!("{}s", self.opts.settings.duplicate_window.as_secs().max(1)).as_str(),
        );
        let ack = batch
            .commit_message(OutboundMessage::new(
                marker.to_string().into(),
                Bytes::new(),
                Some(h),
            ))
            .await
            .map_err(|e| e.to_string())?;
        Ok(ack.sequence)
    }

    /// Publishes `record` on the index's lifecycle subject if its last record
    /// is still the one at `expected` (0: none). `Ok(None)` if another change
    /// got there first.
    async fn publish_record(
        &self,
        index: &str,
        record: IndexRecord,
        expected: u64,
    ) -> Result<Option<u64>, PublishError> {
        let mut h = HeaderMap::new();
        h.insert(EXPECTED_LAST_SUBJECT_SEQ, expected.to_string().as_str());
        let subject = index_subject(&self.opts.settings.prefix, index);
        let payload = encode_payload(&record)?;
        let publish = async {
            self.js
                .publish_with_headers(subject, h, payload)
                .await?
                .await
        };
        match tokio::time::timeout(self.opts.publish_timeout, publish).await {
            Err(_) => Err(PublishError::Unavailable(
                "JetStream did not acknowledge in time".into(),
            )),
            Ok(Ok(ack)) => Ok(Some(ack.sequence)),
            Ok(Err(e)) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(None)
            }
            Ok(Err(e)) => Err(unavailable(e)),
        }
    }

    /// Removes the index's messages before `sequence` (older generations).
    /// Storage only: replicas never read them either way.
    async fn purge_before(&self, index: &str, sequence: u64) {
        // JetStream reads a purge below sequence 0 or 1 as "no limit" and would
        // remove the record itself (tests/stream.rs); nothing is below it anyway.
        if sequence <= 1 {
            return;
        }
        let filter = index_filter(&self.opts.settings.prefix, index);
        let result = match self.stream().await {
            Ok(stream) => stream
                .purge()
                .filter(filter)
                .sequence(sequence)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(index, error = %e, "could not purge an old generation's messages");
        }
    }

    /// `PUT /:index`: the index's generation and the sequence it starts at,
    /// creating it (a new record) if it does not exist.
    pub async fn publish_create(
        &self,
        index: &str,
        req: &CreateIndex,
    ) -> Result<(IndexRecord, u64), PublishError> {
        self.check_connected()?;
        for _ in 0..10 {
            let current = self.index_record(index).await?;
            if let Some((record, seq)) = current
                && !record.d
            {
                if req.expect_does_not_exist {
                    return Err(PublishError::Conflict(RegistryError::IndexAlreadyExists));
                }
                return match req.generation {
                    Some(g) if g < record.g => Err(PublishError::Conflict(
                        RegistryError::OlderIndexAlreadyExists,
                    )),
                    Some(g) if g > record.g => Err(PublishError::Conflict(
                        RegistryError::NewerIndexAlreadyExists,
                    )),
                    _ => Ok((record, seq)),
                };
            }
            let last = current.map_or(0, |(r, _)| r.g);
            let g = match req.generation {
                Some(g) if g <= last => {
                    return Err(PublishError::Conflict(
                        RegistryError::OlderIndexAlreadyExists,
                    ));
                }
                Some(g) => g,
                None => last + 1,
            };
            let record = IndexRecord { g, d: false };
            if let Some(seq) = self
                .publish_record(index, record, current.map_or(0, |(_, s)| s))
                .await?
            {
                self.purge_before(index, seq).await;
                return Ok((record, seq));
            }
        }
        Err(PublishError::Unavailable(
            "the index's record kept changing".into(),
        ))
    }

    /// `DELETE /:index`: the generation deleted, `None` if there was no index.
    pub async fn publish_delete(&self, index: &str) -> Result<Option<u64>, PublishError> {
        self.check_connected()?;
        for _ in 0..10 {
            let current = self.index_record(index).await?;
            tracing::debug!(index, ?current, "deleting: current index record");
            let Some((record, seq)) = current else {
                return Ok(None);
            };
            if record.d {
                return Ok(None);
            }
            let deleted = IndexRecord {
                g: record.g,
                d: true,
            };
            let published = self.publish_record(index, deleted, seq).await;
            tracing::debug!(index, ?published, "deleting: published the delete record");
            if let Some(seq) = published? {
                self.purge_before(index, seq).await;
                return Ok(Some(record.g));
            }
        }
        Err(PublishError::Unavailable(
            "the index's record kept changing".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_sequence_is_read_from_the_error() {
        assert_eq!(
            wrong_last_sequence("batch failed: wrong last sequence: 42 (10071)"),
            Some(42)
        );
        assert_eq!(wrong_last_sequence("timed out"), None);
    }

    #[test]
    fn server_lists_are_split_and_checked() {
        assert_eq!(servers("nats://a:1, nats://b:2,").map(|v| v.len()), Ok(2));
        assert!(servers("nats://a:1,http://[::1").is_err());
    }

    #[test]
    fn request_hashes_depend_on_index_and_key() {
        let a = request_hash("main", "k1");
        assert_eq!(a.len(), 32);
        assert_eq!(a, request_hash("main", "k1"));
        assert_ne!(a, request_hash("main", "k2"));
        assert_ne!(a, request_hash("other", "k1"));
        assert_ne!(fresh_request_key(), fresh_request_key());
    }
}
