//! fpindex's legacy line protocol on `--legacy-port` (docs/api.md "Legacy
//! line protocol"): plain TCP, one command per line, one `OK`/`ERR` reply
//! line each, for older AcoustID clients. Commands act on the index `main`
//! through the node's own HTTP API (`backend`), so they take the same paths,
//! limits and modes as HTTP requests.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections (the next one is told
//! `ERR too many connections` and closed), lines of at most 256 KiB (`ERR
//! line too long`, closed), a transaction no larger than one `_update`, an
//! idle connection closed after its `idle_timeout` (`ERR timeout`).
//! Shutdown closes every connection.

pub mod backend;
pub mod command;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use backend::Backend;
use session::{Session, TransactionLimits};

/// Longest request line.
pub const MAX_LINE: usize = 256 << 10;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a reply may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

async fn send(write: &mut (impl AsyncWriteExt + Unpin), line: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, write.write_all(line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client does not read"))?
}

/// Serves the protocol on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    backend: Backend,
    limits: TransactionLimits,
    mut stop: watch::Receiver<bool>,
) {
    let ready = {
        let backend = backend.clone();
        tokio::spawn(async move { backend.ensure_index().await })
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let buffered = session::Buffered::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "legacy protocol: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(socket));
            continue;
        };
        let (backend, stop, buffered) = (backend.clone(), stop.clone(), buffered.clone());
        tokio::spawn(async move {
            metrics::gauge!("fpnode_legacy_connections").increment(1.0);
            if let Err(e) = connection(socket, &backend, limits, buffered, stop).await {
                tracing::debug!(%peer, error = %e, "legacy connection ended");
            }
            metrics::gauge!("fpnode_legacy_connections").decrement(1.0);
            drop(slot);
        });
    }
    ready.abort();
}

async fn refuse(mut socket: TcpStream) {
    metrics::counter!("fpnode_legacy_refused_total").increment(1);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        socket.write_all(b"ERR too many connections\r\n"),
    )
    .await;
}

/// A read line, or why there is none.
enum Line {
    Text(String),
    TooLong,
    Closed,
}

/// Reads up to and without the next `\n`, at most [`MAX_LINE`] bytes.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // A last line without its newline is not a request.
            return Ok(Line::Closed);
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        let room = (MAX_LINE + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&available[..take.min(room)]);
        reader.consume(take);
        if done {
            buf.pop();
            if buf.len() > MAX_LINE {
                return Ok(Line::TooLong);
            }
            return Ok(Line::Text(String::from_utf8_lossy(buf).into_owned()));
        }
        if buf.len() > MAX_LINE {
            return Ok(Line::TooLong);
        }
    }
}

async fn connection(
    socket: TcpStream,
    backend: &Backend,
    limits: TransactionLimits,
    buffered: session::Buffered,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::with_capacity(64 << 10, read);
    let mut session = Session::new(limits, buffered);
    let mut buf = Vec::new();
    loop {
        let idle = match session.idle_timeout {
            0 => session::MAX_IDLE_TIMEOUT_MS,
            ms => ms.min(session::MAX_IDLE_TIMEOUT_MS),
        };
        let idle = Duration::from_millis(u64::from(idle));
        let line = tokio::select! {
            line = tokio::time::timeout(idle, read_line(&mut reader, &mut buf)) => line,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let line = match line {
            Err(_) => {
                send(&mut write, b"ERR timeout\r\n").await?;
                return Ok(());
            }
            Ok(line) => line?,
        };
        let text = match line {
            Line::Closed => return Ok(()),
            Line::TooLong => {
                metrics::counter!("fpnode_legacy_requests_total", "command" => "too_long", "outcome" => "err").increment(1);
                send(&mut write, b"ERR line too long\r\n").await?;
                return Ok(());
            }
            Line::Text(text) => text,
        };
        let (command, reply) = session.handle(&text, backend).await;
        let outcome = if reply.is_ok() { "ok" } else { "err" };
        metrics::counter!("fpnode_legacy_requests_total", "command" => command, "outcome" => outcome).increment(1);
        send(&mut write, reply.line().as_bytes()).await?;
    }
}
