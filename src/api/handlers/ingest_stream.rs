//! `POST /:index/_stream`: a body of change objects (NDJSON lines, or a
//! sequence of MessagePack values) applied as it arrives, in groups, through
//! the same write path as `_update`; the answer is a stream of NDJSON progress
//! lines and a final line (docs/api.md).
//!
//! Memory is bounded whatever the body's size: the body is read only while
//! fewer than [`IN_FLIGHT`] groups are unanswered, and one group holds at most
//! [`GROUP_CHANGES`] changes. Standalone, groups are submitted to the index's
//! Batcher one after the other (so they apply in the body's order) and several
//! are in flight; replica and proxy modes publish one group at a time.

use std::convert::Infallible;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::api::framing::{FrameError, Framer, StreamFormat};

/// Changes per group (as many as a typical `_update`)...
pub const GROUP_CHANGES: usize = 1000;
/// ...or hashes, whichever comes first (fingerprints with very many hashes
/// keep a group's memory near 4 MiB).
const GROUP_HASHES: usize = 1 << 20;
/// Groups submitted and not yet answered (standalone).
const IN_FLIGHT: usize = 4;
/// A partial group is sent when the body pauses this long.
const IDLE_FLUSH: Duration = Duration::from_millis(50);
/// After a stop, the rest of the body is read and dropped for at most this
/// long and this many bytes, then the connection is closed.
/// A body that sends nothing for this long is given up on.
const IDLE_LIMIT: Duration = Duration::from_secs(300);

pub async fn ingest_stream(
    State(state): State<AppState>,
    Path(index): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let format = match stream_format(&headers) {
        Ok(f) => f,
        Err(e) => return error_response(e),
    };
    // Standalone and replica: the index must exist here before anything is
    // read. Proxy: the write path checks it with the stream.
    let handle = if state.node.is_some() {
        match lookup(&state, &index).await {
            Ok(h) => Some(h),
            Err(e) => return error_response(e),
        }
    } else {
        None
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let mut run = Run {
            state,
            index,
            handle,
            tx,
            started: Instant::now(),
            durable: Progress::default(),
            failed: false,
        };
        run.ingest(format, body).await;
    });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut response = Response::new(Body::from_stream(lines));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

fn stream_format(headers: &HeaderMap) -> std::result::Result<StreamFormat, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-ndjson");
    let mime = ct.split(';').next().unwrap_or("").trim();
    match mime {
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/json"
        | "text/plain" => Ok(StreamFormat::Ndjson),
        "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => {
            Ok(StreamFormat::MsgPack)
        }
        _ => Err(ApiError::UnsupportedMediaType),
    }
}

fn error_response(e: ApiError) -> Response {
    let mut response = (e.status(), json_line(&json!({ "error": e.to_string() }))).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn json_line(v: &serde_json::Value) -> Bytes {
    let mut out = v.to_string().into_bytes();
    out.push(b'\n');
    Bytes::from(out)
}

/// What is durable and visible: lines taken up to the end of the last
/// answered group, changes in those groups, and the index version.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    lines: u64,
    changes: u64,
    version: u64,
}

/// A group's outcome: where it ends in the body, how many changes, and the
/// index version once durable (or why not).
type Outcome = (u64, u64, std::result::Result<u64, ApiError>);

/// Groups sent and not yet answered, answered in the order sent.
type InFlight<'h> = FuturesOrdered<BoxFuture<'h, Outcome>>;

struct Run {
    state: AppState,
    index: String,
    handle: Option<Arc<IndexHandle>>,
    tx: mpsc::Sender<Bytes>,
    started: Instant,
    durable: Progress,
    /// A group failed: groups answered after it are not reported durable
    /// (the stream stops at the first failure; later ones in flight may
    /// still have been applied).
    failed: bool,
}

/// Why a stream stopped before its end.
enum Stop {
    Line(FrameError),
    Change(u64, ApiError),
    Write(ApiError),
    /// The client went away (its body broke off): nothing to tell it.
    Gone,
    /// The body sent nothing for `IDLE_LIMIT`.
    Idle,
}

impl Run {
    async fn ingest(&mut self, format: StreamFormat, body: Body) {
        metrics::gauge!("fpnode_stream_ingests").increment(1.0);
        let handle = self.handle.clone();
        let mut data = body.into_data_stream();
        let outcome = self.pump(handle.as_deref(), format, &mut data).await;
        metrics::gauge!("fpnode_stream_ingests").decrement(1.0);
        let p = self.durable;
        let seconds = self.started.elapsed().as_secs_f64();
        let durable = json!({ "lines": p.lines, "changes": p.changes, "version": p.version });
        let last = match outcome {
            Ok(()) => json!({
                "done": true,
                "lines": p.lines,
                "changes": p.changes,
                "version": p.version,
                "seconds": round3(seconds),
                "changes_per_second": rate(p.changes, seconds),
            }),
            Err(Stop::Gone) => {
                tracing::info!(index = %self.index, lines = p.lines, version = p.version, "a _stream client went away; what was answered is durable");
                return;
            }
            Err(Stop::Line(e)) => {
                let name = match e {
                    FrameError::TooLong { .. } => ApiError::LineTooLong,
                    FrameError::Truncated { .. } => ApiError::TruncatedBody,
                    FrameError::Invalid { .. } => ApiError::InvalidLine,
                };
                json!({
                    "error": name.to_string(),
                    "line": e.item(),
                    "message": e.to_string(),
                    "durable": durable,
                })
            }
            Err(Stop::Change(line, e)) => json!({
                "error": e.to_string(),
                "line": line,
                "durable": durable,
            }),
            Err(Stop::Write(e)) => json!({ "error": e.to_string(), "durable": durable }),
            Err(Stop::Idle) => {
                json!({ "error": ApiError::BodyTimeout.to_string(), "durable": durable })
            }
        };
        let stopped = last.get("error").is_some();
        // The client may still be sending and not reading yet: read (and
        // drop) the rest of its body for a while, beside sending the last
        // line, so neither side waits on the other.
        let drain = async {
            if stopped {
                drain_body(&mut data).await;
            }
        };
        let send = tokio::time::timeout(DRAIN_FOR, self.tx.send(json_line(&last)));
        let _ = tokio::join!(send, drain);
    }

    /// Reads, frames, groups and submits until the body ends or something
    /// stops it; every group sent is answered before this returns.
    async fn pump<'h>(
        &mut self,
        handle: Option<&'h IndexHandle>,
        format: StreamFormat,
        data: &mut axum::body::BodyDataStream,
    ) -> std::result::Result<(), Stop> {
        let mut framer = Framer::new(format);
        let mut group: Vec<Change> = Vec::with_capacity(GROUP_CHANGES);
        let mut group_hashes = 0usize;
        let mut in_flight: InFlight<'h> = FuturesOrdered::new();
        let mut ended = false;
        let mut idle = Duration::ZERO;
        let result = loop {
            // Take every complete change the framer holds, a group at a time.
            let framed = loop {
                if group.len() >= GROUP_CHANGES || group_hashes >= GROUP_HASHES {
                    break Ok(());
                }
                let next = if ended {
                    framer.finish()
                } else {
                    framer.next()
                };
                match next {
                    Ok(Some(c)) => match change(c, &self.state.limits) {
                        Ok(c) => {
                            if let Change::Insert { hashes, .. } = &c {
                                group_hashes += hashes.len();
                            }
                            group.push(c);
                        }
                        Err(e) => break Err(Stop::Change(framer.items(), e)),
                    },
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(Stop::Line(e)),
                }
            };
            if let Err(stop) = framed {
                // What came before the bad line is applied, then reported.
                if !group.is_empty() {
                    let changes = std::mem::take(&mut group);
                    // Everything before the line at fault.
                    let at_fault = match &stop {
                        Stop::Line(e) => e.item(),
                        Stop::Change(line, _) => *line,
                        _ => framer.items() + 1,
                    };
                    let lines = at_fault.saturating_sub(1);
                    match self.submit(handle, changes, lines).await {
                        Ok(sent) => in_flight.push_back(sent),
                        Err(e) => break Err(e),
                    }
                }
                break Err(stop);
            }
            if group.len() >= GROUP_CHANGES
                || group_hashes >= GROUP_HASHES
                || (ended && !group.is_empty())
            {
                group_hashes = 0;
                if let Err(e) = self
                    .send_group(handle, &mut group, &framer, &mut in_flight)
                    .await
                {
                    break Err(e);
                }
                continue;
            }
            if ended {
                break Ok(());
            }
            // More body: wait for it, reporting groups as they are answered
            // and sending a partial group if the body pauses.
            let chunk = loop {
                tokio::select! {
                    Some(outcome) = in_flight.next(), if !in_flight.is_empty() => {
                        if let Err(e) = self.answered(outcome) {
                            break Err(e);
                        }
                    }
                    next = tokio::time::timeout(IDLE_FLUSH, data.next()) => match next {
                        Ok(chunk) => break Ok(chunk),
                        Err(_) if !group.is_empty() => {
                            group_hashes = 0;
                            if let Err(e) = self
                                .send_group(handle, &mut group, &framer, &mut in_flight)
                                .await
                            {
                                break Err(e);
                            }
                        }
                        Err(_) => {
                            idle += IDLE_FLUSH;
                            if idle >= IDLE_LIMIT {
                                break Err(Stop::Idle);
                            }
                            if framer.waiting() {
                                // A value may be complete: frame it now.
                                framer.poke();
                                break Ok(Some(Ok(Bytes::new())));
                            }
                        }
                    }
                }
            };
            match chunk {
                Ok(Some(Ok(bytes))) => {
                    if !bytes.is_empty() {
                        idle = Duration::ZERO;
                    }
                    framer.push(&bytes);
                }
                Ok(Some(Err(_))) => break Err(Stop::Gone),
                Ok(None) => ended = true,
                Err(e) => break Err(e),
            }
        };
        // Every group sent is answered (or failed) before the last line.
        while let Some(outcome) = in_flight.next().await {
            if let Err(e) = self.answered(outcome)
                && result.is_ok()
            {
                return Err(e);
            }
        }
        result
    }

    /// Sends the group ending at the framer's current line; waits for the
    /// oldest group when too many are in flight.
    async fn send_group<'h>(
        &mut self,
        handle: Option<&'h IndexHandle>,
        group: &mut Vec<Change>,
        framer: &Framer,
        in_flight: &mut InFlight<'h>,
    ) -> std::result::Result<(), Stop> {
        let changes = std::mem::replace(group, Vec::with_capacity(GROUP_CHANGES));
        let sent = self.submit(handle, changes, framer.items()).await?;
        in_flight.push_back(sent);
        if in_flight.len() >= IN_FLIGHT
            && let Some(oldest) = in_flight.next().await
        {
            self.answered(oldest)?;
        }
        Ok(())
    }

    /// Sends a group; the future answers when it is durable (or why not).
    async fn submit<'h>(
        &mut self,
        handle: Option<&'h IndexHandle>,
        changes: Vec<Change>,
        lines: u64,
    ) -> std::result::Result<BoxFuture<'h, Outcome>, Stop> {
        let n = changes.len() as u64;
        let request = WriteRequest {
            changes,
            metadata: MetadataDelta::new(),
            expected_version: None,
        };
        match (handle, &self.state.replication) {
            // Standalone: to the Batcher, in order; answered later.
            (Some(h), None) => match h.submit(request, self.state.write_wait).await {
                Ok(pending) => Ok(Box::pin(async move {
                    (
                        lines,
                        n,
                        pending.wait().await.map(|v| v.0).map_err(write_error),
                    )
                })),
                Err(e) => Err(Stop::Write(write_error(e))),
            },
            // Through the stream: one group at a time, in order.
            _ => {
                let done = write(&self.state, &self.index, request, None).await;
                Ok(Box::pin(futures::future::ready((lines, n, done))))
            }
        }
    }

    /// Records a group's answer as durable and tells the client.
    fn answered(&mut self, outcome: Outcome) -> std::result::Result<(), Stop> {
        let (lines, changes, version) = outcome;
        if self.failed {
            return Ok(());
        }
        let version = version.map_err(|e| {
            self.failed = true;
            Stop::Write(e)
        })?;
        self.durable = Progress {
            lines: self.durable.lines.max(lines),
            changes: self.durable.changes + changes,
            version: self.durable.version.max(version),
        };
        metrics::counter!("fpnode_stream_ingest_changes_total").increment(changes);
        let p = self.durable;
        let seconds = self.started.elapsed().as_secs_f64();
        let line = json_line(&json!({
            "lines": p.lines,
            "changes": p.changes,
            "version": p.version,
            "changes_per_second": rate(p.changes, seconds),
        }));
        // Progress never waits for the client to read it: a client that
        // sends its whole body before reading the answer would otherwise
        // block its own body. Lines it is not reading are skipped (each one
        // holds the totals so far); the last line always comes.
        let _ = self.tx.try_send(line);
        Ok(())
    }
}

fn rate(changes: u64, seconds: f64) -> u64 {
    if seconds > 0.0 {
        (changes as f64 / seconds) as u64
    } else {
        0
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
