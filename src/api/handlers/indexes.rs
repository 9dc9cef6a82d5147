//! Index management: health, info, create, delete, status.

use super::*;

// --- index management ---

pub async fn index_health(
    State(state): State<AppState>,
    Path(index): Path<String>,
    headers: HeaderMap,
) -> Response {
    let format = response_format(&headers, false);
    // `is_healthy` is false once the index is deleted: it is asked first,
    // so a delete landing between two checks answers 404, never 503.
    match lookup(&state, &index).await {
        Ok(h) if h.is_loading() && !h.is_deleted() => {
            (StatusCode::SERVICE_UNAVAILABLE, "LOADING\n").into_response()
        }
        Ok(h) if h.is_healthy() => "OK\n".into_response(),
        Ok(h) if h.is_deleted() => StatusCode::NOT_FOUND.into_response(),
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
