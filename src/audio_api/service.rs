//! What the audio endpoints share: the media roots a path must resolve
//! under, the decode slots (a bounded number decode at once, a bounded
//! number wait, the rest get 503), and the LRU cache of descriptors keyed by
//! file, size and modification time (docs/api.md, "Audio").

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Descriptors kept (about 1 KB each).
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
}

#[derive(Debug)]
pub struct AudioService {
    pub options: AudioOptions,
    roots: Vec<PathBuf>,
    slots: std::sync::Arc<Semaphore>,
    waiting: AtomicUsize,
    cache: Mutex<lru::LruCache<CacheKey, Description>>,
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
        let capacity = std::num::NonZeroUsize::new(options.cache_entries.max(1))
            .unwrap_or(std::num::NonZeroUsize::MIN);
        Ok(AudioService {
            slots: std::sync::Arc::new(Semaphore::new(options.max_decodes.max(1))),
            waiting: AtomicUsize::new(0),
            cache: Mutex::new(lru::LruCache::new(capacity)),
            roots,
            started: Instant::now(),
            options,
        })
    }

    /// A decode slot now, or after waiting among at most `max_waiting`
    /// others for at most `wait`; else `Overloaded`.
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, AudioApiError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = Leave(&self.waiting);
        if waiting >= self.options.max_waiting {
            metrics::counter!("fpnode_audio_rejected_total").increment(1);
            return Err(AudioApiError::Overloaded);
        }
        match tokio::time::timeout(self.options.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                metrics::counter!("fpnode_audio_rejected_total").increment(1);
                Err(AudioApiError::Overloaded)
            }
        }
    }

    /// Opens `path` if it resolves (symbolic links and `..` followed) under
    /// a media root. Blocking: call on a blocking thread.
    pub fn open_media(&self, path: &str) -> Result<MediaFile, AudioApiError> {
        use std::os::fd::AsRawFd;
        if self.roots.is_empty() {
            return Err(AudioApiError::FileNotAllowed(
                "no media root is configured (--media-root)".into(),
            ));
        }
        let requested = Path::new(path);
        if !requested.is_absolute() {
            return Err(AudioApiError::FileNotAllowed(format!(
                "{path}: not an absolute path"
            )));
        }
        let file = match File::open(requested) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(AudioApiError::FileNotFound);
            }
            Err(e) => return Err(AudioApiError::FileNotAllowed(format!("{path}: {e}"))),
        };
        // Where the open file really is (no second lookup of `path`, which
        // could have been swapped since).
        let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| AudioApiError::Internal(format!("resolving {path}: {e}")))?;
        if !self.roots.iter().any(|root| real.starts_with(root)) {
            return Err(AudioApiError::FileNotAllowed(format!(
                "{path} is outside the media roots"
            )));
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
            },
            extension,
        })
    }

    pub fn cached(&self, key: &CacheKey) -> Option<Description> {
        let hit = self.cache.lock().ok()?.get(key).cloned();
        if hit.is_some() {
            metrics::counter!("fpnode_audio_cache_hits_total").increment(1);
        } else {
            metrics::counter!("fpnode_audio_cache_misses_total").increment(1);
        }
        hit
    }

    pub fn remember(&self, key: CacheKey, description: Description) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(key, description);
        }
    }
}

struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
