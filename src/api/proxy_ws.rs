//! Proxy mode: the WebSocket change feed (`GET /_changes` upgraded) is
//! passed through to a replica (docs/api.md, "Change feed over WebSocket").
//!
//! The proxy connects to a healthy replica first (none: `503 Unavailable`
//! before any upgrade), then accepts the client's upgrade and copies text and
//! binary frames both ways, and the replica's pings to the client. The
//! subscriptions live on the replica; versions are stream sequences, the same
//! on every replica. If the replica goes away the client gets a close frame
//! (1001, `ReplicaGone`) and reconnects through the proxy, to the next healthy
//! replica, subscribing again from the last version it got. A client slower
//! than [`SEND_TIMEOUT`] is closed with 1008 `SlowConsumer`, as a replica
//! closes it. The node events (`"index": "*"`) on such a socket are the
//! replica's.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as Upstream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame as UpstreamClose;

use super::AppState;
use super::codec::{self, Out, field};
use super::proxy::Proxy;

type ReplicaSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long connecting to one replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the client may take to accept one frame (as on a replica).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest frame a client may send (as on a replica).
const MAX_CLIENT_FRAME: usize = 64 * 1024;

/// Upgrades `req` and passes it through to a replica.
pub async fn forward_socket(state: AppState, proxy: &Proxy, req: Request) -> Response {
    let format = codec::response_format(req.headers(), false);
    let Some(upstream) = connect(proxy).await else {
        let mut res = super::respond(
            format,
            StatusCode::SERVICE_UNAVAILABLE,
            Some(Out::map([(field("error"), Out::Str("Unavailable".into()))])),
        );
        res.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(1),
        );
        return res;
    };
    let (mut parts, _) = req.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(ws) => ws
            .max_message_size(MAX_CLIENT_FRAME)
            .on_upgrade(move |client| pump(client, upstream)),
        Err(rejection) => rejection.into_response(),
    }
}

/// A WebSocket to the first healthy replica that takes one.
async fn connect(proxy: &Proxy) -> Option<ReplicaSocket> {
    for base in proxy.healthy_urls() {
        let url = match base.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}/_changes"),
            Some((_, rest)) => format!("ws://{rest}/_changes"),
            None => format!("ws://{base}/_changes"),
        };
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(replica = %base, error = %e, "bad replica URL");
                continue;
            }
        };
        // The client was authorized here; the replica sees the proxy's token.
        if let Some(token) = proxy.token().and_then(|t| t.parse().ok()) {
            request
                .headers_mut()
                .insert(axum::http::header::AUTHORIZATION, token);
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await
        {
            Ok(Ok((socket, _))) => return Some(socket),
            Ok(Err(e)) => tracing::warn!(replica = %base, error = %e, "feed socket refused"),
            Err(_) => tracing::warn!(replica = %base, "feed socket timed out"),
        }
    }
    None
}

/// Copies frames between the client and the replica until either ends.
async fn pump(client: WebSocket, upstream: ReplicaSocket) {
    metrics::gauge!("fpnode_proxy_feed_sockets").increment(1.0);
    let (mut to_client, mut from_client) = client.split();
    let (mut to_replica, mut from_replica) = upstream.split();
    loop {
        tokio::select! {
            frame = from_client.next() => {
                let frame = match frame {
                    Some(Ok(Message::Text(t))) => Upstream::text(t.as_str()),
                    Some(Ok(Message::Binary(b))) => Upstream::Binary(b),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // The client closed or went away: so does the replica's side.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        let _ = to_replica.send(Upstream::Close(None)).await;
                        break;
                    }
                };
                if to_replica.send(frame).await.is_err() {
                    let _ = to_client.send(close(1001, "ReplicaGone")).await;
                    break;
                }
            }
            frame = from_replica.next() => {
                let (frame, last) = match frame {
                    Some(Ok(Upstream::Text(t))) => (Message::Text(t.as_str().into()), false),
                    Some(Ok(Upstream::Binary(b))) => (Message::Binary(b), false),
                    Some(Ok(Upstream::Ping(p))) => (Message::Ping(p), false),
                    Some(Ok(Upstream::Pong(_) | Upstream::Frame(_))) => continue,
                    Some(Ok(Upstream::Close(frame))) => (from_upstream(frame), true),
                    Some(Err(_)) | None => (close(1001, "ReplicaGone"), true),
                };
                match tokio::time::timeout(SEND_TIMEOUT, to_client.send(frame)).await {
                    Ok(Ok(())) if !last => {}
                    Ok(_) => break,
                    Err(_) => {
                        metrics::counter!("fpnode_change_feed_slow_disconnects_total").increment(1);
                        let _ = to_replica.send(Upstream::Close(None)).await;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            to_client.send(close(1008, "SlowConsumer")),
                        )
                        .await;
                        break;
                    }
                }
            }
        }
    }
    metrics::gauge!("fpnode_proxy_feed_sockets").decrement(1.0);
}

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

fn from_upstream(frame: Option<UpstreamClose>) -> Message {
    Message::Close(frame.map(|f| CloseFrame {
        code: u16::from(f.code),
        reason: f.reason.as_str().into(),
    }))
}
