//! NodeSupervisor and the `Node` handle the HTTP layer holds.
//!
//! The NodeSupervisor spawns the IndexRegistry linked and restarts it (with a
//! short backoff) if it fails; the registry reopens every index from disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fpnode_segments::index::IndexOptions;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::RwLock;

use crate::handle::IndexHandle;
use crate::index_supervisor::{Child, SupervisionOptions};
use crate::registry::{
    CreateIndex, CreateOutcome, IndexRegistry, RegistryArgs, RegistryError, RegistryMsg,
};
use crate::search_pool::SearchPool;

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
}

/// The running node: where requests go.
#[derive(Clone)]
pub struct Node {
    registry: Arc<RwLock<ActorRef<RegistryMsg>>>,
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
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

pub enum NodeMsg {
    RestartRegistry,
}

struct NodeSupervisor;

struct NodeArgs {
    registry: RegistryArgs,
    slot: Arc<RwLock<Option<ActorRef<RegistryMsg>>>>,
}

struct NodeState {
    registry: RegistryArgs,
    slot: Arc<RwLock<Option<ActorRef<RegistryMsg>>>>,
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
        *args.slot.write().await = Some(r);
        Ok(NodeState {
            registry: args.registry,
            slot: args.slot,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::RestartRegistry => {
                let (r, _) = Actor::spawn_linked(
                    None,
                    IndexRegistry,
                    state.registry.clone(),
                    myself.get_cell(),
                )
                .await?;
                *state.slot.write().await = Some(r);
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
        if let SupervisionEvent::ActorFailed(_, err) = event {
            tracing::error!(error = %err, "index registry failed; restarting it");
            metrics::counter!("fpnode_actor_restarts_total", "actor" => "index_registry")
                .increment(1);
            *state.slot.write().await = None;
            myself.send_after(Duration::from_millis(200), || NodeMsg::RestartRegistry);
        }
        Ok(())
    }
}

impl Node {
    /// Starts the supervision tree: opens every index under `opts.dir`.
    pub async fn start(opts: NodeOptions) -> Result<Node, ActorProcessingErr> {
        let search = SearchPool::new(opts.search_threads, opts.search_queue)?;
        let slot = Arc::new(RwLock::new(None));
        let args = NodeArgs {
            registry: RegistryArgs {
                dir: opts.dir.clone(),
                index: opts.index.clone(),
                supervision: opts.supervision.clone(),
                max_writes_in_flight: opts.max_writes_in_flight,
                open: Default::default(),
                replication: opts.replication.clone(),
            },
            slot: slot.clone(),
        };
        let (supervisor, _) = Actor::spawn(None, NodeSupervisor, args).await?;
        let registry = slot
            .read()
            .await
            .clone()
            .ok_or("index registry did not start")?;
        // From here on the node reads the registry through `registry_ref`.
        let node = Node {
            registry: Arc::new(RwLock::new(registry)),
            supervisor,
            search,
        };
        let watch = node.registry.clone();
        let slot_watch = slot.clone();
        tokio::spawn(async move {
            // Follow registry restarts.
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(r) = slot_watch.read().await.clone() {
                    let mut cur = watch.write().await;
                    if cur.get_id() != r.get_id() {
                        *cur = r;
                    }
                }
            }
        });
        Ok(node)
    }

    async fn registry(&self) -> ActorRef<RegistryMsg> {
        self.registry.read().await.clone()
    }

    pub async fn get(&self, name: &str) -> Result<Option<Arc<IndexHandle>>, NodeError> {
        let r = self.registry().await;
        ractor::call!(r, RegistryMsg::Get, name.to_string()).map_err(|_| NodeError::Unavailable)
    }

    pub async fn list(&self) -> Result<Vec<Arc<IndexHandle>>, NodeError> {
        let r = self.registry().await;
        ractor::call!(r, RegistryMsg::List).map_err(|_| NodeError::Unavailable)
    }

    pub async fn create(&self, name: &str, req: CreateIndex) -> Result<CreateOutcome, NodeError> {
        let r = self.registry().await;
        Ok(ractor::call!(r, RegistryMsg::Create, name.to_string(), req)
            .map_err(|_| NodeError::Unavailable)??)
    }

    pub async fn delete(&self, name: &str, expect_exists: bool) -> Result<bool, NodeError> {
        let r = self.registry().await;
        Ok(
            ractor::call!(r, RegistryMsg::Delete, name.to_string(), expect_exists)
                .map_err(|_| NodeError::Unavailable)??,
        )
    }

    /// Test hook (enabled by the binary's `--enable-fault-injection`).
    pub async fn inject_failure(&self, name: &str, child: Child) {
        let r = self.registry().await;
        let _ = r.cast(RegistryMsg::InjectFailure(name.to_string(), child));
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
