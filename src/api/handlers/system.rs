//! Node-wide endpoints: health, the metrics refresh behind `/_metrics`, the
//! fallbacks for unknown routes and methods, and the fault-injection hook.

use super::*;

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
