//! IndexRegistry: creates, deletes, opens and looks up indexes.
//!
//! The data directory's layout and its durable steps (create, delete, the
//! lineage of generations) are the engine's `Catalog`: `indexes/<name>/<generation>/`
//! holds one engine index; `lineage.json` records the last generation minted
//! for every name ever created, so a delete followed by a create always gets
//! a newer generation. On start the newest generation of every name is opened
//! (engine recovery runs) and gets an IndexSupervisor; older or unfinished
//! generation directories are removed.
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

use crate::lifecycle::{LifecycleWatcher, WatcherArgs, WatcherMsg};
use crate::replication::Replication;
use crate::restart::RestartTracker;
use crate::stream::IndexRecord;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use fpnode_segments::catalog::{Catalog, Lineage};
use fpnode_segments::index::IndexOptions;
use fpnode_segments::{Index, Position};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::handle::IndexHandle;
use crate::index_supervisor::{
    Child, IndexSupArgs, IndexSupMsg, IndexSupervisor, SupervisionOptions,
};

pub use fpnode_segments::catalog::{index_path, valid_index_name};

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
}

pub enum RegistryMsg {
    /// Restart the IndexSupervisor of an index after it failed.
    RestartIndex(String),
    Get(String, RpcReplyPort<Option<Arc<IndexHandle>>>),
    List(RpcReplyPort<Vec<Arc<IndexHandle>>>),
    Create(
        String,
        CreateIndex,
        RpcReplyPort<Result<CreateOutcome, RegistryError>>,
    ),
    Delete(String, bool, RpcReplyPort<Result<bool, RegistryError>>),
    /// Test hook: make a child of an index fail.
    InjectFailure(String, Child),
    /// Replica mode: the latest lifecycle record of an index, and its sequence.
    Record(String, IndexRecord, u64),
    /// Replica mode: every index the stream has a record of was handed over.
    Reconciled(BTreeSet<String>),
    /// Replica mode: start the LifecycleWatcher again after it failed.
    RestartWatcher,
}

pub struct IndexRegistry;

/// Indexes open in this process. Outlives a registry restart, so the next
/// registry adopts them instead of reopening them from disk (the old engine
/// objects may still be in use and hold the index lock).
pub type OpenIndexes = Arc<std::sync::Mutex<HashMap<String, Arc<IndexHandle>>>>;

#[derive(Clone)]
pub struct RegistryArgs {
    pub dir: PathBuf,
    pub index: IndexOptions,
    pub supervision: SupervisionOptions,
    pub max_writes_in_flight: usize,
    pub open: OpenIndexes,
    /// Replica mode: the stream the indexes follow.
    pub replication: Option<Arc<Replication>>,
}

pub struct RegistryState {
    args: RegistryArgs,
    catalog: Catalog,
    indexes: HashMap<String, (Arc<IndexHandle>, ActorRef<IndexSupMsg>)>,
    restarts: HashMap<String, RestartTracker>,
    lineage: Lineage,
    watcher: Option<ActorRef<WatcherMsg>>,
    watcher_restarts: RestartTracker,
}

fn open_map(open: &OpenIndexes) -> std::sync::MutexGuard<'_, HashMap<String, Arc<IndexHandle>>> {
    open.lock().unwrap_or_else(|e| e.into_inner())
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
            lineage,
            watcher: None,
        };
        // Indexes a previous incarnation of the registry had open: adopt them.
        let adopted: Vec<Arc<IndexHandle>> = open_map(&state.args.open).values().cloned().collect();
        for handle in adopted {
            state.supervise(&myself, handle).await?;
        }
        for name in catalog.names()? {
            if state.indexes.contains_key(&name) {
                continue;
            }
            let Some((_, path)) = catalog.current_generation(&name)? else {
                continue;
            };
            let opts = state.args.index.clone();
            let index = tokio::task::spawn_blocking(move || Index::open(&path, opts)).await??;
            state.start(&myself, name, index, false).await?;
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
            RegistryMsg::RestartIndex(name) => {
                let handle = open_map(&state.args.open).get(&name).cloned();
                if let Some(handle) = handle
                    && !handle.is_deleted()
                {
                    state.supervise(&myself, handle).await?;
                }
            }
            RegistryMsg::Get(name, reply) => {
                let _ = reply.send(state.indexes.get(&name).map(|(h, _)| h.clone()));
            }
            RegistryMsg::List(reply) => {
                let _ = reply.send(state.indexes.values().map(|(h, _)| h.clone()).collect());
            }
            RegistryMsg::Create(name, req, reply) => {
                let _ = reply.send(state.create(&myself, name, req).await);
            }
            RegistryMsg::Delete(name, expect_exists, reply) => {
                let _ = reply.send(state.delete(name, expect_exists).await);
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
                state.apply_record(&myself, name, record, seq).await?;
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
                    myself.send_after(backoff, move || RegistryMsg::RestartIndex(name));
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
        open_map(&self.args.open).insert(name, handle.clone());
        self.supervise(myself, handle.clone()).await?;
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
        let last = self.lineage.entry(handle.name.clone()).or_insert(g);
        *last = (*last).max(g);
        self.indexes.insert(handle.name.clone(), (handle, sup));
        Ok(())
    }

    async fn create(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: String,
        req: CreateIndex,
    ) -> Result<CreateOutcome, RegistryError> {
        if !valid_index_name(&name) {
            return Err(RegistryError::InvalidIndexName);
        }
        if let Some((h, _)) = self.indexes.get(&name) {
            if req.expect_does_not_exist {
                return Err(RegistryError::IndexAlreadyExists);
            }
            if let Some(g) = req.generation {
                if g < h.generation.0 {
                    return Err(RegistryError::OlderIndexAlreadyExists);
                }
                if g > h.generation.0 {
                    return Err(RegistryError::NewerIndexAlreadyExists);
                }
            }
            return Ok(CreateOutcome {
                version: h.version().0,
                ready: true,
                generation: h.generation.0,
            });
        }
        let last = self.lineage.get(&name).copied().unwrap_or(0);
        let generation = match req.generation {
            Some(g) if g <= last => return Err(RegistryError::OlderIndexAlreadyExists),
            Some(g) => g,
            None => last + 1,
        };
        // The generation is durable in the lineage before its directory
        // exists: a name never gets one generation twice.
        self.lineage.insert(name.clone(), generation);
        self.catalog.store_lineage(&self.lineage).map_err(storage)?;
        let (catalog, opts, index_name) =
            (self.catalog.clone(), self.args.index.clone(), name.clone());
        let index = tokio::task::spawn_blocking(move || {
            catalog.create_index(&index_name, generation, Position(0), opts)
        })
        .await
        .map_err(storage)?
        .map_err(storage)?;
        self.start(myself, name, index, false)
            .await
            .map_err(storage)?;
        metrics::gauge!("fpnode_indexes").set(self.indexes.len() as f64);
        Ok(CreateOutcome {
            version: 0,
            ready: true,
            generation,
        })
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

    /// Makes the local index `name` match its latest lifecycle record.
    async fn apply_record(
        &mut self,
        myself: &ActorRef<RegistryMsg>,
        name: String,
        record: IndexRecord,
        seq: u64,
    ) -> Result<(), ActorProcessingErr> {
        if !valid_index_name(&name) {
            return Ok(());
        }
        let local = self.indexes.get(&name).map(|(h, _)| h.clone());
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
            return Ok(());
        }
        let current = local
            .as_ref()
            .is_some_and(|h| h.generation.0 == record.g && !record.d);
        if current {
            return Ok(());
        }
        if local.is_some() {
            tracing::info!(index = %name, generation = record.g, deleted = record.d, "generation ended in the stream: dropping the local index");
            self.delete(name.clone(), false).await?;
        }
        let last = self.lineage.entry(name.clone()).or_insert(record.g);
        *last = (*last).max(record.g);
        self.catalog.store_lineage(&self.lineage)?;
        if record.d {
            return Ok(());
        }
        let (catalog, opts, index_name, g) = (
            self.catalog.clone(),
            self.args.index.clone(),
            name.clone(),
            record.g,
        );
        let index = tokio::task::spawn_blocking(move || {
            catalog.create_index(&index_name, g, Position(seq), opts)
        })
        .await??;
        tracing::info!(index = %name, generation = record.g, start = seq, "following a new generation");
        self.start(myself, name, index, true).await?;
        metrics::gauge!("fpnode_indexes").set(self.indexes.len() as f64);
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

    async fn delete(&mut self, name: String, expect_exists: bool) -> Result<bool, RegistryError> {
        let Some((handle, sup)) = self.indexes.remove(&name) else {
            return if expect_exists {
                Err(RegistryError::IndexNotFound)
            } else {
                Ok(false)
            };
        };
        handle
            .deleted
            .store(true, std::sync::atomic::Ordering::Release);
        sup.stop(None);
        let (catalog, generation) = (self.catalog.clone(), handle.generation.0);
        drop(handle);
        // Acknowledged once the rename is durable; the files go afterwards.
        let trash = tokio::task::spawn_blocking(move || catalog.delete_index(&name, generation))
            .await
            .map_err(storage)?
            .map_err(storage)?;
        tokio::task::spawn_blocking(move || {
            if let Err(e) = Catalog::remove_deleted(&trash) {
                tracing::warn!(error = %e, "removing a deleted index failed (retried at the next start)");
            }
        });
        metrics::gauge!("fpnode_indexes").set(self.indexes.len() as f64);
        Ok(true)
    }
}
