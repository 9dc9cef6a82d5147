//! Decoding hostile input: every format's file truncated, bit-flipped,
//! overwritten and spliced, plus random bytes under every extension. Each
//! must end in a fingerprint or a named error, within its deadline, never a
//! panic or a hang (docs/audio.md, "Decoding").
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::audio::{FORMATS, track};
use fpnode_audio::decode::Source;
use fpnode_audio::descriptor::{DescribeOptions, describe};
use fpnode_audio::{AudioError, FingerprintOptions, fingerprint};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const MUTATIONS_PER_FILE: usize = 40;
const LIMIT: Duration = Duration::from_secs(20);

fn mutate(rng: &mut Xoshiro256PlusPlus, data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    match rng.gen_range(0..5) {
        0 => out.truncate(rng.gen_range(0..data.len())),
        1 => {
            for _ in 0..rng.gen_range(1..64) {
                let i = rng.gen_range(0..out.len());
                out[i] ^= 1 << rng.gen_range(0..8);
            }
        }
        2 => {
            // A run of random bytes, often inside the headers.
            let at = if rng.gen_bool(0.5) {
                rng.gen_range(0..out.len().min(512))
            } else {
                rng.gen_range(0..out.len())
            };
            let len = rng.gen_range(1..256).min(out.len() - at);
            rng.fill(&mut out[at..at + len]);
        }
        3 => {
            // A piece of the file repeated elsewhere (duplicated headers).
            let from = rng.gen_range(0..out.len());
            let len = rng.gen_range(1..4096).min(out.len() - from);
            let piece = out[from..from + len].to_vec();
            let at = rng.gen_range(0..out.len());
            out.splice(at..at, piece);
        }
        _ => {
            // Sizes and counts: 32-bit words set to extremes.
            for _ in 0..rng.gen_range(1..8) {
                let at = rng.gen_range(0..out.len().saturating_sub(4).max(1));
                let word: u32 = [0, u32::MAX, 0x7FFF_FFFF, 1][rng.gen_range(0..4)];
                out[at..(at + 4).min(data.len())]
                    .copy_from_slice(&word.to_le_bytes()[..(at + 4).min(data.len()) - at]);
            }
        }
    }
    out
}

/// Fingerprint and descriptor of `data`; any outcome but an escaped panic
/// or an overrun of the deadline passes, and an error must have a message.
/// Returns how many of the two were decoder panics caught as
/// `DecoderPanic`: symphonia 0.6.1 overflows integers on some corrupt
/// input (MS ADPCM, Matroska), a panic in builds with overflow checks (the
/// tests'), wrapping in release builds; either way a named error
/// (docs/audio.md, "Decoding").
fn decode_both(data: &[u8], extension: Option<&str>, what: &str) -> usize {
    let started = Instant::now();
    let deadline = Some(started + LIMIT);
    let source = Source::Bytes { data, extension };
    let fp = fingerprint(
        source,
        &FingerprintOptions {
            max_seconds: None,
            deadline,
        },
    );
    let described = describe(
        source,
        &DescribeOptions {
            max_seconds: None,
            deadline,
        },
    );
    assert!(
        started.elapsed() < 2 * LIMIT,
        "{what}: took {:?}",
        started.elapsed()
    );
    let mut caught = 0;
    for e in [fp.err(), described.err()].into_iter().flatten() {
        assert!(!e.to_string().is_empty(), "{what}");
        if let AudioError::DecoderPanic(message) = &e {
            eprintln!("{what}: decoder panic caught: {message}");
            caught += 1;
        }
    }
    caught
}

#[test]
fn mutated_files_of_every_format_end_in_a_result_or_a_named_error() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x00f0_0d1e);
    for format in FORMATS {
        let path = track(format, 1);
        let data = std::fs::read(&path).unwrap();
        let extension = path.extension().and_then(|e| e.to_str());
        for i in 0..MUTATIONS_PER_FILE {
            let mutated = mutate(&mut rng, &data);
            decode_both(&mutated, extension, &format!("{format} mutation {i}"));
        }
        // The unmutated file decodes.
        assert_eq!(decode_both(&data, extension, format), 0);
        let source = Source::Bytes {
            data: &data,
            extension,
        };
        assert!(
            fingerprint(source, &FingerprintOptions::default()).is_ok(),
            "{format}"
        );
    }
}

#[test]
fn random_bytes_under_every_extension_are_refused_by_name() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    for extension in [
        "wav", "flac", "mp3", "ogg", "opus", "m4a", "aiff", "mkv", "webm", "caf", "aac", "bin",
    ] {
        for len in [1usize, 7, 100, 4096, 300_000] {
            let mut data = vec![0u8; len];
            rng.fill(&mut data[..]);
            let source = Source::Bytes {
                data: &data,
                extension: Some(extension),
            };
            match fingerprint(source, &FingerprintOptions::default()) {
                Err(
                    AudioError::UnknownFormat
                    | AudioError::NoAudioTrack
                    | AudioError::Corrupt(_)
                    | AudioError::NoAudio
                    | AudioError::TooShort { .. }
                    | AudioError::UnsupportedCodec(_),
                ) => {}
                other => panic!("{extension} {len} random bytes: {other:?}"),
            }
        }
    }
}

#[test]
fn a_deadline_stops_a_long_decode() {
    // 60 s of audio with a deadline already past: Timeout, at once.
    let data = std::fs::read(common::audio::long_tracks().join("src/track-001.wav")).unwrap();
    let started = Instant::now();
    let r = fingerprint(
        Source::Bytes {
            data: &data,
            extension: Some("wav"),
        },
        &FingerprintOptions {
            max_seconds: None,
            deadline: Some(Instant::now()),
        },
    );
    assert!(matches!(r, Err(AudioError::Timeout)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}
