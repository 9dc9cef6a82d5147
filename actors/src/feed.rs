//! The recent batches of an index's change log, shared by its feed
//! subscribers (docs/architecture.md, "Change feeds").
//!
//! Subscribers that follow an index live sit near its head: one write wakes
//! all of them, and each would read the same batches from the WAL (decoding
//! every hash) and encode the same messages. Here the batches after the head
//! are read once (the first subscriber to ask reads, the others wait for that
//! read: single flight) into a ring of the most recent batches, contiguous in
//! log order; a subscriber whose cursor is inside the ring takes its batches
//! from memory, and each batch is encoded once per form (an SSE event, a
//! WebSocket message). The ring is bounded by [`RING_BYTES`]; a subscriber
//! behind it reads the WAL on its own, as before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use fpnode_segments::wal::{ChangesCursor, ChangesPage};
use fpnode_segments::{Batch, Change, Position};

/// What the ring may hold: the batches' hashes and ids, counted three
/// times to cover their encodings (JSON, about twice the binary size for
/// the usual one or two forms).
pub const RING_BYTES: usize = 16 << 20;
/// Reads one caller makes to bring the ring up to its cursor.
const MAX_EXTENSIONS: usize = 8;
/// Encoded forms a batch can hold (see [`FeedBatch::encoded`]).
pub const FORMS: usize = 4;

/// One batch of the change log and its encodings.
#[derive(Debug)]
pub struct FeedBatch {
    pub batch: Batch,
    forms: [OnceLock<String>; FORMS],
}

impl FeedBatch {
    /// A batch read from elsewhere than the log (a replica's stream), alone.
    pub fn new(batch: Batch) -> Arc<FeedBatch> {
        Arc::new(FeedBatch {
            batch,
            forms: Default::default(),
        })
    }

    /// Batches read from the log, ready to share.
    fn shared(batches: Vec<Batch>) -> Vec<Arc<FeedBatch>> {
        batches.into_iter().map(FeedBatch::new).collect()
    }

    /// The batch encoded in form `form`, made by the first caller.
    pub fn encoded(&self, form: usize, encode: impl FnOnce(&Batch) -> String) -> &str {
        self.forms[form.min(FORMS - 1)].get_or_init(|| encode(&self.batch))
    }

    fn bytes(&self) -> usize {
        self.batch
            .changes
            .iter()
            .map(|c| match c {
                Change::Insert { hashes, .. } => 16 + 4 * hashes.len(),
                Change::Delete { .. } => 16,
            })
            .sum::<usize>()
            * 3
            + 64
    }
}

#[derive(Debug, Default)]
struct Ring {
    /// The position the first batch follows; `None` until the first read.
    start: Option<u64>,
    batches: VecDeque<Arc<FeedBatch>>,
    bytes: usize,
    /// Where the last read ended in the WAL: the next extension starts there.
    hint: Option<ChangesCursor>,
}

impl Ring {
    /// The position the next batch read into the ring must follow.
    fn end(&self) -> Option<u64> {
        self.batches
            .back()
            .map(|b| b.batch.position.0)
            .or(self.start)
    }

    /// The batches after `since` (at most `limit` changes, at least one
    /// batch), if `since` is inside the ring.
    fn after(&self, since: u64, limit: usize) -> Option<Vec<Arc<FeedBatch>>> {
        let start = self.start?;
        if since < start || self.end().is_none_or(|end| since > end) {
            return None;
        }
        let first = self
            .batches
            .partition_point(|b| b.batch.position.0 <= since);
        Some(take(self.batches.range(first..).cloned(), limit))
    }

    fn append(&mut self, batches: &[Arc<FeedBatch>], hint: Option<ChangesCursor>) {
        for b in batches {
            self.bytes += b.bytes();
            self.batches.push_back(b.clone());
        }
        if hint.is_some() {
            self.hint = hint;
        }
        // Keep the newest batch whatever its size: it is the head.
        while self.bytes > RING_BYTES && self.batches.len() > 1 {
            if let Some(old) = self.batches.pop_front() {
                self.bytes -= old.bytes();
                self.start = Some(old.batch.position.0);
            }
        }
    }
}

/// Whole batches, in order, until `limit` changes (at least one batch).
fn take(batches: impl Iterator<Item = Arc<FeedBatch>>, limit: usize) -> Vec<Arc<FeedBatch>> {
    let mut out = Vec::new();
    let mut changes = 0;
    for b in batches {
        if !out.is_empty() && changes + b.batch.changes.len() > limit {
            break;
        }
        changes += b.batch.changes.len();
        out.push(b);
    }
    out
}

/// The recent batches of one index.
#[derive(Debug, Default)]
pub struct FeedRing {
    ring: Mutex<Ring>,
    /// Held while the ring is extended from the WAL: one read at a time.
    extending: tokio::sync::Mutex<()>,
    /// Subscribers following the index now.
    followers: std::sync::atomic::AtomicUsize,
}

impl FeedRing {
    /// A subscriber starts following the index.
    pub fn join(&self) {
        self.followers
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// A subscriber stops; the last one to leave frees the ring (up to
    /// [`RING_BYTES`]): an index nobody follows holds no copy of its log.
    pub fn leave(&self) {
        if self
            .followers
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            *self.ring() = Ring::default();
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The batches after `since` (at most `limit` changes, at least one batch
    /// if any), from the ring when `since` is inside it, else read by
    /// `read(since, hint)`: once for everyone at or past the ring's end (the
    /// ring is extended from its end, so it never has a hole), on its own for
    /// a subscriber behind the ring. An empty
    /// answer means nothing is logged after `since` yet.
    pub async fn after<F, Fut, E>(
        &self,
        since: Position,
        limit: usize,
        own_hint: Option<ChangesCursor>,
        read: F,
    ) -> Result<(Vec<Arc<FeedBatch>>, Option<ChangesCursor>), E>
    where
        F: Fn(Position, Option<ChangesCursor>) -> Fut,
        Fut: Future<Output = Result<ChangesPage, E>>,
    {
        if let Some(batches) = self.ring().after(since.0, limit)
            && !batches.is_empty()
        {
            return Ok((batches, None));
        }
        let at_end = {
            let ring = self.ring();
            ring.end().is_none_or(|end| since.0 >= end)
        };
        if at_end {
            let one_reader = self.extending.lock().await;
            match self.extend(since, limit, own_hint, &read).await {
                Ok(Some(batches)) => return Ok((batches, None)),
                // Trimmed past `since` meanwhile, or still short of it.
                Ok(None) => {}
                // The ring's end cannot be read any more (retention, a
                // failing disk): it starts over at the next caller's cursor,
                // and this caller gets its own answer.
                Err(_) => *self.ring() = Ring::default(),
            }
            drop(one_reader);
        }
        // Behind the ring: an old cursor reads the WAL on its own.
        metrics::counter!("fpnode_change_feed_log_reads_total", "reader" => "own").increment(1);
        let page = read(since, own_hint).await?;
        Ok((FeedBatch::shared(page.batches), page.cursor))
    }

    /// Extends the ring from its end (or starts it at `since`) until it holds
    /// what follows `since`. Never from a cursor past the end (a subscriber
    /// that read on its own from behind may be there): that would leave a
    /// hole. `None` if the ring cannot serve `since`.
    async fn extend<F, Fut, E>(
        &self,
        since: Position,
        limit: usize,
        own_hint: Option<ChangesCursor>,
        read: &F,
    ) -> Result<Option<Vec<Arc<FeedBatch>>>, E>
    where
        F: Fn(Position, Option<ChangesCursor>) -> Fut,
        Fut: Future<Output = Result<ChangesPage, E>>,
    {
        for _ in 0..MAX_EXTENSIONS {
            let (from, hint) = {
                let ring = self.ring();
                // Whoever held the lock may have read these batches already.
                if let Some(batches) = ring.after(since.0, limit)
                    && !batches.is_empty()
                {
                    return Ok(Some(batches));
                }
                if ring.start.is_some_and(|start| since.0 < start) {
                    return Ok(None);
                }
                match ring.end() {
                    Some(end) if end == since.0 => (end, ring.hint.or(own_hint)),
                    Some(end) => (end, ring.hint),
                    None => (since.0, own_hint),
                }
            };
            metrics::counter!("fpnode_change_feed_log_reads_total", "reader" => "shared")
                .increment(1);
            let page = read(Position(from), hint).await?;
            let batches = FeedBatch::shared(page.batches);
            if batches.is_empty() {
                // Nothing logged after `since` yet.
                return Ok(Some(Vec::new()));
            }
            let mut ring = self.ring();
            if ring.end().is_none() {
                // A new ring starts where its first successful read did.
                ring.start = Some(from);
            }
            if ring.end() == Some(from) {
                ring.append(&batches, page.cursor);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fpnode_segments::Error as EngineError;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The log: batch n (n >= 1) holds one insert of id n with `hashes` hashes.
    fn log_page(since: u64, upto: u64, hashes: usize) -> ChangesPage {
        ChangesPage {
            batches: (since + 1..=upto)
                .map(|n| {
                    Batch::new(
                        Position(n),
                        vec![Change::Insert {
                            id: n as u32,
                            hashes: vec![1; hashes],
                        }],
                    )
                })
                .collect(),
            more: false,
            cursor: None,
        }
    }

    #[tokio::test]
    async fn the_last_subscriber_to_leave_frees_the_ring() {
        let ring = FeedRing::default();
        ring.join();
        ring.join();
        ring.after(Position(0), 100, None, |since, _| async move {
            Ok::<_, EngineError>(log_page(since.0, 5, 10))
        })
        .await
        .unwrap();
        assert!(ring.ring().bytes > 0);
        ring.leave();
        assert!(ring.ring().bytes > 0, "one subscriber is left");
        ring.leave();
        let r = ring.ring();
        assert_eq!((r.bytes, r.batches.len(), r.start), (0, 0, None));
    }

    fn positions(batches: &[Arc<FeedBatch>]) -> Vec<u64> {
        batches.iter().map(|b| b.batch.position.0).collect()
    }

    #[tokio::test]
    async fn subscribers_at_the_head_read_the_log_once() {
        let ring = Arc::new(FeedRing::default());
        let reads = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (ring, reads) = (ring.clone(), reads.clone());
                tokio::spawn(async move {
                    ring.after(Position(0), 100, None, |since, _| {
                        reads.fetch_add(1, Ordering::SeqCst);
                        async move {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            Ok::<_, EngineError>(log_page(since.0, 5, 1))
                        }
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            let (batches, _) = t.await.unwrap().unwrap();
            assert_eq!(positions(&batches), vec![1, 2, 3, 4, 5]);
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Inside the ring: from memory, limited by changes.
        let (batches, _) = ring
            .after(Position(2), 2, None, |_, _| async {
                Err::<ChangesPage, _>(EngineError::Poisoned("must not read".into()))
            })
            .await
            .unwrap();
        assert_eq!(positions(&batches), vec![3, 4]);
        // Encoded once per form, shared.
        let encodes = AtomicUsize::new(0);
        for _ in 0..3 {
            let text = batches[0].encoded(1, |b| {
                encodes.fetch_add(1, Ordering::SeqCst);
                b.position.0.to_string()
            });
            assert_eq!(text, "3");
        }
        assert_eq!(encodes.load(Ordering::SeqCst), 1);
        // At the end: the next read extends the ring.
        let (batches, _) = ring
            .after(Position(5), 100, None, |since, _| async move {
                Ok::<_, EngineError>(log_page(since.0, 7, 1))
            })
            .await
            .unwrap();
        assert_eq!(positions(&batches), vec![6, 7]);
        assert_eq!(ring.ring().end(), Some(7));
    }

    #[tokio::test]
    async fn a_cursor_past_the_end_extends_the_ring_from_its_end() {
        let ring = FeedRing::default();
        ring.after(Position(0), 100, None, |since, _| async move {
            Ok::<_, EngineError>(log_page(since.0, 3, 1))
        })
        .await
        .unwrap();
        // A subscriber that read on its own up to 6 asks for what follows 6
        // while the log is at 8: the ring reads from 3, so 4-6 are in it too.
        let froms = Mutex::new(Vec::new());
        let (batches, _) = ring
            .after(Position(6), 100, None, |since, _| {
                froms.lock().unwrap().push(since.0);
                async move { Ok::<_, EngineError>(log_page(since.0, 8, 1)) }
            })
            .await
            .unwrap();
        assert_eq!(positions(&batches), vec![7, 8]);
        assert_eq!(*froms.lock().unwrap(), vec![3]);
        let (batches, _) = ring
            .after(Position(3), 100, None, |_, _| async {
                Err::<ChangesPage, _>(EngineError::Poisoned("must not read".into()))
            })
            .await
            .unwrap();
        assert_eq!(positions(&batches), vec![4, 5, 6, 7, 8]);
    }

    #[tokio::test]
    async fn a_cursor_behind_the_bounded_ring_reads_on_its_own() {
        let ring = FeedRing::default();
        // Batches counted ~1.2 MB each: the ring keeps about 13 of 100.
        let hashes = 100_000;
        ring.after(Position(0), usize::MAX, None, |since, _| async move {
            Ok::<_, EngineError>(log_page(since.0, 100, hashes))
        })
        .await
        .unwrap();
        let (start, bytes) = {
            let r = ring.ring();
            (r.start.unwrap(), r.bytes)
        };
        assert!(start > 50 && start < 100, "start {start}");
        assert!(bytes <= RING_BYTES);
        let reads = AtomicUsize::new(0);
        let (batches, _) = ring
            .after(Position(10), 1, None, |since, _| {
                reads.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, EngineError>(log_page(since.0, 11, 1)) }
            })
            .await
            .unwrap();
        assert_eq!(positions(&batches), vec![11]);
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // The ring did not take that read: it still starts where it did.
        assert_eq!(ring.ring().start, Some(start));
        // A shared read that fails (the ring's end no longer retained)
        // empties the ring; the caller gets its own read's answer, and the
        // next caller starts a new ring at its cursor.
        let froms = Mutex::new(Vec::new());
        let failed = ring
            .after(Position(100), 10, None, |since, _| {
                froms.lock().unwrap().push(since.0);
                async { Err::<ChangesPage, _>(EngineError::Poisoned("gone".into())) }
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(*froms.lock().unwrap(), vec![100, 100], "shared, then own");
        assert_eq!(ring.ring().end(), None);
        let (batches, _) = ring
            .after(Position(150), 10, None, |since, _| async move {
                Ok::<_, EngineError>(log_page(since.0, 152, 1))
            })
            .await
            .unwrap();
        assert_eq!(positions(&batches), vec![151, 152]);
        assert_eq!(ring.ring().start, Some(150));
    }
}
