//! Where a write goes: applied locally (standalone), or published to the
//! stream and, on a replica, waited for until applied here (proxy: until the
//! stream acknowledged it).

use super::*;

/// Applies a write to `index`: locally (standalone), or through the stream
/// (replica: answered once the stream acknowledged it and this node applied
/// it; proxy: once the stream acknowledged it).
pub(super) async fn write(
    state: &AppState,
    index: &str,
    request: WriteRequest,
    key: Option<&str>,
) -> std::result::Result<u64, ApiError> {
    if let (Some(replication), Some(proxy)) = (&state.replication, &state.proxy) {
        if !valid_index_name(index) {
            return Err(ApiError::InvalidIndexName);
        }
        match replication
            .index_record(index)
            .await
            .map_err(publish_error)?
        {
            Some((record, _)) if !record.d => {}
            _ => return Err(ApiError::IndexNotFound),
        }
        let key = key.map_or_else(fresh_request_key, str::to_string);
        return match replication
            .publish_update(index, &request, &key)
            .await
            .map_err(publish_error)?
        {
            Some(version) => Ok(version),
            None => Ok(proxy.index_version(index).await.unwrap_or(0)),
        };
    }
    let h = lookup(state, index).await?;
    let Some(replication) = &state.replication else {
        return h
            .write(request, state.write_wait)
            .await
            .map(|v| v.0)
            .map_err(write_error);
    };
    if let Some(why) = h.replica.as_ref().and_then(|r| r.diverged()) {
        tracing::warn!(index = %h.name, %why, "write refused: the index stopped following the stream");
        return Err(ApiError::Unavailable);
    }
    let _permit = tokio::time::timeout(state.write_wait, h.write_permits.clone().acquire_owned())
        .await
        .map_err(|_| write_error(WriteError::Overloaded("too many writes in flight".into())))?
        .map_err(|_| ApiError::Unavailable)?;
    let key = key.map_or_else(fresh_request_key, str::to_string);
    let Some(version) = replication
        .publish_update(&h.name, &request, &key)
        .await
        .map_err(publish_error)?
    else {
        return Ok(h.version().0);
    };
    if h.wait_applied(version, replication.opts.apply_wait).await {
        return Ok(version);
    }
    if h.is_deleted() {
        return Err(ApiError::IndexNotFound);
    }
    tracing::warn!(index = %h.name, version, "write is in the stream but was not applied here in time");
    Err(ApiError::Unavailable)
}

/// Waits until this node's index `name` satisfies `done` (replica-mode
/// lifecycle changes land through the stream), at most `wait`.
pub(super) async fn wait_for_index<F>(
    state: &AppState,
    name: &str,
    wait: Duration,
    done: F,
) -> std::result::Result<Option<Arc<IndexHandle>>, ApiError>
where
    F: Fn(Option<&IndexHandle>) -> bool,
{
    let deadline = Instant::now() + wait;
    loop {
        let h = state.node()?.get(name).await.map_err(node_error)?;
        if done(h.as_deref()) {
            return Ok(h);
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                index = name,
                "index change is in the stream but was not applied here in time"
            );
            return Err(ApiError::Unavailable);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
