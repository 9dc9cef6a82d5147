//! `fpnode healthcheck`: one plain HTTP/1.0 `GET` to the local node, for
//! the container image's HEALTHCHECK (no shell, no curl in a `FROM scratch`
//! image; docs/operations.md "Container image").

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cli::HealthcheckArgs;

/// The status code of `GET path`, within `timeout`.
fn status(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<u16> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))
    };
    let mut stream = TcpStream::connect_timeout(&addr, left()?)?;
    stream.set_write_timeout(Some(left()?))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        stream.set_read_timeout(Some(left()?))?;
        match stream.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    // "HTTP/1.1 200 OK"
    let line = String::from_utf8_lossy(&head[..got]);
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer"))
}

pub fn run(args: &HealthcheckArgs) -> ExitCode {
    let addr = SocketAddr::new(args.host, args.port);
    match status(
        addr,
        &args.path,
        Duration::from_millis(args.timeout_ms.max(1)),
    ) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(code) => {
            eprintln!("fpnode healthcheck: {addr}{}: {code}", args.path);
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fpnode healthcheck: {addr}{}: {e}", args.path);
            ExitCode::FAILURE
        }
    }
}
