//! A replica's feeds before its own log: when a `since` is older than what
//! the replica logged (its bootstrap replayed the stream without its WAL, or
//! the WAL's retention dropped it), the changes up to the log's start are
//! read back from the stream (`fpnode_actors::feed_stream`), compacted per
//! fingerprint (docs/api.md, "Change feeds on replicas"), and the feed goes
//! on from the log. Standalone nodes have no stream: there such a `since` is
//! `ChangesNotRetained`.

use fpnode_actors::feed_stream::{StreamFeed, StreamFeedError};
use fpnode_segments::{Batch, Position};

use super::*;

/// One reader's way back through the stream.
pub(super) struct Backfill {
    feed: StreamFeed,
    /// The generation's create record, once asked.
    start: Option<u64>,
}

/// Why a feed cannot go on from the stream: the error it ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BackfillEnd {
    /// `since` belongs to an older generation of the index: resync from
    /// the oldest version given.
    NotRetained { oldest: u64 },
    /// The generation ended in the stream (the index was deleted).
    IndexDeleted,
    /// NATS or the stream did not answer: retry from the last version.
    StreamUnavailable,
}

impl BackfillEnd {
    pub(super) fn name(self) -> &'static str {
        match self {
            BackfillEnd::NotRetained { .. } => "ChangesNotRetained",
            BackfillEnd::IndexDeleted => "IndexDeleted",
            BackfillEnd::StreamUnavailable => "StreamUnavailable",
        }
    }

    pub(super) fn oldest(self) -> Option<u64> {
        match self {
            BackfillEnd::NotRetained { oldest } => Some(oldest),
            _ => None,
        }
    }
}

impl Backfill {
    /// A replica's index can read its stream; other nodes' cannot.
    pub(super) fn of(state: &AppState, h: &IndexHandle) -> Option<Backfill> {
        let replication = state.replication.as_ref()?;
        h.replica.as_ref()?;
        Some(Backfill {
            feed: StreamFeed::new(
                replication.js.clone(),
                replication.settings().clone(),
                h.name.clone(),
                h.generation.0,
            ),
            start: None,
        })
    }

    async fn start(&mut self) -> Result<u64, BackfillEnd> {
        if let Some(start) = self.start {
            return Ok(start);
        }
        let start = self.feed.generation_start().await.map_err(end)?;
        self.start = Some(start);
        Ok(start)
    }

    /// Whether a reader at `since` can be served: `since` is 0 or in the
    /// index's generation.
    /// Gives the generation's start.
    pub(super) async fn check(&mut self, since: Position) -> Result<u64, BackfillEnd> {
        let start = self.start().await?;
        if since.0 != 0 && since.0 < start {
            return Err(BackfillEnd::NotRetained { oldest: start });
        }
        Ok(start)
    }

    /// The next changes for a reader at `cursor` whose log starts after
    /// `oldest`: read from the stream (at most `limit`), with `cursor` moved
    /// past them; `None` with `cursor` moved on when the stream holds
    /// nothing more before the log.
    pub(super) async fn next(
        &mut self,
        cursor: &mut Position,
        oldest: u64,
        limit: usize,
    ) -> Result<Option<Batch>, BackfillEnd> {
        let after = cursor.0.max(self.check(*cursor).await?);
        let page = self.feed.page(after, oldest, limit).await.map_err(end)?;
        *cursor = Position(page.cursor.max(after));
        Ok(page.batch)
    }
}

fn end(e: StreamFeedError) -> BackfillEnd {
    match e {
        StreamFeedError::GenerationEnded => BackfillEnd::IndexDeleted,
        StreamFeedError::Unavailable(why) => {
            tracing::warn!(%why, "a change feed could not read the stream");
            BackfillEnd::StreamUnavailable
        }
    }
}
