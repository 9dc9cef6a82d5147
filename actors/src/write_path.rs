//! The messages of the write pipeline (docs/architecture.md, write path):
//!
//! ```text
//! HTTP / StreamSubscriber --Write/Apply--> Batcher --Log(Group)--> WalWriter
//!     --Publish(Logged)--> IndexWriter --reply--> client
//! ```
//!
//! Bounds: a client write holds one of the index's write permits until it
//! is answered (so the Batcher's mailbox holds at most that many writes); the
//! StreamSubscriber has at most two batches in flight; a group holds one of
//! the Batcher's group credits from its cut until it is answered, so at most
//! that many groups are between the Batcher and the answer, one being
//! prepared, one being logged, one being published.

use std::time::Instant;

use fpnode_segments::{Fence, Position, Prepared};
use ractor::RpcReplyPort;
use tokio::sync::OwnedSemaphorePermit;

use crate::handle::WriteError;

/// Where a write's outcome goes: its version, or why it was not applied.
pub type WriteReply = RpcReplyPort<Result<Position, WriteError>>;

/// A group cut by the Batcher: its batches prepared (checked, numbered,
/// built), on its way to the WAL.
pub struct Group {
    pub prepared: Prepared,
    /// The pipeline's fence: a group of a replaced pipeline is not logged.
    pub fence: Fence,
    pub answers: Answers,
}

/// What travels past the WAL: who to answer, and the group's credit.
pub struct Answers {
    /// Each client's reply with the position of its batch.
    pub replies: Vec<(Position, WriteReply)>,
    /// Held until the group is answered: bounds the groups in flight.
    pub credit: OwnedSemaphorePermit,
    /// When the group was cut, for the flush-time histogram.
    pub cut_at: Instant,
}

impl Answers {
    /// Answers every client of the group with `error`.
    pub fn fail(self, error: WriteError) {
        for (_, reply) in self.replies {
            let _ = reply.send(Err(error.clone()));
        }
    }
}
