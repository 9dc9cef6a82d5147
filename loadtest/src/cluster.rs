//! The processes a scenario runs: `fpnode` nodes (standalone or replicas of a
//! stream) and a `nats-server` with JetStream. Both can be killed (SIGKILL)
//! and restarted on the same port and data, for the chaos step.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends `signal` (`TERM`, `KILL`) to a process; the workspace forbids
/// `unsafe`, so this goes through kill(1).
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status();
}

/// A `fpnode` process serving a data directory, killed when dropped.
pub struct NodeProcess {
    child: Option<Child>,
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    /// Flags beyond --dir and --port (the mode, the NATS URL).
    args: Vec<String>,
    pub url: String,
}

impl NodeProcess {
    /// Starts the node on a free port and waits until it serves: `/<index>/_health`
    /// when the index exists on disk, `/_health` otherwise.
    pub async fn start(
        binary: &Path,
        dir: &Path,
        index: &str,
        args: &[String],
    ) -> anyhow::Result<NodeProcess> {
        let mut node = NodeProcess::spawn_new(binary, dir, args)?;
        node.wait_ready(index, Duration::from_secs(600)).await?;
        Ok(node)
    }

    /// Starts the node without waiting for it (a replica's bootstrap is timed
    /// by its caller).
    pub fn spawn_new(binary: &Path, dir: &Path, args: &[String]) -> anyhow::Result<NodeProcess> {
        let port = free_port()?;
        let mut node = NodeProcess {
            child: None,
            binary: binary.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
            args: args.to_vec(),
            url: format!("http://127.0.0.1:{port}"),
        };
        node.spawn()?;
        Ok(node)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        // With FPNODE_LOADTEST_LOG set, the node's log goes to node.log
        // beside its data directory (appended across restarts).
        let stdout = log_to(&self.dir.with_extension("log"))?;
        // FPNODE_LOADTEST_NODE_CPUS (a `taskset -c` list) pins the nodes,
        // e.g. to CPU 0 while the load test runs under `taskset -c 1`: the
        // node measured apart from its clients on one machine.
        let mut command = match std::env::var("FPNODE_LOADTEST_NODE_CPUS") {
            Ok(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpus]).arg(&self.binary);
                c
            }
            Err(_) => Command::new(&self.binary),
        };
        let child = command
            .arg("--dir")
            .arg(&self.dir)
            .args(["--port", &self.port.to_string(), "--log"])
            // The nodes' log level: `warn` unless FPNODE_LOADTEST_LOG says.
            .arg(std::env::var("FPNODE_LOADTEST_LOG").unwrap_or_else(|_| "warn".into()))
            .args(&self.args)
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the node answers 200 on `/<index>/_health` (or on
    /// `/_health` while the index does not exist on disk).
    pub async fn wait_ready(&mut self, index: &str, limit: Duration) -> anyhow::Result<()> {
        let probe = if self.dir.join("indexes").join(index).exists() {
            format!("{}/{index}/_health", self.url)
        } else {
            format!("{}/_health", self.url)
        };
        self.wait_for(&probe, limit).await
    }

    /// Waits until `url` answers 200; fails at once if the process exited.
    pub async fn wait_for(&mut self, url: &str, limit: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(r) = client.get(url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                bail!(
                    "{} exited ({status}) before {url} answered",
                    self.binary.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not answer {url} within {limit:?}",
                    self.binary.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: no shutdown work at all, as in a crash or an OOM kill.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the node again on the same port and data, and waits until it
    /// serves `index`.
    pub async fn restart(&mut self, index: &str) -> anyhow::Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_ready(index, Duration::from_secs(600)).await
    }

    /// SIGTERM (the node checkpoints and exits), SIGKILL after 60 s.
    pub fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `nats-server` with JetStream on a free port and its own store, every
/// acknowledged message fsynced (`sync_interval: always`, as
/// docs/replication.md recommends). The binary is `$FPNODE_NATS_SERVER` or
/// `nats-server` on PATH (scripts/setup installs a pinned one).
pub struct NatsProcess {
    child: Option<Child>,
    port: u16,
    conf: PathBuf,
    binary: String,
}

impl NatsProcess {
    /// Starts the server with its store under `dir`; `sync_interval` is
    /// JetStream's (`always`, or a duration such as `2m`).
    pub fn start(dir: &Path, sync_interval: &str) -> anyhow::Result<NatsProcess> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}\n  sync_interval: {sync_interval}\n}}\n",
                dir.join("js")
            ),
        )?;
        let mut nats = NatsProcess {
            child: None,
            port,
            conf,
            binary: std::env::var("FPNODE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into()),
        };
        nats.spawn()?;
        Ok(nats)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        // With FPNODE_LOADTEST_LOG set, the server's log goes to nats.log
        // beside its configuration (appended across restarts).
        let log = log_to(&self.conf.with_file_name("nats.log"))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} (run scripts/setup)", self.binary))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not listen on port {} within 30 s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the server is gone until `restart`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Messages and bytes the JetStream stream `name` holds.
pub async fn stream_size(nats_url: &str, name: &str) -> anyhow::Result<(u64, u64)> {
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("cannot connect to {nats_url}"))?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("no stream {name}"))?;
    let info = stream.info().await?;
    Ok((info.state.messages, info.state.bytes))
}

/// With FPNODE_LOADTEST_LOG set, a process's log is appended to `path`
/// (across restarts); without, it is discarded.
fn log_to(path: &Path) -> anyhow::Result<Stdio> {
    if std::env::var_os("FPNODE_LOADTEST_LOG").is_none() {
        return Ok(Stdio::null());
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Stdio::from(file))
}
