//! `GET /:index/_snapshot`: the index's archive streamed in chunks.

use super::*;

/// Streams an archive of the index (docs/segment-format.md): a checkpoint
/// first, so it holds everything applied so far, then the segment files, read
/// on a blocking thread and sent in 1 MiB chunks through a bounded channel.
pub async fn index_snapshot(
    State(state): State<AppState>,
    Path(index): Path<String>,
    r: Req,
) -> Result<Response> {
    let h = lookup(&state, &index).await.map_err(|e| r.fail(e))?;
    let engine = h.index.clone();
    let snapshot = tokio::task::spawn_blocking(move || {
        engine.checkpoint()?;
        Ok::<_, fpnode_segments::Error>(engine.snapshot())
    })
    .await
    .map_err(|_| r.fail(ApiError::Internal))?
    .map_err(|e| {
        tracing::error!(error = %e, "snapshot checkpoint failed");
        r.fail(ApiError::Unavailable)
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(e) = fpnode_segments::archive::write(&snapshot, out) {
            tracing::warn!(error = %e, "snapshot stream ended early");
            let _ = tx.blocking_send(Err(e));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

const CHUNK: usize = 1 << 20;

/// Sends what is written to it as body chunks; blocks while the client is slow
/// (the channel is bounded), fails once the client is gone.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
