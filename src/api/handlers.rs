//! One handler per endpoint of DESIGN.md §7.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Path, Request, State};
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
use super::{AppState, respond};

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

/// Applies a write to `index`: locally (standalone), or through the stream
/// (replica: answered once the stream acknowledged it and this node applied
/// it; proxy: once the stream acknowledged it).
async fn write(
    state: &AppState,
    index: &str,
    request: WriteRequest,
    key: Option<&str>,
) -> std::result::Result<u64, ApiError> {
    if let (Some(replication), Some(proxy)) = (&state.replication, &state.proxy) {
        if !valid_index_name(index) {
            return Err(ApiError::InvalidIndexName);
        }
        match replication
            .index_record(index)
            .await
            .map_err(publish_error)?
        {
            Some((record, _)) if !record.d => {}
            _ => return Err(ApiError::IndexNotFound),
        }
        let key = key.map_or_else(fresh_request_key, str::to_string);
        return match replication
            .publish_update(index, &request, &key)
            .await
            .map_err(publish_error)?
        {
            Some(version) => Ok(version),
            None => Ok(proxy.index_version(index).await.unwrap_or(0)),
        };
    }
    let h = lookup(state, index).await?;
    let Some(replication) = &state.replication else {
        return h
            .write(request, state.write_wait)
            .await
            .map(|v| v.0)
            .map_err(write_error);
    };
    if let Some(why) = h.replica.as_ref().and_then(|r| r.diverged()) {
        tracing::warn!(index = %h.name, %why, "write refused: the index stopped following the stream");
        return Err(ApiError::Unavailable);
    }
    let _permit = tokio::time::timeout(state.write_wait, h.write_permits.clone().acquire_owned())
        .await
        .map_err(|_| write_error(WriteError::Overloaded("too many writes in flight".into())))?
        .map_err(|_| ApiError::Unavailable)?;
    let key = key.map_or_else(fresh_request_key, str::to_string);
    let Some(version) = replication
        .publish_update(&h.name, &request, &key)
        .await
        .map_err(publish_error)?
    else {
        return Ok(h.version().0);
    };
    if h.wait_applied(version, replication.opts.apply_wait).await {
        return Ok(version);
    }
    if h.is_deleted() {
        return Err(ApiError::IndexNotFound);
    }
    tracing::warn!(index = %h.name, version, "write is in the stream but was not applied here in time");
    Err(ApiError::Unavailable)
}

/// Waits until this node's index `name` satisfies `done` (replica-mode
/// lifecycle changes land through the stream), at most `wait`.
async fn wait_for_index<F>(
    state: &AppState,
    name: &str,
    wait: Duration,
    done: F,
) -> std::result::Result<Option<Arc<IndexHandle>>, ApiError>
where
    F: Fn(Option<&IndexHandle>) -> bool,
{
    let deadline = Instant::now() + wait;
    loop {
        let h = state.node()?.get(name).await.map_err(node_error)?;
        if done(h.as_deref()) {
            return Ok(h);
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                index = name,
                "index change is in the stream but was not applied here in time"
            );
            return Err(ApiError::Unavailable);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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

// --- system ---

pub async fn health() -> &'static str {
    "OK\n"
}

pub async fn metrics_text(State(state): State<AppState>) -> Response {
    if let Some(node) = &state.node
        && let Ok(indexes) = node.list().await
    {
        for h in indexes {
            let snap = h.index.snapshot();
            let name = h.name.clone();
            metrics::gauge!("fpindex_docs", "index" => name.clone()).set(snap.num_docs as f64);
            metrics::gauge!("fpindex_version", "index" => name.clone()).set(snap.position.0 as f64);
            let stats = h.index.stats();
            metrics::gauge!("fpnode_segments", "index" => name.clone(), "kind" => "memory")
                .set(stats.memory_segments as f64);
            metrics::gauge!("fpnode_segments", "index" => name.clone(), "kind" => "file")
                .set(stats.file_segments as f64);
            metrics::gauge!("fpnode_segment_bytes", "index" => name.clone())
                .set(stats.file_bytes as f64);
            metrics::gauge!("fpnode_memory_postings", "index" => name.clone())
                .set(stats.memory_postings as f64);
            metrics::gauge!("fpnode_write_permits_available", "index" => name)
                .set(h.write_permits.available_permits() as f64);
        }
    }
    if let Some(node) = &state.node {
        metrics::gauge!("fpnode_search_queue_depth").set(node.search.queue_depth() as f64);
    }
    let text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `413 PayloadTooLarge` in the format the client asked for.
pub fn too_large(headers: &HeaderMap) -> Failure {
    Failure {
        format: response_format(headers, true),
        error: ApiError::PayloadTooLarge,
    }
}

pub async fn not_found(headers: HeaderMap) -> Failure {
    Failure {
        format: response_format(&headers, false),
        error: ApiError::NotFound,
    }
}

pub async fn method_not_allowed(headers: HeaderMap) -> Failure {
    Failure {
        format: response_format(&headers, false),
        error: ApiError::MethodNotAllowed,
    }
}

// --- index management ---

pub async fn index_health(
    State(state): State<AppState>,
    Path(index): Path<String>,
    headers: HeaderMap,
) -> Response {
    let format = response_format(&headers, false);
    match lookup(&state, &index).await {
        Ok(h) if h.is_deleted() => StatusCode::NOT_FOUND.into_response(),
        Ok(h) if h.is_loading() => (StatusCode::SERVICE_UNAVAILABLE, "LOADING\n").into_response(),
        Ok(h) if h.is_healthy() => "OK\n".into_response(),
        Ok(_) => Failure {
            format,
            error: ApiError::IndexNotReady,
        }
        .into_response(),
        Err(ApiError::IndexNotFound) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => Failure { format, error }.into_response(),
    }
}

pub async fn get_index(
    State(state): State<AppState>,
    Path(index): Path<String>,
    r: Req,
) -> Result<Response> {
    let h = lookup(&state, &index).await.map_err(|e| r.fail(e))?;
    let snap = h.index.snapshot();
    let (min_id, max_id) = snap.id_range();
    let metadata = Out::map(
        snap.metadata
            .iter()
            .map(|(k, v)| (user(k.clone()), Out::Str(v.clone()))),
    );
    Ok(r.ok(Out::map([
        (field("version"), Out::UInt(snap.position.0)),
        (field("metadata"), metadata),
        (
            field("stats"),
            Out::map([
                (full("min_doc_id"), Out::UInt(u64::from(min_id))),
                (full("max_doc_id"), Out::UInt(u64::from(max_id))),
                (full("num_segments"), Out::UInt(snap.num_segments() as u64)),
                (full("num_docs"), Out::UInt(snap.num_docs)),
            ]),
        ),
    ])))
}

pub async fn create_index(
    State(state): State<AppState>,
    Path(index): Path<String>,
    r: Req,
) -> Result<Response> {
    if !valid_index_name(&index) {
        return Err(r.fail(ApiError::InvalidIndexName));
    }
    let req: CreateIndexRequest = r.decode_or_default()?;
    let req = CreateIndex {
        expect_does_not_exist: req.expect_does_not_exist,
        generation: req.generation,
    };
    let outcome = match &state.replication {
        None => state
            .node()
            .map_err(|e| r.fail(e))?
            .create(&index, req)
            .await
            .map_err(|e| r.fail(node_error(e)))?,
        Some(replication) if state.proxy.is_some() => {
            let (record, seq) = replication
                .publish_create(&index, &req)
                .await
                .map_err(|e| r.fail(publish_error(e)))?;
            let version = match &state.proxy {
                Some(proxy) => proxy.index_version(&index).await.unwrap_or(seq).max(seq),
                None => seq,
            };
            CreateOutcome {
                version,
                ready: true,
                generation: record.g,
            }
        }
        Some(replication) => {
            let (record, _) = replication
                .publish_create(&index, &req)
                .await
                .map_err(|e| r.fail(publish_error(e)))?;
            let h = wait_for_index(&state, &index, replication.opts.apply_wait, |h| {
                h.is_some_and(|h| h.generation.0 == record.g)
            })
            .await
            .map_err(|e| r.fail(e))?
            .ok_or_else(|| r.fail(ApiError::Unavailable))?;
            // A new index is ready as soon as its subscriber found nothing to
            // replay; one with a backlog answers `ready: false`.
            let wait = replication.opts.apply_wait.min(Duration::from_secs(1));
            let _ =
                wait_for_index(&state, &index, wait, |h| h.is_none_or(|h| !h.is_loading())).await;
            CreateOutcome {
                version: h.version().0,
                ready: !h.is_loading(),
                generation: record.g,
            }
        }
    };
    Ok(r.ok(Out::map([
        (field("version"), Out::UInt(outcome.version)),
        (field("ready"), Out::Bool(outcome.ready)),
        (field("generation"), Out::UInt(outcome.generation)),
    ])))
}

pub async fn delete_index(
    State(state): State<AppState>,
    Path(index): Path<String>,
    r: Req,
) -> Result<Response> {
    if !valid_index_name(&index) {
        return Err(r.fail(ApiError::InvalidIndexName));
    }
    let req: DeleteIndexRequest = r.decode_or_default()?;
    let deleted = match &state.replication {
        None => state
            .node()
            .map_err(|e| r.fail(e))?
            .delete(&index, req.expect_exists)
            .await
            .map_err(|e| r.fail(node_error(e)))?,
        Some(replication) => match replication
            .publish_delete(&index)
            .await
            .map_err(|e| r.fail(publish_error(e)))?
        {
            None if req.expect_exists => return Err(r.fail(ApiError::IndexNotFound)),
            None => false,
            Some(_) if state.proxy.is_some() => true,
            Some(g) => {
                wait_for_index(&state, &index, replication.opts.apply_wait, |h| {
                    h.is_none_or(|h| h.generation.0 > g)
                })
                .await
                .map_err(|e| r.fail(e))?;
                true
            }
        },
    };
    Ok(r.ok(Out::map([(field("deleted"), Out::Bool(deleted))])))
}

pub async fn index_status(
    State(state): State<AppState>,
    Path(index): Path<String>,
    r: Req,
) -> Result<Response> {
    let h = lookup(&state, &index).await.map_err(|e| r.fail(e))?;
    let s = h.index.stats();
    let mode = if state.replication.is_some() {
        "replica"
    } else {
        "standalone"
    };
    let mut status = vec![
        (full("mode"), Out::Str(mode.into())),
        (full("generation"), Out::UInt(s.generation.0)),
        (full("version"), Out::UInt(s.applied.0)),
        (full("applied_version"), Out::UInt(s.applied.0)),
        (full("durable_version"), Out::UInt(s.durable.0)),
        (
            full("checkpoint_version"),
            Out::UInt(s.checkpoint_position.0),
        ),
        (full("healthy"), Out::Bool(h.is_healthy())),
        (full("num_docs"), Out::UInt(s.num_docs)),
        (full("memory_segments"), Out::UInt(s.memory_segments as u64)),
        (full("file_segments"), Out::UInt(s.file_segments as u64)),
        (full("memory_postings"), Out::UInt(s.memory_postings)),
        (full("file_bytes"), Out::UInt(s.file_bytes)),
    ];
    if let (Some(replication), Some(replica)) = (&state.replication, &h.replica) {
        let ms = |d: Option<Duration>| d.map_or(Out::Nil, |d| Out::UInt(d.as_millis() as u64));
        status.push((
            full("stream"),
            Out::map([
                (full("connected"), Out::Bool(replication.is_connected())),
                (
                    full("disconnected_ms"),
                    ms(replication.link.disconnected_for()),
                ),
                (full("loading"), Out::Bool(replica.loading())),
                (full("lag"), Out::UInt(replica.pending())),
                (full("last_fetch_ms"), ms(replica.since_last_fetch())),
                (
                    full("diverged"),
                    replica.diverged().map_or(Out::Nil, Out::Str),
                ),
            ]),
        ));
    }
    Ok(r.ok(Out::map(status)))
}

/// Streams an archive of the index (docs/segment-format.md): a checkpoint
/// first, so it holds everything applied so far, then the segment files, read
/// on a blocking thread and sent in 1 MiB chunks through a bounded channel.
pub async fn index_snapshot(
    State(state): State<AppState>,
    Path(index): Path<String>,
    r: Req,
) -> Result<Response> {
    let h = lookup(&state, &index).await.map_err(|e| r.fail(e))?;
    let engine = h.index.clone();
    let snapshot = tokio::task::spawn_blocking(move || {
        engine.checkpoint()?;
        Ok::<_, fpnode_segments::Error>(engine.snapshot())
    })
    .await
    .map_err(|_| r.fail(ApiError::Internal))?
    .map_err(|e| {
        tracing::error!(error = %e, "snapshot checkpoint failed");
        r.fail(ApiError::Unavailable)
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(e) = fpnode_segments::archive::write(&snapshot, out) {
            tracing::warn!(error = %e, "snapshot stream ended early");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

const CHUNK: usize = 1 << 20;

/// Sends what is written to it as body chunks; blocks while the client is slow
/// (the channel is bounded), fails once the client is gone.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

// --- search and updates ---

pub async fn search(
    State(state): State<AppState>,
    Path(index): Path<String>,
    r: Req,
) -> Result<Response> {
    let req: SearchRequest = r.decode()?;
    if req.query.len() > state.limits.max_query {
        return Err(r.fail(ApiError::QueryTooLong));
    }
    let h = lookup(&state, &index).await.map_err(|e| r.fail(e))?;
    if h.is_loading() {
        return Err(r.fail(ApiError::Loading));
    }
    let timeout = match req.timeout {
        None | Some(0) => DEFAULT_TIMEOUT_MS,
        Some(t) => t.min(MAX_TIMEOUT_MS),
    };
    let opts = SearchOptions {
        limit: req.limit.map(|l| l.min(1000) as usize),
        min_score: req.min_score,
        score_pct: req.score_pct,
        deadline: Some(Instant::now() + Duration::from_millis(timeout)),
        prefetch_above: state.prefetch_above,
    };
    let started = Instant::now();
    metrics::counter!("fpindex_searches_total").increment(1);
    let hits = state
        .node()
        .map_err(|e| r.fail(e))?
        .search
        .search(h.index.snapshot(), req.query, opts)
        .await
        .map_err(|e| {
            r.fail(match e {
                SearchError::Overloaded => ApiError::Overloaded,
                SearchError::Timeout => ApiError::SearchTimeout,
                SearchError::Failed(_) | SearchError::Panicked(_) => ApiError::SearchFailed,
            })
        })?;
    metrics::histogram!("fpindex_search_duration_seconds").record(started.elapsed().as_secs_f64());
    if hits.is_empty() {
        metrics::counter!("fpindex_search_misses_total").increment(1);
    } else {
        metrics::counter!("fpindex_search_hits_total").increment(1);
    }
    let results = hits
        .into_iter()
        .map(|hit| {
            Out::map([
                (field("id"), Out::UInt(u64::from(hit.id))),
                (field("score"), Out::UInt(u64::from(hit.score))),
            ])
        })
        .collect();
    Ok(r.ok(Out::map([(field("results"), Out::List(results))])))
}

pub async fn update(
    State(state): State<AppState>,
    Path(index): Path<String>,
    r: Req,
) -> Result<Response> {
    let req: UpdateRequest = r.decode()?;
    if req.changes.len() > state.limits.max_changes {
        return Err(r.fail(ApiError::TooManyChanges));
    }
    let mut changes = Vec::with_capacity(req.changes.len());
    for c in req.changes {
        changes.push(match c {
            ChangeIn::Insert(i) => {
                if i.hashes.len() > state.limits.max_hashes {
                    return Err(r.fail(ApiError::TooManyHashes));
                }
                Change::Insert {
                    id: check_id(i.id).map_err(|e| r.fail(e))?,
                    hashes: i.hashes,
                }
            }
            ChangeIn::Delete(d) => Change::Delete {
                id: check_id(d.id).map_err(|e| r.fail(e))?,
            },
        });
    }
    let metadata: MetadataDelta = req
        .metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, Some(v)))
        .collect();
    let request = WriteRequest {
        changes,
        metadata,
        expected_version: req.expected_version,
    };
    let version = write(&state, &index, request, r.idempotency_key.as_deref())
        .await
        .map_err(|e| r.fail(e))?;
    Ok(r.ok(Out::map([(field("version"), Out::UInt(version))])))
}

// --- single fingerprints ---

pub async fn get_fingerprint(
    State(state): State<AppState>,
    Path((index, id)): Path<(String, String)>,
    r: Req,
) -> Result<Response> {
    let h = lookup(&state, &index).await.map_err(|e| r.fail(e))?;
    let id = fingerprint_id(&id).map_err(|e| r.fail(e))?;
    let info = h
        .index
        .snapshot()
        .get(id)
        .ok_or_else(|| r.fail(ApiError::FingerprintNotFound))?;
    Ok(r.ok(Out::map([(field("version"), Out::UInt(info.version.0))])))
}

pub async fn put_fingerprint(
    State(state): State<AppState>,
    Path((index, id)): Path<(String, String)>,
    r: Req,
) -> Result<Response> {
    let id = fingerprint_id(&id).map_err(|e| r.fail(e))?;
    let req: PutFingerprintRequest = r.decode()?;
    if req.hashes.len() > state.limits.max_hashes {
        return Err(r.fail(ApiError::TooManyHashes));
    }
    let change = Change::Insert {
        id,
        hashes: req.hashes,
    };
    write_one(&state, &index, change, &r)
        .await
        .map_err(|e| r.fail(e))?;
    Ok(r.ok(Out::empty()))
}

pub async fn delete_fingerprint(
    State(state): State<AppState>,
    Path((index, id)): Path<(String, String)>,
    r: Req,
) -> Result<Response> {
    let id = fingerprint_id(&id).map_err(|e| r.fail(e))?;
    if !valid_index_name(&index) {
        return Err(r.fail(ApiError::InvalidIndexName));
    }
    write_one(&state, &index, Change::Delete { id }, &r)
        .await
        .map_err(|e| r.fail(e))?;
    Ok(r.ok(Out::empty()))
}

async fn write_one(
    state: &AppState,
    index: &str,
    change: Change,
    r: &Req,
) -> std::result::Result<(), ApiError> {
    let request = WriteRequest {
        changes: vec![change],
        ..WriteRequest::default()
    };
    write(state, index, request, r.idempotency_key.as_deref())
        .await
        .map(|_| ())
}

// --- test hooks ---

pub async fn inject_failure(
    State(state): State<AppState>,
    Path((index, child)): Path<(String, String)>,
) -> StatusCode {
    let Some(child) = Child::from_name(&child) else {
        return StatusCode::BAD_REQUEST;
    };
    if let Some(node) = &state.node {
        node.inject_failure(&index, child).await;
    }
    StatusCode::ACCEPTED
}
