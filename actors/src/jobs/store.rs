//! Job records on disk: one JSON file per job, `<data>/jobs/<id>.json`,
//! replaced atomically (temp file, fsync, rename, directory fsync) at every
//! state change, so after a crash or a power cut a record is the old or the
//! new one, never a mix (docs/architecture.md "Background jobs").

use std::path::{Path, PathBuf};

use fpnode_segments::Fs;

use super::{JobRecord, JobState, JobsError};

/// What [`Store::open`] found.
#[derive(Debug)]
pub struct Opened {
    pub store: Store,
    /// Ascending by id.
    pub records: Vec<JobRecord>,
    /// Ids of the records just rewritten as interrupted.
    pub interrupted: Vec<u64>,
    /// The highest id of any file there (a record set aside included).
    pub highest_id: u64,
}

#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    fs: Fs,
}

fn store_error(path: &Path, e: impl std::fmt::Display) -> JobsError {
    JobsError::Store {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Store {
    /// Opens (creating) the directory and reads every record; a record that
    /// was queued or running is rewritten as interrupted. A file that is not
    /// a record is renamed `<name>.bad` and logged, never fatal.
    pub fn open(dir: &Path, fs: Fs) -> Result<Opened, JobsError> {
        fs.create_dir_all(dir).map_err(|e| store_error(dir, e))?;
        let store = Store {
            dir: dir.to_path_buf(),
            fs,
        };
        let mut records = Vec::new();
        let mut interrupted = Vec::new();
        let mut highest_id = 0;
        let entries = std::fs::read_dir(dir).map_err(|e| store_error(dir, e))?;
        for entry in entries {
            let path = entry.map_err(|e| store_error(dir, e))?.path();
            // Ids are never given twice, even one whose record was set aside.
            if let Some(id) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
            {
                highest_id = highest_id.max(id);
            }
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {}
                Some("tmp") => {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                _ => continue,
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<JobRecord>(&b).map_err(|e| e.to_string()));
            match parsed {
                Ok(mut r) => {
                    if !r.state.is_finished() {
                        r.state = JobState::Interrupted;
                        r.finished_ms = Some(super::now_ms());
                        r.error =
                            Some("the node stopped while the job was queued or running".into());
                        store.save(&r)?;
                        interrupted.push(r.id);
                    }
                    records.push(r);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "unreadable job record set aside");
                    let _ = std::fs::rename(&path, path.with_extension("bad"));
                }
            }
        }
        records.sort_by_key(|r| r.id);
        interrupted.sort_unstable();
        Ok(Opened {
            store,
            records,
            interrupted,
            highest_id,
        })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:012}.json"))
    }

    pub fn save(&self, r: &JobRecord) -> Result<(), JobsError> {
        let path = self.path(r.id);
        let bytes = serde_json::to_vec_pretty(r).map_err(|e| store_error(&path, e))?;
        self.fs
            .write_atomic(&path, &bytes)
            .map_err(|e| store_error(&path, e))
    }

    pub fn remove(&self, id: u64) {
        let path = self.path(id);
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "old job record not removed");
        }
    }

    /// Where request bodies wait for the import job that reads them. What
    /// is left there at start belonged to interrupted jobs and is removed.
    pub fn uploads(&self) -> PathBuf {
        self.dir.join("uploads")
    }
}
