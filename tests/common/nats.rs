//! Starts a real nats-server (JetStream on, random port, temporary store) for a
//! test and kills it when dropped (or on demand, to restart it on the same port). The binary is `$FPNODE_NATS_SERVER` or
//! `nats-server` on PATH (scripts/setup installs a pinned one).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// Also loaded by common/mod.rs: tests that use both get two copies of a
// function of a few lines.
#[allow(clippy::duplicate_mod)]
#[path = "child.rs"]
mod child;

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    pub store: tempfile::TempDir,
    extra: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every acknowledged message is fsynced (`sync_interval: always`), as
/// docs/replication.md recommends for production: a killed server then never
/// loses what it acknowledged. `extra` is more configuration (a cluster block).
fn spawn(port: u16, store: &std::path::Path, extra: &str) -> Child {
    let bin = std::env::var("FPNODE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let conf = store.join("nats.conf");
    std::fs::write(
        &conf,
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n{extra}",
            store.join("js")
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&bin);
    child::die_with_parent(&mut cmd);
    let child = cmd
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin} (run scripts/setup): {e}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nats-server did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// A cluster of nats-servers with JetStream (streams can have R=3).
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    pub fn start(n: usize) -> NatsCluster {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, c)| format!("nats-route://127.0.0.1:{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut servers = Vec::new();
        for (i, (port, cluster)) in ports.iter().enumerate() {
            let extra = format!(
                "server_name: n{i}\ncluster {{\n  name: fpnode-test\n  listen: 127.0.0.1:{cluster}\n  routes: [{routes}]\n}}\n"
            );
            let store = tempfile::tempdir().unwrap();
            let child = spawn(*port, store.path(), &extra);
            servers.push(NatsServer {
                child: Some(child),
                port: *port,
                store,
                extra,
            });
        }
        NatsCluster { servers }
    }

    /// Every server's URL, comma separated.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl NatsServer {
    pub fn start() -> NatsServer {
        NatsServer::start_with("")
    }

    /// A server with `extra` configuration (authorization, TLS...).
    pub fn start_with(extra: &str) -> NatsServer {
        let port = free_port();
        let store = tempfile::tempdir().unwrap();
        let child = spawn(port, store.path(), extra);
        NatsServer {
            child: Some(child),
            port,
            store,
            extra: extra.to_string(),
        }
    }

    /// SIGKILL: the server is gone until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(self.port, self.store.path(), &self.extra));
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
