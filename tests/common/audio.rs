//! Generated audio for the audio tests: scripts/gen-audio's music-like
//! tracks, encoded with ffmpeg, lame and sox (scripts/setup installs them),
//! made once per test binary.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Every format docs/audio.md lists, as gen-audio names its folders.
pub const FORMATS: [&str; 15] = [
    "src", "wav24", "wavf32", "wavu8", "wavima", "wavms", "flac", "mp3", "ogg", "opus", "m4a",
    "alac", "aiff", "mkv", "webm",
];

fn generate(tracks: u32, seconds: u32, formats: Option<&str>) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let mut cmd = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen-audio"));
    cmd.arg(&dir)
        .arg(tracks.to_string())
        .arg(seconds.to_string());
    if let Some(f) = formats {
        cmd.env("GEN_AUDIO_FORMATS", f);
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "scripts/gen-audio failed: {status}");
    dir
}

/// Two 8-second tracks (44.1 kHz stereo, 22.05 kHz mono) in every format.
pub fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| generate(2, 8, None))
}

/// Four 60-second tracks, WAV and MP3.
pub fn long_tracks() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| generate(4, 60, Some("mp3")))
}

/// The one file of `format` for track `n` (1-based).
pub fn track(format: &str, n: u32) -> PathBuf {
    let folder = library().join(format);
    let prefix = format!("track-{n:03}.");
    std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&prefix)
        })
        .unwrap_or_else(|| panic!("no track {n} in {}", folder.display()))
}

/// Runs a command, returning (exit code, stdout, stderr).
pub fn run(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&std::ffi::OsStr],
) -> (i32, String, String) {
    let out = Command::new(program).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
