//! The 25-dimensional descriptor of a track for music libraries: frequency
//! distribution, dynamics, rhythm, spectral shape, harmonicity, variation
//! and stereo image. Every field is defined in docs/audio.md ("The
//! descriptor") and tested on synthetic signals with known answers.
//!
//! One streaming pass over the decoded audio: memory does not grow with the
//! track's length beyond the onset envelope (4 bytes per 512 samples) and
//! one value per 400 ms block.

mod levels;
mod rhythm;
mod spectral;

use std::time::Instant;

use serde::Serialize;

use crate::AudioError;
use crate::decode::{self, AudioInfo, Flow, Pcm, PcmSink, Source};

pub use levels::SILENT_LUFS;

/// The 25 fields, in the order docs/audio.md defines them.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Descriptor {
    /// Percent of the energy above 20 Hz in 20-60 Hz.
    pub freq_20_60_hz: f64,
    pub freq_60_250_hz: f64,
    pub freq_250_500_hz: f64,
    pub freq_500_2000_hz: f64,
    pub freq_2000_4000_hz: f64,
    pub freq_4000_6000_hz: f64,
    /// Percent of the energy from 6 kHz to the Nyquist frequency.
    pub freq_6000_plus_hz: f64,
    /// Integrated loudness, ITU-R BS.1770 / EBU R128, LUFS (-70 for silence).
    pub loudness_lufs: f64,
    /// Peak over RMS of all samples, dB.
    pub crest_factor_db: f64,
    /// Energy 20-250 Hz over energy 250-4000 Hz (at most 1000).
    pub bass_mid_ratio: f64,
    pub tempo_bpm: f64,
    /// Normalised autocorrelation of the onset envelope at the tempo (0-1).
    pub rhythm_stability: f64,
    /// Onsets per second.
    pub transient_density: f64,
    /// Share of 50 ms blocks under -60 dBFS RMS.
    pub silence_ratio: f64,
    pub spectral_centroid_hz: f64,
    /// Frequency under which 85% of the energy lies.
    pub spectral_rolloff_hz: f64,
    /// Geometric over arithmetic mean of the power spectrum (0-1).
    pub spectral_flatness: f64,
    /// MPEG-7 harmonic ratio (0-1).
    pub harmonic_ratio: f64,
    /// Share of consecutive pitched frames within 50 cents.
    pub pitch_stability: f64,
    /// Energy of the strongest pitch class over all 12 (1/12-1).
    pub chroma_energy: f64,
    /// Standard deviation of the 400 ms blocks' crest factors, dB.
    pub dynamic_range_variation: f64,
    /// Standard deviation of the momentary loudness of 400 ms blocks, LU.
    pub loudness_variation_std: f64,
    /// Mean over maximum of the 400 ms blocks' peaks (0-1).
    pub peak_consistency: f64,
    /// Side energy over mid plus side energy (0 mono, 0.5 independent).
    pub stereo_width: f64,
    /// Correlation of left and right (1 identical, 0 independent, -1 inverted).
    pub phase_correlation: f64,
}

impl Descriptor {
    /// The fields as a vector, in declaration order.
    pub fn to_vec(&self) -> [f64; 25] {
        [
            self.freq_20_60_hz,
            self.freq_60_250_hz,
            self.freq_250_500_hz,
            self.freq_500_2000_hz,
            self.freq_2000_4000_hz,
            self.freq_4000_6000_hz,
            self.freq_6000_plus_hz,
            self.loudness_lufs,
            self.crest_factor_db,
            self.bass_mid_ratio,
            self.tempo_bpm,
            self.rhythm_stability,
            self.transient_density,
            self.silence_ratio,
            self.spectral_centroid_hz,
            self.spectral_rolloff_hz,
            self.spectral_flatness,
            self.harmonic_ratio,
            self.pitch_stability,
            self.chroma_energy,
            self.dynamic_range_variation,
            self.loudness_variation_std,
            self.peak_consistency,
            self.stereo_width,
            self.phase_correlation,
        ]
    }
}

#[derive(Debug, Clone, Default)]
pub struct DescribeOptions {
    /// Seconds analysed from the start; `None` for the whole track.
    pub max_seconds: Option<f64>,
    pub deadline: Option<Instant>,
}

/// A descriptor with what was decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    pub descriptor: Descriptor,
    pub info: AudioInfo,
    /// The container's duration, or the decoded one.
    pub duration: f64,
    pub analysed_seconds: f64,
}

/// Analyses interleaved `f32` samples already in memory (tests, and callers
/// that decoded themselves).
pub fn describe_samples(
    samples: &[f32],
    sample_rate: u32,
    channels: usize,
) -> Result<Descriptor, AudioError> {
    if sample_rate == 0 || channels == 0 {
        return Err(AudioError::Corrupt("zero sample rate or channels".into()));
    }
    let mut analyser = Analyser::new(sample_rate, channels)?;
    analyser.push(samples)?;
    Ok(analyser.finish())
}

/// Decodes `source` and describes it.
pub fn describe(source: Source<'_>, options: &DescribeOptions) -> Result<Description, AudioError> {
    let mut sink = DescriptorSink {
        analyser: None,
        remaining: None,
        max_seconds: options.max_seconds.filter(|s| *s > 0.0),
        floats: Vec::new(),
    };
    let decoded = decode::decode(source, options.deadline, &mut sink)?;
    let analyser = sink.analyser.ok_or(AudioError::NoAudio)?;
    if analyser.frames == 0 {
        return Err(AudioError::NoAudio);
    }
    let analysed_seconds = analyser.frames as f64 / f64::from(decoded.info.sample_rate.max(1));
    let descriptor = analyser.finish();
    let duration = decoded.duration();
    Ok(Description {
        descriptor,
        info: decoded.info,
        duration,
        analysed_seconds,
    })
}

struct Analyser {
    rate: u32,
    channels: usize,
    frames: u64,
    levels: levels::LevelMeter,
    spectral: spectral::SpectralFrames,
    mono: Vec<f32>,
}

impl Analyser {
    fn new(rate: u32, channels: usize) -> Result<Self, AudioError> {
        Ok(Analyser {
            rate,
            channels,
            frames: 0,
            levels: levels::LevelMeter::new(rate, channels)?,
            spectral: spectral::SpectralFrames::new(rate),
            mono: Vec::new(),
        })
    }

    fn push(&mut self, interleaved: &[f32]) -> Result<(), AudioError> {
        let whole = interleaved.len() / self.channels * self.channels;
        let interleaved = &interleaved[..whole];
        self.mono.clear();
        let scale = 1.0 / self.channels as f32;
        self.mono.extend(
            interleaved
                .chunks_exact(self.channels)
                .map(|f| f.iter().sum::<f32>() * scale),
        );
        self.frames += self.mono.len() as u64;
        self.levels.push(interleaved, &self.mono)?;
        self.spectral.push(&self.mono);
        Ok(())
    }

    fn finish(self) -> Descriptor {
        let seconds = self.frames as f64 / f64::from(self.rate);
        let levels = self.levels.finish();
        let spectral = self.spectral.finish();
        let fps = f64::from(self.rate) / spectral::SHORT_HOP as f64;
        let rhythm = rhythm::analyse(&spectral.envelope, fps, seconds);
        let [b0, b1, b2, b3, b4, b5, b6] = spectral.bands;
        Descriptor {
            freq_20_60_hz: b0,
            freq_60_250_hz: b1,
            freq_250_500_hz: b2,
            freq_500_2000_hz: b3,
            freq_2000_4000_hz: b4,
            freq_4000_6000_hz: b5,
            freq_6000_plus_hz: b6,
            loudness_lufs: levels.loudness_lufs,
            crest_factor_db: levels.crest_factor_db,
            bass_mid_ratio: spectral.bass_mid_ratio,
            tempo_bpm: rhythm.tempo_bpm,
            rhythm_stability: rhythm.rhythm_stability,
            transient_density: rhythm.transient_density,
            silence_ratio: levels.silence_ratio,
            spectral_centroid_hz: spectral.centroid_hz,
            spectral_rolloff_hz: spectral.rolloff_hz,
            spectral_flatness: spectral.flatness,
            harmonic_ratio: spectral.harmonic_ratio,
            pitch_stability: spectral.pitch_stability,
            chroma_energy: spectral.chroma_energy,
            dynamic_range_variation: levels.dynamic_range_variation,
            loudness_variation_std: levels.loudness_variation_std,
            peak_consistency: levels.peak_consistency,
            stereo_width: levels.stereo_width,
            phase_correlation: levels.phase_correlation,
        }
    }
}

struct DescriptorSink {
    analyser: Option<Analyser>,
    max_seconds: Option<f64>,
    /// Frames still wanted; `None` for all.
    remaining: Option<u64>,
    floats: Vec<f32>,
}

impl PcmSink for DescriptorSink {
    fn start(&mut self, info: &AudioInfo) -> Result<(), AudioError> {
        self.analyser = Some(Analyser::new(info.sample_rate, info.channels)?);
        self.remaining = self
            .max_seconds
            .map(|s| (s * f64::from(info.sample_rate)) as u64);
        Ok(())
    }

    fn push(&mut self, pcm: Pcm<'_>) -> Result<Flow, AudioError> {
        let Some(analyser) = self.analyser.as_mut() else {
            return Err(AudioError::Corrupt(
                "samples before the stream's format".into(),
            ));
        };
        let samples: &[f32] = match pcm {
            Pcm::F32(s) => s,
            Pcm::I16(s) => {
                self.floats.clear();
                self.floats
                    .extend(s.iter().map(|&x| f32::from(x) / 32768.0));
                &self.floats
            }
        };
        let channels = analyser.channels;
        let mut frames = samples.len() / channels;
        if let Some(left) = self.remaining.as_mut() {
            frames = frames.min(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= frames as u64;
        }
        analyser.push(&samples[..frames * channels])?;
        Ok(if self.remaining == Some(0) {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }
}

#[cfg(test)]
mod tests;
