//! The replication stream's vocabulary (docs/replication.md): subjects, payloads and
//! the stream's settings, including the check that refuses a stream whose
//! settings would lose data.
//!
//! Subjects: `<prefix>.<index>.<id as 8 lowercase hex digits>` carries a
//! fingerprint's state; `<prefix>.<index>._index` carries the index's lifecycle
//! (generation, metadata). Index names are `[A-Za-z0-9_-]{1,255}` (no dots), so
//! every valid fpindex name is one subject token, and `_index` can never be
//! mistaken for an id (ids are exactly 8 hex digits).
//!
//! Payloads (MessagePack): `{"h": [u32, ...]}` sets the fingerprint's hashes,
//! `{}` deletes it (a tombstone). With `max_msgs_per_subject = 1` the stream keeps
//! the latest state of every fingerprint, so replaying it rebuilds the corpus.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use fpnode_segments::catalog::valid_index_name;

pub const DEFAULT_STREAM: &str = "fpindex";
pub const DEFAULT_PREFIX: &str = "fpindex";
const INDEX_TOKEN: &str = "_index";
const METADATA_TOKEN: &str = "_m";
/// Request markers live under a token that is not a valid index name, so they
/// are outside every index's subjects (and never move an index's version).
const MARKER_TOKEN: &str = "~req";

/// Where an index's data lives in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    Fingerprint { index: String, id: u32 },
    Index { index: String },
    Metadata { index: String, key: String },
}

/// `<prefix>.<index>._m.k<key as hex>`: one subject per metadata key, so the
/// stream keeps the latest value of each key.
pub fn metadata_subject(prefix: &str, index: &str, key: &str) -> String {
    let mut s = format!("{prefix}.{index}.{METADATA_TOKEN}.k");
    for b in key.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `<prefix>.~req.<hash>.<chunk>`: the request marker of chunk `chunk` of the
/// write whose idempotency key hashes to `hash`.
pub fn marker_subject(prefix: &str, hash: &str, chunk: usize) -> String {
    format!("{prefix}.{MARKER_TOKEN}.{hash}.{chunk}")
}

fn decode_hex_key(token: &str) -> Option<String> {
    let hex = token.strip_prefix('k')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

pub fn fingerprint_subject(prefix: &str, index: &str, id: u32) -> String {
    format!("{prefix}.{index}.{id:08x}")
}

pub fn index_subject(prefix: &str, index: &str) -> String {
    format!("{prefix}.{index}.{INDEX_TOKEN}")
}

/// Filter matching an index's fingerprints and its lifecycle record (one
/// token after the index: not its metadata, `_m.k...`).
pub fn fingerprints_filter(prefix: &str, index: &str) -> String {
    format!("{prefix}.{index}.*")
}

/// Filter matching every message of one index.
pub fn index_filter(prefix: &str, index: &str) -> String {
    format!("{prefix}.{index}.>")
}

/// Parses a subject of the stream; `None` for anything that is not ours.
pub fn parse_subject(prefix: &str, subject: &str) -> Option<Subject> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (index, token) = rest.split_once('.')?;
    if !valid_index_name(index) {
        return None;
    }
    if token == INDEX_TOKEN {
        return Some(Subject::Index {
            index: index.to_string(),
        });
    }
    if let Some(key) = token
        .strip_prefix(METADATA_TOKEN)
        .and_then(|t| t.strip_prefix('.'))
    {
        return Some(Subject::Metadata {
            index: index.to_string(),
            key: decode_hex_key(key)?,
        });
    }
    if token.len() != 8
        || !token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let id = u32::from_str_radix(token, 16).ok().filter(|&id| id != 0)?;
    Some(Subject::Fingerprint {
        index: index.to_string(),
        id,
    })
}

/// A fingerprint message: `{"h": [...]}` or `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintPayload {
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "hashes")]
    pub h: Option<Vec<u32>>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("payload {0}")]
pub struct PayloadError(String);

impl FingerprintPayload {
    pub fn insert(hashes: Vec<u32>) -> Self {
        FingerprintPayload { h: Some(hashes) }
    }

    pub fn delete() -> Self {
        FingerprintPayload { h: None }
    }

    pub fn encode(&self) -> Result<Bytes, PayloadError> {
        encode_payload(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        decode_payload(bytes)
    }
}

/// A metadata message: `{"v": "value"}` sets the key, `{}` removes it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataPayload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v: Option<String>,
}

/// The index's lifecycle record on `<prefix>.<index>._index`: `{"g": 3}` says
/// generation 3 exists and its data is every message of the index after this
/// record's sequence; `{"g": 3, "d": true}` says generation 3 was deleted. The
/// subject keeps only the latest record, so the last generation is never
/// forgotten and a later create always mints a newer one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRecord {
    pub g: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub d: bool,
}

/// Encodes a payload struct as a MessagePack map. A failure is an error,
/// never a fallback: an empty map is what a replica reads as a delete.
pub fn encode_payload<T: Serialize>(value: &T) -> Result<Bytes, PayloadError> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(|e| PayloadError(format!("does not encode: {e}")))
}

pub fn decode_payload<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    rmp_serde::from_slice(bytes).map_err(|e| PayloadError(format!("does not decode: {e}")))
}

/// How fpnode wants its stream.
#[derive(Clone, Debug)]
pub struct StreamSettings {
    pub name: String,
    pub prefix: String,
    /// 1 for development, 3 in production.
    pub replicas: usize,
    /// How long `Nats-Msg-Id` deduplicates retried writes.
    pub duplicate_window: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            name: DEFAULT_STREAM.to_string(),
            prefix: DEFAULT_PREFIX.to_string(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
        }
    }
}

impl StreamSettings {
    /// The configuration fpnode creates the stream with.
    pub fn config(&self) -> Config {
        Config {
            name: self.name.clone(),
            subjects: vec![format!("{}.>", self.prefix)],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            max_messages_per_subject: 1,
            max_messages: -1,
            max_bytes: -1,
            max_age: Duration::ZERO,
            num_replicas: self.replicas,
            duplicate_window: self.duplicate_window,
            allow_atomic_publish: true,
            allow_message_ttl: true,
            allow_direct: true,
            description: Some("fpnode fingerprint index: latest state of every fingerprint".into()),
            ..Config::default()
        }
    }

    /// Reasons an existing stream's settings would lose data or break
    /// replication; empty if it is usable.
    pub fn problems(&self, existing: &Config) -> Vec<String> {
        let mut p = Vec::new();
        if existing.storage != StorageType::File {
            p.push(
                "storage is memory: a server restart would lose the index (use file storage)"
                    .into(),
            );
        }
        if existing.retention != RetentionPolicy::Limits {
            p.push(format!(
                "retention is {:?}: messages would be removed once consumed (use limits)",
                existing.retention
            ));
        }
        if existing.max_age > Duration::ZERO {
            p.push(format!(
                "max_age is {:?}: fingerprints older than that would be dropped (use 0)",
                existing.max_age
            ));
        }
        if existing.max_messages > 0 {
            p.push(format!(
                "max_msgs is {}: older fingerprints would be dropped (use -1)",
                existing.max_messages
            ));
        }
        if existing.max_bytes > 0 {
            p.push(format!(
                "max_bytes is {}: older fingerprints would be dropped (use -1)",
                existing.max_bytes
            ));
        }
        if existing.max_messages_per_subject != 1 {
            p.push(format!(
                "max_msgs_per_subject is {}: the stream must keep exactly the latest state of each fingerprint (use 1)",
                existing.max_messages_per_subject
            ));
        }
        let wanted = format!("{}.>", self.prefix);
        if !existing.subjects.iter().any(|s| s == &wanted || s == ">") {
            p.push(format!(
                "subjects {:?} do not include {wanted}",
                existing.subjects
            ));
        }
        if !existing.allow_atomic_publish {
            p.push("allow_atomic is off: _update batches could be half applied".into());
        }
        if !existing.allow_message_ttl {
            p.push(
                "allow_msg_ttl is off: request markers could not expire and would pile up".into(),
            );
        }
        if !existing.allow_direct {
            p.push("allow_direct is off: nodes read index records with direct gets".into());
        }
        if existing.duplicate_window.is_zero() {
            p.push("duplicate_window is 0: retried writes could be applied twice".into());
        }
        p
    }
}

/// Checks that an ack-less consumer's messages arrive without a hole.
///
/// Without acks the server counts a message as delivered once it sends it:
/// a message sent just before a connection broke (a nats-server restarted
/// with its consumer's state, a client reconnect) is never sent again, and
/// the next one continues after it. Only the consumer sequence shows the
/// hole (stream sequences of a filtered consumer skip other subjects'
/// messages): it counts every delivery of one consumer from 1. Seen by the
/// chaos scenario (docs/replication.md); the caller starts a new consumer
/// from its applied position.
#[derive(Debug, Default)]
pub struct Deliveries {
    last: u64,
}

impl Deliveries {
    /// A new consumer: its first delivery is 1.
    pub fn restart(&mut self) {
        self.last = 0;
    }

    /// Takes the consumer sequence of the next message, or says which
    /// deliveries were lost.
    pub fn next(&mut self, consumer_sequence: u64) -> Result<(), String> {
        let expected = self.last + 1;
        if consumer_sequence != expected {
            return Err(format!(
                "the consumer's delivery {consumer_sequence} came after {}: deliveries were lost in transit or repeated",
                self.last
            ));
        }
        self.last = consumer_sequence;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_must_follow_one_another_from_one() {
        let mut d = Deliveries::default();
        assert!(
            d.next(2).is_err(),
            "a first delivery other than 1 is a hole"
        );
        assert!(d.next(1).is_ok());
        assert!(d.next(2).is_ok());
        let hole = d.next(5).unwrap_err();
        assert!(hole.contains("delivery 5 came after 2"), "{hole}");
        assert!(d.next(2).is_err(), "a repeated delivery is refused");
        d.restart();
        assert!(d.next(1).is_ok());
    }

    #[test]
    fn subjects_round_trip_for_every_valid_index_name_shape() {
        for index in ["main", "a", "A-b_9", &"x".repeat(255), "_index", "00000001"] {
            let s = fingerprint_subject("fpindex", index, 0xdead_beef);
            assert_eq!(
                parse_subject("fpindex", &s),
                Some(Subject::Fingerprint {
                    index: index.into(),
                    id: 0xdead_beef
                })
            );
            let s = index_subject("fpindex", index);
            assert_eq!(
                parse_subject("fpindex", &s),
                Some(Subject::Index {
                    index: index.into()
                })
            );
        }
        assert_eq!(
            fingerprint_subject("fpindex", "main", 1),
            "fpindex.main.00000001"
        );
        for key in ["", "name", "a.b c/é", "_index"] {
            let s = metadata_subject("fpindex", "main", key);
            assert_eq!(
                parse_subject("fpindex", &s),
                Some(Subject::Metadata {
                    index: "main".into(),
                    key: key.into()
                }),
                "{s}"
            );
        }
        assert_eq!(
            parse_subject("fpindex", &marker_subject("fpindex", "ab12", 0)),
            None
        );
    }

    #[test]
    fn foreign_or_malformed_subjects_are_not_ours() {
        for s in [
            "other.main.00000001",
            "fpindex.main",
            "fpindex.main.0000001",
            "fpindex.main.000000001",
            "fpindex.main.0000000G",
            "fpindex.main.0000000A",
            "fpindex.main.00000000",
            "fpindex.bad.name.00000001",
            "fpindex..00000001",
            "fpindex.main._m.6",
            "fpindex.main._m.k6",
            "fpindex.main._m.kzz",
            "fpindex.main._m",
        ] {
            assert_eq!(parse_subject("fpindex", s), None, "{s}");
        }
    }

    #[test]
    fn payloads_encode_as_in_the_design() {
        let ins = FingerprintPayload::insert(vec![1, 2]);
        let v: serde_json::Value = rmp_serde::from_slice(&ins.encode().unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"h": [1, 2]}));
        assert_eq!(&FingerprintPayload::delete().encode().unwrap()[..], &[0x80]);
        assert_eq!(
            FingerprintPayload::decode(&[0x80]).unwrap(),
            FingerprintPayload::delete()
        );
        assert!(FingerprintPayload::decode(b"garbage").is_err());
    }

    #[test]
    fn a_stream_that_would_lose_data_is_refused_with_reasons() {
        let s = StreamSettings::default();
        assert!(s.problems(&s.config()).is_empty());
        let mut bad = s.config();
        bad.max_age = Duration::from_secs(3600);
        bad.storage = StorageType::Memory;
        bad.max_messages_per_subject = 5;
        let p = s.problems(&bad);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().any(|r| r.contains("max_age")));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream {name} exists with settings that would lose data: {}", reasons.join("; "))]
    Unsafe { name: String, reasons: Vec<String> },
    #[error("JetStream: {0}")]
    Nats(String),
}

/// Gets the stream, creating it if missing; refuses one whose settings would
/// lose data, saying why.
pub async fn ensure_stream(
    js: &async_nats::jetstream::Context,
    settings: &StreamSettings,
) -> Result<async_nats::jetstream::stream::Stream, StreamError> {
    let stream = match js.get_stream(&settings.name).await {
        Ok(stream) => stream,
        Err(_) => match js.create_stream(settings.config()).await {
            Ok(stream) => stream,
            // Created meanwhile by another node: use theirs (and check it).
            Err(create) => js
                .get_stream(&settings.name)
                .await
                .map_err(|_| StreamError::Nats(create.to_string()))?,
        },
    };
    let reasons = settings.problems(&stream.cached_info().config);
    if reasons.is_empty() {
        Ok(stream)
    } else {
        Err(StreamError::Unsafe {
            name: settings.name.clone(),
            reasons,
        })
    }
}
