//! A file-system model for power-loss tests, in the manner of RocksDB's
//! `FaultInjectionTestFS` and of LazyFS.
//!
//! [`PowerCutFs`] is a [`SyncFs`]: the engine keeps reading and writing real
//! files under a root directory, and every fsync it asks for is recorded
//! instead of performed:
//!
//! - syncing a file records its whole content at that moment as durable;
//! - syncing a directory records its entries at that moment as durable (name
//!   -> file or directory).
//!
//! [`DurableState::image`] is then the disk as a power cut at that instant
//! would leave it: the tree of durable entries from the root down, each file
//! with its last synced content. A file created but never synced is empty; a
//! file or directory whose creation, rename or removal was not followed by a
//! sync of its directory is where the last directory sync saw it. Optionally
//! ([`Tearing::Pages`]) a file keeps part of what was appended to it since its
//! last sync, in whole 4 KiB pages, as a disk that wrote some pages in order
//! before the cut would.
//!
//! Files are told apart by inode number and birth time, so an inode reused
//! after a removal is a new file (the file system must report birth times:
//! ext4, xfs, btrfs and tmpfs do).
//!
//! A test installs a tap ([`PowerCutFs::set_tap`]) called after every sync:
//! each call is a point where the power could be cut, and the tap can keep an
//! image of it. [`PowerCutFs::skip_site`] ignores the syncs of one call site,
//! which is how the tests show that every sync in the engine is needed; and
//! [`PowerCutFs::fail_sync`] makes one sync fail with an I/O error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::UNIX_EPOCH;

use crate::durable::{Site, SyncFs};

/// An inode number and a birth time: one file, even if the inode is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key(u64, u128);

fn key(meta: &Metadata) -> io::Result<Key> {
    let born = meta.created().map_err(|e| {
        io::Error::other(format!(
            "PowerCutFs needs file birth times to tell files apart: {e}"
        ))
    })?;
    let nanos = born
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(Key(meta.ino(), nanos))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    key: Key,
    dir: bool,
}

/// What survives a power cut now.
#[derive(Debug, Default)]
pub struct DurableState {
    root: Option<Key>,
    files: HashMap<Key, Arc<Vec<u8>>>,
    dirs: HashMap<Key, BTreeMap<OsString, Entry>>,
    syncs: u64,
}

/// How much of what was written since a file's last sync a cut keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tearing {
    /// Nothing: the file is exactly as last synced.
    None,
    /// Of what was appended since the last sync, the first `n` whole 4 KiB
    /// pages (any n, chosen per file by `seed`), as if the disk wrote pages
    /// in order and lost power part way.
    Pages { seed: u64 },
}

/// A tree of files and directories: the disk after a power cut.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    root: BTreeMap<OsString, Node>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    File(Arc<Vec<u8>>),
    Dir(BTreeMap<OsString, Node>),
}

impl DurableState {
    /// Number of syncs recorded so far.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// The disk as a power cut now would leave it.
    pub fn image(&self) -> Image {
        let mut seen = HashSet::new();
        Image {
            root: self
                .root
                .map(|k| self.tree(k, &mut seen))
                .unwrap_or_default(),
        }
    }

    /// Like [`DurableState::image`], and each file keeps what `tearing` says
    /// of what was appended to it (under `root`, the live tree) since its
    /// last sync.
    pub fn torn_image(&self, root: &Path, tearing: Tearing) -> io::Result<Image> {
        let mut image = self.image();
        if let (Tearing::Pages { seed }, Some(root_key)) = (tearing, self.root) {
            let live = live_files(root)?;
            let mut rng = seed | 1;
            tear(self, root_key, &mut image.root, &live, &mut rng);
        }
        Ok(image)
    }

    fn tree(&self, dir: Key, seen: &mut HashSet<Key>) -> BTreeMap<OsString, Node> {
        let mut out = BTreeMap::new();
        if !seen.insert(dir) {
            // A directory durable in two places (a rename synced on one side
            // only): the model keeps it in the first.
            return out;
        }
        for (name, e) in self.dirs.get(&dir).into_iter().flatten() {
            let node = if e.dir {
                Node::Dir(self.tree(e.key, seen))
            } else {
                Node::File(self.files.get(&e.key).cloned().unwrap_or_default())
            };
            out.insert(name.clone(), node);
        }
        out
    }
}

const PAGE: usize = 4096;

impl Image {
    /// Writes the image into `dest` (an empty or missing directory).
    pub fn materialize(&self, dest: &Path) -> io::Result<()> {
        fs::create_dir_all(dest)?;
        write_tree(&self.root, dest)
    }

    /// Number of files in the image.
    pub fn file_count(&self) -> usize {
        fn count(t: &BTreeMap<OsString, Node>) -> usize {
            t.values()
                .map(|n| match n {
                    Node::File(_) => 1,
                    Node::Dir(d) => count(d),
                })
                .sum()
        }
        count(&self.root)
    }

    /// The content of the file at `path` (relative to the root), if any.
    pub fn file(&self, path: &Path) -> Option<&[u8]> {
        let mut tree = &self.root;
        let mut parts = path.iter().peekable();
        while let Some(part) = parts.next() {
            match (tree.get(part), parts.peek()) {
                (Some(Node::File(bytes)), None) => return Some(bytes),
                (Some(Node::Dir(d)), Some(_)) => tree = d,
                _ => return None,
            }
        }
        None
    }
}

fn write_tree(tree: &BTreeMap<OsString, Node>, dest: &Path) -> io::Result<()> {
    for (name, node) in tree {
        let path = dest.join(name);
        match node {
            Node::File(bytes) => fs::write(&path, bytes.as_slice())?,
            Node::Dir(d) => {
                fs::create_dir(&path)?;
                write_tree(d, &path)?;
            }
        }
    }
    Ok(())
}

type Tap = Box<dyn FnMut(&DurableState) + Send>;

/// The power-cut model; see the module documentation.
pub struct PowerCutFs {
    root: PathBuf,
    state: Mutex<DurableState>,
    tap: Mutex<Option<Tap>>,
    skip: Mutex<Option<String>>,
    sites: Mutex<BTreeMap<String, u64>>,
    /// The sync with this number (1-based, counting every sync) fails.
    fail_at: AtomicU64,
}

impl std::fmt::Debug for PowerCutFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerCutFs")
            .field("root", &self.root)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl PowerCutFs {
    /// Models the tree under `root` (which must exist); whatever is there now
    /// counts as durable.
    pub fn new(root: &Path) -> io::Result<PowerCutFs> {
        let mut state = DurableState::default();
        let root_key = key(&fs::metadata(root)?)?;
        state.root = Some(root_key);
        record_tree(&mut state, root, root_key)?;
        Ok(PowerCutFs {
            root: root.to_path_buf(),
            state: Mutex::new(state),
            tap: Mutex::new(None),
            skip: Mutex::new(None),
            sites: Mutex::new(BTreeMap::new()),
            fail_at: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Calls `tap` after every recorded sync (with the model's lock held: it
    /// must not call back into this file system).
    pub fn set_tap(&self, tap: impl FnMut(&DurableState) + Send + 'static) {
        *lock(&self.tap) = Some(Box::new(tap));
    }

    /// Ignores every sync asked for at `site` (`file:line step`, as
    /// [`PowerCutFs::sites`] lists them): as if that sync were removed.
    pub fn skip_site(&self, site: Option<String>) {
        *lock(&self.skip) = site;
    }

    /// The call sites that asked for a sync, with how many times.
    pub fn sites(&self) -> BTreeMap<String, u64> {
        lock(&self.sites).clone()
    }

    /// Makes the `n`-th sync from now (1 = the next one) fail with an I/O
    /// error, recording nothing.
    pub fn fail_sync(&self, n: u64) {
        let done = lock(&self.state).syncs;
        self.fail_at.store(done + n, Ordering::SeqCst);
    }

    /// The disk as a power cut now would leave it.
    pub fn image(&self) -> Image {
        lock(&self.state).image()
    }

    /// Like [`PowerCutFs::image`], and each file keeps what `tearing` says of
    /// what was appended since its last sync.
    pub fn torn_image(&self, tearing: Tearing) -> io::Result<Image> {
        lock(&self.state).torn_image(&self.root, tearing)
    }

    /// Runs one sync: returns whether to record it.
    fn begin(&self, site: Site) -> io::Result<bool> {
        let name = site.to_string();
        let skipped = lock(&self.skip).as_deref() == Some(name.as_str());
        *lock(&self.sites).entry(name).or_default() += 1;
        if skipped {
            return Ok(false);
        }
        let fail_at = self.fail_at.load(Ordering::SeqCst);
        let mut st = lock(&self.state);
        if fail_at != 0 && st.syncs + 1 == fail_at {
            st.syncs += 1;
            return Err(io::Error::other("injected fsync failure (PowerCutFs)"));
        }
        Ok(true)
    }

    fn recorded(&self, mut st: MutexGuard<'_, DurableState>) {
        st.syncs += 1;
        if let Some(tap) = lock(&self.tap).as_mut() {
            tap(&st);
        }
    }
}

impl SyncFs for PowerCutFs {
    fn sync_file(&self, file: &File, site: Site) -> io::Result<()> {
        if !self.begin(site)? {
            return Ok(());
        }
        let k = key(&file.metadata()?)?;
        // The handle may be write-only (the WAL appends): read the same file
        // through /proc.
        let bytes = fs::read(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        let mut st = lock(&self.state);
        st.files.insert(k, Arc::new(bytes));
        self.recorded(st);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path, site: Site) -> io::Result<()> {
        if !self.begin(site)? {
            return Ok(());
        }
        let k = key(&fs::metadata(dir)?)?;
        let entries = list(dir)?;
        let mut st = lock(&self.state);
        st.dirs.insert(k, entries);
        self.recorded(st);
        Ok(())
    }
}

fn list(dir: &Path) -> io::Result<BTreeMap<OsString, Entry>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Removed meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if !meta.is_dir() && !meta.is_file() {
            continue;
        }
        out.insert(
            entry.file_name(),
            Entry {
                key: key(&meta)?,
                dir: meta.is_dir(),
            },
        );
    }
    Ok(out)
}

fn record_tree(st: &mut DurableState, dir: &Path, k: Key) -> io::Result<()> {
    let entries = list(dir)?;
    for (name, e) in &entries {
        let path = dir.join(name);
        if e.dir {
            record_tree(st, &path, e.key)?;
        } else {
            st.files.insert(e.key, Arc::new(fs::read(&path)?));
        }
    }
    st.dirs.insert(k, entries);
    Ok(())
}

/// Every file under `root` now, by key.
fn live_files(root: &Path) -> io::Result<HashMap<Key, PathBuf>> {
    let mut out = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                out.insert(key(&meta)?, entry.path());
            }
        }
    }
    Ok(out)
}

fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

fn tear(
    st: &DurableState,
    dir: Key,
    tree: &mut BTreeMap<OsString, Node>,
    live: &HashMap<Key, PathBuf>,
    rng: &mut u64,
) {
    for (name, e) in st.dirs.get(&dir).into_iter().flatten() {
        match tree.get_mut(name) {
            Some(Node::Dir(sub)) if e.dir => tear(st, e.key, sub, live, rng),
            Some(Node::File(bytes)) if !e.dir => {
                let Some(now) = live.get(&e.key).and_then(|p| fs::read(p).ok()) else {
                    continue;
                };
                // Only appends tear this way: a file rewritten in place since
                // its sync keeps its synced content.
                if now.len() <= bytes.len() || now[..bytes.len()] != bytes[..] {
                    continue;
                }
                let first_page = bytes.len() / PAGE;
                let last_page = now.len().div_ceil(PAGE);
                let pages = (next(rng) % (last_page - first_page + 1) as u64) as usize;
                let end = ((first_page + pages) * PAGE).clamp(bytes.len(), now.len());
                *bytes = Arc::new(now[..end].to_vec());
            }
            _ => {}
        }
    }
}
