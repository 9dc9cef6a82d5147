//! `fpnode`: the binary. Parses flags, starts the actor tree and serves the API
//! until SIGTERM or SIGINT, then stops accepting, lets requests in flight finish
//! and closes the indexes.

mod api;
mod audio_api;
mod audio_cli;
mod auth;
mod cli;
mod healthcheck;
mod legacy;
mod malloc;
mod metrics_catalog;
mod opened;
mod records;
mod tools;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use fpnode_actors::events::NodeEvents;
use fpnode_actors::index_supervisor::SupervisionOptions;
use fpnode_actors::jobs::{Jobs, JobsOptions};
use fpnode_actors::replication::{Replication, ReplicationOptions};
use fpnode_actors::stream::{StreamError, StreamSettings, ensure_stream};
use fpnode_actors::{Node, NodeOptions};
use fpnode_segments::index::IndexOptions;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::api::{AppState, Limits};
use crate::cli::{Cli, Command, Mode, ServeArgs};

fn main() -> ExitCode {
    malloc::tune();
    let cli = Cli::parse_from(cli::fpcalc_spelling(std::env::args_os()));
    let args = match cli.command {
        Some(Command::Serve(args)) => *args,
        None => cli.serve,
        Some(Command::Import(args)) => return offline(tools::import(args)),
        Some(Command::Inspect(args)) => return offline(tools::inspect(args)),
        Some(Command::Restore(args)) => return offline(tools::restore(args)),
        Some(Command::Export(args)) => return offline(tools::export(args)),
        Some(Command::Fingerprint(args)) => return audio_cli::fingerprint::run(&args),
        Some(Command::Describe(args)) => return audio_cli::describe::run(&args),
        Some(Command::AudioServer(args)) => return audio_server(args),
        Some(Command::Healthcheck(args)) => return healthcheck::run(&args),
    };
    let Some(runtime) = server_runtime(&args.log) else {
        return ExitCode::FAILURE;
    };
    let served = runtime.block_on(serve(args));
    // Blocking work still running (a job's read that cannot stop at once)
    // gets a bounded time; everything durable was finished by `serve`.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fpnode: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Binds the HTTP listener; `local` is its address (port 0 picks one).
async fn listen(
    host: std::net::IpAddr,
    port: u16,
) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let addr = SocketAddr::new(host, port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .context("reading the listening address")?;
    Ok((listener, local))
}

/// Logging with `log` as the filter, and the multi-threaded runtime a
/// server runs on (`None`, said on stderr, if it cannot start).
fn server_runtime(log: &str) -> Option<tokio::runtime::Runtime> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("fpnode: cannot start the async runtime: {e}");
            None
        }
    }
}

/// `fpnode audio-server`: the audio endpoints and `/_metrics`, nothing else.
fn audio_server(args: cli::AudioServerArgs) -> ExitCode {
    let Some(runtime) = server_runtime(&args.log) else {
        return ExitCode::FAILURE;
    };
    offline(runtime.block_on(async move {
        let metrics = install_metrics()?;
        let audio = Arc::new(audio_api::AudioService::new(args.audio.options())?);
        let (listener, local) = listen(args.host, args.port).await?;
        let app = audio_api::router(audio).route(
            "/_metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        );
        tracing::info!(address = %local, "fpnode audio-server listening");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("serving HTTP")
    }))
}

fn offline(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fpnode: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The Prometheus recorder, with latency buckets for every `*duration_seconds`.
fn install_metrics() -> anyhow::Result<metrics_exporter_prometheus::PrometheusHandle> {
    // Every histogram has buckets (no summary): `histogram_quantile` over
    // any set of nodes (docs/metrics.md, deploy/prometheus/rules.yml).
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ],
        )
        .context("configuring metrics")?
        .set_buckets_for_metric(
            Matcher::Full("fpnode_write_group_size".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0],
        )
        .context("configuring metrics")?
        .install_recorder()
        .context("installing the metrics recorder")
        .inspect(|_| metrics_catalog::register())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let metrics = install_metrics()?;
    let mut audio_options = args.audio.options();
    if audio_options.spool_dir.is_none() && args.mode != Mode::Proxy {
        // Uploads are spooled beside the data, not in a /tmp that may be RAM.
        let spool = args.dir.join("audio-spool");
        std::fs::create_dir_all(&spool)
            .with_context(|| format!("cannot create {}", spool.display()))?;
        audio_options.spool_dir = Some(spool);
    }
    let audio = Arc::new(audio_api::AudioService::new(audio_options)?);

    if args.mode != Mode::Proxy {
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("cannot create data directory {}", args.dir.display()))?;
        let probe = args.dir.join(".write-test");
        std::fs::write(&probe, b"")
            .with_context(|| format!("data directory {} is not writable", args.dir.display()))?;
        let _ = std::fs::remove_file(&probe);
    }

    let (listener, local) = listen(args.host, args.port).await?;
    let auth = auth::Auth::load(args.auth_tokens_file.clone(), args.auth_tokens.clone())
        .context("reading the auth tokens")?;
    match &auth {
        Some(auth) => {
            auth::reload_on_sighup(auth.clone()).context("watching SIGHUP")?;
            metrics::gauge!("fpnode_auth_tokens").set(auth.len() as f64);
            tracing::info!(
                tokens = auth.len(),
                "authentication on: bearer tokens required"
            );
            if args.legacy_port != 0 {
                tracing::warn!(
                    "the legacy line protocol (--legacy-port) has no authentication: its clients can search and write; keep its port on a trusted network"
                );
            }
        }
        None if !local.ip().is_loopback() => {
            tracing::warn!(address = %local, "AUTHENTICATION IS OFF and fpnode listens beyond localhost: anyone who can reach this port can write and delete indexes. Set --auth-tokens-file or FPNODE_AUTH_TOKENS (docs/operations.md \"Authentication\")");
        }
        None => {}
    }
    if auth.is_none() {
        // SIGHUP's default action ends the process: a `systemctl reload`
        // must not stop a node that has no tokens to reload.
        auth::sighup_without_tokens().context("watching SIGHUP")?;
    }

    let replication = match args.mode {
        Mode::Standalone => None,
        Mode::Replica | Mode::Proxy => Some(connect_stream(&args).await?),
    };
    let events = Arc::new(
        NodeEvents::open(&args.dir)
            .with_context(|| format!("opening the node event log in {}", args.dir.display()))?,
    );
    let (node, proxy) = match args.mode {
        Mode::Proxy => {
            let proxy = api::proxy::Proxy::start(
                &args.replicas,
                Duration::from_millis(args.forward_timeout_ms.max(1)),
                args.replica_token.as_deref(),
            )?;
            (None, Some(proxy))
        }
        Mode::Standalone | Mode::Replica => (
            Some(start_node(&args, replication.clone(), events.clone()).await?),
            None,
        ),
    };

    let jobs = start_jobs(&args, events.clone()).await?;
    let state = AppState {
        node: node.clone(),
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            ..Limits::default()
        },
        prefetch_above: prefetch_above(args.prefetch),
        metrics: Some(metrics),
        write_wait: Duration::from_millis(args.write_wait_ms),
        fault_injection: args.enable_fault_injection,
        replication,
        proxy,
        events: Some(events),
        jobs: Some(jobs.clone()),
        audio: Some(audio.clone()),
        data_dir: (args.mode != Mode::Proxy).then(|| args.dir.clone()),
        mode: match args.mode {
            Mode::Standalone => "standalone",
            Mode::Replica => "replica",
            Mode::Proxy => "proxy",
        },
    };
    metrics::gauge!(
        "fpnode_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "mode" => state.mode
    )
    .set(1.0);
    tracing::info!(address = %local, dir = %args.dir.display(), mode = ?args.mode, "fpnode listening");
    // Requests in flight get SHUTDOWN_GRACE to finish; change feeds, long
    // polls and streams that would hold the process forever are then cut.
    let (stopping, mut stop) = tokio::sync::watch::channel(false);
    let limits = state.limits;
    let app = api::router(state)
        .merge(audio_api::router(audio))
        .layer(axum::middleware::from_fn_with_state(auth, auth::authorize));
    if args.legacy_port != 0 {
        let listener = tokio::net::TcpListener::bind((args.host, args.legacy_port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", args.host, args.legacy_port))?;
        tracing::info!(address = %listener.local_addr()?, "legacy line protocol listening");
        let limits = legacy::session::TransactionLimits {
            max_changes: limits.max_changes,
            max_hashes: limits.max_hashes,
            max_body_bytes: limits.max_body_bytes,
            // Four transactions of the largest size at once, over every
            // connection together.
            max_buffered_bytes: limits.max_body_bytes.saturating_mul(4),
        };
        tokio::spawn(legacy::serve(
            listener,
            legacy::backend::Backend::new(app.clone()),
            limits,
            stop.clone(),
        ));
    }
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        let _ = stopping.send(true);
    });
    let grace = async move {
        let _ = stop.wait_for(|s| *s).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.context("serving HTTP")?,
        () = grace => tracing::warn!(?SHUTDOWN_GRACE, "requests still open at shutdown: closed"),
    }
    tracing::info!("shutting down");
    jobs.0.shutdown(Duration::from_secs(5)).await;
    if let Some(node) = node {
        node.shutdown().await;
    }
    Ok(())
}

/// Starts the job supervisor (records under `<dir>/jobs`) and checks the
/// import directory.
async fn start_jobs(
    args: &ServeArgs,
    events: Arc<NodeEvents>,
) -> anyhow::Result<(Jobs, api::jobs::JobDirs)> {
    let import = match &args.import_dir {
        None => None,
        Some(d) => Some(
            d.canonicalize()
                .with_context(|| format!("import directory {}", d.display()))?,
        ),
    };
    let dirs = api::jobs::JobDirs {
        import,
        export: args
            .export_dir
            .clone()
            .unwrap_or_else(|| args.dir.join("exports")),
        max_upload_bytes: args.max_upload_bytes,
        uploads: Arc::new(tokio::sync::Semaphore::new(api::jobs::MAX_UPLOADS)),
    };
    let jobs = Jobs::start(JobsOptions {
        max_running: args.max_jobs,
        max_queued: args.max_queued_jobs,
        events: Some(events),
        ..JobsOptions::new(args.dir.join("jobs"))
    })
    .await
    .context("starting the job supervisor")?;
    Ok((jobs, dirs))
}

/// Opens the data directory's indexes and starts the actor tree.
async fn start_node(
    args: &ServeArgs,
    replication: Option<Arc<Replication>>,
    events: Arc<NodeEvents>,
) -> anyhow::Result<Node> {
    let index = IndexOptions {
        checkpoint_threshold: args.checkpoint_threshold.max(1),
        checkpoint_age: Duration::from_millis(args.checkpoint_age_ms),
        stall_timeout: Duration::from_millis(args.stall_timeout_ms),
        open: fpnode_segments::file_segment::OpenOptions {
            preload: args.preload,
        },
        wal: fpnode_segments::wal::WalOptions {
            retain_bytes: args.changes_retention_bytes,
            max_file_bytes: args.wal_file_bytes.max(1),
            ..fpnode_segments::wal::WalOptions::default()
        },
        ..IndexOptions::default()
    };
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    Box::pin(Node::start(NodeOptions {
        dir: args.dir.clone(),
        index,
        supervision: SupervisionOptions::default(),
        search_threads: args.search_threads.unwrap_or(cpus),
        search_queue: args.search_queue,
        max_writes_in_flight: args.max_writes_in_flight.max(1),
        replication,
        events: Some(events),
    }))
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "cannot open the indexes in {}: {}",
            args.dir.display(),
            startup_cause(&e.to_string())
        )
    })
}

/// Replica mode: connects to NATS and checks (or creates) the stream. A stream
/// whose settings would lose data stops the start with the reasons; an
/// unreachable server does not: the node serves its local data and follows the
/// stream once the server is back.
async fn connect_stream(args: &ServeArgs) -> anyhow::Result<Arc<Replication>> {
    let opts = ReplicationOptions {
        url: args.nats_url.clone(),
        settings: StreamSettings {
            name: args.stream.clone(),
            prefix: args.stream_prefix.clone(),
            replicas: args.stream_replicas.max(1),
            ..StreamSettings::default()
        },
        fetch_max: args.fetch_max.max(1),
        fetch_wait: Duration::from_millis(args.fetch_wait_ms.max(1)),
        publish_timeout: Duration::from_millis(args.publish_timeout_ms.max(1)),
        apply_wait: Duration::from_millis(args.apply_wait_ms),
        auth: fpnode_actors::nats_auth::NatsAuth {
            user: args.nats_user.clone(),
            password: args.nats_password.clone(),
            token: args.nats_token.clone(),
            nkey_seed_file: args.nats_nkey_seed_file.clone(),
            creds_file: args.nats_creds.clone(),
            tls_ca: args.nats_tls_ca.clone(),
            tls_cert: args.nats_tls_cert.clone(),
            tls_key: args.nats_tls_key.clone(),
            tls_required: args.nats_tls_required,
        },
    };
    let replication = Replication::connect(opts)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats_url))?;
    match tokio::time::timeout(
        Duration::from_secs(5),
        ensure_stream(&replication.js, replication.settings()),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e @ StreamError::Unsafe { .. })) => return Err(e.into()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, url = %args.nats_url, "stream not reachable: serving local data until it is")
        }
        Err(_) => {
            tracing::warn!(url = %args.nats_url, "NATS not reachable: serving local data until it is")
        }
    }
    Ok(replication)
}

/// The cause of a failed actor start, without ractor's nested "Actor panicked
/// during startup" wrappers (nothing panicked: `pre_start` returned an error).
fn startup_cause(message: &str) -> &str {
    let prefix = "Actor panicked during startup '";
    message
        .rsplit(prefix)
        .next()
        .unwrap_or(message)
        .trim_end_matches('\'')
}

/// How long requests in flight may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The index size from which searches prefetch their blocks.
fn prefetch_above(p: cli::Prefetch) -> Option<u64> {
    match p {
        cli::Prefetch::On => Some(0),
        cli::Prefetch::Off => None,
        cli::Prefetch::Auto => {
            let total_kb = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
                let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            });
            // Unknown RAM: prefetch from 8 GB on.
            Some(total_kb.map_or(8 << 30, |kb| kb * 1024 / 2))
        }
    }
}
