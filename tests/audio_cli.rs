//! `fpnode fingerprint` and `fpnode describe` against Debian's `fpcalc` on
//! generated audio in every format (docs/audio.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsStr;
use std::path::Path;

use common::audio::{FORMATS, library, run, track};

const FPNODE: &str = env!("CARGO_BIN_EXE_fpnode");

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn every_format_fingerprints_as_fpcalc_does() {
    // Identical in every format (ADPCM, which fpcalc's build cannot decode,
    // against fpcalc on FFmpeg's decoding of it); the script exits 1 when a
    // lossless file differs and prints the table.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/compare-fpcalc");
    let (code, out, err) = run(&script, &[library().as_os_str(), os(FPNODE)]);
    assert_eq!(code, 0, "compare-fpcalc failed:\n{out}\n{err}");
    for format in FORMATS {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(format))
            .unwrap_or_else(|| panic!("{format} missing from\n{out}"));
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns[1], "2", "{line}");
        assert_eq!(columns[2], "2", "{format} not identical to fpcalc: {line}");
        assert_eq!(columns[4], "2", "{format}: durations differ: {line}");
    }
}

#[test]
fn the_output_is_fpcalcs_in_each_mode() {
    let file = track("mp3", 1);
    for flags in [
        &[][..],
        &["-raw"],
        &["-json"],
        &["-raw", "-json"],
        &["-plain"],
        &["-length", "5"],
        &["-length", "0", "-raw"],
        &["-raw", "-signed"],
    ] {
        let mut args: Vec<&OsStr> = flags.iter().map(|f| os(f)).collect();
        args.push(file.as_os_str());
        let (_, want, _) = run("fpcalc", &args);
        let mut ours = vec![os("fingerprint")];
        ours.extend(&args);
        let (code, got, err) = run(FPNODE, &ours);
        assert_eq!(code, 0, "{flags:?}: {err}");
        assert_eq!(got, want, "{flags:?}");
    }
}

#[test]
fn several_files_are_labelled_in_order_and_failures_set_the_status() {
    let (a, b) = (track("flac", 1), track("ogg", 2));
    let (code, out, _) = run(FPNODE, &[os("fingerprint"), a.as_os_str(), b.as_os_str()]);
    assert_eq!(code, 0);
    let files: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("FILE="))
        .collect();
    assert_eq!(files, [a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(out.matches("FINGERPRINT=").count(), 2);
    assert!(
        out.contains("\n\nFILE="),
        "results separated by a blank line:\n{out}"
    );

    let (code, out, _) = run(
        FPNODE,
        &[os("fingerprint"), os("-json"), a.as_os_str(), b.as_os_str()],
    );
    assert_eq!(code, 0);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["file"], b.to_str().unwrap());

    let missing = library().join("no-such-file.mp3");
    let (code, out, err) = run(
        FPNODE,
        &[os("fingerprint"), a.as_os_str(), missing.as_os_str()],
    );
    assert_eq!(code, 3, "some failed: {err}");
    assert!(out.contains("FINGERPRINT="));
    assert!(
        err.contains("ERROR:") && err.contains("no-such-file.mp3"),
        "{err}"
    );
    let (code, _, _) = run(FPNODE, &[os("fingerprint"), missing.as_os_str()]);
    assert_eq!(code, 2, "all failed");
    let (code, _, err) = run(
        FPNODE,
        &[os("fingerprint"), os("-algorithm"), os("1"), a.as_os_str()],
    );
    assert_eq!(code, 2);
    assert!(err.contains("algorithm 1 is not supported"), "{err}");
}

#[test]
fn query_terms_are_acoustids_120() {
    let file = track("flac", 1);
    let (code, out, _) = run(
        FPNODE,
        &[
            os("fingerprint"),
            os("-json"),
            os("-terms"),
            file.as_os_str(),
        ],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let terms = v["terms"].as_array().unwrap();
    assert!(!terms.is_empty() && terms.len() <= 120, "{}", terms.len());
    assert!(
        terms.iter().all(|t| t.as_u64().unwrap() & 0xF == 0),
        "masked to 28 bits"
    );
}

#[test]
fn bad_files_get_named_errors_never_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    let flac = std::fs::read(track("flac", 1)).unwrap();
    let cases = [
        (write("empty.mp3", b""), "empty"),
        (
            write("text.wav", b"this is not audio at all, just some text\n"),
            "not an audio file",
        ),
        (write("header-only.flac", &flac[..200]), ""),
        (dir.path().to_path_buf(), ""),
    ];
    for (path, message) in &cases {
        let (code, out, err) = run(FPNODE, &[os("fingerprint"), path.as_os_str()]);
        assert_eq!(code, 2, "{}: {out} {err}", path.display());
        assert!(err.starts_with("ERROR: "), "{}: {err}", path.display());
        assert!(
            err.to_lowercase().contains(message),
            "{}: {err}",
            path.display()
        );
    }
    // Truncated files give what their audio allows: a fingerprint, or a
    // named error when too little is left.
    for format in ["mp3", "flac", "m4a", "ogg", "opus", "wavms"] {
        let data = std::fs::read(track(format, 1)).unwrap();
        for share in [10, 50, 90] {
            let p = write(
                &format!("cut-{share}-{format}"),
                &data[..data.len() * share / 100],
            );
            let (code, out, err) = run(FPNODE, &[os("fingerprint"), p.as_os_str()]);
            match code {
                0 => assert!(out.contains("FINGERPRINT="), "{format} {share}%"),
                2 => assert!(err.starts_with("ERROR: "), "{format} {share}%: {err}"),
                _ => panic!("{format} cut at {share}%: exit {code}: {err}"),
            }
        }
    }
}

#[test]
fn describe_prints_the_25_fields_for_every_format() {
    let files: Vec<_> = FORMATS.iter().map(|f| track(f, 1)).collect();
    let mut args = vec![os("describe")];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let (code, out, err) = run(FPNODE, &args);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), FORMATS.len());
    for (line, file) in lines.iter().zip(&files) {
        assert_eq!(line["file"], file.to_str().unwrap());
        let d = line["descriptor"].as_object().unwrap();
        assert_eq!(d.len(), 25, "{line}");
        assert!(
            d.values().all(|v| v.as_f64().is_some_and(f64::is_finite)),
            "{line}"
        );
        // Track 1 is 8 s at 44.1 kHz (Opus decodes at 48 kHz), stereo.
        let opus = line["metadata"]["codec"] == "opus";
        assert_eq!(
            line["metadata"]["sample_rate"],
            if opus { 48000 } else { 44100 },
            "{line}"
        );
        assert_eq!(line["metadata"]["channels"], 2, "{line}");
        let duration = line["metadata"]["duration_sec"].as_f64().unwrap();
        assert!((duration - 8.0).abs() < 0.1, "{line}");
        let bands: f64 = d
            .iter()
            .filter(|(k, _)| k.starts_with("freq_"))
            .map(|(_, v)| v.as_f64().unwrap())
            .sum();
        assert!((bands - 100.0).abs() < 1e-6, "{line}");
        assert!(d["loudness_lufs"].as_f64().unwrap() > -30.0, "{line}");
    }
}
