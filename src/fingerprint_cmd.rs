//! `fpnode fingerprint FILE...`: fpcalc's output for many files, computed
//! on `--jobs` threads and printed in the order given (docs/audio.md,
//! "fpnode fingerprint").
//!
//! Output is fpcalc 1.5.1's: `DURATION=`/`FINGERPRINT=` lines, or `-plain`,
//! or `-json` (`{"duration": 30.00, "fingerprint": ...}`); with several
//! files each result starts with `FILE=` (a `"file"` key in JSON) and text
//! results are separated by a blank line. Errors go to standard error as
//! `ERROR: FILE: message`. Exit status as fpcalc's: 0 when every file was
//! fingerprinted, 2 when none was, 3 when some were.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;

use fpnode_audio::decode::Source;
use fpnode_audio::{AudioError, Fingerprint, FingerprintOptions};

use crate::cli::FingerprintArgs;

/// Results waiting to be printed, per worker: bounds memory whatever the
/// number of files (a slow file holds at most this many finished ones).
const WINDOW_PER_JOB: usize = 4;

type Job = (PathBuf, mpsc::SyncSender<Result<Fingerprint, AudioError>>);

pub fn run(args: &FingerprintArgs) -> ExitCode {
    if args.algorithm != 2 {
        eprintln!(
            "ERROR: algorithm {} is not supported (only 2, fpcalc's default and AcoustID's)",
            args.algorithm
        );
        return ExitCode::from(2);
    }
    if !(args.length >= 0.0 && args.length.is_finite()) {
        eprintln!("ERROR: -length must be a number of seconds >= 0");
        return ExitCode::from(2);
    }
    let options = FingerprintOptions {
        max_seconds: (args.length > 0.0).then_some(args.length),
        deadline: None,
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 256);
    let window = jobs * WINDOW_PER_JOB;
    let several = args.files.len() > 1;
    let (ok, failed) = std::thread::scope(|scope| {
        let (work, queue) = crossbeam_channel::bounded::<Job>(window);
        for _ in 0..jobs.min(args.files.len()) {
            let queue = queue.clone();
            let options = &options;
            scope.spawn(move || {
                for (path, reply) in queue {
                    // The receiver may be gone only if printing failed.
                    let _ = reply.send(fpnode_audio::fingerprint(Source::File(&path), options));
                }
            });
        }
        drop(queue);
        let mut pending: VecDeque<(&PathBuf, mpsc::Receiver<_>)> = VecDeque::new();
        let mut out = std::io::stdout().lock();
        let (mut ok, mut failed) = (0usize, 0usize);
        let mut print = |path: &PathBuf, result: Result<Fingerprint, AudioError>| {
            match result {
                Ok(fp) => {
                    let text = render(args, path, &fp, several, ok == 0);
                    ok += 1;
                    if out
                        .write_all(text.as_bytes())
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        // Standard output closed (`| head`): stop quietly.
                        return false;
                    }
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("ERROR: {}: {e}", path.display());
                }
            }
            true
        };
        let mut open = true;
        for path in &args.files {
            let (reply, result) = mpsc::sync_channel(1);
            if work.send((path.clone(), reply)).is_err() {
                break;
            }
            pending.push_back((path, result));
            if pending.len() >= window
                && let Some((path, result)) = pending.pop_front()
            {
                open = print(path, receive(&result));
            }
            if !open {
                break;
            }
        }
        drop(work);
        while open && let Some((path, result)) = pending.pop_front() {
            open = print(path, receive(&result));
        }
        (ok, failed)
    });
    match (ok, failed) {
        (_, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(2),
        _ => ExitCode::from(3),
    }
}

fn receive(
    result: &mpsc::Receiver<Result<Fingerprint, AudioError>>,
) -> Result<Fingerprint, AudioError> {
    result
        .recv()
        .unwrap_or_else(|_| Err(AudioError::DecoderPanic("the worker thread stopped".into())))
}

/// One file's output, fpcalc's format.
fn render(
    args: &FingerprintArgs,
    path: &std::path::Path,
    fp: &Fingerprint,
    several: bool,
    first: bool,
) -> String {
    let items = |items: &[u32]| -> Vec<String> {
        items
            .iter()
            .map(|&i| {
                if args.signed {
                    (i as i32).to_string()
                } else {
                    i.to_string()
                }
            })
            .collect()
    };
    let mut out = String::new();
    if args.json {
        let fingerprint = if args.raw {
            serde_json::Value::from(
                fp.items
                    .iter()
                    .map(|&i| {
                        if args.signed {
                            serde_json::Value::from(i as i32)
                        } else {
                            serde_json::Value::from(i)
                        }
                    })
                    .collect::<Vec<_>>(),
            )
        } else {
            serde_json::Value::from(fp.compressed())
        };
        out.push('{');
        if several {
            let _ = write!(
                out,
                "\"file\": {}, ",
                serde_json::Value::from(path.display().to_string())
            );
        }
        let _ = write!(
            out,
            "\"duration\": {:.2}, \"fingerprint\": {fingerprint}",
            fp.duration
        );
        if args.terms {
            let _ = write!(
                out,
                ", \"terms\": {}",
                serde_json::Value::from(fp.query_terms())
            );
        }
        out.push_str("}\n");
        return out;
    }
    let fingerprint = if args.raw {
        items(&fp.items).join(",")
    } else {
        fp.compressed()
    };
    if args.plain {
        let _ = writeln!(out, "{fingerprint}");
        return out;
    }
    if several {
        if !first {
            out.push('\n');
        }
        let _ = writeln!(out, "FILE={}", path.display());
    }
    let _ = writeln!(out, "DURATION={}", fp.duration as u64);
    let _ = writeln!(out, "FINGERPRINT={fingerprint}");
    if args.terms {
        let terms: Vec<String> = fp.query_terms().iter().map(u32::to_string).collect();
        let _ = writeln!(out, "QUERY_TERMS={}", terms.join(","));
    }
    out
}
