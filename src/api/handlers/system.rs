//! Node-wide endpoints: health, the metrics refresh behind `/_metrics`, the
//! fallbacks for unknown routes and methods, and the fault-injection hook.

use super::*;

// --- system ---

pub async fn health() -> &'static str {
    "OK\n"
}

pub async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut per_index = String::new();
    if let Some(node) = &state.node
        && let Ok(indexes) = node.list().await
    {
        per_index = crate::api::index_metrics::render(&indexes);
    }
    if let Some(dir) = &state.data_dir {
        match rustix::fs::statvfs(dir.as_path()) {
            Ok(fs) => {
                let block = fs.f_frsize.max(1) as f64;
                metrics::gauge!("fpnode_data_disk_free_bytes").set(fs.f_bavail as f64 * block);
                metrics::gauge!("fpnode_data_disk_size_bytes").set(fs.f_blocks as f64 * block);
            }
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "data disk not measured"),
        }
    }
    if let Some(node) = &state.node {
        metrics::gauge!("fpnode_search_queue_depth").set(node.search.queue_depth() as f64);
    }
    let mut text = state
        .metrics
        .as_ref()
        .map(|h| h.render())
        .unwrap_or_default();
    text.push_str(&per_index);
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
