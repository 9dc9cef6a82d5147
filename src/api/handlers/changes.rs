//! `GET /:index/_changes`: the changes applied after a version, read from the
//! index's retained WAL (docs/api.md). `feed=normal` answers at once;
//! `feed=longpoll` waits (up to `timeout` ms) until there is something after
//! `since`. A `since` older than what is retained is `410 ChangesNotRetained`
//! with the oldest version kept: the client resyncs, then follows from there.

use fpnode_segments::{Error as EngineError, Position};

use super::*;

/// Changes per answer unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;
/// How long a long poll waits by default, and at most.
const DEFAULT_WAIT_MS: u64 = 60_000;
const MAX_WAIT_MS: u64 = 300_000;
/// How often a long poll looks at the index's version while it waits.
const POLL_EVERY: Duration = Duration::from_millis(10);

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    since: Option<u64>,
    limit: Option<usize>,
    hashes: Option<bool>,
    feed: Option<String>,
    timeout: Option<u64>,
}

pub async fn index_changes(
    State(state): State<AppState>,
    Path(index): Path<String>,
    query: std::result::Result<
        axum::extract::Query<ChangesQuery>,
        axum::extract::rejection::QueryRejection,
    >,
    r: Req,
) -> Result<Response> {
    let axum::extract::Query(q) = query.map_err(|_| r.fail(ApiError::BadRequest))?;
    let long_poll = match q.feed.as_deref() {
        None | Some("normal") => false,
        Some("longpoll") => true,
        Some(_) => return Err(r.fail(ApiError::BadRequest)),
    };
    let h = lookup(&state, &index).await.map_err(|e| r.fail(e))?;
    let since = Position(q.since.unwrap_or(0));
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let wait = Duration::from_millis(q.timeout.unwrap_or(DEFAULT_WAIT_MS).min(MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    if long_poll {
        while h.version() <= since && tokio::time::Instant::now() < deadline && !h.is_deleted() {
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
    let index = h.index.clone();
    let page = tokio::task::spawn_blocking(move || index.changes_since(since, limit))
        .await
        .map_err(|_| r.fail(ApiError::Internal))?;
    let page = match page {
        Ok(page) => page,
        Err(EngineError::ChangesNotRetained { oldest, .. }) => {
            let body = Out::map([
                (full("error"), Out::Str("ChangesNotRetained".into())),
                (full("oldest_version"), Out::UInt(oldest)),
            ]);
            return Ok(respond(r.format, StatusCode::GONE, Some(body)));
        }
        Err(e) => {
            tracing::error!(index = %h.name, error = %e, "reading changes failed");
            return Err(r.fail(ApiError::Internal));
        }
    };
    let with_hashes = q.hashes.unwrap_or(false);
    let mut results = Vec::new();
    for batch in &page.batches {
        for change in &batch.changes {
            let mut entry = vec![(full("version"), Out::UInt(batch.position.0))];
            match change {
                Change::Insert { id, hashes } => {
                    entry.push((full("kind"), Out::Str("insert".into())));
                    entry.push((full("id"), Out::UInt(u64::from(*id))));
                    if with_hashes {
                        entry.push((
                            full("hashes"),
                            Out::List(hashes.iter().map(|&x| Out::UInt(u64::from(x))).collect()),
                        ));
                    }
                }
                Change::Delete { id } => {
                    entry.push((full("kind"), Out::Str("delete".into())));
                    entry.push((full("id"), Out::UInt(u64::from(*id))));
                }
            }
            results.push(Out::Map(entry));
        }
    }
    let last = page.batches.last().map_or(since, |b| b.position);
    Ok(r.ok(Out::map([
        (full("results"), Out::List(results)),
        (full("last_version"), Out::UInt(last.0)),
        (full("more"), Out::Bool(page.more)),
    ])))
}
