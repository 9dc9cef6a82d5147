//! What the legacy protocol asks of the index, asked of the node's own HTTP
//! API in process: a search is `POST /main/_search`, a commit `POST
//! /main/_update`, a metadata read `GET /main`. Every request takes exactly
//! the path an HTTP client's takes, in every mode (a replica publishes the
//! commit to the stream, a proxy forwards the search), with the same limits,
//! metrics and errors (docs/api.md "Legacy line protocol").

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::auth::Internal;
use crate::auth::tokens::Role;

/// The one index the protocol serves.
pub const INDEX: &str = "main";

/// Why a backend call failed: the HTTP API's error name (or how the
/// answer could not be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {name}")]
pub struct BackendError {
    pub status: u16,
    pub name: String,
}

impl BackendError {
    fn new(status: StatusCode, name: impl Into<String>) -> BackendError {
        BackendError {
            status: status.as_u16(),
            name: name.into(),
        }
    }
}

/// The node's HTTP API, called in process.
#[derive(Clone, Debug)]
pub struct Backend {
    app: Router,
}

/// A search's options, from the session's attributes.
#[derive(Debug, Clone, Copy)]
pub struct SearchOptions {
    pub limit: u32,
    pub score_pct: u32,
    /// Milliseconds; 0: the API's default.
    pub timeout: u32,
}

impl Backend {
    pub fn new(app: Router) -> Backend {
        Backend { app }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, BackendError> {
        self.call_as(Role::Write, method, path, body).await
    }

    async fn call_as(
        &self,
        role: Role,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Value, BackendError> {
        // With authentication on, the protocol's clients act as `write`
        // (docs/operations.md "Authentication").
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::ACCEPT, "application/json")
            .extension(Internal(role));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/vnd.msgpack");
        }
        let req = req
            .body(body.map_or_else(Body::empty, Body::from))
            .map_err(|e| BackendError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let Ok(res) = self.app.clone().oneshot(req).await;
        let status = res.status();
        // Answers are small (at most 1,000 results, or an index's metadata).
        let bytes = axum::body::to_bytes(res.into_body(), 64 << 20)
            .await
            .map_err(|e| BackendError::new(status, e.to_string()))?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| BackendError::new(status, e.to_string()))?
        };
        if !status.is_success() {
            let name = value["error"].as_str().unwrap_or("unknown error");
            return Err(BackendError::new(status, name));
        }
        Ok(value)
    }

    /// `(id, score)` best first.
    pub async fn search(
        &self,
        query: &[u32],
        opts: SearchOptions,
    ) -> Result<Vec<(u64, u64)>, BackendError> {
        let mut body = json!({
            "query": query,
            "limit": opts.limit,
            "min_score": 1,
            "score_pct": opts.score_pct,
        });
        if opts.timeout > 0 {
            body["timeout"] = json!(opts.timeout);
        }
        let answer = self
            .call("POST", &format!("/{INDEX}/_search"), Some(encode(&body)?))
            .await?;
        Ok(answer["results"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .filter_map(|r| Some((r["id"].as_u64()?, r["score"].as_u64()?)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Applies `inserts` and `metadata` as one `_update` batch.
    pub async fn commit(
        &self,
        inserts: &BTreeMap<u32, Vec<u32>>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<(), BackendError> {
        let body = commit_body(inserts, metadata)?;
        self.call("POST", &format!("/{INDEX}/_update"), Some(body))
            .await
            .map(|_| ())
    }

    /// The index's committed metadata value `name`.
    pub async fn metadata(&self, name: &str) -> Result<Option<String>, BackendError> {
        let answer = self.call("GET", &format!("/{INDEX}"), None).await?;
        Ok(answer["metadata"][name].as_str().map(str::to_string))
    }

    /// Creates `main` unless it exists; retried every second until the node
    /// can answer (a replica whose stream is not reachable yet). Creating
    /// an index is an `admin` act: the node does it for the protocol.
    pub async fn ensure_index(&self) {
        let mut logged = false;
        loop {
            let outcome = match self.call("GET", &format!("/{INDEX}"), None).await {
                Ok(_) => Ok(false),
                Err(e) if e.status == 404 => self
                    .call_as(Role::Admin, "PUT", &format!("/{INDEX}"), None)
                    .await
                    .map(|_| true),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(created) => {
                    if created {
                        tracing::info!(index = INDEX, "legacy protocol: index created");
                    }
                    return;
                }
                Err(e) => {
                    if !logged {
                        tracing::warn!(index = INDEX, error = %e, "legacy protocol: index not ready; retrying every second");
                        logged = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

fn encode(body: &Value) -> Result<Vec<u8>, BackendError> {
    rmp_serde::to_vec_named(body)
        .map_err(|e| BackendError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// The `_update` body of a transaction, encoded straight from its buffers
/// (no JSON tree: that would cost several times the transaction's size
/// again).
pub(super) fn commit_body(
    inserts: &BTreeMap<u32, Vec<u32>>,
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, BackendError> {
    #[derive(serde::Serialize)]
    struct Insert<'a> {
        id: u32,
        hashes: &'a [u32],
    }
    #[derive(serde::Serialize)]
    struct Change<'a> {
        insert: Insert<'a>,
    }
    #[derive(serde::Serialize)]
    struct Body<'a> {
        changes: Vec<Change<'a>>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        metadata: &'a BTreeMap<String, String>,
    }
    let body = Body {
        changes: inserts
            .iter()
            .map(|(id, hashes)| Change {
                insert: Insert { id: *id, hashes },
            })
            .collect(),
        metadata,
    };
    rmp_serde::to_vec_named(&body)
        .map_err(|e| BackendError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}
