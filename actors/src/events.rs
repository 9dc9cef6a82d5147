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

struct Log {
    keep: usize,
    file: File,
    lines_in_file: usize,
    events: VecDeque<Arc<NodeEvent>>,
    /// The sequence number of the last event ever written (0: none).
    last: u64,
}

#[derive(Debug)]
pub struct NodeEvents {
    path: PathBuf,
    log: Mutex<Log>,
    published: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("last", &self.last).finish()
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> EventsError + '_ {
    move |source| EventsError::Io {
        path: path.to_path_buf(),
        source,
    }
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
        let mut last = 0;
        let mut lines = 0;
        let mut good_len = 0u64;
        if let Ok(f) = File::open(&path) {
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(io(&path))?;
                if n == 0 {
                    break;
                }
                // A line without its newline, or that does not parse, is
                // what a crash during an append leaves: it was never read.
                let parsed = line
                    .strip_suffix('\n')
                    .and_then(|l| serde_json::from_str::<NodeEvent>(l).ok());
                let Some(event) = parsed.filter(|e| e.seq > last) else {
                    tracing::warn!(path = %path.display(), "unfinished node event dropped");
                    break;
                };
                good_len += n as u64;
                lines += 1;
                last = event.seq;
                events.push_back(Arc::new(event));
                if events.len() > keep {
                    events.pop_front();
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        if file.metadata().map_err(io(&path))?.len() != good_len {
            file.set_len(good_len).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        let (published, _) = tokio::sync::watch::channel(last);
        Ok(NodeEvents {
            path,
            log: Mutex::new(Log {
                keep,
                file,
                lines_in_file: lines,
                events,
                last,
            }),
            published,
        })
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends an event, durably, then shows it. Blocks: call it on a
    /// blocking thread. A failure is logged and counted; the event is lost
    /// (what it reports happened: it is never refused for this).
    pub fn emit(&self, what: EventKind) {
        let mut log = self.log();
        let event = NodeEvent {
            seq: log.last + 1,
            time_ms: crate::jobs::now_ms(),
            what,
        };
        let written = serde_json::to_vec(&event)
            .map_err(std::io::Error::other)
            .and_then(|mut line| {
                line.push(b'\n');
                log.file.write_all(&line)?;
                log.file.sync_data()
            });
        if let Err(e) = written {
            tracing::error!(path = %self.path.display(), error = %e, "node event not written");
            metrics::counter!("fpnode_node_event_errors_total").increment(1);
            return;
        }
        log.last = event.seq;
        log.lines_in_file += 1;
        log.events.push_back(Arc::new(event));
        if log.events.len() > log.keep {
            log.events.pop_front();
        }
        if log.lines_in_file >= 2 * log.keep {
            self.rewrite(&mut log);
        }
        let last = log.last;
        drop(log);
        self.published.send_replace(last);
    }

    /// Replaces the file with the events kept (atomically).
    fn rewrite(&self, log: &mut Log) {
        let mut bytes = Vec::new();
        for e in &log.events {
            if serde_json::to_writer(&mut bytes, e.as_ref()).is_err() {
                return;
            }
            bytes.push(b'\n');
        }
        let fs = fpnode_segments::Fs::default();
        let reopened = fs
            .write_atomic(&self.path, &bytes)
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|()| OpenOptions::new().append(true).open(&self.path));
        match reopened {
            Ok(file) => {
                log.file = file;
                log.lines_in_file = log.events.len();
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "node event log not compacted")
            }
        }
    }

    /// Up to `limit` events after `since`, oldest first.
    pub fn since(&self, since: u64, limit: usize) -> Result<Vec<Arc<NodeEvent>>, EventsError> {
        let log = self.log();
        let oldest = log.events.front().map_or(log.last + 1, |e| e.seq);
        if since + 1 < oldest {
            return Err(EventsError::NotRetained { since, oldest });
        }
        let skip = (since + 1 - oldest) as usize;
        Ok(log.events.iter().skip(skip).take(limit).cloned().collect())
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
}
