//! The handlers of the HTTP API, one per endpoint of docs/api.md, by room:
//! `system` (health, metrics refresh, fallbacks, test hooks), `indexes`
//! (create, delete, status), `changes` (`_changes`: the change feed),
//! `changes_ws` (the same feeds over one WebSocket), `snapshot` (streaming
//! an archive), `fingerprints` (search, updates, single fingerprints), `ingest_stream` (`_stream`: a
//! change stream applied as it arrives), `jobs` (`/_jobs`), `node_events` (`GET /_changes`: the node's events) and `routing` (where a write goes in
//! each mode). This file holds what they share: request decoding, the
//! response format, error mapping and index lookup.

mod changes;
mod changes_stream;
mod changes_ws;
mod fingerprints;
mod indexes;
mod ingest_stream;
mod jobs;
mod node_events;
mod routing;
mod snapshot;
mod system;

use routing::{wait_for_index, write};

pub use changes::*;
pub use changes_ws::*;
pub use fingerprints::*;
pub use indexes::*;
pub use ingest_stream::*;
pub use jobs::*;
pub use node_events::*;
pub use snapshot::*;
pub use system::*;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fpnode_actors::index_supervisor::Child;
use fpnode_actors::node::NodeError;
use fpnode_actors::registry::valid_index_name;
use fpnode_actors::replication::{PublishError, fresh_request_key};
use fpnode_actors::{
    CreateIndex, CreateOutcome, IndexHandle, RegistryError, SearchError, WriteError, WriteRequest,
};
use fpnode_segments::{Change, MetadataDelta, SearchOptions};

use super::codec::{self, Format, Out, field, full, user};
use super::error::ApiError;
use super::types::*;
use super::{AppState, Limits, respond};

const DEFAULT_TIMEOUT_MS: u64 = 500;
const MAX_TIMEOUT_MS: u64 = 10_000;

/// An error answered in the negotiated format (empty body for HEAD).
pub struct Failure {
    format: Format,
    error: ApiError,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = Out::map([(field("error"), Out::Str(self.error.to_string()))]);
        let mut res = respond(self.format, self.error.status(), Some(body));
        if let Some(secs) = self.error.retry_after() {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

type Result<T, E = Failure> = std::result::Result<T, E>;

/// What every handler starts with: the formats and the body, read with a limit
/// (an extractor, so it must come last in a handler's arguments).
pub struct Req {
    format: Format,
    req_format: std::result::Result<Format, ApiError>,
    body: Bytes,
    /// The client's `Idempotency-Key` header (writes in replica mode).
    idempotency_key: Option<String>,
}

impl FromRequest<AppState> for Req {
    type Rejection = Failure;

    async fn from_request(req: Request, _state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        Req::read(&parts.headers, body).await
    }
}

impl Req {
    /// The body was already read (and held to the size limit) by the
    /// `read_body` middleware; this only collects the buffered bytes.
    async fn read(headers: &HeaderMap, body: Body) -> Result<Req> {
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|_| Failure {
                format: response_format(headers, true),
                error: ApiError::BadRequest,
            })?;
        let has_body = !body.is_empty();
        Ok(Req {
            format: response_format(headers, has_body),
            req_format: codec::request_format(headers, has_body),
            body,
            idempotency_key: headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .filter(|k| !k.is_empty())
                .map(str::to_string),
        })
    }

    fn fail(&self, error: ApiError) -> Failure {
        Failure {
            format: self.format,
            error,
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        if self.body.is_empty() {
            return Err(self.fail(ApiError::BadRequest));
        }
        let f = self.req_format.map_err(|e| self.fail(e))?;
        codec::decode(f, &self.body).map_err(|e| self.fail(e))
    }

    fn decode_or_default<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T> {
        if self.body.is_empty() {
            return Ok(T::default());
        }
        self.decode()
    }

    fn ok(&self, body: Out) -> Response {
        respond(self.format, StatusCode::OK, Some(body))
    }
}

fn response_format(headers: &HeaderMap, has_body: bool) -> Format {
    codec::response_format(headers, has_body)
}

fn node_error(e: NodeError) -> ApiError {
    match e {
        NodeError::Unavailable => ApiError::Unavailable,
        NodeError::IndexFailed(name, why) => {
            tracing::warn!(index = %name, %why, "request for an index that failed to open");
            ApiError::IndexFailed
        }
        NodeError::Registry(r) => match r {
            RegistryError::IndexAlreadyExists => ApiError::IndexAlreadyExists,
            RegistryError::OlderIndexAlreadyExists => ApiError::OlderIndexAlreadyExists,
            RegistryError::NewerIndexAlreadyExists => ApiError::NewerIndexAlreadyExists,
            RegistryError::IndexNotFound => ApiError::IndexNotFound,
            RegistryError::InvalidIndexName => ApiError::InvalidIndexName,
            RegistryError::Storage(e) => {
                tracing::error!(error = %e, "index storage error");
                ApiError::Internal
            }
            RegistryError::IndexFailed(_) => ApiError::IndexFailed,
            RegistryError::Busy => ApiError::Overloaded,
        },
    }
}

fn write_error(e: WriteError) -> ApiError {
    match e {
        WriteError::VersionMismatch { .. } => ApiError::VersionMismatch,
        WriteError::Overloaded(why) => {
            metrics::counter!("fpnode_shed_requests_total", "kind" => "write").increment(1);
            tracing::debug!(%why, "write shed");
            ApiError::Overloaded
        }
        WriteError::Unavailable(why) => {
            tracing::warn!(%why, "write unavailable");
            ApiError::Unavailable
        }
        WriteError::Invalid(_) => ApiError::BadRequest,
        WriteError::IndexDeleted => ApiError::IndexNotFound,
        WriteError::Gap { .. } => ApiError::Unavailable,
    }
}

fn publish_error(e: PublishError) -> ApiError {
    match e {
        PublishError::VersionMismatch { .. } => ApiError::VersionMismatch,
        PublishError::Conflict(r) => node_error(NodeError::Registry(r)),
        PublishError::Unavailable(why) => {
            tracing::warn!(%why, "write not accepted by the stream");
            metrics::counter!("fpnode_publish_failures_total").increment(1);
            ApiError::Unavailable
        }
        PublishError::Encode(why) => {
            tracing::error!(%why, "write could not be encoded for the stream");
            ApiError::Internal
        }
    }
}

/// The index `name` of this node (for the jobs).
pub(crate) async fn lookup_index(
    state: &AppState,
    name: &str,
) -> std::result::Result<Arc<IndexHandle>, ApiError> {
    lookup(state, name).await
}

/// A write through the mode's write path, with its idempotency key (jobs).
pub(crate) async fn write_through(
    state: &AppState,
    index: &str,
    request: WriteRequest,
    key: &str,
) -> std::result::Result<u64, ApiError> {
    write(state, index, request, Some(key)).await
}

/// The response format a request asks for (handlers that read their own body).
pub(crate) fn response_format_of(headers: &HeaderMap) -> Format {
    response_format(headers, false)
}

/// `body` in the negotiated format (serde's names: endpoints new in fpnode).
pub(crate) fn encode<T: serde::Serialize>(
    format: Format,
    status: StatusCode,
    body: &T,
) -> Response {
    let bytes = match format {
        Format::Json => serde_json::to_vec(body).unwrap_or_default(),
        Format::MsgPack => rmp_serde::to_vec_named(body).unwrap_or_default(),
    };
    (
        status,
        [(header::CONTENT_TYPE, format.content_type())],
        bytes,
    )
        .into_response()
}

/// How long, and how much of, a body a handler that stopped early still
/// reads (and drops), so a client that is still sending and not yet
/// reading gets the answer instead of a broken pipe.
pub(crate) const DRAIN_FOR: Duration = Duration::from_secs(5);
const DRAIN_BYTES: usize = 256 << 20;

/// Reads and drops what is left of a body, within [`DRAIN_FOR`] and 256 MiB.
pub(crate) async fn drain_body(data: &mut axum::body::BodyDataStream) {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + DRAIN_FOR;
    let mut drained = 0usize;
    while drained < DRAIN_BYTES {
        match tokio::time::timeout_at(deadline, data.next()).await {
            Ok(Some(Ok(chunk))) => drained += chunk.len(),
            _ => break,
        }
    }
}

/// An error answered in `format`.
pub(crate) fn fail_with(format: Format, error: ApiError) -> Failure {
    Failure { format, error }
}

async fn lookup(state: &AppState, name: &str) -> std::result::Result<Arc<IndexHandle>, ApiError> {
    if !valid_index_name(name) {
        return Err(ApiError::InvalidIndexName);
    }
    state
        .node()?
        .get(name)
        .await
        .map_err(node_error)?
        .ok_or(ApiError::IndexNotFound)
}

fn fingerprint_id(raw: &str) -> std::result::Result<u32, ApiError> {
    match raw.parse::<u64>() {
        Ok(id) if id > 0 && id <= u64::from(u32::MAX) => Ok(id as u32),
        _ => Err(ApiError::InvalidFingerprintId),
    }
}

fn check_id(id: u64) -> std::result::Result<u32, ApiError> {
    if id == 0 || id > u64::from(u32::MAX) {
        Err(ApiError::InvalidFingerprintId)
    } else {
        Ok(id as u32)
    }
}
