//! Searches, `_update`s and single-fingerprint reads and writes.

use super::*;

// --- search and updates ---

pub async fn search(
    State(state): State<AppState>,
    Path(index): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    r: Req,
) -> Result<Response> {
    let req: SearchRequest = match audio_type(&headers) {
        // Search by audio: the upload's query terms are the query.
        Some(content_type) => match audio_query(&state, &r.body, &content_type, &uri).await {
            Ok(req) => req,
            Err(e) => return Ok(e.into_response()),
        },
        None => r.decode()?,
    };
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

/// Search options in the query string when the body is audio.
#[derive(Debug, Default, serde::Deserialize)]
pub struct AudioSearchParams {
    limit: Option<u64>,
    timeout: Option<u64>,
    min_score: Option<u32>,
    score_pct: Option<u32>,
    /// Seconds of the upload fingerprinted (default 120, 0 = all).
    length: Option<f64>,
}

/// The body's media type when it is audio (`audio/*`).
fn audio_type(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::CONTENT_TYPE)?
        .to_str()
        .ok()?;
    let value = value.trim().to_ascii_lowercase();
    value.starts_with("audio/").then_some(value)
}

/// Fingerprints the uploaded audio into a search request of its AcoustID
/// query terms (docs/api.md, "Search by audio").
async fn audio_query(
    state: &AppState,
    body: &Bytes,
    content_type: &str,
    uri: &axum::http::Uri,
) -> std::result::Result<SearchRequest, crate::audio_api::AudioApiError> {
    use crate::audio_api::AudioApiError;
    let Query(params) = Query::<AudioSearchParams>::try_from_uri(uri)
        .map_err(|e| AudioApiError::BadRequest(format!("query string: {e}")))?;
    let service = state
        .audio
        .as_ref()
        .ok_or_else(|| AudioApiError::BadRequest("this node does not decode audio".into()))?;
    let length = crate::audio_api::max_seconds(params.length)?;
    let body = body.clone();
    let extension = crate::audio_api::extension_for(content_type);
    let admission = service.admit()?;
    let fingerprint = crate::audio_api::blocking(service, &admission, move |deadline| {
        fpnode_audio::fingerprint(
            fpnode_audio::decode::Source::Bytes {
                data: &body,
                extension,
            },
            &fpnode_audio::FingerprintOptions {
                max_seconds: length,
                deadline: Some(deadline),
            },
        )
    })
    .await?;
    Ok(SearchRequest {
        query: fingerprint.query_terms(),
        limit: params.limit,
        timeout: params.timeout,
        min_score: params.min_score,
        score_pct: params.score_pct,
    })
}

/// One `_update` change as the engine takes it, checked against the limits.
pub(super) fn change(c: ChangeIn, limits: &Limits) -> std::result::Result<Change, ApiError> {
    Ok(match c {
        ChangeIn::Insert(i) => {
            if i.hashes.len() > limits.max_hashes {
                return Err(ApiError::TooManyHashes);
            }
            Change::Insert {
                id: check_id(i.id)?,
                hashes: i.hashes,
            }
        }
        ChangeIn::Delete(d) => Change::Delete {
            id: check_id(d.id)?,
        },
    })
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
        changes.push(change(c, &state.limits).map_err(|e| r.fail(e))?);
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
