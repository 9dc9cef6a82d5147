//! `GET /_changes` over WebSocket: one connection follows the change feeds of
//! any number of indexes (docs/api.md, "Change feed over WebSocket").
//!
//! The client sends JSON text frames: `{"op": "subscribe", "index": "main",
//! "since": 120, "kinds": ["delete"], "hashes": true}` and `{"op":
//! "unsubscribe", "index": "main"}`. The server answers `subscribed` /
//! `unsubscribed`, then sends one `change` message per batch of each
//! subscribed index (`version` resumes it), an `error` message for a
//! subscription that cannot go on (`ChangesNotRetained` with the oldest
//! version kept, `IndexDeleted`, `IndexNotFound`) or for a frame it cannot
//! take (`InvalidMessage`, `TooManySubscriptions`), and a ping every 15 s.
//!
//! Memory is bounded per connection: each subscription is a [`Tail`] reading
//! the index's WAL (one page at most) into a queue of [`QUEUE`] messages
//! shared by the connection; a full queue stops the reads, never the writers.
//! A client that does not take a message within [`SEND_TIMEOUT`] is too slow:
//! it gets a close frame saying so (code 1008, `SlowConsumer`) and the
//! connection ends. It resumes from the last `version` it got.

use std::collections::HashMap;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use fpnode_segments::{Batch, Position};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::changes::{
    DEFAULT_LIMIT, HEARTBEAT, Tail, TailItem, changes_json, form, json_error, kind,
};
use super::changes_stream::Backfill;
use super::node_events::events_error;
use super::*;

/// Messages waiting to be sent on one connection.
const QUEUE: usize = 64;
/// Subscriptions one connection may hold.
const MAX_SUBSCRIPTIONS: usize = 64;
/// How long one message may take to be sent before the client is dropped as
/// too slow.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The read buffer of one connection.
const READ_BUFFER: usize = 4096;
/// The largest frame a client may send (a subscribe is a few hundred bytes).
const MAX_CLIENT_FRAME: usize = 64 * 1024;

#[derive(Debug, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Op {
    Subscribe {
        index: String,
        #[serde(default)]
        since: Option<Since>,
        #[serde(default)]
        kinds: Option<Vec<Kind>>,
        #[serde(default)]
        hashes: bool,
    },
    Unsubscribe {
        index: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Insert,
    Update,
    Delete,
}

pub async fn changes_socket(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    // Client frames are small: a small read buffer (the default 128 KiB
    // is zeroed on every read of every connection, which measured as the
    // node's top cost with 500 sockets: docs/benchmarks.md).
    ws.max_message_size(MAX_CLIENT_FRAME)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| serve(state, socket))
}

/// A queued message: the subscription it belongs to, and its text.
type Queued = (u64, String);

/// One connection's subscriptions by index: the id its messages carry and
/// the task that follows it.
type Subscriptions = HashMap<String, (u64, JoinHandle<()>)>;

async fn serve(state: AppState, socket: WebSocket) {
    metrics::gauge!("fpnode_change_feed_sockets").increment(1.0);
    let (mut sink, mut incoming) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Queued>(QUEUE);
    let mut subscriptions = Subscriptions::new();
    let mut next_id = 0u64;
    let mut ping = tokio::time::interval(HEARTBEAT);
    ping.reset();
    let ended = loop {
        let sent = tokio::select! {
            frame = incoming.next() => match frame {
                Some(Ok(Message::Text(text))) => {
                    match handle(&state, text.as_str(), &mut subscriptions, &mut next_id, &tx).await {
                        Some(reply) => send(&mut sink, Message::Text(reply.into())).await,
                        None => Ok(()),
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let reply = invalid("frames are JSON text");
                    send(&mut sink, Message::Text(reply.into())).await
                }
                // Pings are answered by the library; pongs need nothing.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                Some(Ok(Message::Close(_)) | Err(_)) | None => Err(Ended::Gone),
            },
            Some(first) = rx.recv() => {
                // What else is queued goes out with it: one write (and one
                // syscall) for many messages when the client keeps up
                // with several subscriptions. Messages queued by a
                // subscription since replaced or unsubscribed are dropped:
                // the client resumes by version.
                let mut frames = Vec::new();
                let mut next = Some(first);
                while let Some((id, text)) = next.take() {
                    if subscriptions.values().any(|(current, _)| *current == id) {
                        frames.push(Message::Text(text.into()));
                    }
                    if frames.len() < MAX_COALESCED {
                        next = rx.try_recv().ok();
                    }
                }
                send_all(&mut sink, frames).await
            }
            _ = ping.tick() => send(&mut sink, Message::Ping(Bytes::new())).await,
        };
        if let Err(ended) = sent {
            break ended;
        }
    };
    for (_, (_, task)) in subscriptions.drain() {
        task.abort();
    }
    if ended == Ended::Slow {
        metrics::counter!("fpnode_change_feed_slow_disconnects_total").increment(1);
        let frame = CloseFrame {
            code: axum::extract::ws::close_code::POLICY,
            reason: "SlowConsumer".into(),
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            sink.send(Message::Close(Some(frame))),
        )
        .await;
    }
    metrics::gauge!("fpnode_change_feed_sockets").decrement(1.0);
}

/// Why a connection ends.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The client closed it or went away.
    Gone,
    /// The client did not take a frame within [`SEND_TIMEOUT`].
    Slow,
}

/// Sends frames and flushes them once, failing if the client does not
/// take them in time.
async fn send_all(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    frames: Vec<Message>,
) -> std::result::Result<(), Ended> {
    if frames.is_empty() {
        return Ok(());
    }
    let sent = async {
        for frame in frames {
            sink.feed(frame).await?;
        }
        sink.flush().await
    };
    match tokio::time::timeout(SEND_TIMEOUT, sent).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ended::Gone),
        Err(_) => Err(Ended::Slow),
    }
}

/// Messages written before one flush.
const MAX_COALESCED: usize = 64;

/// Sends one frame, failing if the client does not take it in time.
async fn send(
    sink: &mut futures::stream::SplitSink<WebSocket, Message>,
    frame: Message,
) -> std::result::Result<(), Ended> {
    match tokio::time::timeout(SEND_TIMEOUT, sink.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Ended::Gone),
        Err(_) => Err(Ended::Slow),
    }
}

/// Carries out one client frame; answers what to send back at once.
async fn handle(
    state: &AppState,
    text: &str,
    subscriptions: &mut Subscriptions,
    next_id: &mut u64,
    tx: &mpsc::Sender<Queued>,
) -> Option<String> {
    let op = match serde_json::from_str::<Op>(text) {
        Ok(op) => op,
        Err(e) => return Some(invalid(&e.to_string())),
    };
    match op {
        Op::Unsubscribe { index } => {
            if let Some((_, task)) = subscriptions.remove(&index) {
                task.abort();
            }
            Some(serde_json::json!({ "type": "unsubscribed", "index": index }).to_string())
        }
        Op::Subscribe {
            index,
            since,
            kinds,
            hashes,
        } => {
            if !subscriptions.contains_key(&index) && subscriptions.len() >= MAX_SUBSCRIPTIONS {
                // Ended subscriptions (their error sent long ago, most
                // likely) stay until replaced; make room from them first.
                subscriptions.retain(|_, (_, task)| !task.is_finished());
            }
            if !subscriptions.contains_key(&index) && subscriptions.len() >= MAX_SUBSCRIPTIONS {
                return Some(index_error(
                    &index,
                    json_error("TooManySubscriptions", None),
                ));
            }
            if index == NODE_EVENTS {
                let Some(events) = state.events.clone() else {
                    return Some(index_error(&index, json_error("NotFound", None)));
                };
                let since = since.unwrap_or(Since::At(0)).resolve(events.last());
                if let Some((_, task)) = subscriptions.remove(&index) {
                    task.abort();
                }
                let ack =
                    serde_json::json!({ "type": "subscribed", "index": index, "since": since })
                        .to_string();
                *next_id += 1;
                let id = *next_id;
                let task = tokio::spawn(follow_events(events, since, (id, tx.clone())));
                subscriptions.insert(index, (id, task));
                return Some(ack);
            }
            let h = match lookup(state, &index).await {
                Ok(h) => h,
                Err(e) => return Some(index_error(&index, json_error(&e.to_string(), None))),
            };
            let since = since.unwrap_or(Since::At(0)).resolve(h.version().0);
            // A new subscribe of the same index replaces the old one.
            if let Some((_, task)) = subscriptions.remove(&index) {
                task.abort();
            }
            let ack = serde_json::json!({ "type": "subscribed", "index": index, "since": since })
                .to_string();
            // The acknowledgement is sent before the connection's queue is
            // read again, so it comes before the subscription's first change.
            let backfill = Backfill::of(state, &h);
            let tail = Tail::new(h, Position(since), DEFAULT_LIMIT, backfill);
            *next_id += 1;
            let id = *next_id;
            let task = tokio::spawn(follow(tail, index.clone(), kinds, hashes, (id, tx.clone())));
            subscriptions.insert(index, (id, task));
            Some(ack)
        }
    }
}

/// One subscription: its batches, filtered, into the connection's queue
/// (waiting while it is full), then its end.
async fn follow(
    mut tail: Tail,
    index: String,
    kinds: Option<Vec<Kind>>,
    hashes: bool,
    (id, tx): (u64, mpsc::Sender<Queued>),
) {
    while let Some(item) = tail.next().await {
        let messages: Vec<String> = match item {
            // Unfiltered messages are encoded once per batch for every
            // subscriber.
            TailItem::Batches(batches) if kinds.is_none() => batches
                .iter()
                .map(|b| {
                    b.encoded(form(true, hashes), |batch| {
                        change_message(&index, batch, None, hashes)
                    })
                    .to_string()
                })
                .collect(),
            TailItem::Batches(batches) => batches
                .iter()
                .map(|b| change_message(&index, &b.batch, kinds.as_deref(), hashes))
                .collect(),
            TailItem::End(error) => vec![index_error(&index, error)],
        };
        for message in messages {
            if tx.send((id, message)).await.is_err() {
                return;
            }
        }
    }
}

/// The subscription name of the node's own events (not an index name).
const NODE_EVENTS: &str = "*";

/// A subscription to the node's events: each one as `{"type": "event",
/// "index": "*", "seq", "event": {...}}` into the connection's queue, then an
/// error and the end if the subscription falls behind what is kept.
async fn follow_events(
    events: Arc<fpnode_actors::events::NodeEvents>,
    mut cursor: u64,
    (id, tx): (u64, mpsc::Sender<Queued>),
) {
    let mut seen = events.subscribe();
    loop {
        match events.since(cursor, DEFAULT_LIMIT) {
            Ok(page) if page.is_empty() => {
                if seen.wait_for(|last| *last > cursor).await.is_err() {
                    return;
                }
            }
            Ok(page) => {
                for e in page {
                    cursor = e.seq;
                    let m = serde_json::json!({
                        "type": "event",
                        "index": NODE_EVENTS,
                        "seq": e.seq,
                        "event": e.as_ref(),
                    });
                    if tx.send((id, m.to_string())).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                let _ = tx
                    .send((id, index_error(NODE_EVENTS, events_error(&e))))
                    .await;
                return;
            }
        }
    }
}

/// A batch as one message. A batch whose changes the filter drops entirely is
/// still sent (with no changes), so the client's resume point moves on.
fn change_message(index: &str, batch: &Batch, kinds: Option<&[Kind]>, hashes: bool) -> String {
    let kind = |c: &Change| match kind(batch, c) {
        "update" => Kind::Update,
        "delete" => Kind::Delete,
        _ => Kind::Insert,
    };
    let changes = changes_json(batch, hashes, |c| {
        kinds.is_none_or(|ks| ks.contains(&kind(c)))
    });
    serde_json::json!({
        "type": "change",
        "index": index,
        "version": batch.position.0,
        "changes": changes,
    })
    .to_string()
}

fn index_error(index: &str, mut error: serde_json::Value) -> String {
    if let Some(map) = error.as_object_mut() {
        map.insert("type".into(), "error".into());
        map.insert("index".into(), index.into());
    }
    error.to_string()
}

fn invalid(detail: &str) -> String {
    serde_json::json!({ "type": "error", "error": "InvalidMessage", "detail": detail }).to_string()
}
