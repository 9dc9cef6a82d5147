#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Power-loss tests: random sequences of writes, checkpoints, merges,
//! reopens, deletes, creates, imports and restores run on a data directory
//! whose fsyncs go to `PowerCutFs`. After every sync the disk a power cut would
//! leave is kept (exactly as synced, and with part of the unsynced appends
//! kept in whole 4 KiB pages), and each is then recovered as a node would
//! (`Catalog::open`, the newest generation of every index, `Index::open`) and
//! checked:
//!
//! - the data directory and every index open;
//! - every acknowledged write, create, delete, import and restore is there;
//! - nothing half done: the state is the one before the operation the power
//!   cut interrupted, or after it (a group of batches may keep a prefix: none
//!   of it was acknowledged), compared fingerprint by fingerprint, with the
//!   version and the metadata;
//! - no generation is handed out twice;
//! - a recovered index takes a new write and keeps it across a reopen.
//!
//! `every_sync_site_is_needed` removes each sync of the engine in turn (the
//! model ignores it, as if the line were gone) and checks that the same test
//! then fails: no fsync or directory sync is there for nothing, and the test
//! sees each one. docs/durability.md describes the model.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fpnode_segments::bulk::{BulkBuilder, BulkOptions};
use fpnode_segments::catalog::Catalog;
use fpnode_segments::index::IndexOptions;
use fpnode_segments::merge_policy::TieredMergePolicy;
use fpnode_segments::power_cut::{Image, PowerCutFs, Tearing};
use fpnode_segments::wal::WalOptions;
use fpnode_segments::{Batch, Change, Fs, Generation, Index, Position};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const NAMES: [&str; 2] = ["a", "b"];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IndexState {
    generation: u64,
    position: u64,
    docs: BTreeMap<u32, Vec<u32>>,
    metadata: BTreeMap<String, String>,
}

impl IndexState {
    fn apply(&mut self, b: &Batch) {
        for c in &b.changes {
            match c {
                Change::Insert { id, hashes } => {
                    let mut h = hashes.clone();
                    h.sort_unstable();
                    h.dedup();
                    self.docs.insert(*id, h);
                }
                Change::Delete { id } => {
                    self.docs.remove(id);
                }
            }
        }
        fpnode_segments::types::apply_metadata_delta(&mut self.metadata, &b.metadata);
        self.position = b.position.0;
    }
}

/// What the data directory holds, as clients were told.
type State = BTreeMap<String, IndexState>;

/// What a recovery after a cut during one operation may find.
struct Expect {
    /// The states allowed: before the operation, after it, and in between
    /// where that is allowed.
    states: Vec<State>,
    /// Generations acknowledged so far: the lineage must be at least these.
    lineage: BTreeMap<String, u64>,
}

struct Cut {
    op: usize,
    image: Image,
    torn: bool,
}

fn options(fs: Fs) -> IndexOptions {
    let small = |per_tier, at_once, max| TieredMergePolicy {
        segments_per_tier: per_tier,
        max_merge_at_once: at_once,
        floor_bytes: 256,
        max_merged_bytes: u64::MAX,
        max_segments: max,
    };
    IndexOptions {
        checkpoint_threshold: 400,
        checkpoint_age: Duration::from_secs(3600),
        memory_policy: small(2, 4, 6),
        file_policy: small(2, 3, 4),
        max_memory_segments: 10_000,
        max_file_segments: 10_000,
        max_memory_factor: 10_000,
        stall_timeout: Duration::from_millis(10),
        wal: WalOptions {
            // Rotate often, so cuts land around rotations too.
            max_file_bytes: 1500,
            ..WalOptions::default()
        },
        fs,
        ..IndexOptions::default()
    }
}

fn random_batch(rng: &mut Xoshiro256PlusPlus, position: u64) -> Batch {
    let mut b = Batch::new(Position(position), Vec::new());
    for _ in 0..rng.gen_range(1..6) {
        let id = rng.gen_range(1..60);
        if rng.gen_bool(0.2) {
            b.changes.push(Change::Delete { id });
        } else {
            let n = rng.gen_range(0..24);
            let hashes = (0..n).map(|_| rng.gen_range(0..300)).collect();
            b.changes.push(Change::Insert { id, hashes });
        }
    }
    if rng.gen_bool(0.2) {
        let value = rng.gen_bool(0.8).then(|| format!("v{position}"));
        b.metadata
            .insert(format!("k{}", rng.gen_range(0..3)), value);
    }
    b
}

/// The live side: a data directory on `PowerCutFs`, its open indexes and the
/// acknowledged state.
struct World {
    fs: Arc<PowerCutFs>,
    catalog: Catalog,
    open: BTreeMap<String, Index>,
    state: State,
    lineage: BTreeMap<String, u64>,
    expects: Vec<Expect>,
    op: Arc<AtomicUsize>,
}

impl World {
    fn new(
        root: &Path,
        data: &Path,
        skip: Option<String>,
        cuts: Arc<Mutex<Vec<Cut>>>,
        seed: u64,
    ) -> World {
        let fs = Arc::new(PowerCutFs::new(root).unwrap());
        fs.skip_site(skip);
        let op = Arc::new(AtomicUsize::new(0));
        {
            let (op, live) = (op.clone(), root.to_path_buf());
            let mut n = seed;
            fs.set_tap(move |durable| {
                let op = op.load(Ordering::SeqCst);
                let mut cuts = cuts.lock().unwrap();
                cuts.push(Cut {
                    op,
                    image: durable.image(),
                    torn: false,
                });
                n = n.wrapping_mul(6364136223846793005).wrapping_add(1);
                let torn = durable
                    .torn_image(&live, Tearing::Pages { seed: n })
                    .unwrap();
                if torn != cuts.last().unwrap().image {
                    cuts.push(Cut {
                        op,
                        image: torn,
                        torn: true,
                    });
                }
            });
        }
        let catalog = Catalog::open(data, Fs::new(fs.clone())).unwrap();
        World {
            fs,
            catalog,
            open: BTreeMap::new(),
            state: State::new(),
            lineage: BTreeMap::new(),
            expects: Vec::new(),
            op,
        }
    }

    fn opts(&self) -> IndexOptions {
        options(self.catalog.fs().clone())
    }

    /// Runs one operation: `during` are the states allowed while it runs
    /// besides the one before; the state after it is the last of them.
    fn step(&mut self, rng: &mut Xoshiro256PlusPlus) {
        let k = self.expects.len();
        self.op.store(k, Ordering::SeqCst);
        let before = self.state.clone();
        let name = NAMES[rng.gen_range(0..NAMES.len())].to_string();
        let mut during: Vec<State> = Vec::new();
        let present = self.open.contains_key(&name);
        let roll = rng.gen_range(0..100);
        // Generations acknowledged before this operation.
        let lineage = self.lineage.clone();
        match (present, roll) {
            (true, 0..55) => {
                let index = &self.open[&name];
                let first = index.position().0 + 1;
                let n = rng.gen_range(1..4);
                let batches: Vec<Batch> = (0..n)
                    .map(|i| random_batch(rng, first + i as u64))
                    .collect();
                index.apply(&batches).unwrap();
                let mut s = self.state.clone();
                for b in &batches {
                    s.get_mut(&name).unwrap().apply(b);
                    during.push(s.clone());
                }
            }
            (true, 55..65) => {
                self.open[&name].checkpoint().unwrap();
            }
            (true, 65..72) => {
                self.open[&name].merge_memory().unwrap();
            }
            (true, 72..80) => {
                self.open[&name].merge_files().unwrap();
            }
            (true, 80..83) => {
                self.open[&name].force_merge().unwrap();
            }
            (true, 83..90) => {
                // A clean restart of the index (no power cut).
                drop(self.open.remove(&name));
                let (_, dir) = self.catalog.current_generation(&name).unwrap().unwrap();
                let index = Index::open(&dir, self.opts()).unwrap();
                self.open.insert(name.clone(), index);
            }
            (true, _) => {
                let index = self.open.remove(&name).unwrap();
                let generation = index.generation().0;
                drop(index);
                let trash = self.catalog.delete_index(&name, generation).unwrap();
                let mut s = self.state.clone();
                s.remove(&name);
                during.push(s);
                Catalog::remove_deleted(&trash).unwrap();
            }
            (false, 0..50) => {
                let g = self.catalog.reserve_generation(&name).unwrap();
                let index = self
                    .catalog
                    .create_index(&name, g, Position(0), self.opts())
                    .unwrap();
                self.open.insert(name.clone(), index);
                self.lineage.insert(name.clone(), g);
                let mut s = self.state.clone();
                s.insert(
                    name.clone(),
                    IndexState {
                        generation: g,
                        ..IndexState::default()
                    },
                );
                during.push(s);
            }
            (false, 50..80) => {
                let tmp = self.catalog.build_dir("import", &name).unwrap();
                let g = self.catalog.reserve_generation(&name).unwrap();
                let version = rng.gen_range(1..1000);
                let bulk = BulkOptions {
                    run_postings: rng.gen_range(50..400),
                    runs_per_segment: 2,
                    fs: self.catalog.fs().clone(),
                };
                let mut builder =
                    BulkBuilder::new(&tmp, Generation(g), Position(version), bulk).unwrap();
                let mut imported = IndexState {
                    generation: g,
                    position: version,
                    ..IndexState::default()
                };
                for _ in 0..rng.gen_range(0..60) {
                    let id = rng.gen_range(1..200);
                    let mut hashes: Vec<u32> = (0..rng.gen_range(0..30))
                        .map(|_| rng.gen_range(0..300))
                        .collect();
                    builder.add(id, &hashes).unwrap();
                    hashes.sort_unstable();
                    hashes.dedup();
                    imported.docs.insert(id, hashes);
                }
                builder.finish().unwrap();
                let dir = self.catalog.install(&name, g, &tmp).unwrap();
                self.open
                    .insert(name.clone(), Index::open(&dir, self.opts()).unwrap());
                self.lineage.insert(name.clone(), g);
                let mut s = self.state.clone();
                s.insert(name.clone(), imported);
                during.push(s);
            }
            (false, _) => {
                // Restore the other index's archive under this name.
                let Some((source, index)) = self.open.iter().next() else {
                    self.expects.push(Expect {
                        states: vec![before],
                        lineage,
                    });
                    return;
                };
                index.checkpoint().unwrap();
                let snap = index.snapshot();
                let mut archive = Vec::new();
                fpnode_segments::archive::write(&snap, &mut archive).unwrap();
                let mut restored = self.state[source].clone();
                restored.position = snap.checkpoint_position.0;
                let tmp = self.catalog.build_dir("restore", &name).unwrap();
                let header =
                    fpnode_segments::archive::restore(&archive[..], &tmp, self.catalog.fs())
                        .unwrap();
                let g = header.generation.0;
                self.catalog.record_generation(&name, g).unwrap();
                let dir = self.catalog.install(&name, g, &tmp).unwrap();
                self.open
                    .insert(name.clone(), Index::open(&dir, self.opts()).unwrap());
                let last = self.lineage.entry(name.clone()).or_insert(g);
                *last = (*last).max(g);
                let mut s = self.state.clone();
                s.insert(name.clone(), restored);
                during.push(s);
            }
        }
        if let Some(after) = during.last() {
            self.state = after.clone();
        }
        let mut states = vec![before];
        states.extend(during);
        self.expects.push(Expect { states, lineage });
    }
}

/// Recovers the image as a node would; returns what it finds.
fn recover(dir: &Path) -> Result<(State, BTreeMap<String, u64>), String> {
    let catalog = Catalog::open(dir, Fs::default()).map_err(|e| format!("catalog: {e}"))?;
    let lineage = catalog.lineage().map_err(|e| format!("lineage: {e}"))?;
    let mut state = State::new();
    for name in catalog.names().map_err(|e| e.to_string())? {
        let Some((_, path)) = catalog
            .current_generation(&name)
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let index = Index::open(&path, options(Fs::default()))
            .map_err(|e| format!("index {name} does not open: {e}"))?;
        let snap = index.snapshot();
        let docs = snap.dump().map_err(|e| format!("index {name}: {e}"))?;
        state.insert(
            name,
            IndexState {
                generation: snap.generation.0,
                position: snap.position.0,
                docs,
                metadata: (*snap.metadata).clone(),
            },
        );
    }
    Ok((state, lineage))
}

/// A recovered index takes a write, which survives a reopen.
fn writable(dir: &Path) -> Result<(), String> {
    let catalog = Catalog::open(dir, Fs::default()).map_err(|e| e.to_string())?;
    for name in catalog.names().map_err(|e| e.to_string())? {
        let Some((_, path)) = catalog
            .current_generation(&name)
            .map_err(|e| e.to_string())?
        else {
            continue;
        };
        let next = {
            let index = Index::open(&path, options(Fs::default())).map_err(|e| e.to_string())?;
            let next = index.position().0 + 1;
            let b = Batch::new(
                Position(next),
                vec![Change::Insert {
                    id: 999,
                    hashes: vec![7, 8, 9],
                }],
            );
            index
                .apply(&[b])
                .map_err(|e| format!("index {name} refuses a write after recovery: {e}"))?;
            next
        };
        let index = Index::open(&path, options(Fs::default())).map_err(|e| e.to_string())?;
        if index.position().0 != next || index.snapshot().get(999).is_none() {
            return Err(format!("index {name} lost a write made after recovery"));
        }
    }
    Ok(())
}

fn check(cut: &Cut, expect: &Expect, scratch: &Path, write: bool) -> Result<(), String> {
    let dir = scratch.join("cut");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    cut.image.materialize(&dir).unwrap();
    let dir = dir.join("data");
    let (state, lineage) = recover(&dir)?;
    if !expect.states.contains(&state) {
        let before = &expect.states[0];
        let mut diff = String::new();
        for name in NAMES {
            let (got, want) = (state.get(name), before.get(name));
            if got != want {
                diff += &format!(
                    "\n  {name}: recovered {:?}\n     before the operation {:?}",
                    got.map(|s| (s.generation, s.position, s.docs.len())),
                    want.map(|s| (s.generation, s.position, s.docs.len()))
                );
            }
        }
        return Err(format!(
            "recovered a state no acknowledged history allows:{diff}"
        ));
    }
    for (name, g) in &expect.lineage {
        if lineage.get(name).copied().unwrap_or(0) < *g {
            return Err(format!(
                "the lineage lost generation {g} of index {name} ({lineage:?})"
            ));
        }
    }
    if write {
        writable(&dir)?;
    }
    Ok(())
}

/// Runs `ops` operations from `seed`, cutting the power after every sync;
/// returns the failures found (at most a few) and the number of cuts checked.
fn run(seed: u64, ops: usize, skip: Option<String>) -> (Vec<String>, usize, Arc<PowerCutFs>) {
    let root = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // The model covers `root`; the catalog creates the data directory in it.
    let live = root.path().join("data");
    let cuts = Arc::new(Mutex::new(Vec::new()));
    let mut world = World::new(root.path(), &live, skip, cuts.clone(), seed);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    for _ in 0..ops {
        world.step(&mut rng);
        // The operation returned: all of it is acknowledged, so a cut now
        // must recover exactly the state after it (a later operation's
        // syncs must not be what makes it durable).
        let op = world.expects.len();
        world.expects.push(Expect {
            states: vec![world.state.clone()],
            lineage: world.lineage.clone(),
        });
        cuts.lock().unwrap().push(Cut {
            op,
            image: world.fs.image(),
            torn: false,
        });
    }
    let fs = world.fs.clone();
    drop(world.open);
    let cuts = std::mem::take(&mut *cuts.lock().unwrap());
    let mut failures = Vec::new();
    for (i, cut) in cuts.iter().enumerate() {
        let expect = &world.expects[cut.op];
        if let Err(e) = check(cut, expect, scratch.path(), i % 8 == 0) {
            failures.push(format!(
                "seed {seed}, cut {i} (during operation {}, {}): {e}",
                cut.op,
                if cut.torn { "torn pages" } else { "as synced" }
            ));
            if failures.len() >= 3 {
                break;
            }
        }
    }
    (failures, cuts.len(), fs)
}

fn seeds() -> Vec<u64> {
    match std::env::var("FPNODE_POWER_CUT_SEED") {
        Ok(s) => vec![s.parse().expect("FPNODE_POWER_CUT_SEED is a number")],
        Err(_) => vec![1, 2, 3, 4],
    }
}

#[test]
fn power_cuts_lose_nothing_acknowledged_and_leave_nothing_half_done() {
    let mut total = 0;
    let mut sites = BTreeMap::new();
    for seed in seeds() {
        let (failures, cuts, fs) = run(seed, 250, None);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        total += cuts;
        sites.extend(fs.sites());
    }
    eprintln!("{total} power cuts checked; sync sites: {sites:#?}");
    assert!(total >= 2000, "only {total} cuts");
}

/// Every durability step the engine has, by file and step: each must be hit by
/// the workload (so that removing it can be noticed).
const EXPECTED_SITES: &[(&str, &str)] = &[
    ("segments/src/wal/writer.rs", "file"),
    ("segments/src/wal/writer.rs", "dir"),
    ("segments/src/file_segment/writer.rs", "file"),
    ("segments/src/file_segment/writer.rs", "rename's target"),
    ("segments/src/manifest.rs", "atomic write's file"),
    ("segments/src/manifest.rs", "atomic write's rename"),
    ("segments/src/catalog.rs", "atomic write's file"),
    ("segments/src/catalog.rs", "atomic write's rename"),
    ("segments/src/catalog.rs", "rename's target"),
    ("segments/src/catalog.rs", "rename's source"),
    ("segments/src/catalog.rs", "new directory's parent"),
    ("segments/src/wal/writer.rs", "new directory's parent"),
    ("segments/src/archive.rs", "file"),
    ("segments/src/archive.rs", "dir"),
];

#[test]
fn every_sync_site_is_needed() {
    let seed = 11;
    let ops = 250;
    let (failures, _, fs) = run(seed, ops, None);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let sites = fs.sites();
    for (file, step) in EXPECTED_SITES {
        assert!(
            sites
                .keys()
                .any(|s| s.starts_with(file) && s.ends_with(step)),
            "the workload never reached {file} {step}: {sites:#?}"
        );
    }
    let mut unneeded = Vec::new();
    for site in sites.keys() {
        let (failures, _, _) = run(seed, ops, Some(site.clone()));
        eprintln!(
            "without {site}: {}",
            failures.first().map_or("no failure", |f| f.as_str())
        );
        if failures.is_empty() {
            unneeded.push(site.clone());
        }
    }
    assert!(
        unneeded.is_empty(),
        "removing these syncs breaks no test: {unneeded:#?}"
    );
}
