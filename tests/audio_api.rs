//! The audio endpoints on the real binary: `POST /fingerprint`, `GET
//! /health`, `POST /_fingerprint`, search by audio, media roots, limits,
//! metrics, and `fpnode audio-server` (docs/api.md, "Audio").
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Node;
use common::audio::{FORMATS, library, long_tracks, track};
use serde_json::{Value, json};

async fn post_json(node: &Node, path: &str, body: Value) -> (u16, Value) {
    let answer = common::Api::json(node).call("POST", path, Some(body)).await;
    (answer.status, answer.body)
}

async fn post_audio(
    node: &Node,
    path: &str,
    content_type: &str,
    data: Vec<u8>,
) -> (u16, Option<String>, Value) {
    let r = reqwest::Client::new()
        .post(node.url(path))
        .header("content-type", content_type)
        .body(data)
        .send()
        .await
        .unwrap();
    answer(r).await
}

/// Status, Retry-After and JSON body of an answer.
async fn answer(r: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, r.json().await.unwrap())
}

fn root_arg(dir: &Path) -> String {
    format!("--media-root={}", dir.display())
}

#[tokio::test]
async fn health_answers_status_version_and_uptime() {
    let node = Node::start(&[]).await;
    let r: Value = reqwest::get(node.url("/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "ok");
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    assert!(r["uptime_sec"].as_u64().is_some(), "{r}");
}

#[tokio::test]
async fn the_descriptor_of_every_format_by_path_then_from_the_cache() {
    let node = Node::start(&[&root_arg(library())]).await;
    for (i, format) in FORMATS.iter().enumerate() {
        let file = track(format, 2);
        let (status, r) = post_json(
            &node,
            "/fingerprint",
            json!({"track_id": i, "filepath": file}),
        )
        .await;
        assert_eq!(status, 200, "{format}: {r}");
        assert_eq!(r["track_id"], i);
        assert_eq!(r["fingerprint"].as_object().unwrap().len(), 25, "{r}");
        // Track 2 is mono 22.05 kHz, 8 s (Opus: its encoder's 24 or 48 kHz).
        assert_eq!(r["metadata"]["channels"], 1, "{format}: {r}");
        let rate = r["metadata"]["sample_rate"].as_u64().unwrap();
        if r["metadata"]["codec"] == "opus" {
            assert!(rate == 24000 || rate == 48000, "{format}: {r}");
        } else {
            assert_eq!(rate, 22050, "{format}: {r}");
        }
        let duration = r["metadata"]["duration_sec"].as_f64().unwrap();
        assert!((duration - 8.0).abs() < 0.1, "{format}: {r}");
        assert_eq!(r["cached"], false);
        assert!(r["processing_time_ms"].as_f64().unwrap() > 0.0);
    }
    // Again (the loop described it already): from the cache, twice.
    let file = track("flac", 2);
    let (_, first) = post_json(
        &node,
        "/fingerprint",
        json!({"track_id": "a", "filepath": file}),
    )
    .await;
    let (_, again) = post_json(
        &node,
        "/fingerprint",
        json!({"track_id": "b", "filepath": file}),
    )
    .await;
    assert_eq!(again["cached"], true);
    assert_eq!(again["track_id"], "b");
    assert_eq!(again["fingerprint"], first["fingerprint"]);
    // A changed file (new size and time) is analysed again.
    let dir = tempfile::tempdir_in(library()).unwrap();
    let copy = dir.path().join("copy.wav");
    std::fs::copy(track("src", 1), &copy).unwrap();
    let (_, r) = post_json(
        &node,
        "/fingerprint",
        json!({"track_id": 1, "filepath": copy}),
    )
    .await;
    assert_eq!(r["cached"], false);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(track("src", 2), &copy).unwrap();
    let (_, r) = post_json(
        &node,
        "/fingerprint",
        json!({"track_id": 1, "filepath": copy}),
    )
    .await;
    assert_eq!(
        r["cached"], false,
        "a rewritten file is not served from the cache"
    );
    assert_eq!(r["metadata"]["channels"], 1);

    let metrics = node.metrics().await;
    for series in [
        "fpnode_audio_requests_total{endpoint=\"fingerprint\",outcome=\"ok\"}",
        "fpnode_audio_cache_hits_total 2",
        "fpnode_audio_files_total{format=\"isomp4\"}",
        "fpnode_audio_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(series), "{series} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn paths_must_resolve_under_a_media_root() {
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.wav");
    std::fs::copy(track("src", 1), &secret).unwrap();
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    std::fs::copy(track("src", 1), root_path.join("ok.wav")).unwrap();
    std::os::unix::fs::symlink(&secret, root_path.join("link.wav")).unwrap();
    std::fs::write(root_path.join("empty.wav"), b"").unwrap();
    std::fs::write(root_path.join("notes.txt"), b"not audio").unwrap();
    std::fs::create_dir(root_path.join("sub")).unwrap();
    let node = Node::start(&[&root_arg(&root_path)]).await;
    let escape = format!(
        "{}/sub/../../{}/secret.wav",
        root_path.display(),
        outside.path().file_name().unwrap().to_str().unwrap()
    );
    assert!(Path::new(&escape).exists(), "{escape}");
    let cases: [(String, u16, &str); 8] = [
        (root_path.join("ok.wav").display().to_string(), 200, ""),
        (secret.display().to_string(), 403, "FileNotAllowed"),
        (
            root_path.join("link.wav").display().to_string(),
            403,
            "FileNotAllowed",
        ),
        (escape, 403, "FileNotAllowed"),
        ("ok.wav".into(), 403, "FileNotAllowed"),
        (
            root_path.join("missing.wav").display().to_string(),
            404,
            "FileNotFound",
        ),
        (
            root_path.join("empty.wav").display().to_string(),
            422,
            "EmptyFile",
        ),
        (
            root_path.join("notes.txt").display().to_string(),
            422,
            "UnknownFormat",
        ),
    ];
    for (path, status, error) in cases {
        let (got, r) = post_json(
            &node,
            "/fingerprint",
            json!({"track_id": 1, "filepath": path}),
        )
        .await;
        assert_eq!(got, status, "{path}: {r}");
        if !error.is_empty() {
            assert_eq!(r["error"], error, "{path}: {r}");
            assert!(!r["message"].as_str().unwrap().is_empty());
        }
    }
    let (status, r) = post_json(
        &node,
        "/fingerprint",
        json!({"track_id": 1, "filepath": root_path.join("sub")}),
    )
    .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (404, Some("FileNotFound")),
        "{r}"
    );
    let (status, r) = post_json(&node, "/fingerprint", json!({"track_id": 1})).await;
    assert_eq!(
        (status, r["error"].as_str()),
        (400, Some("BadRequest")),
        "{r}"
    );

    // Without a media root, paths are refused and uploads still work.
    let bare = Node::start(&[]).await;
    let (status, r) = post_json(
        &bare,
        "/fingerprint",
        json!({"track_id": 1, "filepath": secret}),
    )
    .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (403, Some("FileNotAllowed")),
        "{r}"
    );
    let data = std::fs::read(track("mp3", 1)).unwrap();
    let (status, _, r) = post_audio(&bare, "/fingerprint?track_id=up", "audio/mpeg", data).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["track_id"], "up");
    assert_eq!(r["metadata"]["format"], "mp3");
}

#[tokio::test]
async fn uploads_bad_bodies_and_the_size_limit() {
    let node = Node::start(&["--max-audio-upload-bytes=200000"]).await;
    let small = std::fs::read(track("opus", 1)).unwrap();
    assert!(small.len() < 200_000, "{}", small.len());
    let (status, _, r) = post_audio(&node, "/fingerprint", "audio/ogg", small).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["track_id"], Value::Null);
    let big = std::fs::read(track("src", 1)).unwrap();
    let (status, _, r) = post_audio(&node, "/fingerprint", "audio/wav", big).await;
    assert_eq!(
        (status, r["error"].as_str()),
        (413, Some("PayloadTooLarge")),
        "{r}"
    );
    for (body, error) in [
        (b"".to_vec(), "EmptyFile"),
        (
            b"RIFF\x10\x00\x00\x00WAVEjunkjunk".to_vec(),
            "UnknownFormat",
        ),
        (
            (0..50_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect(),
            "UnknownFormat",
        ),
    ] {
        let (status, _, r) =
            post_audio(&node, "/fingerprint", "application/octet-stream", body).await;
        assert_eq!((status, r["error"].as_str()), (422, Some(error)), "{r}");
    }
    let (status, r) = {
        let r = reqwest::Client::new()
            .post(node.url("/fingerprint"))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap())
    };
    assert_eq!(
        (status, r["error"].as_str()),
        (400, Some("BadRequest")),
        "{r}"
    );
}

#[tokio::test]
async fn chromaprint_by_path_and_upload_equals_fpcalc() {
    let node = Node::start(&[&root_arg(library())]).await;
    let file = track("m4a", 1);
    let out = Command::new("fpcalc")
        .arg("-json")
        .arg(&file)
        .output()
        .unwrap();
    let want: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (status, r) = post_json(&node, "/_fingerprint", json!({"filepath": file})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["fingerprint"], want["fingerprint"]);
    let terms = r["terms"].as_array().unwrap();
    assert!(!terms.is_empty() && terms.len() <= 120);
    let hashes = r["hashes"].as_array().unwrap();
    assert!(hashes.len() >= terms.len(), "every term is a hash");
    assert!(terms.iter().all(|t| hashes.contains(t)));
    assert!(r.get("items").is_none());
    let data = std::fs::read(&file).unwrap();
    let (status, _, up) =
        post_audio(&node, "/_fingerprint?raw=true&length=5", "audio/mp4", data).await;
    assert_eq!(status, 200, "{up}");
    let out = Command::new("fpcalc")
        .args(["-json", "-raw", "-length", "5"])
        .arg(&file)
        .output()
        .unwrap();
    let want: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(up["items"], want["fingerprint"]);
    let (status, _, r) =
        post_audio(&node, "/_fingerprint?length=-1", "audio/mp4", vec![1, 2, 3]).await;
    assert_eq!(
        (status, r["error"].as_str()),
        (400, Some("BadRequest")),
        "{r}"
    );
    let (status, _, r) = post_audio(
        &node,
        "/_fingerprint?length=1",
        "audio/mp4",
        std::fs::read(&file).unwrap(),
    )
    .await;
    assert_eq!(
        (status, r["error"].as_str()),
        (422, Some("AudioTooShort")),
        "{r}"
    );
}

#[tokio::test]
async fn excess_decodes_get_503_with_retry_after_never_a_queue() {
    // One decode at a time, nobody waiting: concurrent uploads of a long
    // file either run or are refused at once.
    let long = long_tracks().join("src/track-001.wav");
    let data = std::fs::read(&long).unwrap();
    let node = Node::start(&["--max-decodes=1", "--max-decodes-waiting=0"]).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = node.url("/fingerprint");
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            let r = reqwest::Client::new()
                .post(url)
                .header("content-type", "audio/wav")
                .body(data)
                .send()
                .await
                .unwrap();
            answer(r).await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (status, retry, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                refused += 1;
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(body["error"], "Overloaded");
            }
            other => panic!("status {other}: {body}"),
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    let metrics = node.metrics().await;
    let rejected: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fpnode_audio_rejected_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        rejected >= refused,
        "{refused} refused, the metric says {rejected}"
    );
}

#[tokio::test]
async fn a_30_second_mp3_excerpt_finds_its_track() {
    let lib = long_tracks();
    let node = Node::start(&[&root_arg(lib)]).await;
    let api = common::Api::json(&node);
    assert_eq!(api.call("PUT", "/music", None).await.status, 200);
    // Index each whole track's hashes.
    for n in 1..=4u32 {
        let file = lib.join(format!("src/track-{n:03}.wav"));
        let (status, r) = post_json(
            &node,
            "/_fingerprint",
            json!({"filepath": file, "length": 0}),
        )
        .await;
        assert_eq!(status, 200, "{r}");
        let put = api
            .call(
                "PUT",
                &format!("/music/{n}"),
                Some(json!({"hashes": r["hashes"]})),
            )
            .await;
        assert_eq!(put.status, 200, "{:?}", put.body);
    }
    // 30 s from 17.3 s into track 3, re-encoded as MP3.
    let excerpt = tempfile::NamedTempFile::with_suffix(".mp3").unwrap();
    let status = Command::new("ffmpeg")
        .args([
            "-v", "error", "-nostdin", "-y", "-ss", "17.3", "-t", "30", "-i",
        ])
        .arg(lib.join("src/track-003.wav"))
        .args(["-c:a", "libmp3lame", "-b:a", "128k"])
        .arg(excerpt.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let data = std::fs::read(excerpt.path()).unwrap();
    let (status, _, r) = post_audio(&node, "/music/_search", "audio/mpeg", data).await;
    assert_eq!(status, 200, "{r}");
    let results = r["results"].as_array().unwrap();
    assert_eq!(results[0]["id"], 3, "{r}");
    let best = results[0]["score"].as_u64().unwrap();
    // Measured: 58 of the excerpt's 120 terms (shifted frames, MP3).
    assert!(best >= 30, "a good share of the 120 terms match: {r}");
    if let Some(second) = results.get(1) {
        assert!(second["score"].as_u64().unwrap() * 4 < best, "{r}");
    }
    // Not audio: a named error; JSON searches are unchanged.
    let (status, _, r) = post_audio(&node, "/music/_search", "audio/mpeg", b"no".to_vec()).await;
    assert_eq!(
        (status, r["error"].as_str()),
        (422, Some("UnknownFormat")),
        "{r}"
    );
    let plain = api
        .call("POST", "/music/_search", Some(json!({"query": [1, 2, 3]})))
        .await;
    assert_eq!(plain.status, 200);
}

#[tokio::test]
async fn audio_server_serves_only_the_audio_endpoints() {
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fpnode"))
        .args(["audio-server", "--port", &port.to_string()])
        .arg(root_arg(library()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let health: Value = loop {
        if let Ok(r) = reqwest::get(format!("{base}/health")).await {
            break r.json().await.unwrap();
        }
        assert!(Instant::now() < deadline, "audio-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health["status"], "ok");
    let r = reqwest::Client::new()
        .post(format!("{base}/fingerprint"))
        .json(&json!({"track_id": 9, "filepath": track("ogg", 1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["metadata"]["format"], "ogg");
    let r = reqwest::Client::new()
        .put(format!("{base}/idx"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "no index API here");
    let metrics = reqwest::get(format!("{base}/_metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("fpnode_audio_requests_total"), "{metrics}");
    child.kill().unwrap();
    child.wait().unwrap();
}
