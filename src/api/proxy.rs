//! Proxy mode: a stateless gateway. Writes are published to the stream by the
//! same code as in replica mode (answered once the stream acknowledged them);
//! reads (searches, index and fingerprint lookups, `_status`, `_health`,
//! `_snapshot`) are forwarded to one of the configured replicas.
//!
//! Replicas are health-checked (`GET /_health`, every second) and used round
//! robin. A replica that cannot be reached is marked down and the next one is
//! tried; an answer of `503` (the replica is loading or overloaded) is also
//! retried on the next replica, and only when every healthy replica was tried
//! does the client get the last answer, or `503 Unavailable` if there was none.
//!
//! Change feeds that wait (`_changes` as an event stream or a long poll) are
//! streamed through as the replica sends them, with `Last-Event-ID`
//! forwarded, under no overall time limit: an event stream is cut only if
//! the replica sends nothing (not even its 15 s heartbeat) for
//! [`FEED_SILENCE`]; the client then reconnects (to the next replica) from
//! the last event it got. Versions are stream sequences, the same on every
//! replica, so the resume is exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::codec::{self, Out, field};
use super::error::ApiError;

const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a forwarded change feed may stay silent (replicas send a
/// heartbeat every 15 s).
const FEED_SILENCE: Duration = Duration::from_secs(45);
/// The longest long poll a replica holds (docs/api.md), plus room.
const LONG_POLL_LIMIT: Duration = Duration::from_secs(330);

#[derive(Debug)]
struct Replica {
    url: String,
    healthy: AtomicBool,
}

/// The replicas a proxy forwards reads to.
#[derive(Debug)]
pub struct Proxy {
    replicas: Vec<Replica>,
    next: AtomicUsize,
    /// `Bearer <token>` for the proxy's own requests, if replicas need one.
    token: Option<String>,
    client: reqwest::Client,
    /// For event streams: no overall timeout, a silence limit instead.
    feeds: reqwest::Client,
    /// For long polls: no silence limit (nothing comes until the answer),
    /// each request's own timeout instead.
    polls: reqwest::Client,
}

impl Proxy {
    /// `urls`: base URLs of the replicas (`http://host:port`). Starts the
    /// health checks; every replica counts as healthy until one fails.
    /// `token`: the bearer token for the proxy's own requests to replicas
    /// that require one (forwarded requests carry their client's).
    pub fn start(
        urls: &[String],
        forward_timeout: Duration,
        token: Option<&str>,
    ) -> anyhow::Result<Arc<Proxy>> {
        if urls.is_empty() {
            anyhow::bail!("proxy mode needs at least one replica URL (--replicas)");
        }
        let client = reqwest::Client::builder()
            .timeout(forward_timeout)
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        let feeds = reqwest::Client::builder()
            .read_timeout(FEED_SILENCE)
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        let polls = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        let proxy = Arc::new(Proxy {
            replicas: urls
                .iter()
                .map(|u| Replica {
                    url: u.trim_end_matches('/').to_string(),
                    healthy: AtomicBool::new(true),
                })
                .collect(),
            next: AtomicUsize::new(0),
            token: token.map(|t| format!("Bearer {t}")),
            client,
            feeds,
            polls,
        });
        let checker = Arc::downgrade(&proxy);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEALTH_INTERVAL).await;
                let Some(proxy) = checker.upgrade() else {
                    return;
                };
                proxy.check().await;
            }
        });
        Ok(proxy)
    }

    async fn check(&self) {
        let checks = self.replicas.iter().map(|r| async move {
            let ok = self
                .client
                .get(format!("{}/_health", r.url))
                .timeout(Duration::from_millis(800))
                .send()
                .await
                .is_ok_and(|res| res.status().is_success());
            if r.healthy.swap(ok, Ordering::AcqRel) != ok {
                tracing::warn!(replica = %r.url, healthy = ok, "replica health changed");
            }
        });
        futures::future::join_all(checks).await;
        let healthy = self
            .replicas
            .iter()
            .filter(|r| r.healthy.load(Ordering::Acquire))
            .count();
        metrics::gauge!("fpnode_proxy_healthy_replicas").set(healthy as f64);
    }

    /// Healthy replicas, starting at the next one in round-robin order.
    fn candidates(&self) -> Vec<&Replica> {
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.replicas[(start + i) % n])
            .filter(|r| r.healthy.load(Ordering::Acquire))
            .collect()
    }

    /// `Bearer <token>` for the proxy's own requests to replicas.
    pub(super) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The base URLs of the healthy replicas, in round-robin order.
    pub(super) fn healthy_urls(&self) -> Vec<String> {
        self.candidates()
            .into_iter()
            .map(|r| r.url.clone())
            .collect()
    }

    /// The index's version as a healthy replica reports it.
    pub async fn index_version(&self, index: &str) -> Option<u64> {
        for r in self.candidates() {
            let mut req = self
                .client
                .get(format!("{}/{index}/_status", r.url))
                .header(header::ACCEPT, "application/json");
            if let Some(token) = &self.token {
                req = req.header(header::AUTHORIZATION, token);
            }
            let Ok(res) = req.send().await else {
                continue;
            };
            if res.status().is_success()
                && let Ok(body) = res.json::<serde_json::Value>().await
                && let Some(v) = body.get("version").and_then(serde_json::Value::as_u64)
            {
                return Some(v);
            }
        }
        None
    }

    /// Sends the request to the replicas in turn until one answers with
    /// something other than `503`.
    async fn forward(&self, req: Request) -> Result<Response, ApiError> {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .map_err(|_| ApiError::BadRequest)?;
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let feed = waiting_feed(&parts);
        // A request from inside the node (the legacy protocol) carries no
        // client token: the proxy's own goes with it (reads only: writes
        // are published by the proxy itself).
        let own_token = (parts.extensions.get::<crate::auth::Internal>().is_some()
            && !parts.headers.contains_key(header::AUTHORIZATION))
        .then_some(self.token.as_ref())
        .flatten();
        let mut last = None;
        for r in self.candidates() {
            let client = match feed {
                Some(Feed::Events) => &self.feeds,
                Some(Feed::LongPoll) => &self.polls,
                None => &self.client,
            };
            let mut out = client
                .request(parts.method.clone(), format!("{}{path}", r.url))
                .body(body.clone());
            if let Some(Feed::LongPoll) = feed {
                out = out.timeout(LONG_POLL_LIMIT);
            }
            for name in [
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::AUTHORIZATION,
                header::HeaderName::from_static("last-event-id"),
            ] {
                if let Some(v) = parts.headers.get(&name) {
                    out = out.header(name, v.clone());
                }
            }
            if let Some(token) = own_token {
                out = out.header(header::AUTHORIZATION, token);
            }
            let res = match out.send().await {
                Ok(res) => res,
                Err(e) => {
                    if e.is_connect() {
                        r.healthy.store(false, Ordering::Release);
                    }
                    // A long poll that ran out its time is not tried again
                    // elsewhere (it would wait as long again).
                    if e.is_timeout() && feed == Some(Feed::LongPoll) {
                        tracing::warn!(replica = %r.url, "long poll timed out");
                        return Err(ApiError::Unavailable);
                    }
                    tracing::warn!(replica = %r.url, error = %e, "forwarding failed; trying the next replica");
                    metrics::counter!("fpnode_proxy_forward_errors_total").increment(1);
                    continue;
                }
            };
            let status = res.status();
            let headers = res.headers().clone();
            if feed == Some(Feed::Events) && status.is_success() {
                return Ok(rebuild(
                    status,
                    &headers,
                    Body::from_stream(res.bytes_stream()),
                ));
            }
            let Ok(bytes) = res.bytes().await else {
                continue;
            };
            let response = rebuild(status, &headers, Body::from(bytes));
            if status != StatusCode::SERVICE_UNAVAILABLE {
                return Ok(response);
            }
            last = Some(response);
        }
        last.ok_or(ApiError::Unavailable)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    Events,
    LongPoll,
}

/// Whether `req` is a change feed that waits: an event stream or a long poll.
fn waiting_feed(req: &axum::http::request::Parts) -> Option<Feed> {
    if !req.uri.path().ends_with("/_changes") {
        return None;
    }
    let query = req.uri.query().unwrap_or("");
    let feed = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("feed="))
        .unwrap_or("");
    let accepts_events = req
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/event-stream"));
    match feed {
        "eventsource" => Some(Feed::Events),
        "longpoll" => Some(Feed::LongPoll),
        "" if accepts_events => Some(Feed::Events),
        _ => None,
    }
}

fn rebuild(status: StatusCode, headers: &HeaderMap, body: Body) -> Response {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    for name in [
        header::CONTENT_TYPE,
        header::RETRY_AFTER,
        header::CACHE_CONTROL,
    ] {
        if let Some(v) = headers.get(&name) {
            res.headers_mut().insert(name, v.clone());
        }
    }
    res
}

/// Every read route of a proxy.
pub async fn forward(State(state): State<AppState>, req: Request) -> Response {
    let format = codec::response_format(req.headers(), false);
    let Some(proxy) = &state.proxy else {
        return super::respond(
            format,
            StatusCode::NOT_FOUND,
            Some(Out::map([(field("error"), Out::Str("NotFound".into()))])),
        );
    };
    match proxy.forward(req).await {
        Ok(res) => res,
        Err(error) => {
            tracing::warn!(%error, "no replica could answer");
            let mut res = super::respond(
                format,
                error.status(),
                Some(Out::map([(field("error"), Out::Str(error.to_string()))])),
            );
            if let Some(secs) = error.retry_after() {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            res.into_response()
        }
    }
}
