//! Every metric the node exports, with its help text (docs/metrics.md is
//! the same table for readers; a test keeps the two equal). Registered when
//! the recorder is installed: the ones without labels start at 0, so
//! `rate()` and absence alerts work from the first scrape, as in fpindex.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// (name, kind, has labels, help).
pub const METRICS: &[(&str, Kind, bool, &str)] = &[
    (
        "fpindex_searches_total",
        Kind::Counter,
        false,
        "searches started",
    ),
    (
        "fpindex_search_hits_total",
        Kind::Counter,
        false,
        "searches with at least one result",
    ),
    (
        "fpindex_search_misses_total",
        Kind::Counter,
        false,
        "searches with no result",
    ),
    (
        "fpindex_search_duration_seconds",
        Kind::Histogram,
        false,
        "search time, queue wait included",
    ),
    (
        "fpindex_updates_total",
        Kind::Counter,
        false,
        "batches applied",
    ),
    ("fpindex_docs", Kind::Gauge, true, "live fingerprints"),
    ("fpindex_version", Kind::Gauge, true, "last applied version"),
    (
        "fpindex_checkpoints_total",
        Kind::Counter,
        false,
        "memory segments written to a file segment",
    ),
    (
        "fpindex_memory_merges_total",
        Kind::Counter,
        false,
        "memory segment merges",
    ),
    (
        "fpindex_file_merges_total",
        Kind::Counter,
        false,
        "file segment merges",
    ),
    (
        "fpnode_audio_requests_total",
        Kind::Counter,
        true,
        "audio requests answered (search by audio counts under /:index/_search)",
    ),
    (
        "fpnode_audio_request_duration_seconds",
        Kind::Histogram,
        true,
        "time to answer an audio request: upload, slot wait, decode and analysis",
    ),
    (
        "fpnode_audio_files_total",
        Kind::Counter,
        true,
        "files decoded",
    ),
    (
        "fpnode_audio_decodes_in_flight",
        Kind::Gauge,
        false,
        "decodes running on blocking threads",
    ),
    (
        "fpnode_audio_rejected_total",
        Kind::Counter,
        false,
        "audio requests refused with 503 (every slot and waiting place taken)",
    ),
    (
        "fpnode_audio_cache_hits_total",
        Kind::Counter,
        false,
        "POST /fingerprint by path answered from the descriptor cache, or not",
    ),
    (
        "fpnode_audio_cache_misses_total",
        Kind::Counter,
        false,
        "POST /fingerprint by path answered from the descriptor cache, or not",
    ),
    (
        "fpnode_build_info",
        Kind::Gauge,
        true,
        "1, labelled with the binary's version and the node's mode",
    ),
    (
        "fpnode_data_disk_free_bytes",
        Kind::Gauge,
        false,
        "bytes free for fpnode on the data directory's filesystem (0 on a proxy)",
    ),
    (
        "fpnode_data_disk_size_bytes",
        Kind::Gauge,
        false,
        "size of the data directory's filesystem (0 on a proxy)",
    ),
    (
        "fpnode_auth_tokens",
        Kind::Gauge,
        false,
        "bearer tokens in force (0 with authentication off)",
    ),
    (
        "fpnode_auth_failures_total",
        Kind::Counter,
        true,
        "requests refused by authentication",
    ),
    (
        "fpnode_auth_reloads_total",
        Kind::Counter,
        true,
        "token reloads on SIGHUP",
    ),
    (
        "fpnode_http_requests_total",
        Kind::Counter,
        true,
        "requests answered",
    ),
    (
        "fpnode_http_request_duration_seconds",
        Kind::Histogram,
        true,
        "time to answer",
    ),
    (
        "fpnode_legacy_connections",
        Kind::Gauge,
        false,
        "legacy line protocol connections open",
    ),
    (
        "fpnode_legacy_requests_total",
        Kind::Counter,
        true,
        "legacy line protocol requests answered",
    ),
    (
        "fpnode_legacy_refused_total",
        Kind::Counter,
        false,
        "legacy connections refused (too many open)",
    ),
    (
        "fpnode_search_queue_depth",
        Kind::Gauge,
        false,
        "searches waiting for a search thread",
    ),
    (
        "fpnode_shed_requests_total",
        Kind::Counter,
        true,
        "requests refused with 503 to protect the node",
    ),
    (
        "fpnode_write_flush_seconds",
        Kind::Histogram,
        false,
        "one group through the write pipeline: from its cut to its clients answered",
    ),
    (
        "fpnode_write_prepare_seconds",
        Kind::Histogram,
        false,
        "the Batcher's part of a group: stall wait and memory segments built",
    ),
    (
        "fpnode_write_publish_seconds",
        Kind::Histogram,
        false,
        "the IndexWriter's part: logged groups published",
    ),
    (
        "fpnode_stream_ingests",
        Kind::Gauge,
        false,
        "_stream requests being applied now",
    ),
    (
        "fpnode_stream_ingest_changes_total",
        Kind::Counter,
        false,
        "changes applied (durable) through _stream",
    ),
    (
        "fpnode_change_feed_subscribers",
        Kind::Gauge,
        false,
        "_changes event streams open now",
    ),
    (
        "fpnode_change_feed_sockets",
        Kind::Gauge,
        false,
        "WebSocket connections to GET /_changes open now",
    ),
    (
        "fpnode_change_feed_slow_disconnects_total",
        Kind::Counter,
        false,
        "feed subscribers (SSE or WebSocket, on a node or a proxy) closed for being too slow",
    ),
    (
        "fpnode_change_feed_events_total",
        Kind::Counter,
        false,
        "change events sent on _changes event streams (one per batch)",
    ),
    (
        "fpnode_change_feed_log_reads_total",
        Kind::Counter,
        true,
        "reads of an index's change log by the feeds",
    ),
    (
        "fpnode_change_feed_stream_reads_total",
        Kind::Counter,
        false,
        "replica feeds' pages read back from the stream (a since older than the replica's own log)",
    ),
    (
        "fpnode_node_event_errors_total",
        Kind::Counter,
        false,
        "node events (GET /_changes) lost because the event log could not be written",
    ),
    (
        "fpnode_jobs_submitted_total",
        Kind::Counter,
        true,
        "background jobs accepted (docs/api.md \"Jobs\")",
    ),
    (
        "fpnode_jobs_finished_total",
        Kind::Counter,
        true,
        "background jobs ended",
    ),
    (
        "fpnode_jobs_running",
        Kind::Gauge,
        false,
        "background jobs running now",
    ),
    (
        "fpnode_jobs_queued",
        Kind::Gauge,
        false,
        "background jobs waiting for a turn",
    ),
    (
        "fpnode_job_duration_seconds",
        Kind::Histogram,
        true,
        "a job from its start to its end",
    ),
    (
        "fpnode_wal_fsync_seconds",
        Kind::Histogram,
        false,
        "one WAL write + fsync (group commit)",
    ),
    (
        "fpnode_write_group_size",
        Kind::Histogram,
        false,
        "batches covered by one fsync",
    ),
    (
        "fpnode_write_stalls_total",
        Kind::Counter,
        false,
        "groups refused because merges were behind",
    ),
    (
        "fpnode_write_permits_available",
        Kind::Gauge,
        true,
        "free write slots (credit occupancy)",
    ),
    (
        "fpnode_maintenance_seconds",
        Kind::Histogram,
        true,
        "time of each background task that did work",
    ),
    ("fpnode_segments", Kind::Gauge, true, "segment counts"),
    (
        "fpnode_segment_bytes",
        Kind::Gauge,
        true,
        "bytes of file segments",
    ),
    (
        "fpnode_memory_postings",
        Kind::Gauge,
        true,
        "postings held in memory segments",
    ),
    (
        "fpnode_actor_restarts_total",
        Kind::Counter,
        true,
        "actor failures that led to a restart (batcher, wal_writer, index_writer: the stage that failed; the pipeline restarts as a whole)",
    ),
    (
        "fpnode_indexes_failed",
        Kind::Gauge,
        false,
        "indexes whose files failed to open at start (they answer 503 IndexFailed)",
    ),
    (
        "fpnode_index_open_failures_total",
        Kind::Counter,
        false,
        "indexes that failed to open at start",
    ),
    (
        "fpnode_search_workers",
        Kind::Gauge,
        false,
        "search worker threads running (the pool's size, less any being replaced)",
    ),
    (
        "fpnode_search_worker_restarts_total",
        Kind::Counter,
        false,
        "search workers replaced after a search panicked",
    ),
    (
        "fpnode_index_escalations_total",
        Kind::Counter,
        false,
        "indexes marked unhealthy after repeated failures",
    ),
    ("fpnode_indexes", Kind::Gauge, false, "open indexes"),
    (
        "fpnode_nats_connected",
        Kind::Gauge,
        false,
        "replica/proxy: 1 while connected to NATS",
    ),
    (
        "fpnode_stream_applied_sequence",
        Kind::Gauge,
        true,
        "replica: stream sequence of the last applied batch",
    ),
    (
        "fpnode_stream_diverged",
        Kind::Gauge,
        true,
        "replica: 1 once the index stopped following because the stream lost messages it applied",
    ),
    (
        "fpnode_stream_lag",
        Kind::Gauge,
        true,
        "replica: messages of the index in the stream not applied yet (as of the last fetch)",
    ),
    (
        "fpnode_index_loading",
        Kind::Gauge,
        true,
        "replica: 1 while the index bootstraps from the stream (answers 503 LOADING)",
    ),
    (
        "fpnode_stream_last_fetch_age_seconds",
        Kind::Gauge,
        true,
        "replica: seconds since the index's subscriber last fetched from the stream",
    ),
    (
        "fpnode_stream_errors_total",
        Kind::Counter,
        false,
        "subscriber or lifecycle watcher resynchronisations (NATS errors, writer restarts)",
    ),
    (
        "fpnode_stream_bad_messages_total",
        Kind::Counter,
        false,
        "stream messages that were not a valid index state (skipped)",
    ),
    (
        "fpnode_publish_seconds",
        Kind::Histogram,
        false,
        "one atomic batch publish until JetStream's acknowledgement",
    ),
    (
        "fpnode_publish_failures_total",
        Kind::Counter,
        false,
        "writes answered 503 because the stream did not take them",
    ),
    (
        "fpnode_proxy_healthy_replicas",
        Kind::Gauge,
        false,
        "proxy: replicas passing the health check",
    ),
    (
        "fpnode_proxy_forward_errors_total",
        Kind::Counter,
        false,
        "proxy: forwards that failed and went to the next replica",
    ),
    (
        "fpnode_proxy_feed_sockets",
        Kind::Gauge,
        false,
        "proxy: WebSocket change feeds passed through to a replica now",
    ),
];

/// The help text of `name`.
pub fn help(name: &str) -> Option<&'static str> {
    METRICS.iter().find(|m| m.0 == name).map(|m| m.3)
}

/// Describes every metric and starts the unlabelled counters and gauges at 0.
pub fn register() {
    for &(name, kind, labelled, help) in METRICS {
        match kind {
            Kind::Counter => {
                metrics::describe_counter!(name, help);
                if !labelled {
                    metrics::counter!(name).increment(0);
                }
            }
            Kind::Gauge => {
                metrics::describe_gauge!(name, help);
                if !labelled {
                    metrics::gauge!(name).increment(0.0);
                }
            }
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_is_docs_metrics_md() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
            .unwrap_or_default();
        let mut documented: Vec<String> = Vec::new();
        for line in doc.lines().filter(|l| l.starts_with("| `")) {
            let first = line.split('|').nth(1).unwrap_or("");
            documented.extend(first.split('`').skip(1).step_by(2).map(str::to_owned));
        }
        let catalog: Vec<String> = METRICS.iter().map(|m| m.0.to_owned()).collect();
        assert_eq!(catalog, documented);
        assert!(METRICS.iter().all(|m| !m.3.is_empty()));
    }
}
