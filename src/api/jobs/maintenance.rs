//! The `compact` and `verify` jobs, on the index's segments.

use std::sync::Arc;

use fpnode_actors::IndexHandle;
use fpnode_actors::jobs::{JobError, JobWork};
use serde_json::json;

use super::{Ctl, blocking, engine, failed};

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
