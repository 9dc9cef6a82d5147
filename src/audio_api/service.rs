//! What the audio endpoints share: the media roots a path must resolve
//! under, the decode slots (a bounded number decode at once, a bounded
//! number wait, the rest get 503), and the LRU cache of descriptors keyed by
//! file, size and modification time (docs/api.md, "Audio").

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::AudioApiError;
use fpnode_audio::descriptor::Description;

#[derive(Debug, Clone)]
pub struct AudioOptions {
    /// Directories whose files `filepath` may name.
    pub media_roots: Vec<PathBuf>,
    /// Decodes running at once.
    pub max_decodes: usize,
    /// Requests waiting for a decode slot; beyond, 503.
    pub max_waiting: usize,
    /// How long a request waits for a slot before its 503.
    pub wait: Duration,
    /// Descriptors kept (about 1 KB each); 0 disables the cache.
    pub cache_entries: usize,
    /// Largest audio upload.
    pub max_upload_bytes: u64,
    /// A decode taking longer is abandoned (`DecodeTimeout`).
    pub decode_timeout: Duration,
    /// Where uploads are spooled (the system's temporary directory if unset).
    pub spool_dir: Option<PathBuf>,
}

impl Default for AudioOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        AudioOptions {
            media_roots: Vec::new(),
            max_decodes: cores,
            max_waiting: 4 * cores,
            wait: Duration::from_secs(30),
            cache_entries: 10_000,
            max_upload_bytes: 1 << 30,
            decode_timeout: Duration::from_secs(120),
            spool_dir: None,
        }
    }
}

/// A file opened under a media root, with what identifies its content.
#[derive(Debug)]
pub struct MediaFile {
    pub file: File,
    pub key: CacheKey,
    pub extension: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub path: PathBuf,
    pub size: u64,
    pub modified: Option<SystemTime>,
    /// Device, inode and status-change time: a rewrite that keeps size and
    /// modification time (`cp -p`, `rsync -t`) still changes these.
    pub device: u64,
    pub inode: u64,
    pub changed: (i64, i64),
}

#[derive(Debug)]
pub struct AudioService {
    pub options: AudioOptions,
    roots: Vec<PathBuf>,
    admission: std::sync::Arc<Semaphore>,
    slots: std::sync::Arc<Semaphore>,
    cache: Option<Mutex<lru::LruCache<CacheKey, Description>>>,
    pub started: Instant,
}

impl AudioService {
    /// Canonicalises the media roots; a root that does not exist is an error
    /// (a typo must not silently refuse every request).
    pub fn new(options: AudioOptions) -> anyhow::Result<Self> {
        let mut roots = Vec::new();
        for root in &options.media_roots {
            let real = std::fs::canonicalize(root)
                .map_err(|e| anyhow::anyhow!("media root {}: {e}", root.display()))?;
            roots.push(real);
        }
        Ok(AudioService {
            admission: std::sync::Arc::new(Semaphore::new(
                options.max_decodes.max(1) + options.max_waiting,
            )),
            slots: std::sync::Arc::new(Semaphore::new(options.max_decodes.max(1))),
            cache: std::num::NonZeroUsize::new(options.cache_entries)
                .map(|capacity| Mutex::new(lru::LruCache::new(capacity))),
            roots,
            started: Instant::now(),
            options,
        })
    }

    /// Admits a request before its body is read: at most `max_decodes +
    /// max_waiting` audio requests are in the house (reading their upload,
    /// waiting for a slot or decoding); the rest are refused at once, so
    /// spooled uploads and waiters stay bounded.
    pub fn admit(&self) -> Result<Admission, AudioApiError> {
        match self.admission.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admission {
                _permit: permit,
                slots: self.slots.clone(),
                wait: self.options.wait,
            }),
            Err(_) => {
                metrics::counter!("fpnode_audio_rejected_total").increment(1);
                Err(AudioApiError::Overloaded)
            }
        }
    }

    /// Opens `path` if it resolves (symbolic links and `..` followed) under
    /// a media root. Blocking: call on a blocking thread.
    pub fn open_media(&self, path: &str) -> Result<MediaFile, AudioApiError> {
        use std::os::unix::fs::MetadataExt;
        if self.roots.is_empty() {
            return Err(AudioApiError::FileNotAllowed(
                "no media root is configured (--media-root)".into(),
            ));
        }
        let requested = Path::new(path);
        let refused =
            || AudioApiError::FileNotAllowed(format!("{path} is outside the media roots"));
        if !requested.is_absolute() {
            return Err(AudioApiError::FileNotAllowed(format!(
                "{path}: not an absolute path"
            )));
        }
        // Resolve first, and answer the same for anything outside the
        // roots, whether it exists or not (no probing of the filesystem).
        let resolved = match std::fs::canonicalize(requested) {
            Ok(p) => p,
            Err(_) if !self.under_roots(requested) => return Err(refused()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AudioApiError::FileNotFound);
            }
            Err(_) => return Err(refused()),
        };
        if !self.under_roots(&resolved) {
            return Err(refused());
        }
        // Non-blocking: a FIFO or device under a root must not hang the open.
        let file = crate::opened::open_nonblocking(&resolved).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AudioApiError::FileNotFound,
            _ => AudioApiError::FileNotAllowed(format!("{path}: {e}")),
        })?;
        // Where the open file really is (the path may have been swapped
        // between the resolution and the open).
        let real = crate::opened::real_path(&file)
            .map_err(|e| AudioApiError::Internal(format!("resolving {path}: {e}")))?;
        if !self.under_roots(&real) {
            return Err(refused());
        }
        let meta = file
            .metadata()
            .map_err(|e| AudioApiError::Internal(format!("{path}: {e}")))?;
        if !meta.is_file() {
            return Err(AudioApiError::FileNotFound);
        }
        let extension = real.extension().and_then(|e| e.to_str()).map(str::to_owned);
        Ok(MediaFile {
            file,
            key: CacheKey {
                path: real,
                size: meta.len(),
                modified: meta.modified().ok(),
                device: meta.dev(),
                inode: meta.ino(),
                changed: (meta.ctime(), meta.ctime_nsec()),
            },
            extension,
        })
    }

    fn under_roots(&self, path: &Path) -> bool {
        self.roots.iter().any(|root| path.starts_with(root))
    }

    pub fn cached(&self, key: &CacheKey) -> Option<Description> {
        let hit = self.cache.as_ref()?.lock().ok()?.get(key).cloned();
        if hit.is_some() {
            metrics::counter!("fpnode_audio_cache_hits_total").increment(1);
        } else {
            metrics::counter!("fpnode_audio_cache_misses_total").increment(1);
        }
        hit
    }

    pub fn remember(&self, key: CacheKey, description: Description) {
        if let Some(Ok(mut cache)) = self.cache.as_ref().map(Mutex::lock) {
            cache.put(key, description);
        }
    }
}

/// An admitted request; dropping it (the request ended or its client left)
/// lets the next one in.
#[derive(Debug)]
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    slots: std::sync::Arc<Semaphore>,
    wait: Duration,
}

impl Admission {
    /// A decode slot, waiting at most `wait` (then `Overloaded`).
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, AudioApiError> {
        match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                metrics::counter!("fpnode_audio_rejected_total").increment(1);
                Err(AudioApiError::Overloaded)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(max_decodes: usize, max_waiting: usize) -> AudioService {
        AudioService::new(AudioOptions {
            max_decodes,
            max_waiting,
            wait: Duration::from_millis(200),
            ..AudioOptions::default()
        })
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn admission_is_bounded_and_waiters_time_out() {
        let s = service(1, 1);
        let a = s.admit().unwrap();
        let b = s.admit().unwrap();
        assert!(matches!(s.admit(), Err(AudioApiError::Overloaded)));
        let slot = a.slot().await.unwrap();
        // b waits for the only slot, then gives up after `wait`.
        assert!(matches!(b.slot().await, Err(AudioApiError::Overloaded)));
        drop(slot);
        assert!(b.slot().await.is_ok());
        // A request that leaves (its future dropped) lets the next one in.
        drop(a);
        let c = s.admit().unwrap();
        drop(b);
        drop(c);
        let all: Vec<_> = (0..2).map(|_| s.admit().unwrap()).collect();
        assert!(matches!(s.admit(), Err(AudioApiError::Overloaded)));
        drop(all);
        assert!(s.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_frees_its_place() {
        let s = service(1, 1);
        let a = s.admit().unwrap();
        let held = a.slot().await.unwrap();
        let b = s.admit().unwrap();
        let waiting = tokio::spawn(async move { b.slot().await.map(drop) });
        tokio::task::yield_now().await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        drop(a);
        assert!(s.admit().is_ok() && s.admit().is_ok());
    }
}
