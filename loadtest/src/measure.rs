//! What the runner reads off the machine: a process's memory from
//! `/proc/<pid>/status`, the bytes a directory holds, the page cache dropped
//! for cold-start figures, and the disk's own random-read latency (so search
//! latency over an index larger than RAM can be read against it).

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;

/// A histogram of microseconds, 3 significant digits over the default range.
pub fn histogram() -> Histogram<u64> {
    // Valid constant parameters: cannot fail.
    Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!())
}

/// The `q` quantile of a histogram of microseconds, in milliseconds.
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// p50, p99, p99.9 and max of a histogram of microseconds, in milliseconds.
pub fn percentiles(h: &Histogram<u64>) -> [f64; 4] {
    [
        ms(h, 0.5),
        ms(h, 0.99),
        ms(h, 0.999),
        h.max() as f64 / 1000.0,
    ]
}

/// A `kB` field of `/proc/<pid>/status` (`RssAnon`, `RssFile`, `VmHWM`), or 0
/// once the process is gone.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Bytes of the regular files under `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    files(dir).iter().map(|(_, len)| len).sum()
}

fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) if m.is_file() => out.push((e.path(), m.len())),
                _ => {}
            }
        }
    }
    out
}

/// Writes dirty pages and drops the page cache (needs root); false if the
/// kernel refused, so a report can say the "cold" figure was not cold.
pub fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Random 4 KiB reads with `O_DIRECT` (past the page cache), one at a time,
/// over the files of a directory: the latency a search waits on when its
/// blocks are not cached.
#[derive(Debug, Clone, Serialize)]
pub struct DiskResult {
    pub bytes: u64,
    pub reads: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub reads_per_second: f64,
}

impl std::fmt::Display for DiskResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "disk: {} random 4 KiB O_DIRECT reads over {:.2} GB, one at a time: p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms max {:.3} ms ({:.0} reads/s)",
            self.reads,
            self.bytes as f64 / 1e9,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.reads_per_second
        )
    }
}

pub fn random_reads(dir: &Path, reads: u64, seed: u64) -> anyhow::Result<DiskResult> {
    const BLOCK: u64 = 4096;
    let files: Vec<(std::fs::File, u64)> = files(dir)
        .into_iter()
        .filter(|(_, len)| *len >= BLOCK)
        .map(|(path, len)| {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
                .with_context(|| format!("cannot open {} with O_DIRECT", path.display()))
                .map(|f| (f, len))
        })
        .collect::<anyhow::Result<_>>()?;
    let total: u64 = files.iter().map(|(_, len)| len / BLOCK).sum();
    if total == 0 {
        bail!("no file of at least 4 KiB under {}", dir.display());
    }
    // O_DIRECT wants an aligned buffer: take the aligned 4 KiB inside 8 KiB.
    let mut raw = vec![0u8; 2 * BLOCK as usize];
    let start = raw.as_ptr().align_offset(BLOCK as usize);
    let buf = &mut raw[start..start + BLOCK as usize];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut hist = histogram();
    let began = Instant::now();
    for _ in 0..reads {
        let mut block = rng.gen_range(0..total);
        let (file, _) = files
            .iter()
            .find(|(_, len)| {
                let blocks = len / BLOCK;
                if block < blocks {
                    true
                } else {
                    block -= blocks;
                    false
                }
            })
            .unwrap_or(&files[0]);
        let t = Instant::now();
        file.read_at(buf, block * BLOCK)
            .context("O_DIRECT read failed")?;
        hist.record(t.elapsed().as_micros().max(1) as u64)?;
    }
    let secs = began.elapsed().as_secs_f64();
    let [p50_ms, p99_ms, p999_ms, max_ms] = percentiles(&hist);
    Ok(DiskResult {
        bytes: files.iter().map(|(_, len)| len).sum(),
        reads,
        p50_ms,
        p99_ms,
        p999_ms,
        max_ms,
        reads_per_second: reads as f64 / secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_and_directory_sizes_are_read() {
        assert!(status_kb(std::process::id(), "VmRSS") > 0);
        assert_eq!(status_kb(std::process::id(), "NoSuchField"), 0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x"), vec![1u8; 10_000]).unwrap();
        std::fs::write(dir.path().join("y"), vec![1u8; 20_000]).unwrap();
        assert_eq!(dir_bytes(dir.path()), 30_000);
        // O_DIRECT is refused by tmpfs; where it works, every read is timed.
        if let Ok(r) = random_reads(dir.path(), 50, 1) {
            assert_eq!(r.reads, 50);
            assert!(r.max_ms >= r.p50_ms);
        }
    }
}
