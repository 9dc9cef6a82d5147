//! `fpnode fingerprint FILE...`: fpcalc 1.5.1's output (docs/audio.md,
//! "fpnode fingerprint"): `DURATION=`/`FINGERPRINT=` lines, or `-plain`, or
//! `-json` (`{"duration": 30.00, "fingerprint": ...}`); with several files
//! each result starts with `FILE=` (a `"file"` key in JSON) and text results
//! are separated by a blank line.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use fpnode_audio::decode::Source;
use fpnode_audio::{Fingerprint, FingerprintOptions};

use crate::cli::FingerprintArgs;

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
    let several = args.files.len() > 1;
    super::run_files(
        &args.files,
        args.jobs,
        |path| fpnode_audio::fingerprint(Source::File(path), &options),
        |path, fp, first| render(args, path, fp, several, first),
    )
}

/// One file's output, fpcalc's format.
fn render(
    args: &FingerprintArgs,
    path: &Path,
    fp: &Fingerprint,
    several: bool,
    first: bool,
) -> String {
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
        // fpcalc keeps whole milliseconds, then prints two decimals.
        let seconds = (fp.duration * 1000.0).floor() / 1000.0;
        let _ = write!(
            out,
            "\"duration\": {seconds:.2}, \"fingerprint\": {fingerprint}"
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
        let items: Vec<String> = fp
            .items
            .iter()
            .map(|&i| {
                if args.signed {
                    (i as i32).to_string()
                } else {
                    i.to_string()
                }
            })
            .collect();
        items.join(",")
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
