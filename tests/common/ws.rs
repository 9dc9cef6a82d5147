//! A WebSocket client of `GET /_changes` for the tests: connect, send a JSON
//! op, read the next JSON message.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A socket to `/_changes` of the node listening on `port`.
pub async fn connect(port: u16) -> Socket {
    let url = format!("ws://127.0.0.1:{port}/_changes");
    let (socket, res) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(res.status(), 101);
    socket
}

pub async fn send(socket: &mut Socket, op: Value) {
    socket
        .send(Message::Text(op.to_string().into()))
        .await
        .unwrap();
}

/// The next frame that is not a ping or pong, within 10 s: `None` once the
/// connection ended.
pub async fn frame(socket: &mut Socket) -> Option<Message> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("no message within 10 s");
        match frame {
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(frame)) => return Some(frame),
        }
    }
}

/// The next JSON message (pings skipped), within 10 s.
pub async fn next(socket: &mut Socket) -> Value {
    match frame(socket).await.expect("the connection ended") {
        Message::Text(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("unexpected frame {other:?}"),
    }
}
