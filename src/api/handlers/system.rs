//! Node-wide endpoints: health, the metrics refresh behind `/_metrics`, the
//! fallbacks for unknown routes and methods, and the fault-injection hook.

use super::*;

// --- system ---

pub async fn health() -> &'static str {
    "OK\n"
}

/// `GET /_ready` parameters.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ReadyParams {
    /// The most stream messages an index may be behind (default 10,000).
    max_lag: Option<u64>,
}

/// Readiness for load balancers and Kubernetes (docs/api.md): `200 OK`, or
/// `503` with one line per reason: an index bootstrapping (`LOADING`),
/// behind the stream by more than `max_lag`, stopped following it, or
/// unhealthy; a proxy without a healthy replica.
pub async fn ready(State(state): State<AppState>, Query(q): Query<ReadyParams>) -> Response {
    let max_lag = q.max_lag.unwrap_or(10_000);
    let mut reasons = Vec::new();
    if let Some(proxy) = &state.proxy
        && proxy.healthy_urls().is_empty()
    {
        reasons.push("no healthy replica".to_string());
    }
    if let Some(node) = &state.node {
        match node.list().await {
            Ok(indexes) => {
                for h in indexes {
                    if let Some(r) = &h.replica {
                        if r.loading() {
                            reasons.push(format!("{}: LOADING", h.name));
                        } else if r.pending() > max_lag {
                            reasons.push(format!(
                                "{}: {} messages behind the stream (max_lag {max_lag})",
                                h.name,
                                r.pending()
                            ));
                        }
                        if let Some(why) = r.diverged() {
                            reasons
                                .push(format!("{}: stopped following the stream: {why}", h.name));
                        }
                    }
                    if !h.is_healthy() {
                        reasons.push(format!("{}: unhealthy", h.name));
                    }
                }
            }
            Err(e) => reasons.push(format!("indexes not listed: {e}")),
        }
    }
    if reasons.is_empty() {
        (StatusCode::OK, "OK\n".to_string()).into_response()
    } else {
        let mut res = (StatusCode::SERVICE_UNAVAILABLE, reasons.join("\n") + "\n").into_response();
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(5));
        res
    }
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
