//! The HTTP API, compatible with fpindex (see docs/api.md).
//!
//! `router(state)` builds the whole API; handlers live in `handlers`, the wire
//! formats in `codec`, the error names in `error`. Every handler works out the
//! response format first, so even a malformed request gets its error in the
//! format the client asked for.

pub mod codec;
pub mod error;
pub mod framing;
mod handlers;
pub mod index_metrics;
pub mod jobs;
pub mod proxy;
pub mod proxy_ws;
mod types;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fpnode_actors::Node;
use fpnode_actors::replication::Replication;
use metrics_exporter_prometheus::PrometheusHandle;

pub use codec::Format;

/// Limits that protect the node from oversized requests (docs/api.md).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_changes: usize,
    pub max_hashes: usize,
    pub max_query: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 << 20,
            max_changes: 100_000,
            max_hashes: 100_000,
            max_query: 100_000,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    /// The local indexes (none in proxy mode).
    pub node: Option<Node>,
    pub limits: Limits,
    /// Searches prefetch their blocks once an index's files are this large
    /// (`--prefetch`); `None`: never.
    pub prefetch_above: Option<u64>,
    pub metrics: Option<PrometheusHandle>,
    /// How long a write waits for a free slot before `503 Overloaded`.
    pub write_wait: Duration,
    /// Enables `POST /_debug/fail/{index}/{child}` (tests only).
    pub fault_injection: bool,
    /// Replica and proxy modes: writes go to this stream.
    pub replication: Option<Arc<Replication>>,
    /// Proxy mode: the replicas reads are forwarded to.
    pub proxy: Option<Arc<proxy::Proxy>>,
    /// The node's events (`GET /_changes`).
    pub events: Option<Arc<fpnode_actors::events::NodeEvents>>,
    /// Background jobs (`/_jobs`) and where they read and write files.
    pub jobs: Option<(fpnode_actors::jobs::Jobs, jobs::JobDirs)>,
    /// The data directory (none in proxy mode): its disk's free space is
    /// exported at each scrape.
    pub data_dir: Option<std::path::PathBuf>,
    /// `standalone`, `replica` or `proxy` (`fpnode_build_info`).
    pub mode: &'static str,
    /// Audio decoding, for search by audio (docs/api.md, "Audio").
    pub audio: Option<Arc<crate::audio_api::AudioService>>,
}

impl AppState {
    /// The local indexes; a proxy has none (its read routes forward instead).
    pub fn node(&self) -> Result<&Node, error::ApiError> {
        self.node.as_ref().ok_or(error::ApiError::NotFound)
    }

    pub fn jobs(&self) -> Result<&fpnode_actors::jobs::Jobs, error::ApiError> {
        self.jobs
            .as_ref()
            .map(|(j, _)| j)
            .ok_or(error::ApiError::NotFound)
    }

    pub fn jobs_dirs(&self) -> Result<&jobs::JobDirs, error::ApiError> {
        self.jobs
            .as_ref()
            .map(|(_, d)| d)
            .ok_or(error::ApiError::NotFound)
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("limits", &self.limits)
            .finish()
    }
}

pub fn router(state: AppState) -> Router {
    use handlers::*;
    let r = Router::new()
        .route("/_health", get(health))
        .route("/_ready", get(ready))
        .route("/_metrics", get(metrics_text))
        .route("/_jobs", get(list_jobs).post(start_job))
        .route("/_jobs/{id}", get(get_job).delete(cancel_job))
        .route("/{index}/_update", post(update));
    // A proxy answers reads by forwarding them to a replica; writes are the
    // same handlers in every mode (they publish to the stream).
    let mut r = if state.proxy.is_some() {
        use proxy::forward;
        r.route("/{index}/_health", get(forward))
            .route("/{index}/_status", get(forward))
            .route("/{index}/_changes", get(forward))
            .route("/{index}/_snapshot", get(forward))
            .route("/{index}/_search", post(forward))
            .route(
                "/{index}",
                get(forward).put(create_index).delete(delete_index),
            )
            .route(
                "/{index}/{id}",
                get(forward).put(put_fingerprint).delete(delete_fingerprint),
            )
    } else {
        r.route("/{index}/_health", get(index_health))
            .route("/{index}/_status", get(index_status))
            .route("/{index}/_changes", get(index_changes))
            .route("/{index}/_snapshot", get(index_snapshot))
            .route("/{index}/_search", post(search))
            .route(
                "/{index}",
                get(get_index).put(create_index).delete(delete_index),
            )
            .route(
                "/{index}/{id}",
                get(get_fingerprint)
                    .put(put_fingerprint)
                    .delete(delete_fingerprint),
            )
    };
    if state.fault_injection {
        r = r.route("/_debug/fail/{index}/{child}", post(inject_failure));
    }
    let buffered = r
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), read_body));
    // `_stream` reads its body as it arrives: no whole-body buffering, no
    // body size limit (docs/api.md).
    // `/_changes`: the node's events; upgraded to a WebSocket, the index
    // feeds (a proxy passes the socket through to a replica: docs/api.md).
    let unbuffered = Router::new()
        .route("/{index}/_stream", post(ingest_stream))
        .route("/{index}/_import", post(jobs::import_upload))
        .route("/_changes", get(changes_root));
    unbuffered
        .merge(buffered)
        .layer(middleware::from_fn(track_metrics))
        .with_state(state)
}

/// Reads every request body before routing, whether or not the handler needs
/// it (a body left unread makes the server close the connection, which a client
/// reusing it sees as a failed request), and enforces the body size limit for
/// every route: at once from `Content-Length`, else while reading.
async fn read_body(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let limit = state.limits.max_body_bytes;
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return handlers::too_large(&parts.headers).into_response();
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Err(_) => handlers::too_large(&parts.headers).into_response(),
    }
}

/// Counts requests and their latency by route template, not raw path.
async fn track_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("fpnode_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("fpnode_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// An API error as a response in `format` (`{"error": "<Name>"}`).
pub fn error_response(format: Format, error: error::ApiError) -> Response {
    handlers::fail_with(format, error).into_response()
}

pub(crate) fn respond(
    format: Format,
    status: axum::http::StatusCode,
    body: Option<codec::Out>,
) -> Response {
    match body {
        None => status.into_response(),
        Some(out) => (
            status,
            [(axum::http::header::CONTENT_TYPE, format.content_type())],
            out.encode(format),
        )
            .into_response(),
    }
}
