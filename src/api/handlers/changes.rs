//! `GET /:index/_changes`: the changes applied after a version, read from the
//! index's retained WAL (docs/api.md). `feed=normal` answers at once;
//! `feed=longpoll` waits (up to `timeout` ms) until there is something after
//! `since`; `feed=eventsource` (or `Accept: text/event-stream`) is a
//! Server-Sent Events stream, one event per batch with `id:` = its version,
//! resumed from `Last-Event-ID`. A `since` older than what is retained is
//! `410 ChangesNotRetained` (an `error` event in a stream) with the oldest
//! version kept: the client resyncs, then follows from there.
//!
//! A feed reads the WAL, never a copy of it: a slow subscriber holds one
//! page at most and costs writers nothing; if it falls behind the retention,
//! it is told `ChangesNotRetained` and the stream ends.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use fpnode_actors::feed::FeedBatch;
use fpnode_segments::wal::{ChangesCursor, ChangesPage};
use fpnode_segments::{Batch, Error as EngineError, Index, Position};
use tokio::sync::Semaphore;

use super::changes_stream::{Backfill, BackfillEnd};
use super::*;

/// Changes per answer unless `limit` says otherwise, and at most.
pub(super) const DEFAULT_LIMIT: usize = 1000;
pub(super) const MAX_LIMIT: usize = 10_000;
/// Comment lines sent on an idle event stream, so proxies keep it open.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(15);
/// How long a long poll waits by default, and at most.
const DEFAULT_WAIT_MS: u64 = 60_000;
const MAX_WAIT_MS: u64 = 300_000;

/// How long a long poll asking `timeout` ms waits.
pub(super) fn long_poll_wait(timeout: Option<u64>) -> Duration {
    Duration::from_millis(timeout.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS))
}

/// `since` as a client gives it: a version (or sequence number), or `now`
/// (the newest one: only what comes next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    At(u64),
    Now,
}

impl Since {
    pub(super) fn resolve(self, newest: u64) -> u64 {
        match self {
            Since::At(v) => v,
            Since::Now => newest,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Since {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Since, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Since;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a version or \"now\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Since, E> {
                Ok(Since::At(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Since, E> {
                match v {
                    "now" => Ok(Since::Now),
                    _ => v
                        .parse()
                        .map(Since::At)
                        .map_err(|_| E::custom("a version or \"now\"")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    since: Option<Since>,
    limit: Option<usize>,
    hashes: Option<bool>,
    feed: Option<String>,
    timeout: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    Normal,
    LongPoll,
    EventSource,
}

pub async fn index_changes(
    State(state): State<AppState>,
    Path(index): Path<String>,
    query: std::result::Result<
        axum::extract::Query<ChangesQuery>,
        axum::extract::rejection::QueryRejection,
    >,
    headers: HeaderMap,
    r: Req,
) -> Result<Response> {
    let axum::extract::Query(q) = query.map_err(|_| r.fail(ApiError::BadRequest))?;
    let wants_events = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let feed = match q.feed.as_deref() {
        None if wants_events => Feed::EventSource,
        None | Some("normal") => Feed::Normal,
        Some("longpoll") => Feed::LongPoll,
        Some("eventsource") => Feed::EventSource,
        Some(_) => return Err(r.fail(ApiError::BadRequest)),
    };
    let long_poll = feed == Feed::LongPoll;
    let h = lookup(&state, &index).await.map_err(|e| r.fail(e))?;
    let mut since = Position(q.since.unwrap_or(Since::At(0)).resolve(h.version().0));
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    if feed == Feed::EventSource {
        // A reconnecting EventSource sends the id of the last event it got.
        if let Some(last) = headers.get("last-event-id") {
            let last = last
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            since = Position(last.ok_or_else(|| r.fail(ApiError::BadRequest))?);
        }
        // Not retained: a 410 now, not an event stream that ends at once
        // (an EventSource would reconnect to the same error forever). From
        // the log's file names: nothing is read (1,000 subscribers
        // connecting each read the log up to their place: docs/benchmarks.md).
        // A replica reads older changes back from the stream.
        let mut backfill = Backfill::of(&state, &h);
        let (index, from) = (h.index.clone(), since);
        if let Ok(Err(EngineError::ChangesNotRetained { oldest, .. })) =
            tokio::task::spawn_blocking(move || index.changes_retained(from)).await
        {
            let Some(backfill) = backfill.as_mut() else {
                return Ok(not_retained(r.format, oldest));
            };
            if let Err(end) = backfill.check(since).await {
                return Ok(backfill_failed(r, end));
            }
        }
        let tail = Tail::new(h, since, limit, backfill);
        return Ok(event_source(tail, q.hashes.unwrap_or(false)));
    }
    let wait = long_poll_wait(q.timeout);
    let deadline = tokio::time::Instant::now() + wait;
    if long_poll {
        h.wait_past(since, deadline).await;
    }
    let mut backfill = Backfill::of(&state, &h);
    let page = loop {
        let read = read_changes(h.index.clone(), since, limit, None)
            .await
            .map_err(|_| r.fail(ApiError::Internal))?;
        match read {
            Ok(page) => break page,
            Err(EngineError::ChangesNotRetained { oldest, .. }) => {
                let Some(backfill) = backfill.as_mut() else {
                    return Ok(not_retained(r.format, oldest));
                };
                // From the stream up to where the log starts: a page of its
                // own, or on to the log if the stream holds nothing more.
                let from = since;
                match backfill.next(&mut since, oldest, limit).await {
                    Ok(Some(batch)) => {
                        break ChangesPage {
                            batches: vec![batch],
                            more: true,
                            cursor: None,
                        };
                    }
                    Ok(None) if since > from => {}
                    Ok(None) => return Err(r.fail(ApiError::Internal)),
                    Err(end) => return Ok(backfill_failed(r, end)),
                }
            }
            Err(e) => {
                tracing::error!(index = %h.name, error = %e, "reading changes failed");
                return Err(r.fail(ApiError::Internal));
            }
        }
    };
    let with_hashes = q.hashes.unwrap_or(false);
    let mut results = Vec::new();
    for batch in &page.batches {
        for change in &batch.changes {
            let mut entry = vec![(full("version"), Out::UInt(batch.position.0))];
            match change {
                Change::Insert { id, hashes } => {
                    entry.push((full("kind"), Out::Str(kind(batch, change).into())));
                    entry.push((full("id"), Out::UInt(u64::from(*id))));
                    if with_hashes {
                        entry.push((
                            full("hashes"),
                            Out::List(hashes.iter().map(|&x| Out::UInt(u64::from(x))).collect()),
                        ));
                    }
                }
                Change::Delete { id } => {
                    entry.push((full("kind"), Out::Str("delete".into())));
                    entry.push((full("id"), Out::UInt(u64::from(*id))));
                }
            }
            results.push(Out::Map(entry));
        }
    }
    let last = page.batches.last().map_or(since, |b| b.position);
    let more = page.more || (backfill.is_some() && last < h.version());
    Ok(r.ok(Out::map([
        (full("results"), Out::List(results)),
        (full("last_version"), Out::UInt(last.0)),
        (full("more"), Out::Bool(more)),
    ])))
}

/// Feed reads at once, node-wide: many subscribers woken by one write read
/// the log a few at a time, on blocking threads the writers also need.
static FEED_READS: Semaphore = Semaphore::const_new(2);

pub(super) async fn read_changes(
    index: Arc<Index>,
    since: Position,
    limit: usize,
    hint: Option<ChangesCursor>,
) -> std::result::Result<fpnode_segments::Result<ChangesPage>, ()> {
    // The permit goes with the read: a caller that gives up (a client gone)
    // does not free it while the read still runs.
    let permit = FEED_READS.acquire().await.map_err(|_| ())?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        index.changes_since(since, limit, hint)
    })
    .await
    .map_err(|_| ())
}

/// A reader the stream cannot serve: `410 ChangesNotRetained` (an older
/// generation's version), `404 IndexNotFound` (deleted meanwhile) or
/// `503 StreamUnavailable`.
fn backfill_failed(r: Req, end: BackfillEnd) -> Response {
    match end {
        BackfillEnd::NotRetained { oldest } => not_retained(r.format, oldest),
        BackfillEnd::IndexDeleted => r.fail(ApiError::IndexNotFound).into_response(),
        BackfillEnd::StreamUnavailable => {
            let body = Out::map([(full("error"), Out::Str("StreamUnavailable".into()))]);
            let mut res = respond(r.format, StatusCode::SERVICE_UNAVAILABLE, Some(body));
            res.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            res
        }
    }
}

fn not_retained(format: codec::Format, oldest: u64) -> Response {
    let body = Out::map([
        (full("error"), Out::Str("ChangesNotRetained".into())),
        (full("oldest_version"), Out::UInt(oldest)),
    ]);
    respond(format, StatusCode::GONE, Some(body))
}

/// One subscriber's position in an index's change log: pages read from the
/// WAL as the index moves on. Shared by the SSE and WebSocket feeds; it holds
/// one page at most, so a slow subscriber costs memory for that page only.
pub(super) struct Tail {
    h: Arc<IndexHandle>,
    cursor: Position,
    limit: usize,
    done: bool,
    /// Where the last page ended in the WAL: the next read starts there.
    hint: Option<ChangesCursor>,
    /// A replica's way back through the stream, for what its log lacks.
    backfill: Option<Backfill>,
    _counted: Subscriber,
}

/// What a [`Tail`] yields next.
pub(super) enum TailItem {
    /// The next batches after the cursor, shared with every subscriber near
    /// the index's head (`IndexHandle::feed`).
    Batches(Vec<Arc<FeedBatch>>),
    /// The feed cannot go on (not retained, index deleted, read failure):
    /// the error to send, then nothing more.
    End(serde_json::Value),
}

impl Tail {
    pub(super) fn new(
        h: Arc<IndexHandle>,
        since: Position,
        limit: usize,
        backfill: Option<Backfill>,
    ) -> Tail {
        h.feed.join();
        Tail {
            h,
            cursor: since,
            limit,
            done: false,
            hint: None,
            backfill,
            _counted: Subscriber::new(),
        }
    }

    /// Waits for the next batches after the cursor; `None` once ended.
    pub(super) async fn next(&mut self) -> Option<TailItem> {
        loop {
            if self.done {
                return None;
            }
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            if !self.h.wait_past(self.cursor, far).await {
                if self.h.is_deleted() {
                    return Some(self.end("IndexDeleted", None));
                }
                continue;
            }
            let (index, cursor, limit) = (self.h.index.clone(), self.cursor, self.limit);
            let read = |since, hint| {
                let index = index.clone();
                async move {
                    match read_changes(index, since, limit, hint).await {
                        Ok(Ok(page)) => Ok(page),
                        Ok(Err(e)) => Err(Some(e)),
                        Err(()) => Err(None),
                    }
                }
            };
            match self.h.feed.after(cursor, limit, self.hint, read).await {
                Ok((batches, hint)) => {
                    self.hint = hint;
                    let Some(last) = batches.last() else {
                        // Nothing logged past the cursor yet although the
                        // index moved: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    self.cursor = last.batch.position;
                    metrics::counter!("fpnode_change_feed_events_total")
                        .increment(batches.len() as u64);
                    return Some(TailItem::Batches(batches));
                }
                Err(Some(EngineError::ChangesNotRetained { oldest, .. })) => {
                    let Some(backfill) = self.backfill.as_mut() else {
                        return Some(self.end("ChangesNotRetained", Some(oldest)));
                    };
                    let from = self.cursor;
                    match backfill.next(&mut self.cursor, oldest, self.limit).await {
                        Ok(Some(batch)) => {
                            metrics::counter!("fpnode_change_feed_events_total").increment(1);
                            return Some(TailItem::Batches(vec![FeedBatch::new(batch)]));
                        }
                        // On to the log.
                        Ok(None) if self.cursor > from => {}
                        Ok(None) => return Some(self.end("InternalError", None)),
                        Err(end) => return Some(self.end(end.name(), end.oldest())),
                    }
                }
                Err(Some(e)) => {
                    tracing::error!(index = %self.h.name, error = %e, "reading changes failed");
                    return Some(self.end("InternalError", None));
                }
                Err(None) => return Some(self.end("InternalError", None)),
            }
        }
    }

    fn end(&mut self, error: &str, oldest: Option<u64>) -> TailItem {
        self.done = true;
        TailItem::End(json_error(error, oldest))
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.h.feed.leave();
    }
}

/// The SSE stream: one event per batch, heartbeats while idle, an `error`
/// event and the end when the feed cannot go on.
fn event_source(tail: Tail, hashes: bool) -> Response {
    let tail = (tail, VecDeque::new());
    let events = futures::stream::unfold(tail, move |(mut t, mut queue)| async move {
        loop {
            if let Some(event) = queue.pop_front() {
                return Some((Ok::<_, Infallible>(event), (t, queue)));
            }
            match t.next().await? {
                TailItem::Batches(batches) => {
                    // Each batch is encoded once for every subscriber.
                    queue.extend(batches.iter().map(|b| {
                        Event::default()
                            .id(b.batch.position.0.to_string())
                            .event("change")
                            .data(b.encoded(form(false, hashes), |batch| batch_json(batch, hashes)))
                    }));
                }
                TailItem::End(error) => queue.push_back(error_event(error)),
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response()
}

/// Counts a subscriber in `fpnode_change_feed_subscribers` while its stream
/// lives, however it ends (its end, or the client going away).
struct Subscriber;

impl Subscriber {
    fn new() -> Subscriber {
        metrics::gauge!("fpnode_change_feed_subscribers").increment(1.0);
        Subscriber
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        metrics::gauge!("fpnode_change_feed_subscribers").decrement(1.0);
    }
}

/// A batch as the SSE feed's `data`: `{version, changes: [{kind, id, hashes?}]}`.
fn batch_json(batch: &Batch, hashes: bool) -> String {
    let changes = changes_json(batch, hashes, |_| true);
    serde_json::json!({ "version": batch.position.0, "changes": changes }).to_string()
}

/// The changes of a batch as the SSE and WebSocket feeds send them,
/// `[{kind, id, hashes?}]`, those `keep` accepts.
pub(super) fn changes_json(
    batch: &Batch,
    hashes: bool,
    keep: impl Fn(&Change) -> bool,
) -> Vec<serde_json::Value> {
    batch
        .changes
        .iter()
        .filter(|c| keep(c))
        .map(|c| match c {
            Change::Insert { id, hashes: h } if hashes => {
                serde_json::json!({ "kind": kind(batch, c), "id": id, "hashes": h })
            }
            Change::Insert { id, .. } => serde_json::json!({ "kind": kind(batch, c), "id": id }),
            Change::Delete { id } => serde_json::json!({ "kind": "delete", "id": id }),
        })
        .collect()
}

/// A change's kind in the feeds: `insert` (the id was not live before its
/// batch), `update` (it was: its hashes were replaced) or `delete`.
pub(super) fn kind(batch: &Batch, change: &Change) -> &'static str {
    match change {
        Change::Insert { id, .. } if batch.replaces(*id) => "update",
        Change::Insert { .. } => "insert",
        Change::Delete { .. } => "delete",
    }
}

/// Which of a [`FeedBatch`]'s cached encodings a feed uses: SSE 0 and 1,
/// WebSocket 2 and 3, with hashes the odd ones.
pub(super) fn form(websocket: bool, hashes: bool) -> usize {
    2 * usize::from(websocket) + usize::from(hashes)
}

pub(super) fn json_error(name: &str, oldest: Option<u64>) -> serde_json::Value {
    match oldest {
        Some(o) => serde_json::json!({ "error": name, "oldest_version": o }),
        None => serde_json::json!({ "error": name }),
    }
}

fn error_event(body: serde_json::Value) -> Event {
    Event::default().event("error").data(body.to_string())
}
