//! The IndexRegistry off the hot path: a create whose file-system steps are
//! held up (a slow disk) holds up nothing but later requests for the same
//! name, which wait their turn and run in order; lookups never wait.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use fpnode_actors::registry::{
    CreateIndex, IndexRegistry, OpenIndexes, RegistryArgs, RegistryError, RegistryMsg,
};
use fpnode_segments::Fs;
use fpnode_segments::durable::{Site, SyncFs};
use fpnode_segments::index::IndexOptions;
use ractor::{Actor, ActorRef};

/// Syncs like the OS, except a directory sync of `indexes/x` waits while the
/// gate is closed: index `x`'s creation is stuck on its disk.
#[derive(Debug, Default)]
struct Gate {
    closed: Mutex<bool>,
    waiting: Mutex<usize>,
    opened: Condvar,
}

impl SyncFs for Gate {
    fn sync_file(&self, file: &std::fs::File, _: Site) -> std::io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&self, dir: &Path, _: Site) -> std::io::Result<()> {
        if dir.ends_with("indexes/x") {
            *self.waiting.lock().unwrap() += 1;
            let mut closed = self.closed.lock().unwrap();
            while *closed {
                closed = self.opened.wait(closed).unwrap();
            }
        }
        std::fs::File::open(dir)?.sync_all()
    }
}

type Created = Result<fpnode_actors::CreateOutcome, RegistryError>;

fn create(r: &ActorRef<RegistryMsg>, name: &str) -> tokio::task::JoinHandle<Created> {
    let (r, name) = (r.clone(), name.to_string());
    tokio::spawn(async move {
        ractor::call!(r, RegistryMsg::Create, name, CreateIndex::default()).unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_create_holds_up_only_its_own_name_and_requests_on_it_run_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Gate::default());
    *gate.closed.lock().unwrap() = true;
    let open = OpenIndexes::default();
    let args = RegistryArgs {
        dir: dir.path().to_path_buf(),
        index: IndexOptions {
            fs: Fs::new(gate.clone()),
            ..IndexOptions::default()
        },
        supervision: Default::default(),
        max_writes_in_flight: 16,
        open: open.clone(),
        tasks: Arc::default(),
        replication: None,
        events: None,
    };
    let (registry, _) = Actor::spawn(None, IndexRegistry, args).await.unwrap();

    let first = create(&registry, "x");
    while *gate.waiting.lock().unwrap() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // x's create is stuck on its disk. A delete and a second create of x
    // queue behind it; y is created meanwhile.
    let delete = {
        let r = registry.clone();
        tokio::spawn(async move {
            ractor::call!(r, RegistryMsg::Delete, "x".to_string(), true).unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = create(&registry, "x");
    let y = tokio::time::timeout(Duration::from_secs(10), create(&registry, "y"))
        .await
        .expect("creating y waited on x's disk")
        .unwrap()
        .unwrap();
    assert_eq!(y.generation, 1);
    assert!(open.load().open.contains_key("y"), "y is published");
    assert!(!open.load().open.contains_key("x"), "x is not created yet");
    assert!(
        !delete.is_finished() && !second.is_finished(),
        "x's requests wait"
    );

    *gate.closed.lock().unwrap() = false;
    gate.opened.notify_all();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.generation, 1);
    // Not IndexNotFound: the delete ran after the create it queued behind.
    assert_eq!(delete.await.unwrap(), Ok(true));
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.generation, 2, "a new generation after the delete");
    let published = open.load();
    assert_eq!(published.open.get("x").unwrap().generation.0, 2);
    registry.stop(None);
}
