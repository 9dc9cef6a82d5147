//! File to fingerprint: decode, resample to mono 11,025 Hz as fpcalc does,
//! Chromaprint, for at most `-length` seconds (docs/audio.md).

use std::time::Instant;

use crate::AudioError;
use crate::chromaprint::{self, ALGORITHM_TEST2, Fingerprinter};
use crate::decode::{self, AudioInfo, Flow, Pcm, PcmSink, Source};
use crate::resample::{CHROMAPRINT_RATE, Resampler};

/// fpcalc's default `-length`.
pub const DEFAULT_MAX_SECONDS: f64 = 120.0;

#[derive(Debug, Clone)]
pub struct FingerprintOptions {
    /// Seconds of audio fingerprinted from the start (fpcalc's `-length`);
    /// `None` for the whole file.
    pub max_seconds: Option<f64>,
    /// Give up (with [`AudioError::Timeout`]) after this instant.
    pub deadline: Option<Instant>,
}

impl Default for FingerprintOptions {
    fn default() -> Self {
        FingerprintOptions {
            max_seconds: Some(DEFAULT_MAX_SECONDS),
            deadline: None,
        }
    }
}

/// A Chromaprint fingerprint of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint {
    /// The raw items (`fpcalc -raw`).
    pub items: Vec<u32>,
    /// The container's duration, or the decoded duration when it has none.
    pub duration: f64,
    pub info: AudioInfo,
    /// Seconds of audio that went into the fingerprint.
    pub fingerprinted_seconds: f64,
}

impl Fingerprint {
    /// The compressed, base64 form (`fpcalc`'s default output).
    pub fn compressed(&self) -> String {
        chromaprint::compress(&self.items, ALGORITHM_TEST2)
    }

    /// AcoustID's query terms for this fingerprint.
    pub fn query_terms(&self) -> Vec<u32> {
        chromaprint::query_terms(&self.items)
    }
}

struct ChromaSink {
    resampler: Option<Resampler>,
    fingerprinter: Fingerprinter,
    /// Mono samples still wanted; `None` for all.
    remaining: Option<u64>,
    mono: Vec<i16>,
}

impl PcmSink for ChromaSink {
    fn start(&mut self, info: &AudioInfo) -> Result<(), AudioError> {
        self.resampler = Some(Resampler::new(info.sample_rate, info.channels, info.path));
        Ok(())
    }

    fn push(&mut self, pcm: Pcm<'_>) -> Result<Flow, AudioError> {
        let Some(resampler) = self.resampler.as_mut() else {
            return Err(AudioError::Corrupt(
                "samples before the stream's format".into(),
            ));
        };
        self.mono.clear();
        match pcm {
            Pcm::I16(s) => resampler.push_i16(s, &mut self.mono),
            Pcm::F32(s) => resampler.push_f32(s, &mut self.mono),
        }
        let mut take = self.mono.len();
        if let Some(left) = self.remaining.as_mut() {
            take = take.min(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= take as u64;
        }
        self.fingerprinter.consume(&self.mono[..take]);
        Ok(if self.remaining == Some(0) {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

/// Fingerprints the audio of `source`.
pub fn fingerprint(
    source: Source<'_>,
    options: &FingerprintOptions,
) -> Result<Fingerprint, AudioError> {
    // fpcalc: `(size_t)(length * 11025)` samples.
    let remaining = options
        .max_seconds
        .filter(|s| *s > 0.0)
        .map(|s| (s * f64::from(CHROMAPRINT_RATE)) as u64);
    let mut sink = ChromaSink {
        resampler: None,
        fingerprinter: Fingerprinter::new(),
        remaining,
        mono: Vec::new(),
    };
    let decoded = decode::decode(source, options.deadline, &mut sink)?;
    let samples = sink.fingerprinter.samples();
    let items = sink.fingerprinter.finish();
    let fingerprinted_seconds = samples as f64 / f64::from(CHROMAPRINT_RATE);
    if items.is_empty() {
        return Err(AudioError::TooShort {
            seconds: fingerprinted_seconds,
            min_seconds: chromaprint::MIN_SAMPLES as f64 / f64::from(CHROMAPRINT_RATE),
        });
    }
    let duration = decoded.duration();
    Ok(Fingerprint {
        items,
        duration,
        info: decoded.info,
        fingerprinted_seconds,
    })
}
