//! Replica replay rate: publishes N fingerprints x 120 uniform hashes to a
//! nats-server it starts itself (atomic batches of 1000), then measures how fast
//! an empty replica (IndexSupervisor + StreamSubscriber) catches up.
//!
//! ```text
//! cargo run --release --example replay_bench -- 1000000 /tmp/replay [max_batch]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use fpnode_actors::IndexHandle;
use fpnode_actors::index_supervisor::{IndexSupArgs, IndexSupervisor, SupervisionOptions};
use fpnode_actors::stream::{
    FingerprintPayload, StreamSettings, ensure_stream, fingerprint_subject,
};
use fpnode_actors::stream_subscriber::{StreamSubscriber, SubscriberArgs};
use fpnode_segments::index::IndexOptions;
use fpnode_segments::{Generation, Index};
use jetstream_extra::batch_publish::BatchPublishExt;
use ractor::Actor;

fn hashes(id: u32) -> Vec<u32> {
    let mut x = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..120)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u32
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u32 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir =
        std::path::PathBuf::from(args.get(2).cloned().unwrap_or_else(|| "/tmp/replay".into()));
    let max_batch: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("nats")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("nats"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server on PATH (scripts/setup)");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let js = jetstream::new(
        async_nats::connect(format!("nats://127.0.0.1:{port}"))
            .await
            .unwrap(),
    );
    let settings = StreamSettings::default();
    ensure_stream(&js, &settings).await.unwrap();

    let t = Instant::now();
    let mut last = 0;
    for first in (1..=n).step_by(1000) {
        let end = (first + 999).min(n);
        let mut batch = js.batch_publish().build();
        for id in first..end {
            batch
                .add(
                    fingerprint_subject("fpindex", "main", id),
                    FingerprintPayload::insert(hashes(id)).encode().unwrap(),
                )
                .await
                .unwrap();
        }
        let ack = batch
            .commit(
                fingerprint_subject("fpindex", "main", end),
                FingerprintPayload::insert(hashes(end)).encode().unwrap(),
            )
            .await
            .unwrap();
        last = ack.sequence;
    }
    let publish = t.elapsed();
    let info = js
        .get_stream("fpindex")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .clone();
    println!(
        "publish: {n} fingerprints in atomic batches of 1000 in {:.1} s = {:.0} fp/s; stream {} bytes = {:.0} bytes/fingerprint",
        publish.as_secs_f64(),
        f64::from(n) / publish.as_secs_f64(),
        info.bytes,
        info.bytes as f64 / f64::from(n)
    );

    let index_dir = dir.join("index");
    std::fs::create_dir_all(&index_dir).unwrap();
    let index =
        Arc::new(Index::create(&index_dir, Generation(1), IndexOptions::default()).unwrap());
    let handle = Arc::new(IndexHandle::new("main".into(), index.clone(), 16));
    let (_sup, _) = Actor::spawn(
        None,
        IndexSupervisor,
        IndexSupArgs {
            handle: handle.clone(),
            opts: SupervisionOptions::default(),
            replication: None,
        },
    )
    .await
    .unwrap();
    let t = Instant::now();
    let (_sub, _) = Actor::spawn(
        None,
        StreamSubscriber,
        SubscriberArgs {
            js: js.clone(),
            settings,
            handle,
            max_batch,
            wait: Duration::from_millis(500),
            link: None,
        },
    )
    .await
    .unwrap();
    while index.position().0 < last {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replay = t.elapsed();
    println!(
        "replay (fetches of {max_batch}): {n} fingerprints applied in {:.1} s = {:.0} fp/s; {} docs",
        replay.as_secs_f64(),
        f64::from(n) / replay.as_secs_f64(),
        index.snapshot().num_docs
    );
    let _ = server.kill();
    let _ = server.wait();
}
