//! `/_jobs`: start, list, read and cancel background jobs (docs/api.md
//! "Jobs"). What each kind does is in `api::jobs`.

use fpnode_actors::jobs::{JobView, JobsError};

use super::*;
use crate::api::jobs::{JobRequest, plan};

/// How long `DELETE /_jobs/:id` waits for a running job to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

pub fn jobs_error(e: JobsError) -> ApiError {
    match e {
        JobsError::NotFound(_) => ApiError::JobNotFound,
        JobsError::Finished(_) => ApiError::JobFinished,
        JobsError::QueueFull(_) => ApiError::TooManyJobs,
        JobsError::Unavailable => ApiError::Unavailable,
        JobsError::Store { .. } => {
            tracing::error!(error = %e, "job record not written");
            ApiError::Internal
        }
    }
}

/// The jobs and the id `raw` names (one that is not a number names no job).
fn jobs_and_id<'s>(
    state: &'s AppState,
    raw: &str,
) -> std::result::Result<(&'s fpnode_actors::jobs::Jobs, u64), ApiError> {
    let jobs = state.jobs()?;
    let id = raw.parse().map_err(|_| ApiError::JobNotFound)?;
    Ok((jobs, id))
}

/// `POST /_jobs`: checks the request, queues the job, answers `202` with it.
pub async fn start_job(State(state): State<AppState>, r: Req) -> Result<Response> {
    let jobs = state.jobs().map_err(|e| r.fail(e))?;
    let req: JobRequest = r.decode().map_err(|_| r.fail(ApiError::InvalidJob))?;
    let (spec, work) = plan(&state, req).await.map_err(|e| r.fail(e))?;
    let job = jobs
        .submit(spec, work)
        .await
        .map_err(|e| r.fail(jobs_error(e)))?;
    Ok(encode(r.format, StatusCode::ACCEPTED, &job))
}

/// `GET /_jobs`: every job recorded, newest first.
pub async fn list_jobs(State(state): State<AppState>, r: Req) -> Result<Response> {
    let jobs = state.jobs().map_err(|e| r.fail(e))?;
    #[derive(serde::Serialize)]
    struct List {
        jobs: Vec<JobView>,
    }
    let list = List { jobs: jobs.list() };
    Ok(encode(r.format, StatusCode::OK, &list))
}

/// `GET /_jobs/:id`.
pub async fn get_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    r: Req,
) -> Result<Response> {
    let (jobs, id) = jobs_and_id(&state, &id).map_err(|e| r.fail(e))?;
    let job = jobs.get(id).ok_or_else(|| r.fail(ApiError::JobNotFound))?;
    Ok(encode(r.format, StatusCode::OK, &job))
}

/// `DELETE /_jobs/:id`: cancels; answers the job once it stopped (or after
/// [`CANCEL_WAIT`], still running with `cancel_requested`).
pub async fn cancel_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    r: Req,
) -> Result<Response> {
    let (jobs, id) = jobs_and_id(&state, &id).map_err(|e| r.fail(e))?;
    let job = jobs
        .cancel(id, CANCEL_WAIT)
        .await
        .map_err(|e| r.fail(jobs_error(e)))?;
    let status = if job.record.state.is_finished() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok(encode(r.format, status, &job))
}
