//! The node's own change feed (docs/api.md "Node events"): indexes created
//! and deleted, job state changes, numbered by one sequence for the node.
//!
//! Each event is appended to `<dir>/events.log` (one JSON line) and fsynced
//! before anyone can read it, so a sequence number once seen is never given
//! to another event, whatever a crash or a power cut does; an unfinished
//! last line (a crash during the append) is dropped at the next open. The
//! newest [`KEEP`] events are kept in memory and served from there; the file
//! is rewritten with those once it holds twice as many. [`NodeEvents::emit`]
//! blocks (a write and an fsync): callers run it on blocking threads, next
//! to the durable step the event reports.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// Events kept (in memory, and at least that many in the file).
pub const KEEP: usize = 10_000;

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    IndexCreated {
        index: String,
        generation: u64,
    },
    IndexDeleted {
        index: String,
        generation: u64,
    },
    /// A job changed state (docs/api.md "Jobs").
    Job {
        job: u64,
        kind: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<String>,
        state: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeEvent {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    #[serde(flatten)]
    pub what: EventKind,
}

impl NodeEvent {
    /// The event's type, as the SSE `event:` field names it.
    pub fn name(&self) -> &'static str {
        match self.what {
            EventKind::IndexCreated { .. } => "index_created",
            EventKind::IndexDeleted { .. } => "index_deleted",
            EventKind::Job { .. } => "job",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("node event log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `since` is older than the oldest event kept.
    #[error("events after {since} are no longer retained (oldest: {oldest})")]
    NotRetained { since: u64, oldest: u64 },
}

/// The file side, held across a write and its fsync.
struct LogFile {
    keep: usize,
    file: File,
    /// Bytes of whole, durable lines: a failed append is cut back to this.
    len: u64,
    lines: usize,
    /// The sequence number of the last event written (0: none).
    last: u64,
    /// Set when the file could not be put back in order after a failure:
    /// no event is written any more (each one logged and counted).
    broken: bool,
    /// No rewrite is tried again before the file holds this many lines.
    rewrite_at: usize,
}

#[derive(Debug)]
pub struct NodeEvents {
    path: PathBuf,
    file: Mutex<LogFile>,
    /// The events kept, for readers: locked briefly, never across I/O.
    kept: Mutex<VecDeque<Arc<NodeEvent>>>,
    published: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFile").field("last", &self.last).finish()
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> EventsError + '_ {
    move |source| EventsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NodeEvents {
    /// Opens (creating) `<dir>/events.log` and reads the events kept.
    pub fn open(dir: &Path) -> Result<NodeEvents, EventsError> {
        Self::open_keeping(dir, KEEP)
    }

    /// [`NodeEvents::open`], keeping `keep` events.
    pub fn open_keeping(dir: &Path, keep: usize) -> Result<NodeEvents, EventsError> {
        let keep = keep.max(1);
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("events.log");
        let mut events = VecDeque::new();
        let (mut last, mut lines, mut len) = (0, 0, 0u64);
        if let Ok(f) = File::open(&path) {
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(io(&path))?;
                if n == 0 {
                    break;
                }
                // A last line without its newline is what a crash during an
                // append leaves: it was never read by anyone, it is cut.
                let Some(text) = line.strip_suffix('\n') else {
                    tracing::warn!(path = %path.display(), "unfinished node event dropped");
                    break;
                };
                len += n as u64;
                lines += 1;
                // A whole line that does not parse, or does not follow, is
                // skipped (never the lines after it).
                match serde_json::from_str::<NodeEvent>(text) {
                    Ok(event) if event.seq > last => {
                        last = event.seq;
                        events.push_back(Arc::new(event));
                        if events.len() > keep {
                            events.pop_front();
                        }
                    }
                    _ => {
                        tracing::warn!(path = %path.display(), line = lines, "bad node event line skipped")
                    }
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        if file.metadata().map_err(io(&path))?.len() != len {
            file.set_len(len).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        let (published, _) = tokio::sync::watch::channel(last);
        Ok(NodeEvents {
            path,
            file: Mutex::new(LogFile {
                keep,
                file,
                len,
                lines,
                last,
                broken: false,
                rewrite_at: 2 * keep,
            }),
            kept: Mutex::new(events),
            published,
        })
    }

    /// Appends an event, durably, then shows it. Blocks (a write and an
    /// fsync): call it on a blocking thread. A failure is logged and counted
    /// and the event is lost (what it reports happened: it is never refused
    /// for this); the file is cut back to its last whole line, so no
    /// sequence number a reader saw is ever given to another event.
    pub fn emit(&self, what: EventKind) {
        let mut f = locked(&self.file);
        if f.broken {
            tracing::error!(path = %self.path.display(), event = ?what, "node event log unusable: event not written");
            metrics::counter!("fpnode_node_event_errors_total").increment(1);
            return;
        }
        let event = NodeEvent {
            seq: f.last + 1,
            time_ms: crate::jobs::now_ms(),
            what,
        };
        let mut line = match serde_json::to_vec(&event) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "node event not encoded");
                return;
            }
        };
        line.push(b'\n');
        let written = f.file.write_all(&line).and_then(|()| f.file.sync_data());
        if let Err(e) = written {
            tracing::error!(path = %self.path.display(), error = %e, "node event not written");
            metrics::counter!("fpnode_node_event_errors_total").increment(1);
            let len = f.len;
            if let Err(e) = f.file.set_len(len).and_then(|()| f.file.sync_all()) {
                tracing::error!(path = %self.path.display(), error = %e, "node event log not cut back: no more events");
                f.broken = true;
            }
            return;
        }
        f.len += line.len() as u64;
        f.lines += 1;
        f.last = event.seq;
        {
            let mut kept = locked(&self.kept);
            kept.push_back(Arc::new(event));
            if kept.len() > f.keep {
                kept.pop_front();
            }
            // Published under the lock: the last number never goes back.
            self.published.send_replace(f.last);
        }
        if f.lines >= f.rewrite_at {
            self.rewrite(&mut f);
        }
    }

    /// Replaces the file with the events kept (atomically).
    fn rewrite(&self, f: &mut LogFile) {
        let kept: Vec<Arc<NodeEvent>> = locked(&self.kept).iter().cloned().collect();
        let mut bytes = Vec::new();
        for e in &kept {
            if serde_json::to_writer(&mut bytes, e.as_ref()).is_err() {
                return;
            }
            bytes.push(b'\n');
        }
        let fs = fpnode_segments::Fs::default();
        if let Err(e) = fs.write_atomic(&self.path, &bytes) {
            // The old file is intact: appends go on; retried later.
            tracing::warn!(path = %self.path.display(), error = %e, "node event log not compacted");
            f.rewrite_at = f.lines + f.keep;
            return;
        }
        match OpenOptions::new().append(true).open(&self.path) {
            Ok(file) => {
                f.file = file;
                f.len = bytes.len() as u64;
                f.lines = kept.len();
                f.rewrite_at = 2 * f.keep;
            }
            Err(e) => {
                // Appends would go to the replaced file: stop writing.
                tracing::error!(path = %self.path.display(), error = %e, "node event log not reopened: no more events");
                f.broken = true;
            }
        }
    }

    /// Up to `limit` events after `since`, oldest first. A `since` older
    /// than the events kept, or newer than the last event (a position this
    /// log never gave), is `NotRetained`: the reader must resync.
    pub fn since(&self, since: u64, limit: usize) -> Result<Vec<Arc<NodeEvent>>, EventsError> {
        let kept = locked(&self.kept);
        let last = *self.published.borrow();
        let oldest = kept.front().map_or(last.saturating_add(1), |e| e.seq);
        if since.saturating_add(1) < oldest || since > last {
            return Err(EventsError::NotRetained { since, oldest });
        }
        let skip = (since + 1 - oldest) as usize;
        Ok(kept.iter().skip(skip).take(limit).cloned().collect())
    }

    /// The sequence number of the last event.
    pub fn last(&self) -> u64 {
        *self.published.borrow()
    }

    /// Sees every new last sequence number.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn created(i: u64) -> EventKind {
        EventKind::IndexCreated {
            index: format!("i{i}"),
            generation: i,
        }
    }

    #[test]
    fn events_are_numbered_kept_across_reopens_and_a_torn_line_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let events = NodeEvents::open(dir.path()).unwrap();
        for i in 1..=3 {
            events.emit(created(i));
        }
        assert_eq!(events.last(), 3);
        let after_one = events.since(1, 10).unwrap();
        assert_eq!(after_one.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(after_one[0].what, created(2));
        assert!(events.since(3, 10).unwrap().is_empty());
        drop(events);
        // A crash during an append leaves part of a line.
        let path = dir.path().join("events.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":4,\"time_ms\":1,\"ty").unwrap();
        drop(f);
        let events = NodeEvents::open(dir.path()).unwrap();
        assert_eq!(events.last(), 3);
        events.emit(created(4));
        let all = events.since(0, 10).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[3].what, created(4));
        drop(events);
        assert_eq!(
            NodeEvents::open(dir.path()).unwrap().since(0, 10).unwrap(),
            all
        );
    }

    #[test]
    fn a_bad_line_in_the_middle_is_skipped_and_a_since_beyond_the_last_is_not_retained() {
        let dir = tempfile::tempdir().unwrap();
        let events = NodeEvents::open(dir.path()).unwrap();
        events.emit(created(1));
        drop(events);
        let path = dir.path().join("events.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"not json\n").unwrap();
        drop(f);
        let events = NodeEvents::open(dir.path()).unwrap();
        events.emit(created(2));
        drop(events);
        let events = NodeEvents::open(dir.path()).unwrap();
        let all = events.since(0, 10).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(matches!(
            events.since(3, 10),
            Err(EventsError::NotRetained { since: 3, .. })
        ));
        assert!(matches!(
            events.since(u64::MAX, 10),
            Err(EventsError::NotRetained { .. })
        ));
        assert!(events.since(2, 10).unwrap().is_empty());
    }

    #[test]
    fn old_events_leave_memory_and_the_file_and_are_not_retained() {
        let dir = tempfile::tempdir().unwrap();
        const KEEP: usize = 10;
        let events = NodeEvents::open_keeping(dir.path(), KEEP).unwrap();
        for i in 1..=(2 * KEEP as u64 + 5) {
            events.emit(created(i));
        }
        let last = 2 * KEEP as u64 + 5;
        let oldest = last - KEEP as u64 + 1;
        match events.since(oldest - 2, 1) {
            Err(EventsError::NotRetained { oldest: o, .. }) => assert_eq!(o, oldest),
            other => panic!("{other:?}"),
        }
        assert_eq!(events.since(oldest - 1, 1).unwrap()[0].seq, oldest);
        let lines = std::fs::read_to_string(dir.path().join("events.log"))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 2 * KEEP, "{lines} lines");
        drop(events);
        let events = NodeEvents::open_keeping(dir.path(), KEEP).unwrap();
        assert_eq!(events.last(), last);
        assert_eq!(events.since(oldest - 1, 1).unwrap()[0].seq, oldest);
    }

    /// Set in the child process of the test below.
    const FSIZE_CHILD: &str = "FPNODE_EVENTS_FSIZE_CHILD";

    /// A real write failure: the test runs itself again in a child process
    /// whose file size limit (`RLIMIT_FSIZE`, `SIGXFSZ` ignored) lets an
    /// append write 10 bytes and then fail with `EFBIG`. The event is lost,
    /// the torn bytes are cut off, and once the disk takes writes again the
    /// next event gets the lost one's number: no reader ever saw it.
    #[test]
    fn an_append_the_disk_refuses_is_cut_back_and_the_log_goes_on() {
        if let Ok(dir) = std::env::var(FSIZE_CHILD) {
            refused_append(Path::new(&dir));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let events = NodeEvents::open(dir.path()).unwrap();
        events.emit(created(1));
        events.emit(created(2));
        drop(events);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "events::tests::an_append_the_disk_refuses_is_cut_back_and_the_log_goes_on",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(FSIZE_CHILD, dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("refused append checked"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let events = NodeEvents::open(dir.path()).unwrap();
        let all = events.since(0, 10).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[2].what, created(4));
        let text = std::fs::read_to_string(dir.path().join("events.log")).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    fn set_file_size_limit(limit: u64) {
        let lim = libc::rlimit {
            rlim_cur: limit,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: plain system calls on this (child) process's own limits.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
        }
    }

    fn refused_append(dir: &Path) {
        let events = NodeEvents::open(dir).unwrap();
        let path = dir.join("events.log");
        let len = std::fs::metadata(&path).unwrap().len();
        set_file_size_limit(len + 10);
        events.emit(created(3));
        assert_eq!(events.last(), 2);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
        assert!(events.since(2, 10).unwrap().is_empty());
        set_file_size_limit(libc::RLIM_INFINITY);
        events.emit(created(4));
        assert_eq!(events.last(), 3);
        println!("refused append checked");
    }
}
