//! The `import` job: a file of fingerprints (the `fpnode export` format)
//! applied through the write path in groups, as `_update` would (so it
//! works in every mode), and `POST /:index/_import`, which spools an
//! uploaded body to disk and imports it the same way.
//!
//! A blocking thread reads and parses the file into groups of
//! [`GROUP`] inserts and hands them over a channel of two, so memory holds
//! at most three groups whatever the file's size. Each group is durable once
//! written; a cancel stops between groups and what was written stays.

use std::io::BufReader;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fpnode_actors::jobs::{JobError, JobSpec, JobWork};
use fpnode_actors::{WriteRequest, replication::fresh_request_key};
use fpnode_segments::{Change, MetadataDelta};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{AppState, Ctl, RemoveOnDrop, failed, format_name, input_format};
use crate::api::error::ApiError;
use crate::api::handlers;
use crate::cli::InputFormat;
use crate::records::{Counted, RecordError, for_each};

/// Fingerprints per write.
const GROUP: usize = 1_000;

/// The job reading `file` (opened and checked already); `upload`, if any,
/// is removed when the job ends or is dropped unrun.
pub(super) fn work(
    state: AppState,
    index: String,
    file: std::fs::File,
    format: InputFormat,
    upload: Option<RemoveOnDrop>,
) -> JobWork {
    Box::new(move |ctl: Ctl| {
        Box::pin(async move {
            let outcome = run(&state, &index, file, format, &ctl).await;
            // Unlinking a large file takes time: off the async threads.
            if let Some(upload) = upload {
                let _ = tokio::task::spawn_blocking(move || drop(upload)).await;
            }
            outcome
        })
    })
}

/// A group read: its inserts, the bytes and records read up to its end.
type Read = (Vec<Change>, u64, u64);

async fn run(
    state: &AppState,
    index: &str,
    file: std::fs::File,
    format: InputFormat,
    ctl: &Ctl,
) -> Result<Value, JobError> {
    let size = file
        .metadata()
        .map_err(|e| failed("reading the file's size", e))?
        .len();
    ctl.set_total(size);
    let max_hashes = state.limits.max_hashes;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Read, JobError>>(2);
    let reader = tokio::task::spawn_blocking(move || {
        let mut input = Counted::new(BufReader::with_capacity(1 << 20, file));
        let mut group = Vec::with_capacity(GROUP);
        let send = |item: Result<Read, JobError>| {
            tx.blocking_send(item)
                .map_err(|_| RecordError::Stopped("the job stopped".into()))
        };
        let read = for_each(&mut input, format, max_hashes, |input, n, id, hashes| {
            group.push(Change::Insert { id, hashes });
            if group.len() >= GROUP {
                send(Ok((std::mem::take(&mut group), input.bytes, n)))?;
            }
            Ok(())
        });
        match read {
            Ok(n) => {
                if !group.is_empty() {
                    let _ = send(Ok((group, input.bytes, n)));
                }
            }
            Err(RecordError::Stopped(_)) => {}
            Err(e) => {
                let _ = send(Err(JobError::Failed(e.to_string())));
            }
        }
    });
    // Standalone: groups go to the index's Batcher in order and up to
    // IN_FLIGHT wait for their answer at once (as `_stream` does);
    // through the stream (replica, proxy): one at a time.
    let handle = match state.replication {
        None => Some(
            handlers::lookup_index(state, index)
                .await
                .map_err(|e| failed("the index", e))?,
        ),
        Some(_) => None,
    };
    let depth = if handle.is_some() { IN_FLIGHT } else { 1 };
    let mut pending: FuturesOrdered<BoxFuture<'_, Answered>> = FuturesOrdered::new();
    let mut done = Done::default();
    let mut submitted = 0u64;
    let mut groups = 0u64;
    let mut stop = None;
    while let Some(item) = rx.recv().await {
        let (changes, read_to, read) = match item {
            Ok(group) => group,
            Err(e) => {
                stop = Some(e);
                break;
            }
        };
        // Paced here, before the group is written (its answer only
        // counts), taking the answers that come meanwhile.
        let paced = loop {
            tokio::select! {
                paced = ctl.pace(read_to) => break paced,
                Some(answered) = pending.next(), if !pending.is_empty() => {
                    if let Err(e) = done.take(answered, ctl) {
                        break Err(e);
                    }
                }
            }
        };
        if let Err(e) = paced {
            stop = Some(e);
            break;
        }
        let first = submitted + 1;
        submitted = read;
        let request = WriteRequest {
            changes,
            metadata: MetadataDelta::new(),
            expected_version: None,
        };
        match &handle {
            Some(h) => match h.submit(request, state.write_wait).await {
                Ok(p) => pending.push_back(Box::pin(async move {
                    let v = p.wait().await.map(|v| v.0).map_err(|e| e.to_string());
                    (v, first, read, read_to)
                })),
                Err(e) => {
                    stop = Some(JobError::Failed(format!(
                        "writing records {first}-{read}: {e}"
                    )));
                    break;
                }
            },
            None => {
                // One key per group: a publish retried inside the write
                // path is applied once.
                let key = format!("job-{}-{}-{}", ctl.id, groups, fresh_request_key());
                let v = handlers::write_through(state, index, request, &key)
                    .await
                    .map_err(|e| e.to_string());
                pending.push_back(Box::pin(futures::future::ready((v, first, read, read_to))));
            }
        }
        groups += 1;
        while pending.len() >= depth {
            if let Some(answered) = pending.next().await
                && let Err(e) = done.take(answered, ctl)
            {
                stop = Some(e);
                break;
            }
        }
        if stop.is_some() {
            break;
        }
    }
    // What was submitted is written whatever happens next: its answers
    // are taken, so the result (or the progress) counts it.
    while let Some(answered) = pending.next().await {
        if let Err(e) = done.take(answered, ctl) {
            stop.get_or_insert(e);
        }
    }
    drop(rx);
    let _ = reader.await;
    if let Some(e) = stop {
        return Err(e);
    }
    Ok(json!({"fingerprints": done.records, "version": done.version, "bytes": done.bytes}))
}

/// Groups written and waiting for their answer at once (standalone).
const IN_FLIGHT: usize = 4;

/// A group's answer: its version (or why not), its first and last record,
/// and the bytes read up to its end.
type Answered = (Result<u64, String>, u64, u64, u64);

/// What is written so far.
#[derive(Default)]
struct Done {
    bytes: u64,
    records: u64,
    version: Option<u64>,
}

impl Done {
    /// Counts a group's answer.
    fn take(&mut self, answered: Answered, ctl: &Ctl) -> Result<(), JobError> {
        let (v, first, read, read_to) = answered;
        let v = v.map_err(|e| JobError::Failed(format!("writing records {first}-{read}: {e}")))?;
        self.records = read;
        self.version = Some(v);
        ctl.add_done(read_to.saturating_sub(self.bytes));
        self.bytes = read_to;
        Ok(())
    }
}

#[derive(Debug, serde::Deserialize)]
pub struct UploadQuery {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    max_rate: Option<f64>,
}

/// `POST /:index/_import`: the body (NDJSON or MessagePack fingerprints,
/// by `Content-Type` or `?format=`) is written to the uploads directory as
/// it arrives, then imported by a job; answers `202` with the job once the
/// body is on disk. The file is removed when the job ends.
pub async fn import_upload(
    State(state): State<AppState>,
    Path(index): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let format = handlers::response_format_of(&headers);
    let mut data = body.into_data_stream();
    match upload(&state, index, q, &headers, &mut data).await {
        Ok(job) => handlers::encode(format, StatusCode::ACCEPTED, &job),
        Err(e) => {
            // Refused early: what the client is still sending is read (for
            // a while) so it gets this answer, not a broken pipe.
            handlers::drain_body(&mut data).await;
            handlers::fail_with(format, e).into_response()
        }
    }
}

async fn upload(
    state: &AppState,
    index: String,
    q: UploadQuery,
    headers: &HeaderMap,
    data: &mut axum::body::BodyDataStream,
) -> Result<fpnode_actors::jobs::JobView, ApiError> {
    let jobs = state.jobs()?;
    let dirs = state.jobs_dirs()?;
    if !fpnode_actors::registry::valid_index_name(&index) {
        return Err(ApiError::InvalidIndexName);
    }
    if q.max_rate.is_some_and(|r| !r.is_finite() || r <= 0.0) {
        return Err(ApiError::InvalidJob);
    }
    let by_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let format = match (q.format.as_deref(), by_type.as_deref()) {
        (Some(f), _) => input_format(Some(f))?,
        (None, Some("application/msgpack" | "application/x-msgpack")) => InputFormat::Msgpack,
        (None, None | Some("application/x-ndjson" | "application/json" | "application/jsonl")) => {
            InputFormat::Ndjson
        }
        (None, Some(_)) => return Err(ApiError::UnsupportedMediaType),
    };
    if state.node.is_some() {
        handlers::lookup_index(state, &index).await?;
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > dirs.max_upload_bytes) {
        return Err(ApiError::PayloadTooLarge);
    }
    // Refused before the body is read: a full queue, or as many uploads
    // being written as allowed (each may be large, on the data volume).
    if !jobs.has_room() {
        return Err(ApiError::TooManyJobs);
    }
    let Ok(_spooling) = dirs.uploads.clone().try_acquire_owned() else {
        return Err(ApiError::TooManyJobs);
    };
    let dir = jobs.uploads_dir();
    tokio::fs::create_dir_all(&dir).await.map_err(|e| {
        tracing::error!(dir = %dir.display(), error = %e, "uploads directory not created");
        ApiError::Internal
    })?;
    let upload = RemoveOnDrop(dir.join(format!("{}.upload", fresh_request_key())));
    let size = spool(&upload.0, data, dirs.max_upload_bytes).await?;
    let file = std::fs::File::open(&upload.0).map_err(|e| {
        tracing::error!(path = %upload.0.display(), error = %e, "upload not reopened");
        ApiError::Internal
    })?;
    let spec = JobSpec {
        kind: "import".into(),
        index: Some(index.clone()),
        params: json!({"upload_bytes": size, "format": format_name(format)}),
        unit: "bytes",
        max_rate: q.max_rate,
    };
    // The file goes with the job: removed when it ends, or with the job
    // if it is refused, cancelled while queued or never started.
    let work = work(state.clone(), index, file, format, Some(upload));
    jobs.submit(spec, work).await.map_err(handlers::jobs_error)
}

/// Writes the body to `path` as it arrives, at most `limit` bytes.
async fn spool(
    path: &std::path::Path,
    stream: &mut axum::body::BodyDataStream,
    limit: u64,
) -> Result<u64, ApiError> {
    let mut file = tokio::fs::File::create(path).await.map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "upload file not created");
        ApiError::Internal
    })?;
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::BadRequest)?;
        size += chunk.len() as u64;
        if size > limit {
            return Err(ApiError::PayloadTooLarge);
        }
        file.write_all(&chunk).await.map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "upload not written");
            ApiError::Unavailable
        })?;
    }
    file.flush().await.map_err(|_| ApiError::Unavailable)?;
    Ok(size)
}
