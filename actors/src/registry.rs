//! IndexRegistry: creates, deletes, opens and looks up indexes.
//!
//! The data directory's layout and its durable steps (create, delete, the
//! lineage of generations) are the engine's `Catalog`: `indexes/<name>/<generation>/`
//! holds one engine index; `lineage.json` records the last generation minted
//! for every name ever created, so a delete followed by a create always gets
//! a newer generation. On start the newest generation of every name is opened
//! (engine recovery runs) and gets an IndexSupervisor; older or unfinished
//! generation directories are removed. An index that fails to open does not
//! stop the node: it is logged, counted (`fpnode_index_open_failures_total`)
//! and published as failed, and requests for it answer `503 IndexFailed`
//! until it is deleted or repaired and the node restarted.
//!
//! Off the hot path (docs/architecture.md): requests never ask the registry
//! where an index is. It publishes the open indexes (and those that failed
//! to open) in a lock-free map that the HTTP layer reads. Its mailbox does
//! only in-memory steps: the file-system steps of a create, a delete or a
//! lifecycle record (lineage fsync, directories, rename, removal) run on
//! blocking threads and report back with `Finished`; while they run, later
//! requests for the same name wait in a per-name queue, so steps on one name
//! never interleave, and other names are not held up.
//!
//! A delete renames `indexes/<name>` out of the way (durably: the delete is
//! acknowledged only once the rename is synced), then removes it; searches
//! still holding the old snapshot finish normally. Because every
//! generation has its own directory, a task of the deleted index that is still
//! running (a checkpoint, say) can never write into a newer index of the same
//! name: its paths no longer exist, so it fails harmlessly.
//!
//! Replica mode: indexes are created and dropped by the stream, not by
//! requests. A LifecycleWatcher (linked child) hands over every index's
//! lifecycle record; the registry makes local state match: a record of a
//! generation this node does not hold replaces the local index (dropped first,
//! so two generations never mix) with a new one starting at the record's
//! sequence, and a delete record drops it.

use crate::events::{EventKind, NodeEvents};
use crate::lifecycle::{LifecycleWatcher, WatcherArgs, WatcherMsg};
use crate::replication::Replication;
use crate::restart::RestartTracker;
use crate::stream::IndexRecord;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use fpnode_segments::catalog::{Catalog, Lineage};
use fpnode_segments::index::IndexOptions;
use fpnode_segments::{Index, Position};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::handle::IndexHandle;
use crate::index_supervisor::{
    Child, IndexSupArgs, IndexSupMsg, IndexSupervisor, SupervisionOptions,
};
pub use crate::messages::{CreateIndex, CreateOutcome, Finished, RegistryError, RegistryMsg};
use crate::messages::{CreateReply, DeleteReply, WriteError};

pub use fpnode_segments::catalog::{index_path, valid_index_name};

/// How long a resync waits for the old copy of an index to be released.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A request for a name whose file-system steps are running.
enum Deferred {
    Create(CreateIndex, CreateReply),
    Delete(bool, DeleteReply),
    Record(IndexRecord, u64),
}

pub struct IndexRegistry;

/// What the registry publishes for lookups.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Indexes open in this process (also while their supervisor restarts).
    pub open: HashMap<String, Arc<IndexHandle>>,
    /// Indexes whose files failed to open: generation and why.
    pub failed: HashMap<String, (u64, String)>,
    /// Names being created now (file-system steps running): a lookup waits
    /// for them rather than answer "not found" for an index about to exist.
    pub creating: std::collections::HashSet<String>,
}

/// The published indexes: read lock-free by every request, written only by
/// the registry. Outlives a registry restart, so the next registry adopts
/// the open indexes instead of reopening them from disk (the old engine
/// objects may still be in use and hold the index lock).
#[derive(Debug, Default)]
pub struct Indexes {
    current: ArcSwap<Published>,
    /// Woken at every change.
    changed: tokio::sync::Notify,
}

impl Indexes {
    pub fn load(&self) -> arc_swap::Guard<Arc<Published>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Published> {
        self.current.load_full()
    }

    /// The open index `name`; if it is being created, waits for it (at most
    /// `wait`). `Err` carries why it failed to open.
    pub async fn get(
        &self,
        name: &str,
        wait: std::time::Duration,
    ) -> Result<Option<Arc<IndexHandle>>, String> {
        // The common case, without a clock read or a waiter.
        if let Some(found) = lookup(&self.current.load(), name) {
            return found;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so a change in between is not missed.
            let changed = self.changed.notified();
            if let Some(found) = lookup(&self.current.load(), name) {
                return found;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(None);
            }
        }
    }
}

/// `name` in `published`: found (open, failed, or absent and not being
/// created), or `None` while it is being created.
fn lookup(published: &Published, name: &str) -> Option<Result<Option<Arc<IndexHandle>>, String>> {
    if let Some((_, why)) = published.failed.get(name) {
        return Some(Err(why.clone()));
    }
    if let Some(h) = published.open.get(name) {
        return Some(Ok(Some(h.clone())));
    }
    if published.creating.contains(name) {
        return None;
    }
    Some(Ok(None))
}

pub type OpenIndexes = Arc<Indexes>;

/// What outlives a registry incarnation besides the published map: the
/// file-system tasks it started keep running after it failed.
#[derive(Debug, Default)]
pub struct RegistryTasks {
    /// Held (read) by every running file-system task; a starting registry
    /// takes it (write) before it looks at the disk, so it never sees a
    /// create, delete or removal half done by its predecessor.
    in_flight: Arc<tokio::sync::RwLock<()>>,
    /// Held while `lineage.json` is written, so writes never go back.
    lineage_writes: Arc<Mutex<()>>,
}

/// Requests that may wait on one name; more are refused (`Busy`).
const MAX_DEFERRED: usize = 64;

/// Changes the published map (the registry is its only writer).
fn publish(open: &OpenIndexes, change: impl FnOnce(&mut Published)) {
    let mut next = Published::clone(&open.current.load());
    change(&mut next);
    metrics::gauge!("fpnode_indexes").set(next.open.len() as f64);
    metrics::gauge!("fpnode_indexes_failed").set(next.failed.len() as f64);
    open.current.store(Arc::new(next));
    open.changed.notify_waiters();
}

#[derive(Clone)]
pub struct RegistryArgs {
    pub dir: PathBuf,
    pub index: IndexOptions,
    pub supervision: SupervisionOptions,
    pub max_writes_in_flight: usize,
    pub open: OpenIndexes,
    /// Shared by every incarnation of the registry.
    pub tasks: Arc<RegistryTasks>,
    /// Replica mode: the stream the indexes follow.
    pub replication: Option<Arc<Replication>>,
    /// The node's event log: indexes created and deleted.
    pub events: Option<Arc<NodeEvents>>,
}

pub struct RegistryState {
    args: RegistryArgs,
    catalog: Catalog,
    indexes: HashMap<String, (Arc<IndexHandle>, ActorRef<IndexSupMsg>)>,
    restarts: HashMap<String, RestartTracker>,
    /// Last generation minted per name, as the tasks store it.
    lineage: Arc<Mutex<Lineage>>,
    /// Names whose file-system steps are running, with what waits for them.
    busy: HashMap<String, Vec<Deferred>>,
    watcher: Option<ActorRef<WatcherMsg>>,
    watcher_restarts: RestartTracker,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a file-system task of the registry works with, off its mailbox.
struct Disk {
    catalog: Catalog,
    opts: IndexOptions,
    lineage: Arc<Mutex<Lineage>>,
    writes: Arc<Mutex<()>>,
    events: Option<Arc<NodeEvents>>,
}

impl Disk {
    /// Records a node event (docs/api.md "Node events"), once the step it
    /// reports is durable.
    fn emit(&self, what: EventKind) {
        if let Some(events) = &self.events {
            events.emit(what);
        }
    }

    /// Writes the lineage as it is now (run on a blocking thread). Writes are
    /// serialised and each takes its snapshot under the write lock, so the
    /// last one written holds every generation reserved before it.
    fn store_lineage(&self) -> Result<(), String> {
        let _one = locked(&self.writes);
        let snapshot = locked(&self.lineage).clone();
        self.catalog
            .store_lineage(&snapshot)
            .map_err(|e| e.to_string())
    }
}

/// The end of a file-system task: what the registry finishes on its
/// mailbox, and a directory renamed away, to remove once the name is free.
struct Done {
    finished: Finished,
    trash: Option<PathBuf>,
}

fn storage<E: std::fmt::Display>(e: E) -> RegistryError {
    RegistryError::Storage(e.to_string())
}

impl Actor for IndexRegistry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = RegistryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Tasks a failed predecessor started finish first.
        let _quiet = args.tasks.in_flight.clone().write_owned().await;
        let catalog = {
            let (dir, fs) = (args.dir.clone(), args.index.fs.clone());
            tokio::task::spawn_blocking(move || Catalog::open(&dir, fs)).await??
        };
        let lineage = catalog.lineage()?;
        let mut state = RegistryState {
            watcher_restarts: RestartTracker::new(&args.supervision),
            catalog: catalog.clone(),
            args,
            indexes: HashMap::new(),
            restarts: HashMap::new(),
            lineage: Arc::new(Mutex::new(lineage)),
            busy: HashMap::new(),
            watcher: None,
        };
        // Indexes a previous incarnation of the registry had open: adopt them.
        // Creations a failed predecessor started are over (see `_quiet`).
        publish(&state.args.open, |p| p.creating.clear());
        let published = state.args.open.load_full();
        for handle in published.open.values() {
            state.supervise(&myself, handle.clone()).await?;
        }
        for name in catalog.names()? {
            if published.open.contains_key(&name) || published.failed.contains_key(&name) {
                continue;
            }
            let (generation, path) = match catalog.current_generation(&name) {
                Ok(Some(found)) => found,
                Ok(None) => continue,
                Err(e) => {
                    state.failed_to_open(name, 0, e.to_string());
                    continue;
                }
            };
            let opts = state.args.index.clone();
            // A panic opening one index fails that index, not the registry.
            let opened =
                tokio::task::spawn_blocking(move || crate::panic::run(|| Index::open(&path, opts)))
                    .await?;
            match opened {
                Ok(index) => {
                    state.start(&myself, name, index, false).await?;
                }
                Err(why) => state.failed_to_open(name, generation, why),
            }
        }
        state.start_watcher(&myself).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RegistryMsg::RestartIndex(name, generation) => {
                let handle = state.args.open.load().open.get(&name).cloned();
                if let Some(handle) = handle
                    && !handle.is_deleted()
                    && handle.generation.0 == generation
                    && !state.indexes.contains_key(&name)
                {
                    state.supervise(&myself, handle).await?;
                }
            }
            RegistryMsg::Create(name, req, reply) => state.create(&myself, name, req, reply),
            RegistryMsg::Delete(name, expect_exists, reply) => {
                state.delete(&myself, name, expect_exists, reply)
            }
            RegistryMsg::Finished(name, finished) => {
                state.finished(&myself, &name, finished).await?;
                state.resume(&myself, name)?;
            }
            RegistryMsg::InjectFailure(_, Child::Registry) => {
                return Err("injected failure".into());
            }
            RegistryMsg::InjectFailure(name, child) => {
                if let Some((_, sup)) = state.indexes.get(&name) {
                    sup.cast(IndexSupMsg::InjectFailure(child))?;
                }
            }
            RegistryMsg::Record(name, record, seq) => {
                state.apply_record(&myself, name, record, seq);
            }
            RegistryMsg::Resync(name, record, seq, reply) => {
                let _ = reply.send(state.resync(&myself, name, record, seq));
            }
            RegistryMsg::Reconciled(names) => state.reconciled(&names),
            RegistryMsg::RestartWatcher => state.start_watcher(&myself).await?,
        }
        Ok(())
    }

    /// An index supervisor stops when its index is deleted (expected). If one
    /// fails, it is restarted with backoff (its writer and merger died with it;
    /// the engine's state is durable); repeated failure marks the index
    /// unhealthy. The other indexes keep running either way.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = event {
            if state
                .watcher
                .as_ref()
                .is_some_and(|w| w.get_id() == cell.get_id())
            {
                tracing::error!(error = %err, "lifecycle watcher failed");
                metrics::counter!("fpnode_actor_restarts_total", "actor" => "lifecycle_watcher")
                    .increment(1);
                state.watcher = None;
                // It holds no state of its own: keep restarting it, slower and slower.
                let backoff = state
                    .watcher_restarts
                    .failed()
                    .unwrap_or(state.args.supervision.max_backoff);
                myself.send_after(backoff, || RegistryMsg::RestartWatcher);
                return Ok(());
            }
            let Some(name) = state
                .indexes
                .iter()
                .find(|(_, (_, sup))| sup.get_id() == cell.get_id())
                .map(|(name, _)| name.clone())
            else {
                return Ok(());
            };
            let Some((handle, _)) = state.indexes.remove(&name) else {
                return Ok(());
            };
            tracing::error!(index = %name, error = %err, "index supervisor failed");
            metrics::counter!("fpnode_actor_restarts_total", "actor" => "index_supervisor")
                .increment(1);
            *handle.batcher.write().unwrap_or_else(|e| e.into_inner()) = None;
            let opts = state.args.supervision.clone();
            let tracker = state
                .restarts
                .entry(name.clone())
                .or_insert_with(|| RestartTracker::new(&opts));
            match tracker.failed() {
                Some(backoff) => {
                    let g = handle.generation.0;
                    myself.send_after(backoff, move || RegistryMsg::RestartIndex(name, g));
                }
                None => handle.mark_unhealthy(Child::Supervisor.name()),
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for (_, (handle, sup)) in state.indexes.drain() {
            sup.stop(None);
            drop(handle);
        }
        Ok(())
    }
}

impl RegistryState {
    /// One bad index must not keep the others from serving: it is published
    /// as failed and answers `503 IndexFailed` until repaired.
    fn failed_to_open(&self, name: String, generation: u64, why: String) {
        tracing::error!(index = %name, generation, error = %why, "index failed to open; it answers 503 IndexFailed until repaired (fpnode inspect --verify names the damaged file)");
        metrics::counter!("fpnode_index_open_failures_total").increment(1);
        publish(&self.args.open, |p| {
            p.failed.insert(name, (generation, why));
        });
    }

    async fn start(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: String,
        index: Index,
        loading: bool,
    ) -> Result<Arc<IndexHandle>, ActorProcessingErr> {
        let (index, permits) = (Arc::new(index), self.args.max_writes_in_flight);
        let handle = Arc::new(match self.args.replication {
            Some(_) => IndexHandle::new_replica(name.clone(), index, permits, loading),
            None => IndexHandle::new(name.clone(), index, permits),
        });
        // Published only once its actors run: a request that finds it can
        // write to it.
        self.supervise(myself, handle.clone()).await?;
        publish(&self.args.open, |p| {
            p.open.insert(name, handle.clone());
        });
        Ok(handle)
    }

    /// Spawns the IndexSupervisor of an open index.
    async fn supervise(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        handle: Arc<IndexHandle>,
    ) -> Result<(), ActorProcessingErr> {
        let args = IndexSupArgs {
            handle: handle.clone(),
            opts: self.args.supervision.clone(),
            replication: self.args.replication.clone(),
        };
        let (sup, _) = Actor::spawn_linked(None, IndexSupervisor, args, myself.get_cell()).await?;
        let g = handle.generation.0;
        let mut lineage = locked(&self.lineage);
        let last = lineage.entry(handle.name.clone()).or_insert(g);
        *last = (*last).max(g);
        drop(lineage);
        self.indexes.insert(handle.name.clone(), (handle, sup));
        Ok(())
    }

    async fn start_watcher(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(replication) = self.args.replication.clone() else {
            return Ok(());
        };
        let args = WatcherArgs {
            replication,
            registry: myself.clone(),
        };
        let (w, _) = Actor::spawn_linked(None, LifecycleWatcher, args, myself.get_cell()).await?;
        self.watcher = Some(w);
        Ok(())
    }

    /// Local indexes the stream has no record of: the stream lost them (or is
    /// not the stream this node followed). They stop following; reads go on.
    fn reconciled(&mut self, names: &BTreeSet<String>) {
        for (name, (handle, _)) in &self.indexes {
            if !names.contains(name)
                && let Some(replica) = &handle.replica
            {
                replica.diverge(
                    name,
                    format!(
                        "the stream has no record of index {name} (generation {}): the stream lost data or is not the one this node followed",
                        handle.generation
                    ),
                );
            }
        }
    }

    /// Queues `op` if `name` has file-system steps running (`Ok`), else
    /// hands it back. A newer lifecycle record replaces a queued one; past
    /// `MAX_DEFERRED` waiting requests a create or delete is refused `Busy`.
    fn defer(&mut self, name: &str, op: Deferred) -> Result<(), Deferred> {
        let Some(queue) = self.busy.get_mut(name) else {
            return Err(op);
        };
        match op {
            Deferred::Record(..) => {
                queue.retain(|q| !matches!(q, Deferred::Record(..)));
                queue.push(op);
            }
            Deferred::Create(_, reply) if queue.len() >= MAX_DEFERRED => {
                let _ = reply.send(Err(RegistryError::Busy));
            }
            Deferred::Delete(_, reply) if queue.len() >= MAX_DEFERRED => {
                let _ = reply.send(Err(RegistryError::Busy));
            }
            op => queue.push(op),
        }
        Ok(())
    }

    /// A token for a file-system task: held until the task is done.
    fn task_token(&self) -> Option<tokio::sync::OwnedRwLockReadGuard<()>> {
        self.args.tasks.in_flight.clone().try_read_owned().ok()
    }

    /// Runs what waited for `name`'s steps, in order, until one of them
    /// starts steps of its own (the rest wait again).
    fn resume(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: String,
    ) -> Result<(), ActorProcessingErr> {
        let Some(waiting) = self.busy.remove(&name) else {
            return Ok(());
        };
        for op in waiting {
            if let Some(queue) = self.busy.get_mut(&name) {
                queue.push(op);
                continue;
            }
            match op {
                Deferred::Create(req, reply) => self.create(myself, name.clone(), req, reply),
                Deferred::Delete(expect, reply) => self.delete(myself, name.clone(), expect, reply),
                Deferred::Record(record, seq) => {
                    self.apply_record(myself, name.clone(), record, seq)
                }
            }
        }
        Ok(())
    }

    fn create(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: String,
        req: CreateIndex,
        reply: CreateReply,
    ) {
        let Err(Deferred::Create(req, reply)) = self.defer(&name, Deferred::Create(req, reply))
        else {
            return;
        };
        if !valid_index_name(&name) {
            let _ = reply.send(Err(RegistryError::InvalidIndexName));
            return;
        }
        let published = self.args.open.load();
        if let Some((_, why)) = published.failed.get(&name) {
            let _ = reply.send(Err(RegistryError::IndexFailed(why.clone())));
            return;
        }
        if let Some(h) = published.open.get(&name) {
            let answer = if req.expect_does_not_exist {
                Err(RegistryError::IndexAlreadyExists)
            } else {
                match req.generation {
                    Some(g) if g < h.generation.0 => Err(RegistryError::OlderIndexAlreadyExists),
                    Some(g) if g > h.generation.0 => Err(RegistryError::NewerIndexAlreadyExists),
                    _ => Ok(CreateOutcome {
                        version: h.version().0,
                        ready: true,
                        generation: h.generation.0,
                    }),
                }
            };
            let _ = reply.send(answer);
            return;
        }
        let generation = {
            let mut lineage = locked(&self.lineage);
            let last = lineage.get(&name).copied().unwrap_or(0);
            let generation = match req.generation {
                Some(g) if g <= last => {
                    let _ = reply.send(Err(RegistryError::OlderIndexAlreadyExists));
                    return;
                }
                Some(g) => g,
                None => last + 1,
            };
            lineage.insert(name.clone(), generation);
            generation
        };
        let Some(token) = self.task_token() else {
            let _ = reply.send(Err(RegistryError::Busy));
            return;
        };
        let index_name = name.clone();
        self.spawn_steps(myself, name, token, true, move |disk| {
            // The generation is durable in the lineage before its directory
            // exists: a name never gets one generation twice.
            let index = disk.store_lineage().and_then(|()| {
                disk.catalog
                    .create_index(&index_name, generation, Position(0), disk.opts.clone())
                    .map(Box::new)
                    .map_err(|e| e.to_string())
            });
            if index.is_ok() {
                disk.emit(EventKind::IndexCreated {
                    index: index_name.clone(),
                    generation,
                });
            }
            // If the registry is gone the reply port drops with the message:
            // the client is answered `Unavailable`, never a false success.
            Done {
                finished: Finished::Created {
                    generation,
                    index,
                    reply: Some(reply),
                    loading: false,
                },
                trash: None,
            }
        });
    }

    /// Takes `name` out of service: unpublished, marked deleted, its
    /// supervisor stopped. Returns its generation, if it was there.
    fn retire(&mut self, name: &str) -> Option<u64> {
        let published = self.args.open.load();
        let generation = match (published.open.get(name), published.failed.get(name)) {
            (Some(h), _) => {
                h.deleted.store(true, std::sync::atomic::Ordering::Release);
                h.unanswered.close(WriteError::IndexDeleted);
                h.published.notify_waiters();
                h.generation.0
            }
            (None, Some((g, _))) => *g,
            (None, None) => return None,
        };
        publish(&self.args.open, |p| {
            p.open.remove(name);
            p.failed.remove(name);
        });
        if let Some((_, sup)) = self.indexes.remove(name) {
            sup.stop(None);
        }
        self.restarts.remove(name);
        Some(generation)
    }

    fn delete(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: String,
        expect_exists: bool,
        reply: DeleteReply,
    ) {
        let Err(Deferred::Delete(expect_exists, reply)) =
            self.defer(&name, Deferred::Delete(expect_exists, reply))
        else {
            return;
        };
        let Some(token) = self.task_token() else {
            let _ = reply.send(Err(RegistryError::Busy));
            return;
        };
        let Some(generation) = self.retire(&name) else {
            let _ = reply.send(if expect_exists {
                Err(RegistryError::IndexNotFound)
            } else {
                Ok(false)
            });
            return;
        };
        let index_name = name.clone();
        self.spawn_steps(myself, name, token, false, move |disk| {
            // Acknowledged once the rename is durable; the files go afterwards.
            let trash = match disk.catalog.delete_index(&index_name, generation) {
                Ok(trash) => {
                    disk.emit(EventKind::IndexDeleted {
                        index: index_name.clone(),
                        generation,
                    });
                    let _ = reply.send(Ok(true));
                    Some(trash)
                }
                Err(e) => {
                    tracing::error!(index = %index_name, error = %e, "deleting an index failed");
                    let _ = reply.send(Err(storage(e)));
                    None
                }
            };
            Done {
                finished: Finished::Deleted,
                trash,
            }
        });
    }

    /// Makes the local index `name` match its latest lifecycle record
    /// (replica mode): drops a local generation the record ended, records the
    /// generation in the lineage and creates the new one, off the mailbox.
    fn apply_record(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: String,
        record: IndexRecord,
        seq: u64,
    ) {
        let Err(Deferred::Record(record, seq)) = self.defer(&name, Deferred::Record(record, seq))
        else {
            return;
        };
        if !valid_index_name(&name) {
            return;
        }
        let local = self.args.open.load().open.get(&name).cloned();
        if let Some(h) = &local
            && h.generation.0 > record.g
        {
            if let Some(replica) = &h.replica {
                replica.diverge(
                    &name,
                    format!(
                        "the stream's record names generation {}, older than this node's {}: the stream lost data",
                        record.g, h.generation
                    ),
                );
            }
            return;
        }
        if local
            .as_ref()
            .is_some_and(|h| h.generation.0 == record.g && !record.d)
        {
            return;
        }
        // A copy that failed to open is local too: it is dropped (its
        // failed entry with it) and, unless the record ends it, followed
        // again from the record: the stream repairs it. Never opened, it
        // has nothing running that could write into the new directory.
        let failed = self.args.open.load().failed.get(&name).map(|(g, _)| *g);
        if failed.is_some_and(|g| g > record.g) {
            tracing::error!(index = %name, generation = record.g, "the stream's record is older than the local copy (which failed to open): left as it is");
            return;
        }
        if let Some(g) = failed {
            tracing::warn!(index = %name, generation = g, "the local copy failed to open: following the index again from the stream");
        }
        // A new generation has its own directory: the old copy's late
        // writes cannot reach it, nothing to wait for.
        self.replace(
            myself,
            name,
            local.is_some() || failed.is_some(),
            None,
            record,
            seq,
        );
    }

    /// Replica mode, a `resync` job: drops the local copy of `name` and
    /// follows its generation again from its lifecycle record (a bootstrap
    /// from the stream, as a new replica does). Refused while steps for the
    /// name run (`Busy`), for a deleted record (`IndexNotFound`) and for a
    /// record older than the local generation (the stream lost data).
    fn resync(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: String,
        record: IndexRecord,
        seq: u64,
    ) -> Result<(), RegistryError> {
        if self.busy.contains_key(&name) {
            return Err(RegistryError::Busy);
        }
        if record.d || !valid_index_name(&name) {
            return Err(RegistryError::IndexNotFound);
        }
        let published = self.args.open.load();
        let (open, failed) = (published.open.get(&name), published.failed.get(&name));
        // Only a copy this node holds (open, or failed to open) is
        // resynced: an index deleted meanwhile is not brought back.
        let generation = match (open, failed) {
            (Some(h), _) => h.generation.0,
            (None, Some((g, _))) => *g,
            (None, None) => return Err(RegistryError::IndexNotFound),
        };
        if generation > record.g {
            return Err(RegistryError::NewerIndexAlreadyExists);
        }
        // The new copy may reuse the old one's directory (same
        // generation): it is created only once the old one is released.
        let old = open.map(|h| Arc::downgrade(&h.index));
        drop(published);
        tracing::info!(index = %name, generation = record.g, start = seq, "resync: dropping the local copy");
        self.replace(myself, name, true, old, record, seq);
        Ok(())
    }

    /// Drops the local index `name` (if `local`) and creates the record's
    /// generation starting at `seq`, off the mailbox.
    fn replace(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: String,
        local: bool,
        old: Option<std::sync::Weak<Index>>,
        record: IndexRecord,
        seq: u64,
    ) {
        let dropped = if local {
            tracing::info!(index = %name, generation = record.g, deleted = record.d, "generation ended in the stream: dropping the local index");
            self.retire(&name)
        } else {
            None
        };
        {
            let mut lineage = locked(&self.lineage);
            let last = lineage.entry(name.clone()).or_insert(record.g);
            *last = (*last).max(record.g);
        }
        // None only while a new registry is starting (this one is then
        // gone, and the watcher hands the records to the new one).
        let Some(token) = self.task_token() else {
            return;
        };
        let index_name = name.clone();
        self.spawn_steps(myself, name, token, !record.d, move |disk| {
            let trash = match dropped.map(|g| (g, disk.catalog.delete_index(&index_name, g))) {
                None => None,
                Some((generation, Ok(trash))) => {
                    disk.emit(EventKind::IndexDeleted {
                        index: index_name.clone(),
                        generation,
                    });
                    Some(trash)
                }
                Some((_, Err(e))) => {
                    return Done {
                        finished: Finished::Failed(e.to_string()),
                        trash: None,
                    };
                }
            };
            // Its directory is renamed away: what the old copy still writes
            // fails, until a new directory of the same path exists. So wait
            // until nothing holds the old copy (its actors stopped, its
            // feeds and requests ended) before creating it.
            if let Some(old) = &old {
                let deadline = std::time::Instant::now() + RELEASE_WAIT;
                while old.strong_count() > 0 {
                    if std::time::Instant::now() >= deadline {
                        return Done {
                            finished: Finished::Failed(format!(
                                "the old copy is still in use after {RELEASE_WAIT:?}"
                            )),
                            trash,
                        };
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            let created = disk.store_lineage().and_then(|()| {
                if record.d {
                    return Ok(None);
                }
                disk.catalog
                    .create_index(&index_name, record.g, Position(seq), disk.opts.clone())
                    .map(Some)
                    .map_err(|e| e.to_string())
            });
            let finished = match created {
                Ok(None) => Finished::Deleted,
                Ok(Some(index)) => {
                    tracing::info!(index = %index_name, generation = record.g, start = seq, "following a new generation");
                    disk.emit(EventKind::IndexCreated {
                        index: index_name.clone(),
                        generation: record.g,
                    });
                    Finished::Created {
                        generation: record.g,
                        index: Ok(Box::new(index)),
                        reply: None,
                        loading: true,
                    }
                }
                Err(e) => Finished::Failed(e),
            };
            Done { finished, trash }
        });
    }

    /// Runs `steps`, the file-system part of a create, delete or lifecycle
    /// record, on a blocking thread under `token`. `name` stays busy (and,
    /// if `creating`, published as being created) until the registry is
    /// handed the outcome as `Finished`; a directory the steps renamed away
    /// is then removed, still under the token, so a registry starting now
    /// waits for the removal instead of racing it.
    fn spawn_steps(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: String,
        token: tokio::sync::OwnedRwLockReadGuard<()>,
        creating: bool,
        steps: impl FnOnce(&Disk) -> Done + Send + 'static,
    ) {
        self.busy.insert(name.clone(), Vec::new());
        if creating {
            publish(&self.args.open, |p| {
                p.creating.insert(name.clone());
            });
        }
        let disk = Disk {
            catalog: self.catalog.clone(),
            opts: self.args.index.clone(),
            lineage: self.lineage.clone(),
            writes: self.args.tasks.lineage_writes.clone(),
            events: self.args.events.clone(),
        };
        let me = myself.clone();
        tokio::spawn(async move {
            let _token = token;
            let (finished, trash) = match tokio::task::spawn_blocking(move || steps(&disk)).await {
                Ok(Done { finished, trash }) => (finished, trash),
                Err(e) => (
                    Finished::Failed(format!("file-system task failed: {e}")),
                    None,
                ),
            };
            let _ = me.cast(RegistryMsg::Finished(name, finished));
            if let Some(trash) = trash {
                let removed = tokio::task::spawn_blocking(move || Catalog::remove_deleted(&trash))
                    .await
                    .map_err(storage)
                    .and_then(|r| r.map_err(storage));
                if let Err(e) = removed {
                    tracing::warn!(error = %e, "removing a deleted index failed (retried at the next start)");
                }
            }
        });
    }

    /// The mailbox's part once a name's file-system steps are done.
    async fn finished(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: &str,
        finished: Finished,
    ) -> Result<(), ActorProcessingErr> {
        let result = self.finish(myself, name, finished).await;
        // Published or not, it is no longer being created: lookups waiting
        // for it answer now.
        publish(&self.args.open, |p| {
            p.creating.remove(name);
        });
        result
    }

    async fn finish(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: &str,
        finished: Finished,
    ) -> Result<(), ActorProcessingErr> {
        match finished {
            Finished::Deleted => Ok(()),
            Finished::Failed(why) => Err(format!("index {name}: {why}").into()),
            Finished::Created {
                generation,
                index,
                reply,
                loading,
            } => match (index, reply) {
                (Ok(index), reply) => {
                    let handle = self
                        .start(myself, name.to_string(), *index, loading)
                        .await?;
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(CreateOutcome {
                            version: handle.version().0,
                            ready: true,
                            generation,
                        }));
                    }
                    Ok(())
                }
                (Err(e), Some(reply)) => {
                    tracing::error!(index = %name, error = %e, "creating an index failed");
                    let _ = reply.send(Err(RegistryError::Storage(e)));
                    Ok(())
                }
                (Err(e), None) => Err(format!("index {name}: {e}").into()),
            },
        }
    }
}
