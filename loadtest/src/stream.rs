//! `fpnode-loadtest stream`: fingerprints 1..=N through one `_stream` request
//! (MessagePack values, generated as the body is sent, never held whole), and
//! the node's answer: its progress lines and its last line.

use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;

use crate::corpus::Corpus;
use crate::{Insert, InsertChange};

/// Fingerprints per body chunk.
const CHUNK: u32 = 500;

#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamResult {
    pub fingerprints: u32,
    pub hashes: usize,
    pub seconds: f64,
    pub fingerprints_per_second: f64,
    /// Progress lines the node sent.
    pub progress_lines: u64,
    /// The node's last line.
    pub last: Value,
}

impl std::fmt::Display for StreamResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stream: {} fingerprints x {} hashes in one _stream request: {:.1} s = {:.0} fp/s; {} progress lines; last line {}",
            self.fingerprints,
            self.hashes,
            self.seconds,
            self.fingerprints_per_second,
            self.progress_lines,
            self.last
        )
    }
}

pub async fn stream(
    corpus: Corpus,
    url: &str,
    index: &str,
    n: u32,
) -> anyhow::Result<StreamResult> {
    let client = crate::create_index(url, index).await?;
    let hashes = corpus.hashes;
    let body = futures::stream::unfold(1u32, move |first| async move {
        if first > n {
            return None;
        }
        let last = first.saturating_add(CHUNK - 1).min(n);
        let mut chunk = Vec::with_capacity((last - first + 1) as usize * (hashes * 5 + 16));
        for id in first..=last {
            let change = InsertChange {
                i: Insert {
                    i: id,
                    h: corpus.fingerprint(id),
                },
            };
            if let Err(e) = rmp_serde::encode::write_named(&mut chunk, &change) {
                return Some((Err(std::io::Error::other(e)), last.saturating_add(1)));
            }
        }
        Some((
            Ok::<_, std::io::Error>(Bytes::from(chunk)),
            last.saturating_add(1),
        ))
    });
    let started = Instant::now();
    let res = client
        .post(format!("{url}/{index}/_stream"))
        .header("Content-Type", "application/msgpack")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .context("sending the stream")?;
    let status = res.status().as_u16();
    let mut answer = res.bytes_stream();
    let mut pending = String::new();
    let mut progress_lines = 0u64;
    let mut last = Value::Null;
    while let Some(chunk) = answer.next().await {
        let chunk = chunk.context("reading the answer")?;
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find('\n') {
            let line: String = pending.drain(..=end).collect();
            let v: Value = serde_json::from_str(line.trim())
                .with_context(|| format!("a line of the answer is not JSON: {line:?}"))?;
            if v.get("done").is_none() && v.get("error").is_none() {
                progress_lines += 1;
            }
            last = v;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if status != 200 || last.get("done").is_none() {
        bail!("the stream failed: status {status}, last line {last}");
    }
    Ok(StreamResult {
        fingerprints: n,
        hashes,
        seconds,
        fingerprints_per_second: f64::from(n) / seconds,
        progress_lines,
        last,
    })
}
