//! The messages fpnode's actors exchange, and the vocabulary they share.
//!
//! Below every actor: an actor's module defines its behaviour and imports
//! the messages it receives and sends from here, so no two actors import
//! each other (docs/architecture.md has the tree and each message's bound).
//!
//! The write pipeline:
//!
//! ```text
//! HTTP / StreamSubscriber --Write/Apply--> Batcher --Log(Group)--> WalWriter
//!     --Publish--> IndexWriter --reply--> client
//! ```
//!
//! Once a group is logged, its clients' replies wait in the index's
//! [`Unanswered`] (not in a message) until a publish answers them, so a
//! stage that fails after the fsync leaves no durable write answered as
//! refused: the next pipeline publishes the group and answers it.
//!
//! Bounds: a client write holds one of the index's write permits until it
//! is answered (so the Batcher's mailbox holds at most that many writes); the
//! StreamSubscriber has at most two batches in flight; a group holds one of
//! the Batcher's group credits from its cut until it is answered, so at most
//! that many groups are between the Batcher and the answer, one being
//! prepared, one being logged, one being published.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fpnode_segments::{Batch, Change, Fence, Index, MetadataDelta, Position, Prepared};
use ractor::RpcReplyPort;
use tokio::sync::OwnedSemaphorePermit;

use crate::stream::IndexRecord;

// --- writes ---

/// One `_update` (or single-fingerprint write) as the writer receives it.
#[derive(Debug, Clone, Default)]
pub struct WriteRequest {
    pub changes: Vec<Change>,
    pub metadata: MetadataDelta,
    /// Apply only if the index's version is exactly this.
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("expected version {expected}, index is at {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("index is overloaded: {0}")]
    Overloaded(String),
    #[error("index is not available: {0}")]
    Unavailable(String),
    #[error("invalid write: {0}")]
    Invalid(String),
    #[error("index was deleted")]
    IndexDeleted,
    /// A numbered batch does not follow the index's position: applying it
    /// would skip whatever lies between (replica mode).
    #[error("batch follows position {got}, index is at {expected}")]
    Gap { expected: u64, got: u64 },
}

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

    /// The position of the group's last batch (None: nobody to answer).
    fn last(&self) -> Option<Position> {
        self.replies.last().map(|(p, _)| *p)
    }

    /// Tells every client its write is durable and visible.
    fn succeed(self) {
        metrics::histogram!("fpnode_write_flush_seconds")
            .record(self.cut_at.elapsed().as_secs_f64());
        metrics::counter!("fpindex_updates_total").increment(self.replies.len() as u64);
        for (position, reply) in self.replies {
            let _ = reply.send(Ok(position));
        }
    }
}

/// An index's logged groups whose clients are not answered yet, oldest
/// first. Owned by the index's handle, so it outlives any one pipeline:
/// whichever publishes a group answers it (the IndexWriter after its
/// publish, a new Batcher after publishing what a failed pipeline logged).
/// Bounded by the index's write permits: each waiting client holds one.
/// Closed for good when the index is deleted or given up on: nothing will
/// publish there any more, so waiting clients, and any group a stopping
/// pipeline still pushes, are answered with the closing error.
#[derive(Default)]
pub struct Unanswered(Mutex<Waiting>);

#[derive(Default)]
struct Waiting {
    groups: VecDeque<Answers>,
    closed: Option<WriteError>,
}

impl Unanswered {
    /// A group the WAL holds: answered once published.
    pub fn push(&self, answers: Answers) {
        let mut w = self.waiting();
        match &w.closed {
            Some(error) => {
                let error = error.clone();
                drop(w);
                answers.fail(error);
            }
            None => w.groups.push_back(answers),
        }
    }

    /// Answers every waiting group at or before `published` (the engine's
    /// published position). Returns how many groups were answered.
    pub fn answer_through(&self, published: Position) -> usize {
        let mut done = Vec::new();
        {
            let mut w = self.waiting();
            while w
                .groups
                .front()
                .is_some_and(|a| a.last().is_none_or(|last| last <= published))
            {
                done.extend(w.groups.pop_front());
            }
        }
        let n = done.len();
        for answers in done {
            answers.succeed();
        }
        n
    }

    /// Answers every waiting group with `error`, and every group pushed
    /// from now on (the index was deleted or given up on).
    pub fn close(&self, error: WriteError) {
        let all: Vec<Answers> = {
            let mut w = self.waiting();
            w.closed = Some(error.clone());
            w.groups.drain(..).collect()
        };
        for answers in all {
            answers.fail(error.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.waiting().groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Unanswered({} groups)", self.len())
    }
}

// --- the write pipeline's actors ---

pub enum BatcherMsg {
    /// A client write: the Batcher numbers it (standalone versions).
    Write(WriteRequest, WriteReply),
    /// A batch already numbered by the stream (replica mode: position = the
    /// stream sequence of its last message), following position `after`.
    /// Taken only if `after` is where the pipeline is (no gap); a batch at or
    /// before it is already taken and answered as such.
    Apply(Batch, Position, WriteReply),
    /// Cut a group of what is waiting.
    Cut,
    /// Test hook: fail the next group as an I/O error would.
    InjectFailure,
}

pub enum WalMsg {
    /// Log a prepared group, then pass it on to be published.
    Log(Box<Group>),
    /// Test hook: fail the next group as an I/O error would.
    InjectFailure,
}

pub enum WriterMsg {
    /// A group is logged: publish it and answer its clients.
    /// Publish what is logged and answer its groups (they wait in the
    /// index's [`Unanswered`]).
    Publish,
    /// Test hook: fail the next group.
    InjectFailure,
}

// --- maintenance ---

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Checkpoint,
    MemoryMerge,
    FileMerge,
}

impl Task {
    pub(crate) const ALL: [Task; 3] = [Task::Checkpoint, Task::MemoryMerge, Task::FileMerge];

    pub(crate) fn slot(self) -> usize {
        self as usize
    }

    pub(crate) fn metric(self) -> &'static str {
        match self {
            Task::Checkpoint => "checkpoint",
            Task::MemoryMerge => "memory_merge",
            Task::FileMerge => "file_merge",
        }
    }
}

pub enum MergerMsg {
    Tick,
    Done(Task, Result<bool, String>, Duration),
    /// Test hook: the next task fails.
    InjectFailure,
}

// --- supervision ---

#[derive(Debug, Clone)]
pub struct SupervisionOptions {
    pub max_restarts: usize,
    pub window: Duration,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub merger_tick: Duration,
    /// The Batcher cuts a group at once when it holds this many changes.
    pub max_group_changes: usize,
    /// Groups in flight between the Batcher's cut and the answer.
    pub group_credits: usize,
}

impl Default for SupervisionOptions {
    fn default() -> Self {
        SupervisionOptions {
            max_restarts: 5,
            window: Duration::from_secs(60),
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            merger_tick: Duration::from_millis(100),
            max_group_changes: 32_768,
            group_credits: 3,
        }
    }
}

/// The actors a fault can be injected into (tests only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    /// The write pipeline's last stage; restarting it restarts the pipeline.
    Writer,
    Batcher,
    WalWriter,
    Merger,
    /// Replica mode: the index's StreamSubscriber.
    Subscriber,
    /// The IndexSupervisor itself.
    Supervisor,
    /// The IndexRegistry.
    Registry,
    /// A search worker (node-wide; the index is ignored): the next search
    /// panics.
    SearchWorker,
}

impl Child {
    pub fn name(self) -> &'static str {
        match self {
            Child::Writer => "index_writer",
            Child::Batcher => "batcher",
            Child::WalWriter => "wal_writer",
            Child::Merger => "segment_merger",
            Child::Subscriber => "stream_subscriber",
            Child::Supervisor => "index_supervisor",
            Child::Registry => "index_registry",
            Child::SearchWorker => "search_worker",
        }
    }

    pub fn from_name(name: &str) -> Option<Child> {
        [
            Child::Writer,
            Child::Batcher,
            Child::WalWriter,
            Child::Merger,
            Child::Subscriber,
            Child::Supervisor,
            Child::Registry,
            Child::SearchWorker,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }
}

pub enum IndexSupMsg {
    Restart(Child),
    /// Test hook: make the child's next unit of work fail.
    InjectFailure(Child),
}

// --- replica mode ---

pub enum SubscriberMsg {
    /// Fetch the next batch. Carries the epoch it was sent in: a reset starts a
    /// new epoch, and polls of an older one are ignored (one poll chain only).
    Poll(u64),
    /// A batch handed to the writer failed: resynchronise from the index.
    Failed(String),
    /// Test hook: fail as a crash would.
    InjectFailure,
}

pub enum WatcherMsg {
    Poll(u64),
}

// --- the registry ---

/// `PUT /:index` options.
#[derive(Debug, Clone, Default)]
pub struct CreateIndex {
    pub expect_does_not_exist: bool,
    pub generation: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOutcome {
    pub version: u64,
    pub ready: bool,
    pub generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("IndexAlreadyExists")]
    IndexAlreadyExists,
    #[error("OlderIndexAlreadyExists")]
    OlderIndexAlreadyExists,
    #[error("NewerIndexAlreadyExists")]
    NewerIndexAlreadyExists,
    #[error("IndexNotFound")]
    IndexNotFound,
    #[error("InvalidIndexName")]
    InvalidIndexName,
    #[error("storage error: {0}")]
    Storage(String),
    /// The index's files did not open at start; it serves nothing until it
    /// is deleted, or repaired and the node restarted.
    #[error("index failed to open: {0}")]
    IndexFailed(String),
    /// Too many requests wait on this index's create or delete.
    #[error("too many requests wait on this index")]
    Busy,
}

pub type CreateReply = RpcReplyPort<Result<CreateOutcome, RegistryError>>;
pub type DeleteReply = RpcReplyPort<Result<bool, RegistryError>>;

/// The file-system steps for a name finished, off the mailbox.
pub enum Finished {
    /// A new generation was created (or failed to be); `reply` is the
    /// client's (none for a lifecycle record).
    Created {
        generation: u64,
        index: Result<Box<Index>, String>,
        reply: Option<CreateReply>,
        loading: bool,
    },
    /// A delete or a record's drop is done (a client was answered by the
    /// task itself).
    Deleted,
    /// A lifecycle record could not be applied: the registry fails and is
    /// restarted, and the watcher hands the records over again.
    Failed(String),
}

pub enum RegistryMsg {
    /// Restart the IndexSupervisor of an index after it failed.
    /// Restart the IndexSupervisor of generation `.1` of an index after it
    /// failed (skipped if that generation is gone or supervised again).
    RestartIndex(String, u64),
    Create(String, CreateIndex, CreateReply),
    Delete(String, bool, DeleteReply),
    /// The file-system steps of a create, delete or record are done.
    Finished(String, Finished),
    /// Test hook: make a child of an index fail.
    InjectFailure(String, Child),
    /// Replica mode: the latest lifecycle record of an index, and its sequence.
    Record(String, IndexRecord, u64),
    /// Replica mode, a `resync` job: drop the local copy and bootstrap the
    /// index again from this record and its sequence; answered once the
    /// steps started.
    Resync(
        String,
        IndexRecord,
        u64,
        RpcReplyPort<Result<(), RegistryError>>,
    ),
    /// Replica mode: every index the stream has a record of was handed over.
    Reconciled(BTreeSet<String>),
    /// Replica mode: start the LifecycleWatcher again after it failed.
    RestartWatcher,
}

// --- searches ---

pub enum SearchSupMsg {
    /// A worker thread ended (`panicked`: by a search's panic).
    WorkerExited { panicked: bool },
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use fpnode_segments::Position;
    use tokio::sync::{Semaphore, oneshot};

    use super::{Answers, Unanswered, WriteError};

    type Rx = oneshot::Receiver<Result<Position, WriteError>>;

    fn group(positions: &[u64]) -> (Answers, Vec<Rx>) {
        let credit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let mut replies = Vec::new();
        let mut rxs = Vec::new();
        for &p in positions {
            let (tx, rx) = oneshot::channel();
            replies.push((Position(p), tx.into()));
            rxs.push(rx);
        }
        let answers = Answers {
            replies,
            credit,
            cut_at: Instant::now(),
        };
        (answers, rxs)
    }

    #[test]
    fn groups_are_answered_once_published_in_order() {
        let u = Unanswered::default();
        let (a, mut ra) = group(&[1, 2]);
        let (b, mut rb) = group(&[3]);
        u.push(a);
        u.push(b);
        assert_eq!(
            u.answer_through(Position(1)),
            0,
            "group 1-2 is not all published"
        );
        assert!(ra[0].try_recv().is_err());
        assert_eq!(u.answer_through(Position(2)), 1);
        assert_eq!(ra[0].try_recv().unwrap(), Ok(Position(1)));
        assert_eq!(ra[1].try_recv().unwrap(), Ok(Position(2)));
        assert!(rb[0].try_recv().is_err());
        assert_eq!(u.answer_through(Position(9)), 1);
        assert_eq!(rb[0].try_recv().unwrap(), Ok(Position(3)));
        assert!(u.is_empty());
    }

    /// A deleted index's stopping pipeline may still push a group after the
    /// delete: it is answered at once, never left waiting for a publish that
    /// will not come.
    #[test]
    fn a_closed_index_answers_waiting_and_late_groups() {
        let u = Unanswered::default();
        let (a, mut ra) = group(&[1]);
        u.push(a);
        u.close(WriteError::IndexDeleted);
        assert_eq!(ra[0].try_recv().unwrap(), Err(WriteError::IndexDeleted));
        let (late, mut rl) = group(&[2]);
        u.push(late);
        assert_eq!(rl[0].try_recv().unwrap(), Err(WriteError::IndexDeleted));
        assert!(u.is_empty());
    }
}
