//! The data directory: which indexes exist, in which generation, and the
//! durable steps that create, delete and install them.
//!
//! ```text
//! <data>/lineage.json                      last generation minted per name
//! <data>/indexes/<name>/<generation:020>/  one engine index (MANIFEST, segments/, wal/)
//! <data>/indexes/.deleted-<name>-<g>-<t>/  a deleted index, being removed
//! <data>/indexes/.<kind>-<name>/           an index being built offline (import, restore)
//! ```
//!
//! Every step is durable before it returns (docs/durability.md): a created
//! index's directories are synced into their parents, a delete's rename is
//! synced before the delete is acknowledged, an installed build is synced into
//! place, and `lineage.json` is replaced atomically. A generation is recorded
//! in the lineage before its directory is made, so a name never gets the same
//! generation twice, even across power cuts. Leftovers of an interrupted step
//! (a half-removed deleted index, an unfinished build, a generation without a
//! manifest) are removed by [`Catalog::open`] and [`Catalog::current_generation`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::durable::Fs;
use crate::error::{Error, IoContext, Result};
use crate::index::{Index, IndexOptions};
use crate::manifest;
use crate::types::{Generation, Position};

pub const INDEXES_DIR: &str = "indexes";
pub const LINEAGE_FILE: &str = "lineage.json";
const DELETED_PREFIX: &str = ".deleted-";

/// Last generation minted for every name ever created.
pub type Lineage = BTreeMap<String, u64>;

/// `[A-Za-z0-9_-]{1,255}`, as fpindex accepts.
pub fn valid_index_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A data directory.
#[derive(Clone, Debug)]
pub struct Catalog {
    dir: PathBuf,
    fs: Fs,
}

impl Catalog {
    /// Opens (creating it if needed) the data directory `dir`, and removes
    /// what interrupted deletes and builds left behind.
    pub fn open(dir: &Path, fs: Fs) -> Result<Catalog> {
        let catalog = Catalog {
            dir: dir.to_path_buf(),
            fs,
        };
        let indexes = catalog.indexes_dir();
        catalog.fs.create_dir_all(&indexes)?;
        for entry in fs::read_dir(&indexes).at(&indexes)? {
            let entry = entry.at(&indexes)?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                tracing::info!(dir = %entry.path().display(), "removing the leftover of an interrupted delete or build");
                match fs::remove_dir_all(entry.path()) {
                    Ok(()) => {}
                    // Someone else finished removing it.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    // Hidden from every listing: left for the next start
                    // rather than keeping every index from opening.
                    Err(e) => {
                        tracing::warn!(dir = %entry.path().display(), error = %e, "could not remove a leftover directory")
                    }
                }
            }
        }
        Ok(catalog)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn fs(&self) -> &Fs {
        &self.fs
    }

    fn indexes_dir(&self) -> PathBuf {
        self.dir.join(INDEXES_DIR)
    }

    /// Directory of generation `generation` of index `name`.
    pub fn index_dir(&self, name: &str, generation: u64) -> PathBuf {
        index_path(&self.dir, name, generation)
    }

    /// Names of the indexes on disk (valid names only), sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let dir = self.indexes_dir();
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let name = entry.at(&dir)?.file_name().to_string_lossy().to_string();
            if valid_index_name(&name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The newest complete generation of `name` (one with a manifest) and its
    /// directory; older and unfinished generation directories are removed.
    pub fn current_generation(&self, name: &str) -> Result<Option<(u64, PathBuf)>> {
        let root = self.indexes_dir().join(name);
        let mut gens: Vec<(u64, PathBuf)> = Vec::new();
        let entries = match fs::read_dir(&root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&root),
        };
        for entry in entries {
            let entry = entry.at(&root)?;
            if let Ok(g) = entry.file_name().to_string_lossy().parse::<u64>() {
                gens.push((g, entry.path()));
            }
        }
        gens.sort();
        let mut current = None;
        while let Some((g, path)) = gens.pop() {
            if current.is_none() && path.join(manifest::FILE_NAME).exists() {
                current = Some((g, path));
            } else if let Err(e) = fs::remove_dir_all(&path) {
                // Not the current generation: leaving it costs disk, not
                // correctness (the lineage keeps its number from coming back).
                tracing::warn!(dir = %path.display(), error = %e, "could not remove an old generation");
            }
        }
        Ok(current)
    }

    /// The lineage, raised to every generation found on disk.
    pub fn lineage(&self) -> Result<Lineage> {
        let path = self.dir.join(LINEAGE_FILE);
        let mut lineage: Lineage = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::corrupt(&path, 0, format!("lineage: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lineage::new(),
            Err(e) => return Err(e).at(&path),
        };
        for name in self.names()? {
            let root = self.indexes_dir().join(&name);
            // An unreadable index directory fails that index when it is
            // opened; the lineage file still holds its generations.
            let entries = match fs::read_dir(&root) {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(dir = %root.display(), error = %e, "cannot list an index's generations");
                    continue;
                }
            };
            for entry in entries.flatten() {
                if let Ok(g) = entry.file_name().to_string_lossy().parse() {
                    let last = lineage.entry(name.clone()).or_insert(g);
                    *last = (*last).max(g);
                }
            }
        }
        Ok(lineage)
    }

    /// Replaces the lineage atomically and durably.
    pub fn store_lineage(&self, lineage: &Lineage) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(lineage)
            .map_err(|e| Error::InvalidInput(format!("lineage does not encode: {e}")))?;
        self.fs.write_atomic(&self.dir.join(LINEAGE_FILE), &bytes)
    }

    /// Reserves the next generation of `name` and records it durably.
    pub fn reserve_generation(&self, name: &str) -> Result<u64> {
        let mut lineage = self.lineage()?;
        let g = lineage.get(name).copied().unwrap_or(0) + 1;
        lineage.insert(name.to_string(), g);
        self.store_lineage(&lineage)?;
        Ok(g)
    }

    /// Records durably that `name` has (at least) generation `generation`.
    pub fn record_generation(&self, name: &str, generation: u64) -> Result<()> {
        let mut lineage = self.lineage()?;
        let g = lineage.entry(name.to_string()).or_insert(generation);
        *g = (*g).max(generation);
        self.store_lineage(&lineage)
    }

    /// Creates an empty index `name` of `generation` (already recorded in the
    /// lineage) whose first batch is the one after `start`. Whatever was left
    /// under `indexes/<name>` (no live index may be there) is removed first.
    pub fn create_index(
        &self,
        name: &str,
        generation: u64,
        start: Position,
        opts: IndexOptions,
    ) -> Result<Index> {
        let dir = self.index_dir(name, generation);
        let root = self.indexes_dir().join(name);
        if root.exists() {
            fs::remove_dir_all(&root).at(&root)?;
        }
        self.fs.create_dir_all(&dir)?;
        Index::create_at(&dir, Generation(generation), start, opts)
    }

    /// Deletes index `name` (its open `Index` must be dropped or unused):
    /// renames it out of the way, durably, and returns where it went, for
    /// [`Catalog::remove_deleted`] to remove at leisure. After a power cut the
    /// index is either whole or gone.
    pub fn delete_index(&self, name: &str, generation: u64) -> Result<PathBuf> {
        let from = self.indexes_dir().join(name);
        // Unique: the removal of an earlier delete of the same generation
        // (a replica's resync) may still be running on its own directory.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let to = self
            .indexes_dir()
            .join(format!("{DELETED_PREFIX}{name}-{generation}-{stamp}"));
        if to.exists() {
            fs::remove_dir_all(&to).at(&to)?;
        }
        self.fs.rename(&from, &to)?;
        Ok(to)
    }

    /// Removes what [`Catalog::delete_index`] moved away. Not synced: a power
    /// cut leaves a leftover that [`Catalog::open`] removes.
    pub fn remove_deleted(path: &Path) -> Result<()> {
        match fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(path),
        }
    }

    /// An empty directory to build index `name` in offline (`kind` is
    /// `import` or `restore`), for [`Catalog::install`]. Fails if the index
    /// exists.
    pub fn build_dir(&self, kind: &str, name: &str) -> Result<PathBuf> {
        if !valid_index_name(name) {
            return Err(Error::InvalidInput(format!(
                "invalid index name {name:?}: use [A-Za-z0-9_-]{{1,255}}"
            )));
        }
        let existing = self.indexes_dir().join(name);
        if existing.exists() {
            return Err(Error::InvalidInput(format!(
                "index {name} already exists in {}: delete it first",
                existing.display()
            )));
        }
        let tmp = self.indexes_dir().join(format!(".{kind}-{name}"));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        fs::create_dir_all(&tmp).at(&tmp)?;
        Ok(tmp)
    }

    /// Moves an index built (durably) in `tmp` into place as `generation` of
    /// `name`, durably. Returns its directory.
    pub fn install(&self, name: &str, generation: u64, tmp: &Path) -> Result<PathBuf> {
        let dir = self.index_dir(name, generation);
        let root = self.indexes_dir().join(name);
        // Not synced on its own: the rename below syncs `indexes/` (where
        // `tmp` was), which makes `root` durable too.
        fs::create_dir_all(&root).at(&root)?;
        self.fs.rename(tmp, &dir)?;
        Ok(dir)
    }
}

/// Directory of generation `generation` of index `name` under a data directory.
pub fn index_path(data_dir: &Path, name: &str, generation: u64) -> PathBuf {
    data_dir
        .join(INDEXES_DIR)
        .join(name)
        .join(format!("{generation:020}"))
}
