//! Bad input: 100,000 random and mutated requests across every endpoint, in both
//! formats and with wrong content types. Every answer must be a success or a
//! named 4xx error; never a 5xx, a hang or a crash; the node stays healthy and
//! its data intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde_json::{Value, json};

const REQUESTS: u64 = 100_000;
const WORKERS: u64 = 8;

fn valid_bodies() -> Vec<Value> {
    vec![
        json!({ "query": [1, 2, 3], "limit": 5, "timeout": 100, "min_score": 1, "score_pct": 50 }),
        json!({ "q": [1, 2, 3] }),
        json!({ "changes": [{ "insert": { "id": 5, "hashes": [1, 2, 3] } }, { "delete": { "id": 6 } }], "metadata": { "a": "b" }, "expected_version": 3 }),
        json!({ "c": [{ "i": { "i": 7, "h": [4, 5] } }, { "d": { "i": 8 } }] }),
        json!({ "hashes": [1, 2, 3] }),
        json!({ "h": [9] }),
        json!({ "expect_does_not_exist": true, "generation": 3 }),
        json!({ "expect_exists": true }),
        json!({}),
    ]
}

fn random_value(rng: &mut impl Rng, depth: u32) -> Value {
    match rng.gen_range(0..if depth > 2 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.r#gen::<bool>()),
        2 => json!(rng.r#gen::<i64>()),
        3 => json!(rng.r#gen::<u64>()),
        4 => json!(rng.r#gen::<f64>()),
        5 => json!(
            [
                "", "query", "q", "changes", "insert", "id", "hashes", "\u{0}", "ÿ"
            ][rng.gen_range(0..9)]
        ),
        6 => Value::Array(
            (0..rng.gen_range(0..5))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "query",
                "q",
                "limit",
                "timeout",
                "changes",
                "c",
                "insert",
                "i",
                "delete",
                "d",
                "id",
                "hashes",
                "h",
                "metadata",
                "m",
                "expected_version",
                "e",
                "generation",
                "g",
                "x",
            ];
            Value::Object(
                (0..rng.gen_range(0..5))
                    .map(|_| {
                        (
                            keys[rng.gen_range(0..keys.len())].to_string(),
                            random_value(rng, depth + 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

/// Replaces a random leaf of `v` with a random value.
fn mutate(v: &mut Value, rng: &mut impl Rng) {
    match v {
        Value::Object(m) if !m.is_empty() && rng.gen_bool(0.7) => {
            let k = m.keys().nth(rng.gen_range(0..m.len())).cloned().unwrap();
            mutate(m.get_mut(&k).unwrap(), rng);
        }
        Value::Array(a) if !a.is_empty() && rng.gen_bool(0.7) => {
            let i = rng.gen_range(0..a.len());
            mutate(&mut a[i], rng);
        }
        _ => {
            *v = match rng.gen_range(0..5) {
                0 => json!(0),
                1 => json!(4_294_967_296u64),
                2 => json!(-1),
                3 => json!(vec![u32::MAX; rng.gen_range(0..3000)]),
                _ => random_value(rng, 0),
            }
        }
    }
}

fn body(rng: &mut impl Rng) -> (Vec<u8>, Option<&'static str>) {
    let msgpack = rng.gen_bool(0.5);
    let bytes = match rng.gen_range(0..10) {
        0 => (0..rng.gen_range(0..200))
            .map(|_| rng.r#gen::<u8>())
            .collect(),
        1 => Vec::new(),
        2..=3 => {
            let v = random_value(rng, 0);
            if msgpack {
                rmp_serde::to_vec_named(&v).unwrap()
            } else {
                serde_json::to_vec(&v).unwrap()
            }
        }
        _ => {
            let mut v = valid_bodies().choose(rng).unwrap().clone();
            if rng.gen_bool(0.8) {
                mutate(&mut v, rng);
            }
            let mut b = if msgpack {
                rmp_serde::to_vec_named(&v).unwrap()
            } else {
                serde_json::to_vec(&v).unwrap()
            };
            if rng.gen_bool(0.2) && !b.is_empty() {
                let i = rng.gen_range(0..b.len());
                if rng.gen_bool(0.5) {
                    b.truncate(i);
                } else {
                    b[i] = rng.r#gen();
                }
            }
            b
        }
    };
    let ct = match rng.gen_range(0..10) {
        0 => None,
        1 => Some("text/plain"),
        2 => Some("application/json; charset=utf-8"),
        _ if msgpack => Some("application/vnd.msgpack"),
        _ => Some("application/json"),
    };
    (bytes, ct)
}

fn path(rng: &mut impl Rng) -> String {
    let index = [
        "fz",
        "fz",
        "fz",
        "missing",
        "bad.name",
        "%20",
        "a%2Fb",
        "_x",
        &"x".repeat(300),
    ][rng.gen_range(0..9)]
    .to_string();
    let id = [
        "1",
        "5",
        "0",
        "-1",
        "4294967296",
        "abc",
        "99999999999999999999",
        "7",
    ][rng.gen_range(0..8)];
    match rng.gen_range(0..9) {
        0 => format!("/{index}/_search"),
        1 => format!("/{index}/_update"),
        2 => format!("/{index}"),
        3 => format!("/{index}/{id}"),
        4 => format!("/{index}/_health"),
        5 => format!("/{index}/_status"),
        6 => "/_health".to_string(),
        7 => format!("/{index}/{id}/extra"),
        _ => format!("/{index}/_search"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_bad_requests_get_only_named_client_errors() {
    let node = common::Node::start(&[]).await;
    let api = common::Api::json(&node);
    // `fz` is what the fuzzer hits; `keep`, which it never names, must come
    // through the flood intact.
    for index in ["fz", "keep"] {
        assert_eq!(
            api.call("PUT", &format!("/{index}"), None).await.status,
            200
        );
        for id in 1..=50u32 {
            let r = api
                .call(
                    "PUT",
                    &format!("/{index}/{id}"),
                    Some(json!({ "hashes": [id, id + 1, id + 2] })),
                )
                .await;
            assert_eq!(r.status, 200, "seeding {index}/{id}: {:?}", r.body);
        }
    }
    let counts = Arc::new([(); 6].map(|_| AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let base = node.url("");
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(77 + w);
            for _ in 0..REQUESTS / WORKERS {
                let method = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"][rng.gen_range(0..6)];
                let path = path(&mut rng);
                let (bytes, ct) = body(&mut rng);
                let mut req = client.request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{base}{path}"),
                );
                if let Some(ct) = ct {
                    req = req.header("Content-Type", ct);
                }
                // A request left unanswered (a reply lost in the node) fails
                // here, named, instead of hanging the suite.
                let res = tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    req.body(bytes.clone()).send(),
                )
                .await
                .unwrap_or_else(|_| panic!("{method} {path}: no answer within 30 s"))
                .expect("the node must answer");
                let status = res.status().as_u16();
                let resp = res.bytes().await.unwrap();
                assert!(
                    status < 500,
                    "{method} {path} ct={ct:?} body={:?} -> {status} {:?}",
                    String::from_utf8_lossy(&bytes),
                    String::from_utf8_lossy(&resp)
                );
                let class = match status {
                    200..=299 => 0,
                    400 => 1,
                    404 => 2,
                    405 | 409 => 3,
                    413 | 415 => 4,
                    _ => 5,
                };
                counts[class].fetch_add(1, Ordering::Relaxed);
                if status >= 400 && method != "HEAD" && !resp.is_empty() {
                    // A named error in JSON or MessagePack.
                    let v: Value = serde_json::from_slice(&resp)
                        .or_else(|_| rmp_serde::from_slice(&resp))
                        .unwrap_or_else(|_| {
                            panic!(
                                "{method} {path} -> {status}: unnamed error {:?}",
                                String::from_utf8_lossy(&resp)
                            )
                        });
                    let name = v
                        .get("error")
                        .or_else(|| v.get("e"))
                        .and_then(|n| n.as_str());
                    assert!(
                        name.is_some_and(|n| !n.is_empty()),
                        "{method} {path} -> {status}: {v}"
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    eprintln!(
        "answers: 2xx {}, 400 {}, 404 {}, 405/409 {}, 413/415 {}, other 4xx {}",
        c[0], c[1], c[2], c[3], c[4], c[5]
    );
    assert_eq!(c.iter().sum::<u64>(), REQUESTS);
    assert!(
        c[1] > REQUESTS / 10,
        "too few requests were rejected as bad: the fuzzer is not reaching the decoders"
    );
    assert!(
        c[0] > 100,
        "too few requests succeeded: the fuzzer is not reaching the handlers"
    );
    // Healthy afterwards, the data seeded before the flood is intact, and
    // a new index answers correctly.
    assert_eq!(api.call("GET", "/_health", None).await.status, 200);
    for id in 1..=50u32 {
        let r = api.call("GET", &format!("/keep/{id}"), None).await;
        assert_eq!(r.status, 200, "keep/{id} lost: {:?}", r.body);
        let r = api
            .call(
                "POST",
                "/keep/_search",
                Some(json!({ "query": [id, id + 1, id + 2], "limit": 1 })),
            )
            .await;
        assert_eq!(
            r.body["results"][0],
            json!({ "id": id, "score": 3 }),
            "keep/{id} not found by search"
        );
    }
    api.call("PUT", "/check", None).await;
    api.call("PUT", "/check/1", Some(json!({ "hashes": [11, 12, 13] })))
        .await;
    let r = api
        .call(
            "POST",
            "/check/_search",
            Some(json!({ "query": [11, 12, 13] })),
        )
        .await;
    assert_eq!(r.body, json!({ "results": [{ "id": 1, "score": 3 }] }));
}
