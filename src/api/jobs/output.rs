//! The `export` and `snapshot` jobs: files written under the export
//! directory, as `<index>-v<version>-job<id>.<ext>`, complete and durable
//! (temp file, fsync, rename, directory fsync) or not there at all.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

use fpnode_actors::IndexHandle;
use fpnode_actors::jobs::{JobError, JobWork};
use serde_json::json;

use super::{Ctl, Output, blocking, engine, failed, file_stem};
use crate::cli::InputFormat;
use crate::records::EXPORT_PASS;

/// `export`: every live fingerprint, ascending by id, in the `fpnode
/// export` format, read from one snapshot of the index (so the file is the
/// index as of one version, whatever is written meanwhile).
pub(super) fn export(h: Arc<IndexHandle>, dir: PathBuf, format: InputFormat) -> JobWork {
    Box::new(move |ctl: Ctl| {
        Box::pin(blocking(move || {
            let index = engine(&h)?;
            let snapshot = index.snapshot();
            let ids: Vec<u32> = snapshot.live_ids().iter().collect();
            ctl.set_total(ids.len() as u64);
            let ext = match format {
                InputFormat::Ndjson => "ndjson",
                InputFormat::Msgpack => "msgpack",
            };
            let version = snapshot.position.0;
            let name = format!("{}-v{version}-job{}.{ext}", file_stem(&h.name), ctl.id);
            let (output, file) = Output::new(&dir, name)?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            for pass in ids.chunks(EXPORT_PASS) {
                ctl.check()?;
                let (Some(&lo), Some(&hi)) = (pass.first(), pass.last()) else {
                    continue;
                };
                let fingerprints = snapshot
                    .dump_range(lo..=hi)
                    .map_err(|e| failed("reading the index", e))?;
                for (id, hashes) in &fingerprints {
                    crate::records::write(&mut out, format, *id, hashes)
                        .map_err(|e| failed("writing the file", e))?;
                }
                ctl.advance_blocking(fingerprints.len() as u64)?;
            }
            let file = out
                .into_inner()
                .map_err(|e| failed("writing the file", e.error()))?;
            let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
            let path = output.keep(file)?;
            Ok(json!({
                "file": path.display().to_string(),
                "fingerprints": ids.len(),
                "version": version,
                "bytes": bytes,
            }))
        }))
    })
}

/// `snapshot`: the index's archive (the `GET /:index/_snapshot` format,
/// restored by `fpnode restore`), after a checkpoint.
pub(super) fn snapshot(h: Arc<IndexHandle>, dir: PathBuf) -> JobWork {
    Box::new(move |ctl: Ctl| {
        Box::pin(blocking(move || {
            let index = engine(&h)?;
            index
                .checkpoint()
                .map_err(|e| failed("checkpointing the index", e))?;
            let snapshot = index.snapshot();
            ctl.set_total(snapshot.file_bytes());
            let version = snapshot.position.0;
            let name = format!("{}-v{version}-job{}.fpsnap", file_stem(&h.name), ctl.id);
            let (output, file) = Output::new(&dir, name)?;
            let mut out = Paced {
                out: BufWriter::with_capacity(1 << 20, file),
                ctl: &ctl,
            };
            let written = fpnode_segments::archive::write(&snapshot, &mut out).map_err(|e| {
                if ctl.is_cancelled() {
                    JobError::Cancelled
                } else {
                    failed("writing the archive", e)
                }
            })?;
            let file = out
                .out
                .into_inner()
                .map_err(|e| failed("writing the archive", e.error()))?;
            let path = output.keep(file)?;
            Ok(json!({
                "file": path.display().to_string(),
                "version": version,
                "segments": snapshot.segments.len(),
                "bytes": written,
            }))
        }))
    })
}

/// Counts what goes through as the job's progress, paced by its rate; fails
/// once the job is cancelled.
struct Paced<'a, W> {
    out: W,
    ctl: &'a Ctl,
}

impl<W: Write> Write for Paced<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.ctl
            .advance_blocking(n as u64)
            .map_err(|_| std::io::Error::other("cancelled"))?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
