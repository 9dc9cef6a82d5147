//! The `compact` and `verify` jobs, on the index's segments.

use std::sync::Arc;

use fpnode_actors::IndexHandle;
use fpnode_actors::RegistryError;
use fpnode_actors::jobs::{JobError, JobWork};
use fpnode_actors::node::NodeError;
use serde_json::json;

use super::{AppState, Ctl, blocking, engine, failed};

/// `compact`: memory checkpointed, then every file segment merged into one
/// (`Index::compact`). A cancel stops the merge within 65,536 postings and
/// leaves the index as it was; writes and searches go on meanwhile.
pub(super) fn compact(h: Arc<IndexHandle>) -> JobWork {
    Box::new(move |ctl: Ctl| {
        Box::pin(blocking(move || {
            let index = engine(&h)?;
            let before = index.stats();
            let keep_going = |written: u64, total: u64| {
                ctl.set_total(total);
                ctl.set_done(written);
                !ctl.is_cancelled()
            };
            let merged = match index.compact(&keep_going) {
                Ok(merged) => merged,
                Err(fpnode_segments::Error::Cancelled) => return Err(JobError::Cancelled),
                Err(e) => return Err(failed("compacting", e)),
            };
            let after = index.stats();
            Ok(json!({
                "merged": merged,
                "segments_before": before.file_segments + before.memory_segments,
                "segments_after": after.file_segments + after.memory_segments,
                "bytes_before": before.file_bytes,
                "bytes_after": after.file_bytes,
            }))
        }))
    })
}

/// `verify`: every byte of every file segment read again and checked
/// against its checksums (even chunks searches already checked), 16 MiB at
/// a time (a cancel stops between them). A corrupt segment fails the job,
/// naming the file and the offset.
pub(super) fn verify(h: Arc<IndexHandle>) -> JobWork {
    Box::new(move |ctl: Ctl| {
        Box::pin(blocking(move || {
            let snapshot = engine(&h)?.snapshot();
            ctl.set_total(snapshot.file_bytes());
            let mut segments = 0u64;
            for v in &snapshot.segments {
                let Some(f) = v.segment.as_file() else {
                    continue;
                };
                ctl.check()?;
                let mut reported = 0;
                let mut stopped = None;
                let checked = f.reverify_all(&mut |done, _| {
                    let step = ctl.advance_blocking(done - reported.min(done));
                    reported = done;
                    match step {
                        Ok(()) => true,
                        Err(e) => {
                            stopped = Some(e);
                            false
                        }
                    }
                });
                match (checked, stopped) {
                    (Ok(()), _) => {}
                    (Err(_), Some(e)) => return Err(e),
                    (Err(e), None) => return Err(failed("verifying", e)),
                }
                // The file's header and tables beyond its data region.
                ctl.advance_blocking(f.file_size().saturating_sub(reported))?;
                segments += 1;
            }
            Ok(json!({
                "segments": segments,
                "bytes": snapshot.file_bytes(),
                "fingerprints": snapshot.num_docs,
                "version": snapshot.position.0,
            }))
        }))
    })
}

/// `resync` (replica mode): drops this replica's copy of the index and
/// bootstraps it again from the stream, from the index's lifecycle record
/// (as a new replica would), then waits until it caught up. Progress counts
/// stream messages applied of those known to be pending. A cancel stops
/// the waiting only: the copy was dropped and the bootstrap goes on.
pub(super) fn resync(state: AppState, index: String) -> JobWork {
    Box::new(move |ctl: Ctl| {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let replication = state
                .replication
                .clone()
                .ok_or_else(|| JobError::Failed("not a replica".into()))?;
            let node = state
                .node
                .clone()
                .ok_or_else(|| JobError::Failed("not a replica".into()))?;
            let (record, seq) = match replication.index_record(&index).await {
                Ok(Some((record, seq))) if !record.d => (record, seq),
                Ok(_) => return Err(JobError::Failed("the index is not in the stream".into())),
                Err(e) => return Err(failed("reading the index's record", e)),
            };
            // Other jobs on this copy are stopped first: the new copy is
            // created only once nothing holds the old one.
            if let Ok(jobs) = state.jobs() {
                for other in jobs.list() {
                    let r = &other.record;
                    if r.id != ctl.id
                        && r.index.as_deref() == Some(index.as_str())
                        && !r.state.is_finished()
                    {
                        let _ = jobs.cancel(r.id, std::time::Duration::from_secs(10)).await;
                    }
                }
            }
            // Busy: the index's own steps run (a lifecycle record being
            // applied, a copy that failed to open being replaced): wait.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                match node.resync(&index, record, seq).await {
                    Ok(()) => break,
                    Err(NodeError::Registry(RegistryError::Busy))
                        if tokio::time::Instant::now() < deadline =>
                    {
                        ctl.check()?;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(failed("dropping the local copy", e)),
                }
            }
            loop {
                ctl.check()?;
                let h = node
                    .get(&index)
                    .await
                    .map_err(|e| failed("following the index", e))?;
                if let Some(h) = h.filter(|h| !h.is_deleted() && h.generation.0 == record.g) {
                    let applied = h.version().0.saturating_sub(seq);
                    let pending = h.replica.as_ref().map_or(0, |r| r.pending());
                    ctl.set_done(applied);
                    ctl.set_total(applied + pending);
                    if !h.is_loading() {
                        return Ok(json!({
                            "generation": record.g,
                            "version": h.version().0,
                            "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                        }));
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        })
    })
}
