//! The audio commands, `fpnode fingerprint` and `fpnode describe`
//! (docs/audio.md): each file is worked on by one of `--jobs` threads and
//! the results are printed in the order the files were given.

pub mod describe;
pub mod fingerprint;

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;

use fpnode_audio::AudioError;

/// Results waiting to be printed, per worker: bounds memory whatever the
/// number of files (a slow file holds at most this many finished ones).
const WINDOW_PER_JOB: usize = 4;

/// Runs `work` over `files` on `jobs` threads; `render` turns each success
/// into its text (`first` for the first success printed). Errors go to
/// standard error as `ERROR: FILE: message`. The exit status is fpcalc's: 0
/// when every file succeeded, 2 when none did, 3 when some did.
pub fn run_files<T: Send>(
    files: &[PathBuf],
    jobs: Option<usize>,
    work: impl Fn(&Path) -> Result<T, AudioError> + Sync,
    render: impl Fn(&Path, &T, bool) -> String,
) -> ExitCode {
    let jobs = jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 256);
    let window = jobs * WINDOW_PER_JOB;
    let (ok, failed) = std::thread::scope(|scope| {
        type Job<'a, T> = (&'a Path, mpsc::SyncSender<Result<T, AudioError>>);
        let (work_tx, queue) = crossbeam_channel::bounded::<Job<'_, T>>(window);
        for _ in 0..jobs.min(files.len()) {
            let queue = queue.clone();
            let work = &work;
            scope.spawn(move || {
                for (path, reply) in queue {
                    // The receiver is gone only if printing stopped.
                    let _ = reply.send(work(path));
                }
            });
        }
        drop(queue);
        let mut out = std::io::stdout().lock();
        let (mut ok, mut failed) = (0usize, 0usize);
        let mut print = |path: &Path, result: &mpsc::Receiver<Result<T, AudioError>>| {
            let result = result.recv().unwrap_or_else(|_| {
                Err(AudioError::DecoderPanic("the worker thread stopped".into()))
            });
            match result {
                Ok(value) => {
                    let text = render(path, &value, ok == 0);
                    ok += 1;
                    // Standard output closed (`| head`): stop quietly.
                    out.write_all(text.as_bytes())
                        .and_then(|()| out.flush())
                        .is_ok()
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("ERROR: {}: {e}", path.display());
                    true
                }
            }
        };
        let mut pending = VecDeque::new();
        let mut open = true;
        for path in files {
            let (reply, result) = mpsc::sync_channel(1);
            if work_tx.send((path.as_path(), reply)).is_err() {
                break;
            }
            pending.push_back((path, result));
            if pending.len() >= window
                && let Some((path, result)) = pending.pop_front()
            {
                open = print(path, &result);
            }
            if !open {
                break;
            }
        }
        drop(work_tx);
        while open && let Some((path, result)) = pending.pop_front() {
            open = print(path, &result);
        }
        (ok, failed)
    });
    match (ok, failed) {
        (_, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(2),
        _ => ExitCode::from(3),
    }
}
