//! Replica mode end to end: real `fpnode` binaries following a real
//! nats-server. Writes through any replica converge on every replica; a
//! replica that was down through a delete + recreate holds only the new
//! generation; the same request sent twice (through two nodes) is applied
//! once; a new replica answers `503 LOADING` until it caught up; with NATS
//! down reads keep answering and writes fail fast; a replica SIGKILLed during
//! writes catches up without losing or doubling anything; a replica whose
//! StreamSubscriber fails during writes restarts it and loses nothing; `_stream`
//! and import jobs through a proxy and a replica reach both replicas.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/legacy.rs"]
mod legacy;
#[path = "common/nats.rs"]
mod nats;
#[path = "common/ws.rs"]
mod ws;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Api, Node};
use nats::NatsServer;
use serde_json::{Value, json};

type Model = BTreeMap<u32, Vec<u32>>;

/// These tests each run several servers and nodes: run them one at a time, so
/// a 2-core CI machine does not turn timeouts into failures.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A stateless proxy publishing to `nats` and reading from `replicas`.
async fn proxy(nats: &NatsServer, replicas: &[&Node]) -> Node {
    let url = nats.url();
    let list = replicas
        .iter()
        .map(|r| r.url(""))
        .collect::<Vec<_>>()
        .join(",");
    Node::start(&["--mode", "proxy", "--nats-url", &url, "--replicas", &list]).await
}

async fn replica(nats: &NatsServer, extra: &[&str]) -> Node {
    let url = nats.url();
    let mut args = vec!["--mode", "replica", "--nats-url", url.as_str()];
    args.extend_from_slice(extra);
    Node::start(&args).await
}

/// Distinct, sorted hashes for fingerprint `id` in round `round`.
fn hashes(id: u32, round: u32) -> Vec<u32> {
    (0..12)
        .map(|k| id.wrapping_mul(7919) ^ (round << 20) ^ (k * 104_729))
        .collect::<std::collections::BTreeSet<u32>>()
        .into_iter()
        .collect()
}

/// One `_update` of `ids` (every 5th id of an odd round is deleted instead),
/// applied to `model` once acknowledged. Returns the answer's version.
async fn update(api: &Api, ids: &[u32], round: u32, model: &mut Model) -> u64 {
    let mut changes = Vec::new();
    let mut next = model.clone();
    for &id in ids {
        if round % 2 == 1 && id % 5 == 0 {
            changes.push(json!({"delete": {"id": id}}));
            next.remove(&id);
        } else {
            let h = hashes(id, round);
            changes.push(json!({"insert": {"id": id, "hashes": h}}));
            next.insert(id, h);
        }
    }
    let body = json!({ "changes": changes });
    let mut a = api.call("POST", "/main/_update", Some(body.clone())).await;
    // A busy machine can make a write time out (503): retry as a client would
    // (the content is the same, so a write that landed twice changes nothing).
    for _ in 0..20 {
        if a.status != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        a = api.call("POST", "/main/_update", Some(body.clone())).await;
    }
    assert_eq!(a.status, 200, "{:?}", a.body);
    *model = next;
    a.body[api.k("version")].as_u64().unwrap()
}

async fn status(api: &Api) -> Value {
    let a = api.call("GET", "/main/_status", None).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body
}

async fn version(api: &Api) -> u64 {
    status(api).await["version"].as_u64().unwrap()
}

/// Polls until `api`'s index is at `v` or later; returns how long it took.
async fn wait_version(api: &Api, v: u64, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let a = api.call("GET", "/main/_status", None).await;
        if a.status == 200 && a.body["version"].as_u64().unwrap_or(0) >= v {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "{} did not reach version {v} within {timeout:?}: {:?}",
            api.base,
            a.body
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Every fingerprint of `main` in a stopped node's data directory.
fn export(node: &Node) -> Model {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fpnode"))
        .args(["export", "--index", "main", "--dir"])
        .arg(node.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let h = v["hashes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            (v["id"].as_u64().unwrap() as u32, h)
        })
        .collect()
}

/// Waits (10 s at most) until `node` follows `main` live: its bootstrap is
/// over (`/main/_health` answers 200, not `503 LOADING`).
async fn following_live(node: &Node) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while reqwest::get(node.url("/main/_health"))
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "{} never ready", node.url(""));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Job `id` once it ended.
async fn job_end(api: &Api, id: u64) -> Value {
    common::wait_job(api, id, "ended", |j| {
        j["state"] != "queued" && j["state"] != "running"
    })
    .await
}

/// What an SSE change feed sent: each event's version and changes.
type Events = Vec<(u64, Vec<Value>)>;

/// Collects the events of an SSE change feed as they arrive (until aborted).
fn collect_events(
    res: reqwest::Response,
) -> (
    std::sync::Arc<std::sync::Mutex<Events>>,
    tokio::task::JoinHandle<()>,
) {
    let got = std::sync::Arc::new(std::sync::Mutex::new(Events::new()));
    let collector = {
        let got = got.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut body = res.bytes_stream();
            let mut text = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                text.push_str(std::str::from_utf8(&chunk).unwrap());
                while let Some(end) = text.find("\n\n") {
                    let block: String = text.drain(..end + 2).collect();
                    let field = |name: &str| {
                        block
                            .lines()
                            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                    };
                    if let (Some(id), Some(data)) = (field("id:"), field("data:")) {
                        let data: Value = serde_json::from_str(&data).unwrap();
                        let changes = data["changes"].as_array().unwrap().clone();
                        got.lock().unwrap().push((id.parse().unwrap(), changes));
                    }
                }
            }
        })
    };
    (got, collector)
}

/// `changes` (`{kind, id, hashes}` objects, in order) applied to `model`.
fn apply_changes<'a>(model: &mut Model, changes: impl IntoIterator<Item = &'a Value>) {
    for c in changes {
        let id = c["id"].as_u64().unwrap() as u32;
        match c["kind"].as_str().unwrap() {
            "delete" => {
                model.remove(&id);
            }
            _ => {
                let h = c["hashes"].as_array().unwrap();
                model.insert(id, h.iter().map(|x| x.as_u64().unwrap() as u32).collect());
            }
        }
    }
}

async fn search_ids(api: &Api, query: &[u32]) -> Vec<u64> {
    let a = api
        .call("POST", "/main/_search", Some(json!({"query": query})))
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    a.body[api.k("results")]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[api.k("id")].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn writes_through_a_proxy_and_either_replica_converge_on_both() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let mut a = replica(&nats, &[]).await;
    let mut b = replica(&nats, &[]).await;
    let p = proxy(&nats, &[&a, &b]).await;
    let (ja, mb, mp) = (Api::json(&a), Api::msgpack(&b), Api::msgpack(&p));
    let created = mp.call("PUT", "/main", None).await;
    assert_eq!(created.status, 200, "{:?}", created.body);
    assert_eq!(created.body[mp.k("generation")], 1);
    // Three writers at once, through each replica and the proxy, on disjoint ids.
    let writer = |api: Api, base: u32| async move {
        let mut model = Model::new();
        let mut last = 0;
        for round in 0..12 {
            let ids: Vec<u32> = (base..base + 40).collect();
            last = update(&api, &ids, round, &mut model).await;
        }
        (model, last)
    };
    let ((model_a, va), (model_b, vb), (model_p, vp)) = tokio::join!(
        writer(ja.clone(), 1),
        writer(mb.clone(), 1001),
        writer(mp.clone(), 2001)
    );
    // Read-your-writes: each replica has its own last write already.
    assert!(version(&ja).await >= va);
    assert!(version(&mb).await >= vb);
    let meta = ja
        .call(
            "POST",
            "/main/_update",
            Some(json!({"changes": [], "metadata": {"source": "a"}})),
        )
        .await;
    assert_eq!(meta.status, 200);
    let last = meta.body["version"]
        .as_u64()
        .unwrap()
        .max(va)
        .max(vb)
        .max(vp);
    // Both replicas reach the last acknowledged version within 1 s.
    let lag = wait_version(&ja, last, Duration::from_secs(1))
        .await
        .max(wait_version(&mb, last, Duration::from_secs(1)).await);
    eprintln!("converged {lag:?} after the last acknowledgement");
    assert_eq!(version(&ja).await, version(&mb).await);
    let (mut ga, mut gb) = (
        ja.call("GET", "/main", None).await,
        Api::json(&b).call("GET", "/main", None).await,
    );
    // Segment counts depend on each replica's batching and merges.
    for g in [&mut ga.body, &mut gb.body] {
        g["stats"].as_object_mut().unwrap().remove("num_segments");
    }
    assert_eq!(ga.body, gb.body);
    assert_eq!(ga.body["metadata"]["source"], "a");
    let mut model = model_a;
    model.extend(model_b);
    model.extend(model_p);
    for (id, h) in model.iter().step_by(37) {
        let on_a = search_ids(&ja, h).await;
        assert_eq!(on_a.first(), Some(&u64::from(*id)));
        assert_eq!(on_a, search_ids(&mb, h).await);
        // The proxy forwards searches to a replica.
        assert_eq!(on_a, search_ids(&mp, h).await);
    }
    a.terminate();
    b.terminate();
    let (ea, eb) = (export(&a), export(&b));
    assert_eq!(ea, model, "replica a differs from the acknowledged writes");
    assert_eq!(eb, model, "replica b differs from the acknowledged writes");
}

#[tokio::test]
async fn a_replica_down_through_a_delete_and_recreate_holds_only_the_new_generation() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let mut b = replica(&nats, &[]).await;
    let (ja, jb) = (Api::json(&a), Api::json(&b));
    assert_eq!(ja.call("PUT", "/main", None).await.status, 200);
    let mut old = Model::new();
    let v = update(&ja, &(1..=100).collect::<Vec<_>>(), 0, &mut old).await;
    wait_version(&jb, v, Duration::from_secs(5)).await;
    b.terminate();

    let deleted = ja.call("DELETE", "/main", None).await;
    assert_eq!(deleted.body["deleted"], true);
    let recreated = ja.call("PUT", "/main", None).await;
    assert_eq!(recreated.body["generation"], 2, "{:?}", recreated.body);
    let mut new = Model::new();
    let v = update(&ja, &(50..=80).collect::<Vec<_>>(), 2, &mut new).await;

    b.spawn().await;
    let jb = Api::json(&b);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = jb.call("GET", "/main/_status", None).await;
        if s.status == 200 && s.body["generation"] == 2 && s.body["version"].as_u64() >= Some(v) {
            break;
        }
        assert!(Instant::now() < deadline, "b did not follow: {:?}", s.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A fingerprint only the old generation had is not found.
    assert!(search_ids(&jb, &old[&1]).await.is_empty());
    let one = jb.call("GET", "/main/1", None).await;
    assert_eq!(
        one.status, 404,
        "old generation's fingerprint leaked into the new one: {:?}",
        one.body
    );
    b.terminate();
    assert_eq!(export(&b), new);
}

#[tokio::test]
async fn the_same_request_through_two_replicas_is_applied_once() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let b = replica(&nats, &[]).await;
    same_request_applied_once(&a, &b, &a, &b).await;
}

#[tokio::test]
async fn the_same_request_through_two_proxies_is_applied_once() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let b = replica(&nats, &[]).await;
    let p1 = proxy(&nats, &[&a, &b]).await;
    let p2 = proxy(&nats, &[&b, &a]).await;
    same_request_applied_once(&p1, &p2, &a, &b).await;
}

/// Sends one request (one Idempotency-Key) through `x` and `y` at once, and
/// again later: replicas `a` and `b` apply it once.
async fn same_request_applied_once(x: &Node, y: &Node, a: &Node, b: &Node) {
    let (ja, jb) = (Api::json(a), Api::json(b));
    assert_eq!(Api::json(x).call("PUT", "/main", None).await.status, 200);
    wait_version(&ja, 1, Duration::from_secs(2)).await;
    wait_version(&jb, 1, Duration::from_secs(2)).await;
    let send = |node: &Node, key: &'static str| {
        let client = reqwest::Client::new();
        let url = node.url("/main/_update");
        async move {
            let r = client
                .post(url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", key)
                .body(r#"{"changes":[{"insert":{"id":7,"hashes":[1,2,3]}},{"insert":{"id":8,"hashes":[4]}}]}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["version"]
                .as_u64()
                .unwrap()
        }
    };
    let before = version(&ja).await;
    let (va, vb) = tokio::join!(send(x, "req-1"), send(y, "req-1"));
    assert_eq!(va, vb, "both nodes must answer the single applied write");
    let again = send(x, "req-1").await;
    assert_eq!(again, va);
    wait_version(&ja, va, Duration::from_secs(2)).await;
    wait_version(&jb, va, Duration::from_secs(2)).await;
    assert_eq!(version(&ja).await, va, "the index moved past the one write");
    assert_eq!(version(&jb).await, va);
    // Two messages written once: the version moved by exactly one batch.
    assert_eq!(va, before + 2);
    // A different key is a different request.
    let other = send(y, "req-2").await;
    assert!(other > va);
}

#[tokio::test]
async fn a_proxy_without_a_healthy_replica_answers_503_and_recovers() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let mut a = replica(&nats, &[]).await;
    let p = proxy(&nats, &[&a]).await;
    let jp = Api::json(&p);
    assert_eq!(jp.call("PUT", "/main", None).await.status, 200);
    let mut model = Model::new();
    update(&jp, &[1, 2, 3], 0, &mut model).await;
    assert_eq!(
        jp.call("POST", "/nope/_update", Some(json!({"changes": []})))
            .await
            .status,
        404
    );
    a.kill();
    let s = jp
        .call("POST", "/main/_search", Some(json!({"query": model[&1]})))
        .await;
    assert_eq!(s.status, 503, "{:?}", s.body);
    assert_eq!(s.body["error"], "Unavailable");
    assert!(s.retry_after.is_some());
    // Not ready once the health check saw the replica gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = reqwest::get(p.url("/_ready")).await.unwrap();
        if r.status() == 503 {
            assert_eq!(r.text().await.unwrap(), "no healthy replica\n");
            break;
        }
        assert!(Instant::now() < deadline, "the proxy stayed ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Writes do not need a replica: the stream takes them.
    update(&jp, &[4], 0, &mut model).await;
    a.spawn().await;
    // The health check finds the replica again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = jp
            .call("POST", "/main/_search", Some(json!({"query": model[&4]})))
            .await;
        if s.status == 200 && s.body["results"][0]["id"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", s.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_new_replica_answers_loading_until_it_caught_up() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let ma = Api::msgpack(&a);
    assert_eq!(ma.call("PUT", "/main", None).await.status, 200);
    let mut model = Model::new();
    let mut last = 0;
    for batch in 0..30u32 {
        let ids: Vec<u32> = (batch * 1000 + 1..=batch * 1000 + 1000).collect();
        last = update(&ma, &ids, 0, &mut model).await;
    }
    // Small fetches make the replay take long enough to watch; a 1 ms wait
    // makes pauses in delivery common, and a pause must not end LOADING.
    let c = replica(&nats, &["--fetch-max", "50", "--fetch-wait-ms", "1"]).await;
    let jc = Api::json(&c);
    let (mut loading, mut searched_loading) = (0, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = jc.call("GET", "/main/_health", None).await;
        match h.status {
            404 => {}
            503 => {
                assert_eq!(h.body, Value::String("LOADING\n".into()));
                if loading == 0 {
                    // So do /_ready and the metric (read once: it may end
                    // meanwhile).
                    let r = reqwest::get(c.url("/_ready")).await.unwrap();
                    let (code, text) = (r.status(), r.text().await.unwrap());
                    assert!(
                        (code == 503 && text == "main: LOADING\n")
                            || jc.call("GET", "/main/_health", None).await.status == 200,
                        "{code} {text}"
                    );
                    let m = c.metrics().await;
                    assert!(
                        m.contains(r#"fpnode_index_loading{index="main"} 1"#)
                            || jc.call("GET", "/main/_health", None).await.status == 200,
                        "{m}"
                    );
                }
                loading += 1;
                if !searched_loading {
                    let s = jc
                        .call("POST", "/main/_search", Some(json!({"query": [1]})))
                        .await;
                    if s.status == 503 {
                        assert_eq!(s.body["error"], "LOADING");
                        assert!(s.retry_after.is_some());
                        searched_loading = true;
                    }
                }
            }
            200 => break,
            other => panic!("unexpected {other}: {:?}", h.body),
        }
        assert!(Instant::now() < deadline, "replica never caught up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(loading > 0, "never saw LOADING");
    assert!(searched_loading, "no search was refused while loading");
    // Ready means caught up with what the stream held when it started.
    assert!(version(&jc).await >= last);
    for (id, h) in model.iter().step_by(997) {
        assert_eq!(search_ids(&jc, h).await.first(), Some(&u64::from(*id)));
    }
    let (sa, sc) = (status(&ma).await, status(&jc).await);
    assert_eq!(sa["num_docs"], sc["num_docs"]);
    let r = reqwest::get(c.url("/_ready?max_lag=0")).await.unwrap();
    assert_eq!(r.status(), 200);
    let m = c.metrics().await;
    for line in [
        r#"fpnode_index_loading{index="main"} 0"#,
        r#"fpnode_stream_diverged{index="main"} 0"#,
        r#"fpnode_stream_lag{index="main"} 0"#,
        r#"fpnode_stream_last_fetch_age_seconds{index="main"}"#,
    ] {
        assert!(
            m.contains(line),
            "{line}:
{m}"
        );
    }
}

#[tokio::test]
async fn with_nats_down_reads_answer_writes_fail_fast_and_nothing_acknowledged_is_lost() {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsServer::start();
    let mut a = replica(&nats, &[]).await;
    let mut b = replica(&nats, &[]).await;
    let (ja, jb) = (Api::json(&a), Api::json(&b));
    assert_eq!(ja.call("PUT", "/main", None).await.status, 200);
    let mut model = Model::new();
    for round in 0..3 {
        update(&ja, &(1..=50).collect::<Vec<_>>(), round, &mut model).await;
    }
    let probe = model[&1].clone();

    nats.kill();
    let down = Instant::now();
    let (mut reads, mut refused, mut slowest) = (0, 0, Duration::ZERO);
    while down.elapsed() < Duration::from_secs(10) {
        for api in [&ja, &jb] {
            assert_eq!(search_ids(api, &probe).await.first(), Some(&1));
            reads += 1;
        }
        let t = Instant::now();
        let w = jb
            .call(
                "POST",
                "/main/_update",
                Some(json!({"changes": [{"insert": {"id": 999, "hashes": [1]}}]})),
            )
            .await;
        slowest = slowest.max(t.elapsed());
        assert_eq!(w.status, 503, "{:?}", w.body);
        assert!(w.retry_after.is_some());
        refused += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = status(&ja).await;
    assert_eq!(s["stream"]["connected"], false, "{s:?}");
    assert!(
        s["stream"]["disconnected_ms"].as_u64().unwrap() >= 5_000,
        "{s:?}"
    );
    eprintln!(
        "NATS down 10 s: {reads} reads answered, {refused} writes refused, slowest refusal {slowest:?}"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a write took {slowest:?} to fail"
    );

    nats.restart();
    // Writes come back once each node's client reconnected (backoff with jitter).
    let back = Instant::now();
    for api in [&ja, &jb] {
        while status(api).await["stream"]["connected"] != true {
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "{} never reconnected",
                api.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "both replicas reconnected {:?} after the server returned",
        back.elapsed()
    );
    loop {
        let w = ja
            .call(
                "POST",
                "/main/_update",
                Some(json!({"changes": [{"insert": {"id": 60, "hashes": [60]}}]})),
            )
            .await;
        if w.status == 200 {
            model.insert(60, vec![60]);
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "writes did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut last = 0;
    for round in 3..6 {
        last = update(&jb, &(1..=50).collect::<Vec<_>>(), round, &mut model).await;
    }
    wait_version(&ja, last, Duration::from_secs(5)).await;
    assert_eq!(status(&ja).await["stream"]["connected"], true);
    a.terminate();
    b.terminate();
    assert_eq!(export(&a), model);
    assert_eq!(export(&b), model);
}

#[tokio::test]
async fn a_replica_killed_during_writes_catches_up_without_loss_or_doubles() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let mut a = replica(&nats, &[]).await;
    let mut b = replica(&nats, &["--checkpoint-threshold", "2000"]).await;
    let ma = Api::msgpack(&a);
    assert_eq!(ma.call("PUT", "/main", None).await.status, 200);
    let writes = {
        let ma = ma.clone();
        tokio::spawn(async move {
            let mut model = Model::new();
            let mut last = 0;
            for round in 0..60u32 {
                let ids: Vec<u32> = (1..=200).filter(|i| i % 3 == round % 3).collect();
                last = update(&ma, &ids, round, &mut model).await;
            }
            (model, last)
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.kill();
        tokio::time::sleep(Duration::from_millis(100)).await;
        b.spawn().await;
    }
    let (model, last) = writes.await.unwrap();
    let jb = Api::json(&b);
    wait_version(&jb, last, Duration::from_secs(10)).await;
    a.terminate();
    b.terminate();
    assert_eq!(export(&b), model, "the killed replica differs");
    assert_eq!(export(&a), model);
}

/// An `_update` with an Idempotency-Key, retried with the same key while the
/// answer is 503 (what a careful client does during a failover).
async fn update_retrying(node: &Node, ids: &[u32], round: u32, model: &mut Model) -> u64 {
    let mut changes = Vec::new();
    let mut next = model.clone();
    for &id in ids {
        let h = hashes(id, round);
        changes.push(json!({"insert": {"id": id, "hashes": h}}));
        next.insert(id, h);
    }
    let body = json!({ "changes": changes }).to_string();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client
            .post(node.url("/main/_update"))
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", format!("round-{round}"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        if status == 200 {
            *model = next;
            return r.json::<Value>().await.unwrap()["version"]
                .as_u64()
                .unwrap();
        }
        assert_eq!(status, 503, "{:?}", r.text().await);
        assert!(
            Instant::now() < deadline,
            "round {round} never got through; log:\n{}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_three_server_cluster_loses_no_acknowledged_write_when_a_server_dies() {
    let _serial = SERIAL.lock().await;
    let mut cluster = nats::NatsCluster::start(3);
    let urls = cluster.urls();
    let args = [
        "--mode",
        "replica",
        "--nats-url",
        &urls,
        "--stream-replicas",
        "3",
    ];
    let mut a = Node::start(&args).await;
    let mut b = Node::start(&args).await;
    let ja = Api::json(&a);
    // The cluster elects its leaders first: retry the create until it lands.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ja.call("PUT", "/main", None).await.status != 200 {
        assert!(Instant::now() < deadline, "index never created");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut model = Model::new();
    for round in 0..10 {
        update_retrying(&a, &(1..=100).collect::<Vec<_>>(), round, &mut model).await;
    }
    cluster.servers[0].kill();
    let mut last = 0;
    for round in 10..30 {
        let node = if round % 2 == 0 { &a } else { &b };
        last = update_retrying(node, &(1..=100).collect::<Vec<_>>(), round, &mut model).await;
    }
    wait_version(&Api::json(&a), last, Duration::from_secs(20)).await;
    wait_version(&Api::json(&b), last, Duration::from_secs(20)).await;
    a.terminate();
    b.terminate();
    assert_eq!(export(&a), model);
    assert_eq!(export(&b), model);
}

#[tokio::test]
async fn a_replica_stops_following_a_stream_that_lost_acknowledged_writes() {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let ja = Api::json(&a);
    assert_eq!(ja.call("PUT", "/main", None).await.status, 200);
    let mut model = Model::new();
    update_retrying(&a, &[1, 2, 3], 0, &mut model).await;
    // Keep a copy of the server's store as it is now.
    let js = nats.store.path().join("js");
    let saved = nats.store.path().join("saved");
    nats.kill();
    let cp = |from: &std::path::Path, to: &std::path::Path| {
        let _ = std::fs::remove_dir_all(to);
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    cp(&js, &saved);
    nats.restart();
    let applied = update_retrying(&a, &[4, 5], 1, &mut model).await;
    // The server comes back without what it acknowledged since the copy (as a
    // lazily fsynced server can after a power loss).
    nats.kill();
    cp(&saved, &js);
    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let why = loop {
        let s = status(&ja).await;
        if let Some(why) = s["stream"]["diverged"].as_str() {
            break why.to_string();
        }
        assert!(Instant::now() < deadline, "never noticed: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(why.contains("below this index's applied version"), "{why}");
    // It keeps what it applied and answers reads; it refuses writes.
    assert_eq!(version(&ja).await, applied);
    assert_eq!(search_ids(&ja, &model[&4]).await.first(), Some(&4));
    let w = ja
        .call(
            "POST",
            "/main/_update",
            Some(json!({"changes": [{"delete": {"id": 1}}]})),
        )
        .await;
    assert_eq!(w.status, 503);
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("fpnode_stream_diverged{index=\"main\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_replica_killed_while_bootstrapping_resumes_from_its_last_checkpoint() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let mut a = replica(&nats, &[]).await;
    let ma = Api::msgpack(&a);
    assert_eq!(ma.call("PUT", "/main", None).await.status, 200);
    let mut model = Model::new();
    let mut last = 0;
    for batch in 0..20u32 {
        let ids: Vec<u32> = (batch * 1000 + 1..=batch * 1000 + 1000).collect();
        last = update(&ma, &ids, 0, &mut model).await;
    }
    // Bootstrapping (bulk load: unlogged until each checkpoint), small
    // batches and checkpoints so the kill lands between checkpoints.
    let mut c = replica(
        &nats,
        &["--fetch-max", "200", "--checkpoint-threshold", "50000"],
    )
    .await;
    let jc = Api::json(&c);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = jc.call("GET", "/main/_status", None).await;
        let v = s.body["version"].as_u64().unwrap_or(0);
        if s.status == 200 && s.body["stream"]["loading"] == true && v > last / 3 {
            break;
        }
        assert!(
            Instant::now() < deadline && v < last,
            "never caught mid-bootstrap: {:?}",
            s.body
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.kill();
    c.spawn().await;
    wait_version(&Api::json(&c), last, Duration::from_secs(30)).await;
    a.terminate();
    c.terminate();
    assert_eq!(
        export(&c),
        model,
        "the replica killed while bootstrapping differs"
    );
}

/// A fault injected into a replica's StreamSubscriber while writes arrive
/// through another replica and searches run on it: the subscriber is
/// restarted and counted, searches keep answering, and the replica ends with
/// exactly the acknowledged state.
#[tokio::test]
async fn a_failed_stream_subscriber_is_restarted_during_writes_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let mut b = replica(&nats, &["--enable-fault-injection"]).await;
    let (ja, jb) = (Api::json(&a), Api::json(&b));
    assert_eq!(ja.call("PUT", "/main", None).await.status, 200);
    let started = Instant::now();
    while jb.call("GET", "/main/_status", None).await.status != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "b never got main"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writer = {
        let ja = ja.clone();
        tokio::spawn(async move {
            let mut model = Model::new();
            let mut last = 0;
            for round in 0..16 {
                let ids: Vec<u32> = (1..=60).collect();
                last = update(&ja, &ids, round, &mut model).await;
            }
            (model, last)
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let r = jb
        .client
        .post(format!("{}/_debug/fail/main/stream_subscriber", jb.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut searches = 0;
    while !writer.is_finished() {
        search_ids(&jb, &hashes(1, 0)).await;
        searches += 1;
    }
    let (model, last) = writer.await.unwrap();
    wait_version(&jb, last, Duration::from_secs(30)).await;
    let metrics = jb.call("GET", "/_metrics", None).await.body;
    let restarts: f64 = metrics
        .as_str()
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("fpnode_actor_restarts_total{actor=\"stream_subscriber\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        restarts >= 1.0,
        "the subscriber was not restarted: {metrics}"
    );
    assert!(searches > 0);
    b.terminate();
    assert_eq!(
        export(&b),
        model,
        "replica b differs from what was acknowledged"
    );
}

/// `_stream` in replica and proxy modes: changes streamed through the proxy
/// and through one replica go through the stream, in the body's order, and
/// both replicas hold them at the version the last line reports.
#[tokio::test]
async fn a_stream_through_a_proxy_and_a_replica_reaches_both_replicas() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let b = replica(&nats, &[]).await;
    let p = proxy(&nats, &[&a, &b]).await;
    let (ja, jb, jp) = (Api::json(&a), Api::json(&b), Api::json(&p));
    assert_eq!(jp.call("PUT", "/main", None).await.status, 200);
    let body = |ids: std::ops::RangeInclusive<u32>, deletes: std::ops::RangeInclusive<u32>| {
        let mut out = String::new();
        for id in ids {
            out += &json!({ "insert": { "id": id, "hashes": hashes(id, 0) } }).to_string();
            out.push('\n');
        }
        for id in deletes {
            out += &json!({ "delete": { "id": id } }).to_string();
            out.push('\n');
        }
        out
    };
    let mut last_version = 0;
    for (node, text) in [
        (&p, body(1..=2500, 1..=10)),
        (&a, body(3001..=4500, 3001..=3010)),
    ] {
        let res = reqwest::Client::new()
            .post(node.url("/main/_stream"))
            .header("Content-Type", "application/x-ndjson")
            .body(text)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let answer = res.text().await.unwrap();
        let last: Value = serde_json::from_str(answer.lines().last().unwrap()).unwrap();
        assert_eq!(last["done"], json!(true), "{answer}");
        last_version = last["version"].as_u64().unwrap();
        assert!(last_version > 0);
    }
    for api in [&ja, &jb] {
        wait_version(api, last_version, Duration::from_secs(10)).await;
        for (id, there) in [
            (5, false),
            (11, true),
            (2500, true),
            (3005, false),
            (4500, true),
        ] {
            let r = api.call("GET", &format!("/main/{id}"), None).await;
            assert_eq!(
                r.status == 200,
                there,
                "{} fingerprint {id}: {:?}",
                api.base,
                r.body
            );
        }
    }
}

/// Import jobs in replica and proxy modes: an uploaded body through the
/// proxy and a file through a replica go through the stream, and both
/// replicas hold every fingerprint at the version the jobs report. The
/// kinds that work on local files are refused by the proxy.
#[tokio::test]
async fn import_jobs_through_a_proxy_and_a_replica_reach_both_replicas() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let imports = tempfile::tempdir().unwrap();
    let dir = imports.path().to_str().unwrap().to_string();
    let a = replica(&nats, &["--import-dir", &dir]).await;
    let b = replica(&nats, &[]).await;
    let p = proxy(&nats, &[&a, &b]).await;
    let (ja, jb, jp) = (Api::json(&a), Api::json(&b), Api::json(&p));
    assert_eq!(jp.call("PUT", "/main", None).await.status, 200);
    let ndjson = |ids: std::ops::RangeInclusive<u32>| {
        let mut out = String::new();
        for id in ids {
            out += &json!({ "id": id, "hashes": hashes(id, 0) }).to_string();
            out.push('\n');
        }
        out
    };
    std::fs::write(imports.path().join("part2.ndjson"), ndjson(3001..=4500)).unwrap();
    let res = reqwest::Client::new()
        .post(p.url("/main/_import"))
        .header("Content-Type", "application/x-ndjson")
        .body(ndjson(1..=2500))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let uploaded: Value = res.json().await.unwrap();
    let started = ja
        .call(
            "POST",
            "/_jobs",
            Some(json!({"kind": "import", "index": "main", "file": "part2.ndjson"})),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.body);
    let mut last_version = 0;
    for (api, id) in [(&jp, &uploaded["id"]), (&ja, &started.body["id"])] {
        let job = job_end(api, id.as_u64().unwrap()).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        last_version = last_version.max(job["result"]["version"].as_u64().unwrap());
    }
    for api in [&ja, &jb] {
        wait_version(api, last_version, Duration::from_secs(10)).await;
        assert_eq!(status(api).await["num_docs"], 4000, "{}", api.base);
        for id in [1, 2500, 3001, 4500] {
            assert_eq!(
                api.call("GET", &format!("/main/{id}"), None).await.status,
                200
            );
        }
    }
    let refused = jp
        .call(
            "POST",
            "/_jobs",
            Some(json!({"kind": "verify", "index": "main"})),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    let verified = jb
        .call(
            "POST",
            "/_jobs",
            Some(json!({"kind": "verify", "index": "main"})),
        )
        .await;
    assert_eq!(verified.status, 202, "{}", verified.body);
}

/// Change feeds through a proxy: an event stream is streamed through as the
/// replica sends it (live events included), `Last-Event-ID` resumes it
/// exactly, and a long poll waits through the proxy for the next write.
#[tokio::test]
async fn change_feeds_stream_through_a_proxy_and_resume_from_last_event_id() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let b = replica(&nats, &[]).await;
    let p = proxy(&nats, &[&a, &b]).await;
    let jp = Api::json(&p);
    assert_eq!(jp.call("PUT", "/main", None).await.status, 200);
    // Batches a replica applies while it bootstraps are not in its log
    // (docs/api.md): write once both follow live.
    for node in [&a, &b] {
        following_live(node).await;
    }
    let mut model = Model::new();
    let mut versions = Vec::new();
    for round in 0..3 {
        versions.push(update(&jp, &[1 + round], round * 2, &mut model).await);
    }
    let client = reqwest::Client::new();
    let res = client
        .get(p.url("/main/_changes?feed=eventsource"))
        .header("Last-Event-ID", versions[0].to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let writer = {
        let jp = jp.clone();
        let mut model = model.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            update(&jp, &[9], 0, &mut model).await
        })
    };
    let got = common::sse_events(res, 3).await;
    let live = writer.await.unwrap();
    let ids: Vec<u64> = got.iter().map(|(id, _, _)| id.parse().unwrap()).collect();
    assert_eq!(ids, [versions[1], versions[2], live]);
    assert_eq!(got[2].2["changes"][0]["id"], 9);

    // A long poll through the proxy waits for the next write.
    let poll = {
        let url = p.url(&format!(
            "/main/_changes?feed=longpoll&since={live}&timeout=20000"
        ));
        tokio::spawn(async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished());
    let next = update(&jp, &[11], 0, &mut model).await;
    let answer = poll.await.unwrap();
    assert_eq!(answer["results"][0]["version"], next, "{answer}");
    assert_eq!(answer["results"][0]["id"], 11);
}

/// A long poll through the proxy outlives the proxy's 45 s silence limit
/// for event streams (a long poll sends nothing until its answer): asked to
/// wait 60 s, it is answered by a write 47 s in, not cut off. Idle for most
/// of a minute, it lets the other tests run meanwhile.
#[tokio::test]
async fn a_long_poll_through_a_proxy_waits_beyond_the_event_stream_silence_limit() {
    let serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let p = proxy(&nats, &[&a]).await;
    let jp = Api::json(&p);
    assert_eq!(jp.call("PUT", "/main", None).await.status, 200);
    following_live(&a).await;
    let mut model = Model::new();
    let first = update(&jp, &[1], 0, &mut model).await;
    drop(serial);

    let started = Instant::now();
    let poll = {
        let url = p.url(&format!(
            "/main/_changes?feed=longpoll&since={first}&timeout=60000"
        ));
        tokio::spawn(async move {
            let res = reqwest::get(url).await.unwrap();
            (res.status(), res.text().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_secs(47)).await;
    assert!(
        !poll.is_finished(),
        "answered after {:?}",
        started.elapsed()
    );
    let next = update(&jp, &[2], 0, &mut model).await;
    let (status, body) = poll.await.unwrap();
    let waited = started.elapsed();
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["results"][0]["version"], next, "{answer}");
    assert_eq!(answer["results"][0]["id"], 2);
    assert!(waited < Duration::from_secs(60), "{waited:?}");
}

/// The legacy line protocol on a replica and on a proxy: a commit takes
/// the HTTP write path (through the stream) and reaches both replicas; a
/// proxy's search is forwarded to a replica.
#[tokio::test]
async fn legacy_commits_on_a_replica_and_a_proxy_reach_both_replicas() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let (port_a, port_p) = (common::free_port(), common::free_port());
    let a = replica(&nats, &["--legacy-port", &port_a.to_string()]).await;
    let b = replica(&nats, &[]).await;
    let url = nats.url();
    let list = format!("{},{}", a.url(""), b.url(""));
    let _p = Node::start(&[
        "--mode",
        "proxy",
        "--nats-url",
        &url,
        "--replicas",
        &list,
        "--legacy-port",
        &port_p.to_string(),
    ])
    .await;
    // Both legacy servers create `main` (through the stream) when missing.
    for node in [&a, &b] {
        following_live(node).await;
    }
    let mut on_a = legacy::Legacy::connect(port_a).await;
    let mut on_p = legacy::Legacy::connect(port_p).await;
    for (c, id) in [(&mut on_a, 1001), (&mut on_p, 1002)] {
        assert_eq!(c.ask("begin").await, "OK ");
        assert_eq!(c.ask(&format!("insert {id} 5,6,{id}")).await, "OK ");
        assert_eq!(c.ask(&format!("set attribute by{id} legacy")).await, "OK ");
        assert_eq!(c.ask("commit").await, "OK ");
    }
    // A replica answers a commit once it applied it; a proxy once the
    // stream has it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while on_a.ask("search 5,6,1001").await != "OK 1001:3 1002:2" {
        assert!(Instant::now() < deadline, "a never got both commits");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hb = Api::json(&b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while search_ids(&hb, &[5, 6, 1002]).await != [1002, 1001] {
        assert!(Instant::now() < deadline, "b never got both commits");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while on_p.ask("search 5,6,1002").await != "OK 1002:3 1001:2" {
        assert!(Instant::now() < deadline, "the proxy never found both");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(on_p.ask("get by1001").await, "OK legacy");
    let index = hb.call("GET", "/main", None).await;
    assert_eq!(index.body["metadata"]["by1002"], "legacy", "{}", index.body);
}

/// Authentication on a proxy and its replicas (the same tokens): the proxy
/// refuses what the token does not cover, forwards the client's token with
/// reads, and passes a browser's WebSocket feed through with its own
/// `--replica-token`.
#[tokio::test]
async fn a_proxy_checks_tokens_and_its_replicas_see_the_clients_or_its_own() {
    let _serial = SERIAL.lock().await;
    const READ: &str = "reader-token-0000000001";
    const ADMIN: &str = "admin-token-00000000001";
    let tokens = format!("read:{READ},admin:{ADMIN}");
    let nats = NatsServer::start();
    let tokens_arg = ["--auth-tokens", tokens.as_str()];
    let a = replica(&nats, &tokens_arg).await;
    let legacy_port = common::free_port();
    let url = nats.url();
    let replicas = a.url("");
    let p = Node::start(&[
        "--mode",
        "proxy",
        "--nats-url",
        &url,
        "--replicas",
        &replicas,
        "--auth-tokens",
        &tokens,
        "--replica-token",
        READ,
        "--legacy-port",
        &legacy_port.to_string(),
    ])
    .await;
    let admin = Api::json_with_token(&p, ADMIN);
    let reader = Api::json_with_token(&p, READ);
    assert_eq!(Api::json(&p).call("PUT", "/main", None).await.status, 401);
    assert_eq!(reader.call("PUT", "/main", None).await.status, 403);
    assert_eq!(admin.call("PUT", "/main", None).await.status, 200);
    following_live(&a).await;
    let mut model = Model::new();
    let v = update(&admin, &[1, 2], 0, &mut model).await;
    wait_version(&Api::json_with_token(&a, READ), v, Duration::from_secs(10)).await;
    // A forwarded read carries the client's token to the replica.
    assert_eq!(search_ids(&reader, &hashes(1, 0)).await[0], 1);
    assert_eq!(
        Api::json(&p)
            .call("GET", "/main/_status", None)
            .await
            .status,
        401
    );
    // A browser's WebSocket: the token in the query at the proxy, the
    // proxy's own token at the replica.
    let ws_url = format!("ws://127.0.0.1:{}/_changes?access_token={READ}", p.port);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    ws::send(
        &mut socket,
        json!({ "op": "subscribe", "index": "main", "since": 0 }),
    )
    .await;
    assert_eq!(ws::next(&mut socket).await["type"], "subscribed");
    let got = socket_changes(&mut socket, v).await;
    assert_eq!(got.last().unwrap().0, v);
    let bare = format!("ws://127.0.0.1:{}/_changes", p.port);
    assert!(tokio_tungstenite::connect_async(bare).await.is_err());
    // A browser's long poll and event stream: the token in the query at the
    // proxy reaches the replica (as a header).
    let poll = reqwest::get(format!(
        "http://127.0.0.1:{}/main/_changes?access_token={READ}&feed=longpoll&since=0",
        p.port
    ))
    .await
    .unwrap();
    assert_eq!(poll.status(), 200);
    let poll: serde_json::Value = poll.json().await.unwrap();
    assert_eq!(poll["last_version"], v, "{poll}");
    let events = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/main/_changes?access_token={READ}&feed=eventsource&since=0",
            p.port
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    drop(events);
    // The legacy protocol on the proxy (no token in its protocol): its
    // reads reach the replica with the proxy's own token.
    let mut on_p = legacy::Legacy::connect(legacy_port).await;
    let query: Vec<String> = hashes(1, 0).iter().map(u32::to_string).collect();
    let answer = on_p.ask(&format!("search {}", query.join(","))).await;
    assert!(answer.starts_with("OK 1:"), "{answer}");
}

/// A `resync` job drops a replica's copy of an index and bootstraps it
/// again from the stream: afterwards it holds exactly what the stream holds
/// (and what the other replica holds), and the node's events show the copy
/// dropped and created again. A copy that fails to open is repaired by the
/// replica itself, from the stream.
#[tokio::test]
async fn a_resync_job_rebuilds_a_replica_copy_from_the_stream() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let b = replica(&nats, &[]).await;
    let (ja, jb) = (Api::json(&a), Api::json(&b));
    assert_eq!(ja.call("PUT", "/main", None).await.status, 200);
    let mut model = Model::new();
    let ids: Vec<u32> = (1..=400).collect();
    let mut last = 0;
    for round in 0..4 {
        last = update(&ja, &ids, round, &mut model).await;
    }
    wait_version(&jb, last, Duration::from_secs(10)).await;
    let before = status(&ja).await;
    let events_before = ja.call("GET", "/_changes", None).await.body["last_seq"]
        .as_u64()
        .unwrap();
    let started = ja
        .call(
            "POST",
            "/_jobs",
            Some(json!({"kind": "resync", "index": "main"})),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.body);
    let job = job_end(&ja, started.body["id"].as_u64().unwrap()).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["result"]["version"], last, "{job}");
    let after = status(&ja).await;
    assert_eq!(after["version"], before["version"]);
    assert_eq!(after["num_docs"], before["num_docs"]);
    assert_eq!(after["num_docs"].as_u64(), Some(model.len() as u64));
    for (id, h) in model.iter().take(50) {
        let hits = search_ids(&ja, h).await;
        assert_eq!(hits.first(), Some(&u64::from(*id)), "fingerprint {id}");
    }
    let events = ja
        .call("GET", &format!("/_changes?since={events_before}"), None)
        .await
        .body;
    let kinds: Vec<&str> = events["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] != "job")
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["index_deleted", "index_created"], "{events}");
    // Writes go on after it.
    let next = update(&ja, &[1, 2, 3], 5, &mut model).await;
    wait_version(&jb, next, Duration::from_secs(10)).await;
    assert_eq!(status(&ja).await["num_docs"], status(&jb).await["num_docs"]);

    // A copy that no longer opens (its manifest damaged while the node was
    // down) is repaired by the replica itself: when the stream's record
    // reaches it at start, the copy is dropped and followed again.
    let mut a = a;
    a.kill();
    let index_dir = a.data_dir().join("indexes").join("main");
    let generation = std::fs::read_dir(&index_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    std::fs::write(generation.join("MANIFEST"), b"garbage").unwrap();
    a.spawn().await;
    let ja = Api::json(&a);
    let deadline = Instant::now() + Duration::from_secs(20);
    let repaired = loop {
        let s = ja.call("GET", "/main/_status", None).await;
        if s.status == 200 && s.body["version"] == next && s.body["stream"]["loading"] == false {
            break s.body;
        }
        assert!(
            Instant::now() < deadline,
            "never repaired: {} {}",
            s.status,
            s.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(repaired["num_docs"].as_u64(), Some(model.len() as u64));
    // An index this replica does not hold is not resynced.
    let refused = ja
        .call(
            "POST",
            "/_jobs",
            Some(json!({"kind": "resync", "index": "nope"})),
        )
        .await;
    assert_eq!(refused.status, 404, "{}", refused.body);
}

/// A change feed on a replica goes on across a NATS outage: the replica
/// keeps its event stream open while the server is down, and once it is back
/// the stream delivers what was written after, with no version missing and
/// none twice (the same versions, in the same order, as the replica's
/// change log lists).
#[tokio::test]
async fn a_change_feed_on_a_replica_goes_on_across_a_nats_outage() {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let b = replica(&nats, &[]).await;
    let (ja, jb) = (Api::json(&a), Api::json(&b));
    assert_eq!(ja.call("PUT", "/main", None).await.status, 200);
    // Batches a replica applies while it bootstraps are not in its log.
    following_live(&b).await;
    let mut model = Model::new();
    let first = update(&ja, &[1, 2], 0, &mut model).await;
    let mut acked = vec![update(&ja, &[3], 0, &mut model).await];

    // Follow b's feed from the first write on, collecting each event's
    // version and the ids it changes.
    let res = reqwest::Client::new()
        .get(b.url(&format!("/main/_changes?feed=eventsource&since={first}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (got, collector) = collect_events(res);

    nats.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart();
    let back = Instant::now();
    for api in [&ja, &jb] {
        while status(api).await["stream"]["connected"] != true {
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "{} never reconnected",
                api.base
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for round in 1..=3 {
        acked.push(update(&ja, &[10 + round], round, &mut model).await);
    }
    let last = *acked.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.lock().unwrap().last().map(|(v, _)| *v) != Some(last) {
        assert!(
            Instant::now() < deadline,
            "feed stopped at {:?}, last write {last}",
            got.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    collector.abort();
    let got = got.lock().unwrap().clone();
    // What b's change log holds after `first`, in order.
    let page = jb
        .call(
            "GET",
            &format!("/main/_changes?since={first}&limit=10000"),
            None,
        )
        .await
        .body;
    let mut logged: Vec<u64> = page["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["version"].as_u64().unwrap())
        .collect();
    logged.dedup();
    let versions: Vec<u64> = got.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, logged, "the feed and the log differ");
    // A replica applies what one fetch brings as one batch, at the last
    // message's sequence (docs/api.md): an acknowledged version is in the
    // first event at or after it, with its changes.
    for v in &acked {
        assert!(
            versions.iter().any(|g| g >= v),
            "acknowledged version {v} never reached: {versions:?}"
        );
    }
    let mut ids: Vec<u64> = got
        .iter()
        .flat_map(|(_, changes)| changes.iter().map(|c| c["id"].as_u64().unwrap()))
        .collect();
    // (A write retried after a 503 may have landed twice: same content.)
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids, [3, 11, 12, 13], "the written fingerprints: {got:?}");
}

#[tokio::test]
async fn a_replica_feed_reads_what_its_bootstrap_replayed_back_from_the_stream() {
    let _serial = SERIAL.lock().await;
    let mut nats = NatsServer::start();
    let a = replica(&nats, &[]).await;
    let ja = Api::json(&a);
    assert_eq!(ja.call("PUT", "/main", None).await.status, 200);
    let start = version(&ja).await;
    let mut model = Model::new();
    let ids: Vec<u32> = (1..=300).collect();
    update(&ja, &ids, 0, &mut model).await;
    // Round 1 replaces ids 1-100 and deletes every fifth of them.
    let mid = update(&ja, &ids[..100], 1, &mut model).await;
    update(&ja, &ids[250..], 2, &mut model).await;

    // b replays the stream while it bootstraps: none of it is in its log.
    let b = replica(&nats, &[]).await;
    let jb = Api::json(&b);
    following_live(&b).await;
    wait_version(&jb, version(&ja).await, Duration::from_secs(20)).await;

    // Paged from 0: the latest state of every fingerprint, each once.
    let mut got = Model::new();
    let (mut since, mut pages, mut seen) = (0, 0, Vec::new());
    loop {
        let page = jb
            .call(
                "GET",
                &format!("/main/_changes?since={since}&limit=70&hashes=true"),
                None,
            )
            .await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let results = page.body["results"].as_array().unwrap();
        assert!(results.len() <= 70);
        for c in results {
            let v = c["version"].as_u64().unwrap();
            assert!(v > since && v > start, "version {v} after {since}");
            seen.push(c["id"].as_u64().unwrap());
        }
        apply_changes(&mut got, results);
        since = page.body["last_version"].as_u64().unwrap();
        pages += 1;
        if page.body["more"] == false {
            break;
        }
        assert!(pages < 100, "paging never ended");
    }
    assert!(pages >= 5, "{pages} pages of at most 70 changes");
    assert_eq!(got, model, "b's feed from 0 is not the index's state");
    let unique: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "an id twice: compaction keeps one"
    );
    // Deletes after the replays are in the feed as deletes.
    assert!(seen.contains(&5) && !model.contains_key(&5));

    // Resumed in the middle: only what changed after `mid`.
    let page = jb
        .call(
            "GET",
            &format!("/main/_changes?since={mid}&limit=1000"),
            None,
        )
        .await;
    assert_eq!(page.status, 200, "{:?}", page.body);
    let mut after_mid: Vec<u64> = page.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    after_mid.sort_unstable();
    assert_eq!(after_mid, (251..=300).collect::<Vec<u64>>());

    // SSE from 0: the stream's part, then live writes from the log, no gap.
    let res = reqwest::Client::new()
        .get(b.url("/main/_changes?feed=eventsource&since=0&hashes=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (events, collector) = collect_events(res);
    let last = update(&ja, &[7, 400], 3, &mut model).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while events.lock().unwrap().last().is_none_or(|(v, _)| *v < last) {
        assert!(Instant::now() < deadline, "the live write never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    collector.abort();
    let events = events.lock().unwrap().clone();
    let mut streamed = Model::new();
    for (_, changes) in &events {
        apply_changes(&mut streamed, changes);
    }
    assert_eq!(streamed, model, "SSE from 0 then live");
    let versions: Vec<u64> = events.iter().map(|(v, _)| *v).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");

    // A version of an older generation: resync from the new one's start.
    assert_eq!(ja.call("DELETE", "/main", None).await.status, 200);
    assert_eq!(ja.call("PUT", "/main", None).await.status, 200);
    let created = version(&ja).await;
    // b must be following the new generation live before the write: had it
    // still been catching up, it would replay the write in bulk (unlogged,
    // so only in the stream) and "what b logged itself" below would be empty
    // (seen once under the whole suite's load).
    wait_version(&jb, created, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while jb.call("GET", "/_ready", None).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "b never caught up with the new generation"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut model = Model::new();
    let v = update(&ja, &[9], 0, &mut model).await;
    wait_version(&jb, v, Duration::from_secs(20)).await;
    let old = jb
        .call("GET", &format!("/main/_changes?since={mid}"), None)
        .await;
    assert_eq!(old.status, 410, "{:?}", old.body);
    assert_eq!(old.body["oldest_version"], created);
    let sse = reqwest::Client::new()
        .get(b.url(&format!("/main/_changes?feed=eventsource&since={mid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 410);
    let fresh = jb.call("GET", "/main/_changes?since=0", None).await;
    assert_eq!(fresh.status, 200, "{:?}", fresh.body);
    let ids: Vec<u64> = fresh.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [9]);

    // The stream out of reach: a named error to retry on, not a gap.
    nats.kill();
    let down = jb.call("GET", "/main/_changes?since=0", None).await;
    assert_eq!(down.status, 503, "{:?}", down.body);
    assert_eq!(down.body["error"], "StreamUnavailable");
    // What b logged itself still answers.
    let logged = jb
        .call("GET", &format!("/main/_changes?since={created}"), None)
        .await;
    assert_eq!(logged.status, 200, "{:?}", logged.body);
}

/// The value of an unlabelled gauge in `node`'s `/_metrics` (0 if absent).
async fn gauge(node: &Node, name: &str) -> f64 {
    let text = node.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `change` messages of `main` on `socket` until its version reaches
/// `upto`, as (version, ids).
async fn socket_changes(socket: &mut ws::Socket, upto: u64) -> Vec<(u64, Vec<u64>)> {
    let mut got = Vec::new();
    while got.last().is_none_or(|(v, _)| *v < upto) {
        let m = ws::next(socket).await;
        assert_eq!(m["type"], "change", "{m}");
        let ids = m["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_u64().unwrap())
            .collect();
        got.push((m["version"].as_u64().unwrap(), ids));
    }
    got
}

#[tokio::test]
async fn a_websocket_feed_through_a_proxy_moves_to_another_replica_when_its_own_dies() {
    let _serial = SERIAL.lock().await;
    let nats = NatsServer::start();
    let mut replicas = [replica(&nats, &[]).await, replica(&nats, &[]).await];
    let p = proxy(&nats, &[&replicas[0], &replicas[1]]).await;
    let jp = Api::json(&p);
    assert_eq!(jp.call("PUT", "/main", None).await.status, 200);
    let mut model = Model::new();
    let mut socket = ws::connect(p.port).await;
    ws::send(
        &mut socket,
        json!({ "op": "subscribe", "index": "main", "since": 0 }),
    )
    .await;
    assert_eq!(ws::next(&mut socket).await["type"], "subscribed");
    update(&jp, &[1, 2], 0, &mut model).await;
    let v = update(&jp, &[3], 0, &mut model).await;
    let mut got = socket_changes(&mut socket, v).await;

    // The replica holding the socket dies: the client is told, and goes on
    // through the proxy from its last version.
    let mut holding = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        if gauge(r, "fpnode_change_feed_sockets").await > 0.0 {
            holding.push(i);
        }
    }
    assert_eq!(holding.len(), 1, "one replica holds the proxied socket");
    replicas[holding[0]].kill();
    match ws::frame(&mut socket).await {
        Some(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1001);
            assert_eq!(frame.reason.as_str(), "ReplicaGone");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let last = got.last().unwrap().0;
    let v = update(&jp, &[4, 5], 1, &mut model).await;
    let mut socket = ws::connect(p.port).await;
    ws::send(
        &mut socket,
        json!({ "op": "subscribe", "index": "main", "since": last }),
    )
    .await;
    assert_eq!(ws::next(&mut socket).await["since"], last);
    let more = socket_changes(&mut socket, v).await;
    assert!(more.iter().all(|(v, _)| *v > last), "{more:?} after {last}");
    got.extend(more);
    let versions: Vec<u64> = got.iter().map(|(v, _)| *v).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    let mut ids: Vec<u64> = got.iter().flat_map(|(_, ids)| ids.clone()).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4, 5]);

    // With no replica left, an upgrade is refused with a named 503.
    let survivor = 1 - holding[0];
    replicas[survivor].kill();
    let url = format!("ws://127.0.0.1:{}/_changes", p.port);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status(), 503)
        }
        other => panic!("expected a 503, got {:?}", other.map(|(_, r)| r.status())),
    }
}
