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
        assert!(
            !matches!(e, AudioError::AnalysisPanic(_)),
            "{what}: fpnode's own code panicked: {e}"
        );
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
    // 60 s of audio, whole, with 30 ms to do it: Timeout, soon after.
    let data = std::fs::read(common::audio::long_tracks().join("src/track-001.wav")).unwrap();
    for budget in [Duration::ZERO, Duration::from_millis(30)] {
        let started = Instant::now();
        let source = Source::Bytes {
            data: &data,
            extension: Some("wav"),
        };
        let deadline = Some(started + budget);
        let r = fingerprint(
            source,
            &FingerprintOptions {
                max_seconds: None,
                deadline,
            },
        );
        assert!(matches!(r, Err(AudioError::Timeout)), "{budget:?}: {r:?}");
        let d = describe(
            source,
            &DescribeOptions {
                max_seconds: None,
                deadline,
            },
        );
        assert!(matches!(d, Err(AudioError::Timeout)), "{budget:?}: {d:?}");
        assert!(
            started.elapsed() < budget + Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    }
}

/// A WAV header (PCM, 16-bit) claiming `rate` and `channels`, then `frames`
/// frames of a ramp.
fn wav(rate: u32, channels: u16, frames: usize) -> Vec<u8> {
    let data_len = frames * usize::from(channels) * 2;
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&((36 + data_len) as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&rate.wrapping_mul(u32::from(channels) * 2).to_le_bytes());
    out.extend_from_slice(&(channels.wrapping_mul(2)).to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data_len as u32).to_le_bytes());
    out.extend((0..data_len / 2).flat_map(|i| ((i % 2000) as i16 * 10).to_le_bytes()));
    out
}

#[test]
fn headers_with_impossible_rates_and_channel_counts_are_refused() {
    for (rate, channels) in [
        (u32::MAX, 2),
        (1_500_000, 1),
        (2_000_000, 2),
        (0, 2),
        (44_100, 0),
        (44_100, 1000),
    ] {
        let data = wav(rate, channels, 40_000);
        let what = format!("{rate} Hz, {channels} channels");
        decode_both(&data, Some("wav"), &what);
        let r = fingerprint(
            Source::Bytes {
                data: &data,
                extension: Some("wav"),
            },
            &FingerprintOptions::default(),
        );
        assert!(r.is_err(), "{what}: {r:?}");
    }
    // The highest rate accepted, and a sane file, work.
    for (rate, channels) in [(768_000u32, 2u16), (44_100, 2)] {
        let data = wav(rate, channels, rate as usize * 4);
        let d = describe(
            Source::Bytes {
                data: &data,
                extension: Some("wav"),
            },
            &DescribeOptions::default(),
        );
        assert!(d.is_ok(), "{rate} Hz: {d:?}");
    }
}
