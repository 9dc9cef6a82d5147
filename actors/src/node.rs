//! NodeSupervisor and the `Node` handle the HTTP layer holds.
//!
//! The NodeSupervisor spawns the SearchSupervisor and the IndexRegistry
//! linked, and restarts either (with a short backoff) if it fails; a new
//! registry adopts the indexes already open, a new search supervisor brings
//! the search workers back to the pool's size.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use fpnode_segments::index::IndexOptions;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::handle::IndexHandle;
use crate::messages::{Child, SupervisionOptions};
use crate::registry::{
    CreateIndex, CreateOutcome, IndexRegistry, OpenIndexes, RegistryArgs, RegistryError,
    RegistryMsg,
};
use crate::search_pool::{SearchPool, SearchWork};
use crate::search_supervisor::{SearchSupArgs, SearchSupMsg, SearchSupervisor, SupervisorSlot};

#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub dir: PathBuf,
    pub index: IndexOptions,
    pub supervision: SupervisionOptions,
    pub search_threads: usize,
    pub search_queue: usize,
    pub max_writes_in_flight: usize,
    /// Replica mode: the stream every index follows.
    pub replication: Option<Arc<crate::replication::Replication>>,
    /// The node's event log (indexes created and deleted).
    pub events: Option<Arc<crate::events::NodeEvents>>,
}

/// The current IndexRegistry, set by the NodeSupervisor whenever it starts
/// one (empty while it restarts): read lock-free, never polled.
type RegistrySlot = Arc<ArcSwapOption<ActorRef<RegistryMsg>>>;

/// The running node: where requests go. Lookups read the registry's
/// published map; only creates and deletes message the registry.
#[derive(Clone)]
pub struct Node {
    registry: RegistrySlot,
    open: OpenIndexes,
    supervisor: ActorRef<NodeMsg>,
    pub search: SearchPool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Node")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node is restarting its index registry")]
    Unavailable,
    /// The index's files failed to open at start.
    #[error("index {0} failed to open: {1}")]
    IndexFailed(String, String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

pub enum NodeMsg {
    RestartRegistry,
    RestartSearch,
}

struct NodeSupervisor;

struct NodeArgs {
    registry: RegistryArgs,
    slot: RegistrySlot,
    search: SearchWork,
}

struct NodeState {
    registry: RegistryArgs,
    slot: RegistrySlot,
    search: SearchWork,
    search_slot: SupervisorSlot,
}

impl NodeState {
    async fn spawn_search(&self, me: &ActorRef<NodeMsg>) -> Result<(), ActorProcessingErr> {
        let args = SearchSupArgs {
            work: self.search.clone(),
            slot: self.search_slot.clone(),
        };
        Actor::spawn_linked(None, SearchSupervisor, args, me.get_cell()).await?;
        Ok(())
    }

    fn is_search(&self, cell: &ractor::ActorCell) -> bool {
        let current: Option<ActorRef<SearchSupMsg>> = self
            .search_slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        current.is_some_and(|s| s.get_id() == cell.get_id())
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (r, _) = Actor::spawn_linked(
            None,
            IndexRegistry,
            args.registry.clone(),
            myself.get_cell(),
        )
        .await?;
        args.slot.store(Some(Arc::new(r)));
        let state = NodeState {
            registry: args.registry,
            slot: args.slot,
            search: args.search,
            search_slot: Arc::default(),
        };
        state.spawn_search(&myself).await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // A restart that fails is retried, never allowed to take the
            // NodeSupervisor (and with it every index) down.
            NodeMsg::RestartRegistry => {
                match Actor::spawn_linked(
                    None,
                    IndexRegistry,
                    state.registry.clone(),
                    myself.get_cell(),
                )
                .await
                {
                    Ok((r, _)) => state.slot.store(Some(Arc::new(r))),
                    Err(e) => {
                        tracing::error!(error = %e, "index registry did not restart; retrying");
                        metrics::counter!("fpnode_actor_restarts_total", "actor" => "index_registry")
                            .increment(1);
                        myself.send_after(Duration::from_secs(1), || NodeMsg::RestartRegistry);
                    }
                }
            }
            NodeMsg::RestartSearch => {
                if let Err(e) = state.spawn_search(&myself).await {
                    tracing::error!(error = %e, "search supervisor did not restart; retrying");
                    metrics::counter!("fpnode_actor_restarts_total", "actor" => "search_supervisor")
                        .increment(1);
                    myself.send_after(Duration::from_secs(1), || NodeMsg::RestartSearch);
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = event {
            if state.is_search(&cell) {
                tracing::error!(error = %err, "search supervisor failed; restarting it");
                metrics::counter!("fpnode_actor_restarts_total", "actor" => "search_supervisor")
                    .increment(1);
                *state.search_slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
                myself.send_after(Duration::from_millis(200), || NodeMsg::RestartSearch);
                return Ok(());
            }
            tracing::error!(error = %err, "index registry failed; restarting it");
            metrics::counter!("fpnode_actor_restarts_total", "actor" => "index_registry")
                .increment(1);
            state.slot.store(None);
            myself.send_after(Duration::from_millis(200), || NodeMsg::RestartRegistry);
        }
        Ok(())
    }
}

impl Node {
    /// Starts the supervision tree: opens every index under `opts.dir`.
    pub async fn start(opts: NodeOptions) -> Result<Node, ActorProcessingErr> {
        let (search, work) = SearchPool::new(opts.search_threads, opts.search_queue);
        let slot: RegistrySlot = Arc::default();
        let open = OpenIndexes::default();
        let args = NodeArgs {
            registry: RegistryArgs {
                dir: opts.dir.clone(),
                index: opts.index.clone(),
                supervision: opts.supervision.clone(),
                max_writes_in_flight: opts.max_writes_in_flight,
                open: open.clone(),
                tasks: Arc::default(),
                replication: opts.replication.clone(),
                events: opts.events.clone(),
            },
            slot: slot.clone(),
            search: work,
        };
        let (supervisor, _) = Actor::spawn(None, NodeSupervisor, args).await?;
        Ok(Node {
            registry: slot,
            open,
            supervisor,
            search,
        })
    }

    fn registry(&self) -> Result<ActorRef<RegistryMsg>, NodeError> {
        self.registry
            .load_full()
            .map(|r| ActorRef::clone(&r))
            .ok_or(NodeError::Unavailable)
    }

    /// The open index `name`, from the published map (no message, no lock);
    /// an index being created is waited for (up to 5 s).
    pub async fn get(&self, name: &str) -> Result<Option<Arc<IndexHandle>>, NodeError> {
        self.open
            .get(name, Duration::from_secs(5))
            .await
            .map_err(|why| NodeError::IndexFailed(name.to_string(), why))
    }

    pub async fn list(&self) -> Result<Vec<Arc<IndexHandle>>, NodeError> {
        Ok(self.open.load().open.values().cloned().collect())
    }

    pub async fn create(&self, name: &str, req: CreateIndex) -> Result<CreateOutcome, NodeError> {
        let r = self.registry()?;
        Ok(ractor::call!(r, RegistryMsg::Create, name.to_string(), req)
            .map_err(|_| NodeError::Unavailable)??)
    }

    pub async fn delete(&self, name: &str, expect_exists: bool) -> Result<bool, NodeError> {
        let r = self.registry()?;
        Ok(
            ractor::call!(r, RegistryMsg::Delete, name.to_string(), expect_exists)
                .map_err(|_| NodeError::Unavailable)??,
        )
    }

    /// Replica mode: drops the local copy of `name` and follows it again
    /// from its lifecycle record `record` at stream sequence `seq` (the
    /// `resync` job; docs/api.md).
    pub async fn resync(
        &self,
        name: &str,
        record: crate::stream::IndexRecord,
        seq: u64,
    ) -> Result<(), NodeError> {
        let r = self.registry()?;
        Ok(
            ractor::call!(r, RegistryMsg::Resync, name.to_string(), record, seq)
                .map_err(|_| NodeError::Unavailable)??,
        )
    }

    /// Test hook (enabled by the binary's `--enable-fault-injection`).
    pub async fn inject_failure(&self, name: &str, child: Child) {
        if child == Child::SearchWorker {
            self.search.inject_panic();
            return;
        }
        if let Ok(r) = self.registry() {
            let _ = r.cast(RegistryMsg::InjectFailure(name.to_string(), child));
        }
    }

    /// Stops every actor; indexes are closed (their WAL is already durable;
    /// batches a bootstrap applied without the WAL are checkpointed first).
    pub async fn shutdown(&self) {
        if let Ok(indexes) = self.list().await {
            for h in indexes {
                if h.is_deleted() || !h.index.has_unlogged() {
                    continue;
                }
                let index = h.index.clone();
                match tokio::task::spawn_blocking(move || index.checkpoint()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(index = %h.name, error = %e, "checkpoint at shutdown failed")
                    }
                    Err(e) => {
                        tracing::warn!(index = %h.name, error = %e, "checkpoint at shutdown failed")
                    }
                }
            }
        }
        self.supervisor.stop(None);
        for _ in 0..50 {
            if self.supervisor.get_status() == ractor::ActorStatus::Stopped {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
