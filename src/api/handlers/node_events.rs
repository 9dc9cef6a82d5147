//! `GET /_changes`: the node's own events (docs/api.md "Node events"):
//! indexes created and deleted, job state changes, from the node's event
//! log (`fpnode_actors::events`). `feed=normal` answers at once,
//! `feed=longpoll` waits for an event after `since`, `feed=eventsource` (or
//! `Accept: text/event-stream`) streams them, `id:` = the event's sequence
//! number (`Last-Event-ID` resumes). The same path upgraded to a WebSocket
//! is the index feeds' socket (`changes_ws`).

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::sse::{Event, KeepAlive, Sse};
use fpnode_actors::events::{EventsError, NodeEvent, NodeEvents};

use super::changes::{DEFAULT_LIMIT, HEARTBEAT, MAX_LIMIT, Since, long_poll_wait};
use super::*;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeChangesQuery {
    since: Option<Since>,
    limit: Option<usize>,
    feed: Option<String>,
    timeout: Option<u64>,
}

/// `GET /_changes`: a WebSocket upgrade goes to the index feeds' socket
/// (on a proxy, a replica's), anything else gets the node's events.
pub async fn changes_root(State(state): State<AppState>, req: Request) -> Response {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    // A proxy holds no index log: its sockets are a replica's (docs/api.md).
    if upgrade && let Some(proxy) = state.proxy.clone() {
        return crate::api::proxy_ws::forward_socket(state, &proxy, req).await;
    }
    let (mut parts, _) = req.into_parts();
    let format = response_format(&parts.headers, false);
    if upgrade {
        return match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
            Ok(ws) => changes_socket(State(state), ws).await,
            Err(rejection) => rejection.into_response(),
        };
    }
    let query = axum::extract::Query::<NodeChangesQuery>::try_from_uri(&parts.uri);
    match node_changes(&state, query.map(|q| q.0).ok(), &parts.headers).await {
        Ok(res) => res,
        Err(e) => Failure { format, error: e }.into_response(),
    }
}

async fn node_changes(
    state: &AppState,
    query: Option<NodeChangesQuery>,
    headers: &HeaderMap,
) -> std::result::Result<Response, ApiError> {
    let q = query.ok_or(ApiError::BadRequest)?;
    let events = state.events.clone().ok_or(ApiError::NotFound)?;
    let format = response_format(headers, false);
    let wants_events = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut since = q.since.unwrap_or(Since::At(0)).resolve(events.last());
    match q.feed.as_deref() {
        Some("eventsource") | None if q.feed.is_some() || wants_events => {
            if let Some(last) = headers.get("last-event-id") {
                since = last
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or(ApiError::BadRequest)?;
            }
            // Not retained: a 410 now (an EventSource would otherwise
            // reconnect to an error event forever).
            if let Err(EventsError::NotRetained { oldest, .. }) = events.since(since, 1) {
                return Ok(not_retained(format, oldest));
            }
            Ok(event_stream(events, since, limit))
        }
        None | Some("normal") | Some("longpoll") => {
            if q.feed.as_deref() == Some("longpoll") {
                let wait = long_poll_wait(q.timeout);
                let mut seen = events.subscribe();
                let _ = tokio::time::timeout(wait, seen.wait_for(|last| *last > since)).await;
            }
            match events.since(since, limit) {
                Ok(page) => {
                    let last_seq = page.last().map_or(since, |e| e.seq);
                    #[derive(serde::Serialize)]
                    struct Page<'a> {
                        results: Vec<&'a NodeEvent>,
                        last_seq: u64,
                        more: bool,
                    }
                    let more = events.last() > last_seq;
                    let body = Page {
                        results: page.iter().map(|e| e.as_ref()).collect(),
                        last_seq,
                        more,
                    };
                    Ok(encode(format, StatusCode::OK, &body))
                }
                Err(EventsError::NotRetained { oldest, .. }) => Ok(not_retained(format, oldest)),
                Err(e) => {
                    tracing::error!(error = %e, "reading node events failed");
                    Err(ApiError::Internal)
                }
            }
        }
        Some(_) => Err(ApiError::BadRequest),
    }
}

/// Why an event stream (SSE or WebSocket) of the node's events ends:
/// `{"error": "ChangesNotRetained", "oldest_seq"}`.
pub(super) fn events_error(e: &EventsError) -> serde_json::Value {
    let oldest = match e {
        EventsError::NotRetained { oldest, .. } => *oldest,
        EventsError::Io { .. } => 0,
    };
    serde_json::json!({"error": "ChangesNotRetained", "oldest_seq": oldest})
}

fn not_retained(format: Format, oldest: u64) -> Response {
    #[derive(serde::Serialize)]
    struct Gone {
        error: &'static str,
        oldest_seq: u64,
    }
    encode(
        format,
        StatusCode::GONE,
        &Gone {
            error: "ChangesNotRetained",
            oldest_seq: oldest,
        },
    )
}

fn event_of(e: &NodeEvent) -> Event {
    Event::default()
        .id(e.seq.to_string())
        .event(e.name())
        .data(serde_json::to_string(e).unwrap_or_default())
}

/// The events after `since`, then each new one as it is written; an
/// `error` event and the end if the stream falls behind what is kept.
fn event_stream(events: Arc<NodeEvents>, since: u64, limit: usize) -> Response {
    let seen = events.subscribe();
    let state = (
        events,
        since,
        seen,
        std::collections::VecDeque::<Event>::new(),
        false,
    );
    let stream = futures::stream::unfold(
        state,
        move |(events, mut cursor, mut seen, mut queue, mut ended)| async move {
            loop {
                if let Some(e) = queue.pop_front() {
                    return Some((Ok::<_, Infallible>(e), (events, cursor, seen, queue, ended)));
                }
                if ended {
                    return None;
                }
                match events.since(cursor, limit) {
                    Ok(page) if !page.is_empty() => {
                        cursor = page.last().map_or(cursor, |e| e.seq);
                        queue.extend(page.iter().map(|e| event_of(e)));
                    }
                    Ok(_) => {
                        // Nothing new: wait for the next event (the node's
                        // shutdown grace ends the stream).
                        seen.wait_for(|last| *last > cursor).await.ok()?;
                    }
                    Err(e) => {
                        queue.push_back(
                            Event::default()
                                .event("error")
                                .data(events_error(&e).to_string()),
                        );
                        ended = true;
                    }
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(HEARTBEAT))
        .into_response()
}
