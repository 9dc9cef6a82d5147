//! Level, dynamics and stereo features, sample by sample over the decoded
//! channels (docs/audio.md, "The descriptor"): loudness (EBU R128 through
//! the `ebur128` crate), crest factor, 400 ms blocks for the variation
//! features, 50 ms blocks for silence, and left/right sums for the stereo
//! image.

use ebur128::{EbuR128, Mode};

use crate::AudioError;

/// Loudness reported for silence: EBU R128's absolute gate.
pub const SILENT_LUFS: f64 = -70.0;
/// Blocks quieter than this (RMS, dB full scale) count as silent.
const SILENT_DBFS: f64 = -60.0;
const BLOCK_SECONDS: f64 = 0.4;
const SILENCE_BLOCK_SECONDS: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Levels {
    pub loudness_lufs: f64,
    pub crest_factor_db: f64,
    pub silence_ratio: f64,
    pub dynamic_range_variation: f64,
    pub loudness_variation_std: f64,
    pub peak_consistency: f64,
    pub stereo_width: f64,
    pub phase_correlation: f64,
}

pub struct LevelMeter {
    channels: usize,
    loudness: EbuR128,
    peak: f64,
    sum_squares: f64,
    samples: u64,
    // 400 ms blocks.
    block_frames: usize,
    block_at: usize,
    block_peak: f64,
    block_squares: f64,
    block_crest_db: Vec<f64>,
    block_peaks: Vec<f64>,
    block_loudness: Vec<f64>,
    // 50 ms mono blocks.
    silence_frames: usize,
    silence_at: usize,
    silence_squares: f64,
    silent_blocks: u64,
    blocks_50ms: u64,
    // Left/right.
    left_squares: f64,
    right_squares: f64,
    cross: f64,
    side_squares: f64,
    mid_squares: f64,
}

impl std::fmt::Debug for LevelMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LevelMeter")
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

impl LevelMeter {
    pub fn new(sample_rate: u32, channels: usize) -> Result<Self, AudioError> {
        let loudness = EbuR128::new(channels as u32, sample_rate, Mode::I | Mode::M)
            .map_err(|e| AudioError::Corrupt(format!("loudness meter: {e}")))?;
        let rate = f64::from(sample_rate);
        Ok(LevelMeter {
            channels,
            loudness,
            peak: 0.0,
            sum_squares: 0.0,
            samples: 0,
            block_frames: ((BLOCK_SECONDS * rate) as usize).max(1),
            block_at: 0,
            block_peak: 0.0,
            block_squares: 0.0,
            block_crest_db: Vec::new(),
            block_peaks: Vec::new(),
            block_loudness: Vec::new(),
            silence_frames: ((SILENCE_BLOCK_SECONDS * rate) as usize).max(1),
            silence_at: 0,
            silence_squares: 0.0,
            silent_blocks: 0,
            blocks_50ms: 0,
            left_squares: 0.0,
            right_squares: 0.0,
            cross: 0.0,
            side_squares: 0.0,
            mid_squares: 0.0,
        })
    }

    /// `interleaved` frames of all channels; `mono` the same frames mixed.
    pub fn push(&mut self, interleaved: &[f32], mono: &[f32]) -> Result<(), AudioError> {
        let channels = self.channels;
        let mut start = 0;
        // Feed the loudness meter block by block so each full 400 ms block
        // can read its momentary loudness.
        while start < mono.len() {
            let take = (self.block_frames - self.block_at).min(mono.len() - start);
            let frames = &interleaved[start * channels..(start + take) * channels];
            self.loudness
                .add_frames_f32(frames)
                .map_err(|e| AudioError::Corrupt(format!("loudness meter: {e}")))?;
            for frame in frames.chunks_exact(channels) {
                for &x in frame {
                    let x = f64::from(x);
                    self.sum_squares += x * x;
                    self.block_squares += x * x;
                    let a = x.abs();
                    self.peak = self.peak.max(a);
                    self.block_peak = self.block_peak.max(a);
                }
                if channels >= 2 {
                    let (l, r) = (f64::from(frame[0]), f64::from(frame[1]));
                    self.left_squares += l * l;
                    self.right_squares += r * r;
                    self.cross += l * r;
                    let (m, s) = (0.5 * (l + r), 0.5 * (l - r));
                    self.mid_squares += m * m;
                    self.side_squares += s * s;
                }
            }
            self.samples += (take * channels) as u64;
            self.block_at += take;
            if self.block_at == self.block_frames {
                self.close_block();
            }
            start += take;
        }
        for &x in mono {
            self.silence_squares += f64::from(x) * f64::from(x);
            self.silence_at += 1;
            if self.silence_at == self.silence_frames {
                self.close_silence_block();
            }
        }
        Ok(())
    }

    fn close_block(&mut self) {
        let n = (self.block_frames * self.channels) as f64;
        let rms = (self.block_squares / n).sqrt();
        if rms > 0.0 && 20.0 * rms.log10() >= SILENT_DBFS {
            self.block_crest_db
                .push(20.0 * (self.block_peak / rms).log10());
            self.block_peaks.push(self.block_peak);
            if let Ok(lufs) = self.loudness.loudness_momentary()
                && lufs.is_finite()
                && lufs > SILENT_LUFS
            {
                self.block_loudness.push(lufs);
            }
        }
        self.block_at = 0;
        self.block_peak = 0.0;
        self.block_squares = 0.0;
    }

    fn close_silence_block(&mut self) {
        let rms = (self.silence_squares / self.silence_at as f64).sqrt();
        self.blocks_50ms += 1;
        if rms <= 0.0 || 20.0 * rms.log10() < SILENT_DBFS {
            self.silent_blocks += 1;
        }
        self.silence_at = 0;
        self.silence_squares = 0.0;
    }

    pub fn finish(mut self) -> Levels {
        // A last partial block counts when it is at least half a block.
        if self.silence_at * 2 >= self.silence_frames {
            self.close_silence_block();
        }
        let loudness_lufs = match self.loudness.loudness_global() {
            Ok(l) if l.is_finite() && l > SILENT_LUFS => l,
            _ => SILENT_LUFS,
        };
        let rms = if self.samples > 0 {
            (self.sum_squares / self.samples as f64).sqrt()
        } else {
            0.0
        };
        let crest_factor_db = if rms > 0.0 {
            20.0 * (self.peak / rms).log10()
        } else {
            0.0
        };
        let max_block_peak = self.block_peaks.iter().fold(0.0f64, |m, &p| m.max(p));
        let peak_consistency = if max_block_peak > 0.0 {
            self.block_peaks.iter().sum::<f64>() / self.block_peaks.len() as f64 / max_block_peak
        } else {
            0.0
        };
        let (stereo_width, phase_correlation) = if self.channels < 2 {
            (0.0, if rms > 0.0 { 1.0 } else { 0.0 })
        } else {
            let both = self.mid_squares + self.side_squares;
            let norm = (self.left_squares * self.right_squares).sqrt();
            (
                if both > 0.0 {
                    self.side_squares / both
                } else {
                    0.0
                },
                if norm > 0.0 {
                    (self.cross / norm).clamp(-1.0, 1.0)
                } else {
                    0.0
                },
            )
        };
        Levels {
            loudness_lufs,
            crest_factor_db,
            silence_ratio: if self.blocks_50ms > 0 {
                self.silent_blocks as f64 / self.blocks_50ms as f64
            } else {
                0.0
            },
            dynamic_range_variation: std_dev(&self.block_crest_db),
            loudness_variation_std: std_dev(&self.block_loudness),
            peak_consistency,
            stereo_width,
            phase_correlation,
        }
    }
}

fn std_dev(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / values.len() as f64).sqrt()
}
