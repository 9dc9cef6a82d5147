//! What each background job does (docs/api.md "Jobs"): a request becomes a
//! [`JobSpec`] and a [`JobWork`] that the job supervisor runs
//! (`fpnode_actors::jobs`). `import` applies a file of fingerprints through
//! the write path, `export` and `snapshot` write files under the export
//! directory, `compact` and `verify` work on the index's segments.

mod import;
mod maintenance;
mod output;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fpnode_actors::IndexHandle;
use fpnode_actors::jobs::{JobCtl, JobError, JobSpec, JobWork};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::cli::InputFormat;

pub use import::import_upload;

/// Where jobs read and write files.
#[derive(Debug, Clone)]
pub struct JobDirs {
    /// Import jobs read files only under this directory (canonical);
    /// `None`: file imports are refused (uploads still work).
    pub import: Option<PathBuf>,
    /// Export and snapshot jobs write their files here.
    pub export: PathBuf,
    /// The largest body `POST /:index/_import` accepts.
    pub max_upload_bytes: u64,
    /// Uploads being written at once (more: `503 TooManyJobs`).
    pub uploads: Arc<tokio::sync::Semaphore>,
}

/// Uploads written to disk at once.
pub const MAX_UPLOADS: usize = 4;

/// `POST /_jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub kind: String,
    pub index: String,
    /// `import`: the file, relative to the import directory.
    #[serde(default)]
    pub file: Option<String>,
    /// `import`, `export`: `ndjson` (default) or `msgpack`.
    #[serde(default)]
    pub format: Option<String>,
    /// At most this many units of progress per second.
    #[serde(default)]
    pub max_rate: Option<f64>,
}

pub fn input_format(name: Option<&str>) -> Result<InputFormat, ApiError> {
    match name {
        None | Some("ndjson") => Ok(InputFormat::Ndjson),
        Some("msgpack") => Ok(InputFormat::Msgpack),
        Some(_) => Err(ApiError::InvalidJob),
    }
}

fn format_name(f: InputFormat) -> &'static str {
    match f {
        InputFormat::Ndjson => "ndjson",
        InputFormat::Msgpack => "msgpack",
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> JobError {
    JobError::Failed(format!("{what}: {e}"))
}

/// A file removed when this is dropped: an upload, whether its job ran,
/// was cancelled while queued or never started.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "upload not removed");
        }
    }
}

/// The start of an output file's name: the index's name, cut so the whole
/// name stays within the file system's 255 bytes.
fn file_stem(index: &str) -> &str {
    &index[..index.len().min(160)]
}

/// Runs `f` on a blocking thread (a panic there is the job's failure).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JobError> + Send + 'static,
) -> Result<T, JobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| failed("the job's thread failed", e))?
}

/// The job a request asks for, checked: unknown kinds, parameters a kind
/// does not take and files outside the import directory are refused here,
/// before anything is queued.
pub async fn plan(state: &AppState, req: JobRequest) -> Result<(JobSpec, JobWork), ApiError> {
    if !fpnode_actors::registry::valid_index_name(&req.index) {
        return Err(ApiError::InvalidIndexName);
    }
    if req.max_rate.is_some_and(|r| !r.is_finite() || r <= 0.0) {
        return Err(ApiError::InvalidJob);
    }
    let local = |state: &AppState| state.node.is_some();
    let unit = match req.kind.as_str() {
        "import" => "bytes",
        "export" => "fingerprints",
        "snapshot" | "verify" => "bytes",
        "compact" => "postings",
        "resync" => "messages",
        _ => return Err(ApiError::InvalidJob),
    };
    // Resync follows the stream again: replicas only.
    let replica = local(state) && state.replication.is_some();
    if req.kind == "resync" && !replica {
        return Err(ApiError::InvalidJob);
    }
    // A compaction is one merge, a resync the stream's pace: not paced.
    if req.max_rate.is_some() && matches!(req.kind.as_str(), "compact" | "resync") {
        return Err(ApiError::InvalidJob);
    }
    if req.file.is_some() && req.kind != "import" {
        return Err(ApiError::InvalidJob);
    }
    if req.format.is_some() && !matches!(req.kind.as_str(), "import" | "export") {
        return Err(ApiError::InvalidJob);
    }
    let format = input_format(req.format.as_deref())?;
    let mut params = json!({});
    let work: JobWork = match req.kind.as_str() {
        "import" => {
            let file = req.file.clone().ok_or(ApiError::InvalidJob)?;
            if local(state) {
                super::handlers::lookup_index(state, &req.index).await?;
            }
            let dirs = state.jobs_dirs()?.clone();
            let name = file.clone();
            let opened = tokio::task::spawn_blocking(move || open_import(&dirs, &name))
                .await
                .map_err(|_| ApiError::Internal)??;
            params = json!({"file": file, "format": format_name(format)});
            import::work(state.clone(), req.index.clone(), opened, format, None)
        }
        // A copy that failed to open is what a resync is for.
        "resync" => match super::handlers::lookup_index(state, &req.index).await {
            Ok(_) | Err(ApiError::IndexFailed) => {
                maintenance::resync(state.clone(), req.index.clone())
            }
            Err(e) => return Err(e),
        },
        kind => {
            // The other kinds work on this node's files: not on a proxy.
            if !local(state) {
                return Err(ApiError::InvalidJob);
            }
            let h = super::handlers::lookup_index(state, &req.index).await?;
            match kind {
                "export" => {
                    params = json!({"format": format_name(format)});
                    output::export(h, state.jobs_dirs()?.export.clone(), format)
                }
                "snapshot" => output::snapshot(h, state.jobs_dirs()?.export.clone()),
                "compact" => maintenance::compact(h),
                _ => maintenance::verify(h),
            }
        }
    };
    let spec = JobSpec {
        kind: req.kind,
        index: Some(req.index),
        params,
        unit,
        max_rate: req.max_rate,
    };
    Ok((spec, work))
}

/// Opens `file` under the import directory: a plain relative name (no
/// `..`, not absolute), a regular file, and where the opened descriptor
/// really leads (read back from `/proc/self/fd`, so neither a symlink nor a
/// rename between the check and the open can lead outside) still under
/// the directory. The job reads this descriptor, never the path again.
/// Blocking: call it on a blocking thread.
fn open_import(dirs: &JobDirs, file: &str) -> Result<std::fs::File, ApiError> {
    let root = dirs.import.as_ref().ok_or(ApiError::FileNotAllowed)?;
    let plain = Path::new(file)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !plain || file.is_empty() {
        return Err(ApiError::FileNotAllowed);
    }
    let f = match crate::opened::open_nonblocking(&root.join(file)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ApiError::FileNotFound),
        Err(_) => return Err(ApiError::FileNotAllowed),
    };
    let real = crate::opened::real_path(&f).map_err(|_| ApiError::FileNotAllowed)?;
    if !real.starts_with(root) {
        return Err(ApiError::FileNotAllowed);
    }
    if !f.metadata().map_err(|_| ApiError::FileNotFound)?.is_file() {
        return Err(ApiError::FileNotFound);
    }
    Ok(f)
}

/// A file written as `<name>.tmp`, made durable and renamed into place by
/// [`Output::keep`]; removed if dropped before.
struct Output {
    tmp: PathBuf,
    path: PathBuf,
    kept: bool,
}

impl Output {
    fn new(dir: &Path, name: String) -> Result<(Output, std::fs::File), JobError> {
        fpnode_segments::Fs::default()
            .create_dir_all(dir)
            .map_err(|e| failed("creating the export directory", e))?;
        let path = dir.join(name);
        let tmp = path.with_extension("tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| failed("creating the file", e))?;
        Ok((
            Output {
                tmp,
                path,
                kept: false,
            },
            file,
        ))
    }

    /// Syncs `file`, renames it into place and syncs the directory.
    fn keep(mut self, file: std::fs::File) -> Result<PathBuf, JobError> {
        file.sync_all().map_err(|e| failed("syncing the file", e))?;
        drop(file);
        fpnode_segments::Fs::default()
            .rename(&self.tmp, &self.path)
            .map_err(|e| failed("moving the file into place", e))?;
        self.kept = true;
        Ok(self.path.clone())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// The index a job works on, refused once it was deleted.
fn engine(h: &IndexHandle) -> Result<Arc<fpnode_segments::Index>, JobError> {
    if h.is_deleted() {
        return Err(JobError::Failed("the index was deleted".into()));
    }
    Ok(h.index.clone())
}

type Ctl = Arc<JobCtl>;
