//! A client of the legacy line protocol (docs/api.md "Legacy line
//! protocol") for tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One legacy connection.
#[derive(Debug)]
pub struct Legacy {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Legacy {
    pub async fn connect(port: u16) -> Legacy {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpStream::connect(("127.0.0.1", port)).await {
                Ok(s) => {
                    let (r, w) = s.into_split();
                    return Legacy {
                        reader: BufReader::new(r),
                        writer: w,
                    };
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "legacy port {port}: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// The next reply line, with its `\r\n`.
    pub async fn reply(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
            .await
            .expect("no reply within 10 s")
            .unwrap();
        line
    }

    /// Sends `line` and its `\n`; the reply without its `\r\n` (which
    /// must be there).
    pub async fn ask(&mut self, line: &str) -> String {
        self.send(format!("{line}\n").as_bytes()).await;
        let reply = self.reply().await;
        reply
            .strip_suffix("\r\n")
            .unwrap_or_else(|| panic!("{line:?} -> {reply:?}: no CRLF"))
            .to_string()
    }

    /// Whether the server closed the connection (EOF within 10 s).
    pub async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.reader.read_to_end(&mut rest)).await,
            Ok(Ok(0))
        )
    }
}
