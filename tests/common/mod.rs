//! Test harness: starts the real `fpnode` binary on a free port with a temporary
//! data directory, waits until it answers, and kills it when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod audio;
mod child;
use child::die_with_parent;

pub struct Node {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    pub extra: Vec<String>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Node {
    pub async fn start(extra: &[&str]) -> Node {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut node = Node {
            child: None,
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            _tmp: Some(tmp),
        };
        node.spawn().await;
        node
    }

    /// Starts the binary (again, after `kill`/`terminate`: same port, same data).
    pub async fn spawn(&mut self) {
        if self.port == 0 {
            self.port = free_port();
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fpnode"));
        die_with_parent(&mut cmd);
        let child = cmd
            .arg("--dir")
            .arg(&self.dir)
            .arg("--port")
            .arg(self.port.to_string())
            .args(&self.extra)
            // A panic in the node prints its place and message; the
            // backtraces of the panics fault injection raises on purpose
            // would bury the test's own report.
            .env("RUST_BACKTRACE", "0")
            .stdout(self.log_file())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// The node's log (`fpnode.log` beside its data directory, appended to by
    /// every start), for post-mortems of failed tests.
    fn log_file(&self) -> Stdio {
        let path = self.dir.with_extension("log");
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            Ok(f) => Stdio::from(f),
            Err(_) => Stdio::null(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Ok(r) = client.get(self.url("/_health")).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fpnode did not become ready on port {}", self.port);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// The node's `/_metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/_metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().unwrap()
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JSON or MessagePack client for the API.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub msgpack: bool,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub content_type: String,
    pub retry_after: Option<String>,
}

impl Api {
    pub fn json(node: &Node) -> Api {
        Api {
            client: reqwest::Client::new(),
            base: node.url(""),
            msgpack: false,
        }
    }

    /// A JSON client sending `Authorization: Bearer <token>`.
    pub fn json_with_token(node: &Node, token: &str) -> Api {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        Api {
            client: reqwest::Client::builder()
                .default_headers(headers)
                .build()
                .unwrap(),
            base: node.url(""),
            msgpack: false,
        }
    }

    pub fn msgpack(node: &Node) -> Api {
        Api {
            client: reqwest::Client::new(),
            base: node.url(""),
            msgpack: true,
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(b) = body {
            req = if self.msgpack {
                req.header("Content-Type", "application/vnd.msgpack")
                    .body(rmp_serde::to_vec_named(&b).unwrap())
            } else {
                req.header("Content-Type", "application/json")
                    .body(serde_json::to_vec(&b).unwrap())
            };
        } else if self.msgpack {
            req = req.header("Accept", "application/vnd.msgpack");
        }
        // No answer (connection refused or cut: the node was killed) is status 0:
        // never an acknowledgement.
        let Ok(res) = req.send().await else {
            return Answer {
                status: 0,
                body: Value::Null,
                content_type: String::new(),
                retry_after: None,
            };
        };
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let retry_after = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let Ok(bytes) = res.bytes().await else {
            return Answer {
                status: 0,
                body: Value::Null,
                content_type,
                retry_after,
            };
        };
        let body = if bytes.is_empty() {
            Value::Null
        } else if content_type.contains("msgpack") {
            rmp_serde::from_slice(&bytes).unwrap()
        } else if content_type.contains("json") {
            serde_json::from_slice(&bytes).unwrap()
        } else {
            Value::String(String::from_utf8_lossy(&bytes).to_string())
        };
        Answer {
            status,
            body,
            content_type,
            retry_after,
        }
    }

    /// Field name as this format spells it.
    pub fn k(&self, full: &'static str) -> String {
        if self.msgpack {
            full[..1].to_string()
        } else {
            full.to_string()
        }
    }
}

/// Node options under which the change feed keeps nothing: small WAL files,
/// checkpoints every few writes, no retention.
pub const NO_CHANGES_RETAINED: &[&str] = &[
    "--changes-retention-bytes",
    "0",
    "--wal-file-bytes",
    "200",
    "--checkpoint-threshold",
    "20",
    "--checkpoint-age-ms",
    "50",
];

/// Waits (4 s at most) until `GET /<index>/_changes?since=0` answers
/// `410`: a checkpoint dropped the oldest WAL files. Its body.
pub async fn wait_not_retained(api: &Api, index: &str) -> Value {
    for _ in 0..200 {
        let r = api
            .call("GET", &format!("/{index}/_changes?since=0"), None)
            .await;
        if r.status == 410 {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("version 0 of {index} stayed retained");
}

/// Reads server-sent events from `res` until `n` events with data came (or
/// an `error` event); returns (id, event, data) of each.
pub async fn sse_events(
    res: reqwest::Response,
    n: usize,
) -> Vec<(String, String, serde_json::Value)> {
    use futures::StreamExt;
    let mut body = res.bytes_stream();
    let mut text = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("no event within 10 s")
            .expect("the stream ended")
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let (mut id, mut kind, mut data) = (String::new(), String::new(), None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str(v.trim()).unwrap());
                }
            }
            if let Some(data) = data {
                let error = kind == "error";
                out.push((id, kind, data));
                if error {
                    return out;
                }
            }
        }
    }
    out
}

/// Job `id` (`GET /_jobs/:id`, which must answer 200).
pub async fn job(api: &Api, id: u64) -> Value {
    let a = api.call("GET", &format!("/_jobs/{id}"), None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

/// Polls job `id` until `done` holds of it (30 s at most); `what` names
/// what is waited for in the failure.
pub async fn wait_job(api: &Api, id: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = job(api, id).await;
        if done(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "job {id} never {what}: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
