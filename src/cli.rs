//! Command line: `fpnode` / `fpnode serve` with fpindex's flags plus ours. Every
//! flag can also be set through an environment variable (`FPNODE_...`).

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fpnode",
    version,
    about = "Index node for audio-fingerprint search (fpindex-compatible)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(Box<ServeArgs>),
    /// Build a new index offline from a stream of fingerprints (no node may be
    /// serving the data directory). Much faster than loading through the API for
    /// large corpora: every posting is written at most twice.
    Import(ImportArgs),
    /// Show what a data directory holds: indexes, versions, segments, sizes.
    Inspect(InspectArgs),
    /// Create an index from an archive made by `GET /:index/_snapshot` (no node
    /// may be serving the data directory).
    Restore(RestoreArgs),
    /// Write every fingerprint of an index, sorted by id, in the format
    /// `fpnode import` reads (no node may be serving the data directory), in
    /// passes of 200,000 fingerprints (each pass reads every posting once).
    Export(ExportArgs),
    /// Compute Chromaprint fingerprints of audio files, as Chromaprint's
    /// `fpcalc` 1.5.1 does (the same output, the same options, also in
    /// fpcalc's one-dash spelling: `-raw`, `-json`, `-length 30`), many files
    /// at a time (docs/audio.md).
    Fingerprint(FingerprintArgs),
    /// Compute the 25-D descriptor (frequency bands, loudness, tempo,
    /// spectral shape, harmonicity, variation, stereo) of audio files, one
    /// JSON line per file (docs/audio.md, "The descriptor").
    Describe(DescribeArgs),
    /// Serve only the audio endpoints (`POST /fingerprint`, `GET /health`,
    /// `POST /_fingerprint`, `GET /_metrics`), without an index.
    AudioServer(AudioServerArgs),
    /// Exit 0 if the node on this machine answers `GET /_health` with 200
    /// within the timeout, else 1: the container image's HEALTHCHECK (the
    /// image has no shell and no curl).
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Address of the node.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port of the node.
    #[arg(long, env = "FPNODE_PORT", default_value_t = 6081)]
    pub port: u16,
    /// Path asked (`/:index/_health` checks one index).
    #[arg(long, default_value = "/_health")]
    pub path: String,
    /// Milliseconds for the whole check.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Args)]
pub struct DescribeArgs {
    /// Audio files (any format docs/audio.md lists).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Seconds analysed from the start (default: the whole file).
    #[arg(long)]
    pub length: Option<f64>,
    /// Files analysed at once (default: the number of CPUs).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
}

#[derive(Debug, Clone, Args)]
pub struct FingerprintArgs {
    /// Audio files (any format docs/audio.md lists).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Seconds of audio fingerprinted from the start; 0 for the whole file.
    #[arg(long, default_value_t = 120.0)]
    pub length: f64,
    /// Print the raw fingerprint (its 32-bit items) instead of the
    /// compressed base64 form.
    #[arg(long)]
    pub raw: bool,
    /// With `--raw`, print the items as signed integers (pg_acoustid's form).
    #[arg(long)]
    pub signed: bool,
    /// Print one JSON object per file (`duration`, `fingerprint`).
    #[arg(long, conflicts_with_all = ["plain", "text"])]
    pub json: bool,
    /// Print only the fingerprint.
    #[arg(long, conflicts_with = "text")]
    pub plain: bool,
    /// Print `DURATION=` and `FINGERPRINT=` lines (the default).
    #[arg(long)]
    pub text: bool,
    /// Chromaprint algorithm; fpcalc's default 2 (TEST2) is the one AcoustID
    /// indexes and the only one supported.
    #[arg(long, default_value_t = 2)]
    pub algorithm: u32,
    /// Also print AcoustID's query terms (`QUERY_TERMS=` or `"terms"`): the
    /// hashes to index in fpnode for this fingerprint.
    #[arg(long)]
    pub terms: bool,
    /// Files fingerprinted at once (default: the number of CPUs).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
}

/// fpcalc's single-dash long options, accepted after `fpnode fingerprint`.
const FPCALC_FLAGS: [&str; 8] = [
    "-length",
    "-raw",
    "-signed",
    "-json",
    "-plain",
    "-text",
    "-algorithm",
    "-terms",
];

/// Rewrites fpcalc's spelling (`-length 30`) to clap's (`--length 30`)
/// when the subcommand is `fingerprint`; other arguments are kept as they are.
pub fn fpcalc_spelling(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = args.into_iter().collect();
    if args.get(1).is_some_and(|a| a == "fingerprint") {
        for arg in args.iter_mut().skip(2) {
            if let Some(flag) = arg.to_str().filter(|a| FPCALC_FLAGS.contains(a)) {
                *arg = format!("-{flag}").into();
            }
        }
    }
    args
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Data directory of the node.
    #[arg(long, env = "FPNODE_DIR", default_value = "./data")]
    pub dir: PathBuf,
    /// Name of the index to export.
    #[arg(long)]
    pub index: String,
    /// Output file; `-` or absent writes standard output.
    #[arg(long)]
    pub output: Option<String>,
    #[arg(long, value_enum, default_value = "ndjson")]
    pub format: InputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// Data directory of the node.
    #[arg(long, env = "FPNODE_DIR", default_value = "./data")]
    pub dir: PathBuf,
    /// Name of the index to create (must not exist).
    #[arg(long)]
    pub index: String,
    /// Archive file; `-` or absent reads standard input.
    #[arg(long)]
    pub input: Option<String>,
}

/// When a search asks the kernel for all its blocks at once (`--prefetch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Prefetch {
    /// Once an index's segment files outgrow half the machine's RAM.
    Auto,
    /// Always (indexes on disks slower than RAM even when small).
    On,
    /// Never (a search reads page after page).
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Standalone,
    Replica,
    Proxy,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum InputFormat {
    /// One JSON object per line: {"id": 1, "hashes": [..]}
    Ndjson,
    /// Concatenated MessagePack maps: {"i": 1, "h": [..]} (full names accepted)
    Msgpack,
}

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Data directory of the node.
    #[arg(long, env = "FPNODE_DIR", default_value = "./data")]
    pub dir: PathBuf,
    /// Name of the index to create (must not exist).
    #[arg(long)]
    pub index: String,
    /// Input file; `-` or absent reads standard input.
    #[arg(long)]
    pub input: Option<String>,
    #[arg(long, value_enum, default_value = "msgpack")]
    pub format: InputFormat,
    /// Version the imported data gets (and the index starts at).
    #[arg(long, default_value_t = 1)]
    pub version: u64,
    /// Postings per sorted run (8 bytes of RAM each).
    #[arg(long, default_value_t = 256 << 20)]
    pub run_postings: usize,
    /// Runs merged into one segment of the index; each group's runs are
    /// deleted once merged, so the disk peaks at about the runs plus one group.
    #[arg(long, default_value_t = 16)]
    pub runs_per_segment: usize,
}

#[derive(Debug, Clone, Args)]
pub struct InspectArgs {
    /// Data directory of the node.
    #[arg(long, env = "FPNODE_DIR", default_value = "./data")]
    pub dir: PathBuf,
    /// Also read and check every byte of every segment.
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Data directory: one subdirectory per index under `indexes/`.
    #[arg(long, env = "FPNODE_DIR", default_value = "./data")]
    pub dir: PathBuf,

    /// Address to listen on.
    #[arg(long, env = "FPNODE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one and logs it).
    #[arg(long, env = "FPNODE_PORT", default_value_t = 6081)]
    pub port: u16,

    /// Checkpoint memory segments to a file segment once they hold this many
    /// postings (hash, id pairs; ~120 per fingerprint).
    #[arg(long, env = "FPNODE_CHECKPOINT_THRESHOLD", default_value_t = 8_388_608)]
    pub checkpoint_threshold: u64,

    /// Bytes of checkpointed WAL kept per index for the change feed
    /// (`GET /:index/_changes`); older changes answer `410 ChangesNotRetained`.
    /// 0 keeps none beyond what recovery needs.
    #[arg(long, env = "FPNODE_CHANGES_RETENTION_BYTES", default_value_t = 256 << 20)]
    pub changes_retention_bytes: u64,

    /// Start a new WAL file once the current one is this large.
    #[arg(long, env = "FPNODE_WAL_FILE_BYTES", default_value_t = 64 << 20)]
    pub wal_file_bytes: u64,

    /// Checkpoint once the oldest unflushed change is this old, in milliseconds.
    #[arg(long, env = "FPNODE_CHECKPOINT_AGE_MS", default_value_t = 60_000)]
    pub checkpoint_age_ms: u64,

    /// Threads that run searches (default: one per CPU).
    #[arg(long, env = "FPNODE_SEARCH_THREADS")]
    pub search_threads: Option<usize>,

    /// Searches that may wait for a thread; more are refused with 503.
    #[arg(long, env = "FPNODE_SEARCH_QUEUE", default_value_t = 256)]
    pub search_queue: usize,

    /// Writes per index that may be queued or in progress; more wait up to
    /// --write-wait-ms, then get 503.
    #[arg(long, env = "FPNODE_MAX_WRITES_IN_FLIGHT", default_value_t = 64)]
    pub max_writes_in_flight: usize,

    /// How long a write waits for a free slot, in milliseconds.
    #[arg(long, env = "FPNODE_WRITE_WAIT_MS", default_value_t = 2_000)]
    pub write_wait_ms: u64,

    /// How long a write may wait for background merges before 503, in ms.
    #[arg(long, env = "FPNODE_STALL_TIMEOUT_MS", default_value_t = 5_000)]
    pub stall_timeout_ms: u64,

    /// Bearer tokens with roles, one `<role>:<token>` per line (roles
    /// `read`, `write`, `admin`; `<role>:sha256:<hex>` for a token's
    /// digest); reloaded on SIGHUP. With neither this nor FPNODE_AUTH_TOKENS,
    /// authentication is off (docs/operations.md "Authentication").
    #[arg(long, env = "FPNODE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Bearer tokens as in `--auth-tokens-file`, comma separated. Prefer the
    /// environment variable: a flag's value shows in `ps`.
    #[arg(long, env = "FPNODE_AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<String>,

    /// Proxy mode: the bearer token the proxy sends to replicas that
    /// require one, for its own requests (forwarded requests carry the
    /// client's).
    #[arg(long, env = "FPNODE_REPLICA_TOKEN", hide_env_values = true)]
    pub replica_token: Option<String>,

    /// Serve fpindex's legacy line protocol on this TCP port, on the same
    /// address as HTTP (docs/api.md "Legacy line protocol"); 0: off.
    #[arg(long, env = "FPNODE_LEGACY_PORT", default_value_t = 0)]
    pub legacy_port: u16,

    /// Largest request body, in bytes (larger: 413 PayloadTooLarge).
    #[arg(long, env = "FPNODE_MAX_BODY_BYTES", default_value_t = 64 << 20)]
    pub max_body_bytes: usize,

    /// Ask the kernel to read every segment file into the page cache on open.
    #[arg(long, env = "FPNODE_PRELOAD")]
    pub preload: bool,

    /// Whether a search first asks the kernel for every block it will read,
    /// so an index larger than the page cache is read in parallel rather
    /// than one page fault at a time: `auto` (once an index's files exceed
    /// half the RAM), `on`, `off` (docs/benchmarks.md has the figures).
    #[arg(long, env = "FPNODE_PREFETCH", value_enum, default_value = "auto")]
    pub prefetch: Prefetch,

    /// `standalone` (local writes, no NATS), `replica` (follows the NATS
    /// JetStream stream; writes are published to it) or `proxy` (no data:
    /// publishes writes, forwards reads to --replicas).
    #[arg(long, env = "FPNODE_MODE", value_enum, default_value = "standalone")]
    pub mode: Mode,

    /// NATS server(s) of the stream, comma separated (replica mode).
    #[arg(long, env = "FPNODE_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Name of the JetStream stream (created if missing).
    #[arg(long, env = "FPNODE_STREAM", default_value = "fpindex")]
    pub stream: String,

    /// First token of every subject of the stream.
    #[arg(long, env = "FPNODE_STREAM_PREFIX", default_value = "fpindex")]
    pub stream_prefix: String,

    /// Replicas of the stream when fpnode creates it (3 in production).
    #[arg(long, env = "FPNODE_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,

    /// How long a write waits for the stream's acknowledgement before 503, in ms.
    #[arg(long, env = "FPNODE_PUBLISH_TIMEOUT_MS", default_value_t = 2_000)]
    pub publish_timeout_ms: u64,

    /// How long a write waits for this node to apply it after the stream
    /// acknowledged it (read-your-writes), in ms.
    #[arg(long, env = "FPNODE_APPLY_WAIT_MS", default_value_t = 10_000)]
    pub apply_wait_ms: u64,

    /// How long a replica waits for the next message before looking again, in ms.
    #[arg(long, env = "FPNODE_FETCH_WAIT_MS", default_value_t = 500)]
    pub fetch_wait_ms: u64,

    /// NATS user (with --nats-password), for servers that require it.
    #[arg(long, env = "FPNODE_NATS_USER")]
    pub nats_user: Option<String>,

    /// NATS password. Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "FPNODE_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,

    /// NATS token. Prefer the environment variable: a flag shows in `ps`.
    #[arg(long, env = "FPNODE_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,

    /// A file holding the NATS NKey seed (`SU...`).
    #[arg(long, env = "FPNODE_NATS_NKEY_SEED_FILE")]
    pub nats_nkey_seed_file: Option<PathBuf>,

    /// A NATS `.creds` file (user JWT and seed, as `nsc` writes it).
    #[arg(long, env = "FPNODE_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,

    /// CA certificates (PEM) the NATS server's certificate must chain to;
    /// implies TLS.
    #[arg(long, env = "FPNODE_NATS_TLS_CA")]
    pub nats_tls_ca: Option<PathBuf>,

    /// Client certificate (PEM) for NATS servers that verify clients (with
    /// --nats-tls-key); implies TLS.
    #[arg(long, env = "FPNODE_NATS_TLS_CERT")]
    pub nats_tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, env = "FPNODE_NATS_TLS_KEY")]
    pub nats_tls_key: Option<PathBuf>,

    /// Refuse a NATS connection without TLS (implied by the TLS files and
    /// `tls://` URLs).
    #[arg(long, env = "FPNODE_NATS_TLS_REQUIRED")]
    pub nats_tls_required: bool,

    /// Proxy mode: base URLs of the replicas reads go to, comma separated.
    #[arg(long, env = "FPNODE_REPLICAS", value_delimiter = ',')]
    pub replicas: Vec<String>,

    /// Proxy mode: how long a forwarded read may take, in ms.
    #[arg(long, env = "FPNODE_FORWARD_TIMEOUT_MS", default_value_t = 15_000)]
    pub forward_timeout_ms: u64,

    /// Messages a replica fetches from the stream at once (at most 32,000:
    /// the NATS client drops messages beyond its 65,536-message channel,
    /// and up to twice a fetch can be on its way; docs/replication.md).
    #[arg(
        long,
        env = "FPNODE_FETCH_MAX",
        default_value_t = 16_000,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=32_000)
    )]
    pub fetch_max: usize,

    /// Import jobs read files only under this directory (`POST /_jobs`
    /// `{"kind": "import", "file": ...}`); unset: only uploaded bodies.
    #[arg(long, env = "FPNODE_IMPORT_DIR")]
    pub import_dir: Option<PathBuf>,

    /// Where export and snapshot jobs write their files (default:
    /// `<dir>/exports`).
    #[arg(long, env = "FPNODE_EXPORT_DIR")]
    pub export_dir: Option<PathBuf>,

    /// Background jobs running at once; more wait (--max-queued-jobs).
    #[arg(
        long,
        env = "FPNODE_MAX_JOBS",
        default_value_t = 1,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64)
    )]
    pub max_jobs: usize,

    /// Background jobs that may wait for a turn; more get 503 TooManyJobs.
    #[arg(long, env = "FPNODE_MAX_QUEUED_JOBS", default_value_t = 64)]
    pub max_queued_jobs: usize,

    /// The largest body `POST /:index/_import` accepts, in bytes.
    #[arg(long, env = "FPNODE_MAX_UPLOAD_BYTES", default_value_t = 16 << 30)]
    pub max_upload_bytes: u64,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `fpnode=debug`.
    #[arg(long, env = "FPNODE_LOG", default_value = "info")]
    pub log: String,

    /// Enable test-only fault injection endpoints. Never in production.
    #[arg(long, env = "FPNODE_ENABLE_FAULT_INJECTION", hide = true)]
    pub enable_fault_injection: bool,

    #[command(flatten)]
    pub audio: AudioArgs,
}

/// The audio endpoints' settings (docs/api.md, "Audio"), in `serve` and
/// `audio-server`.
#[derive(Debug, Clone, Args)]
pub struct AudioArgs {
    /// A directory whose files `POST /fingerprint` and `/_fingerprint` may
    /// name by path (repeat for several; symbolic links and `..` cannot
    /// leave it). Without one, only uploaded audio is accepted.
    #[arg(long = "media-root", env = "FPNODE_MEDIA_ROOTS", value_delimiter = ',')]
    pub media_roots: Vec<PathBuf>,
    /// Audio decodes running at once (default: the number of CPUs).
    #[arg(long, env = "FPNODE_MAX_DECODES")]
    pub max_decodes: Option<usize>,
    /// Requests waiting for a decode slot (default: 4 per CPU); more get
    /// 503 Overloaded with Retry-After.
    #[arg(long, env = "FPNODE_MAX_DECODES_WAITING")]
    pub max_decodes_waiting: Option<usize>,
    /// Seconds a request waits for a decode slot before its 503.
    #[arg(long, env = "FPNODE_DECODE_WAIT_SECS", default_value_t = 30)]
    pub decode_wait_secs: u64,
    /// Seconds a decode may take (longer: 504 DecodeTimeout).
    #[arg(long, env = "FPNODE_DECODE_TIMEOUT_SECS", default_value_t = 120)]
    pub decode_timeout_secs: u64,
    /// Descriptors kept in the cache (by path, size and modification time);
    /// 0 disables it.
    #[arg(long, env = "FPNODE_AUDIO_CACHE_ENTRIES", default_value_t = 10_000)]
    pub audio_cache_entries: usize,
    /// Largest audio upload, in bytes (spooled to a temporary file).
    #[arg(long, env = "FPNODE_MAX_AUDIO_UPLOAD_BYTES", default_value_t = 1 << 30)]
    pub max_audio_upload_bytes: u64,
    /// Directory for spooled uploads (default: the system's temporary one).
    #[arg(long, env = "FPNODE_AUDIO_SPOOL_DIR")]
    pub audio_spool_dir: Option<PathBuf>,
}

impl AudioArgs {
    pub fn options(&self) -> crate::audio_api::AudioOptions {
        let defaults = crate::audio_api::AudioOptions::default();
        crate::audio_api::AudioOptions {
            media_roots: self.media_roots.clone(),
            max_decodes: self.max_decodes.unwrap_or(defaults.max_decodes).max(1),
            max_waiting: self.max_decodes_waiting.unwrap_or(defaults.max_waiting),
            wait: std::time::Duration::from_secs(self.decode_wait_secs),
            cache_entries: self.audio_cache_entries,
            max_upload_bytes: self.max_audio_upload_bytes,
            decode_timeout: std::time::Duration::from_secs(self.decode_timeout_secs.max(1)),
            spool_dir: self.audio_spool_dir.clone(),
        }
    }
}

/// `fpnode audio-server`: only the audio endpoints, for machines that only
/// fingerprint.
#[derive(Debug, Clone, Args)]
pub struct AudioServerArgs {
    /// Address to listen on.
    #[arg(long, env = "FPNODE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one and logs it).
    #[arg(long, env = "FPNODE_PORT", default_value_t = 6082)]
    pub port: u16,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "FPNODE_LOG", default_value = "info")]
    pub log: String,
    #[command(flatten)]
    pub audio: AudioArgs,
}
