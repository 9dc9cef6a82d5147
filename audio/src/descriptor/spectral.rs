//! The spectral side of the descriptor, computed frame by frame on the mono
//! mix (docs/audio.md, "The descriptor"):
//!
//! - a long-term power spectrum (Welch: Hann frames of 8,192 samples every
//!   4,096) for the seven bands, the bass/mid ratio, centroid and rolloff;
//! - short frames (Hann, 2,048 samples every 512) for the flatness, the
//!   chroma concentration and the onset envelope (spectral flux of log
//!   magnitudes) that rhythm.rs reads;
//! - plain frames of 2,048 samples every 2,048 for the harmonic ratio and
//!   pitch (MPEG-7's normalised autocorrelation, through an FFT).
//!
//! Frames whose RMS is below [`SILENT_DBFS`] are left out of the per-frame
//! averages (silence has no flatness or pitch).

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

pub const LONG: usize = 8192;
pub const LONG_HOP: usize = 4096;
pub const SHORT: usize = 2048;
pub const SHORT_HOP: usize = 512;
/// Frames quieter than this (RMS, dB full scale) count as silent.
pub const SILENT_DBFS: f64 = -60.0;
/// Band edges in Hz: 20-60, 60-250, 250-500, 500-2000, 2000-4000,
/// 4000-6000, 6000 and above.
pub const BAND_EDGES: [f64; 7] = [20.0, 60.0, 250.0, 500.0, 2000.0, 4000.0, 6000.0];
/// Harmonicity lags: fundamentals between 50 Hz and 1 kHz.
const MIN_PITCH_HZ: f64 = 50.0;
const MAX_PITCH_HZ: f64 = 1000.0;
/// A frame is pitched when its harmonic ratio reaches this.
const VOICED: f64 = 0.5;
/// Consecutive pitched frames within this many cents are "stable".
const STABLE_CENTS: f64 = 50.0;
/// Chroma from long-frame bins between these frequencies (A2, where a
/// semitone is wider than a bin, to about D#8).
const CHROMA_MIN_HZ: f64 = 110.0;
const CHROMA_MAX_HZ: f64 = 5000.0;

struct Plans {
    long: Arc<dyn RealToComplex<f32>>,
    short: Arc<dyn RealToComplex<f32>>,
    /// Autocorrelation: zero-padded to twice the frame, forward and back.
    acf_forward: Arc<dyn RealToComplex<f32>>,
    acf_inverse: Arc<dyn ComplexToReal<f32>>,
    long_window: Vec<f32>,
    short_window: Vec<f32>,
}

fn plans() -> &'static Plans {
    static PLANS: OnceLock<Plans> = OnceLock::new();
    PLANS.get_or_init(|| {
        let mut planner = RealFftPlanner::<f32>::new();
        let hann = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n as f64).cos()) as f32
                })
                .collect()
        };
        Plans {
            long: planner.plan_fft_forward(LONG),
            short: planner.plan_fft_forward(SHORT),
            acf_forward: planner.plan_fft_forward(2 * SHORT),
            acf_inverse: planner.plan_fft_inverse(2 * SHORT),
            long_window: hann(LONG),
            short_window: hann(SHORT),
        }
    })
}

/// What the spectral frames leave for the descriptor.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Spectral {
    /// Percent of the energy above 20 Hz in each band of [`BAND_EDGES`].
    pub bands: [f64; 7],
    /// Energy 20-250 Hz over energy 250-4000 Hz.
    pub bass_mid_ratio: f64,
    pub centroid_hz: f64,
    pub rolloff_hz: f64,
    pub flatness: f64,
    pub harmonic_ratio: f64,
    pub pitch_stability: f64,
    pub chroma_energy: f64,
    /// Onset strength every [`SHORT_HOP`] samples.
    pub envelope: Vec<f32>,
}

/// Consumes the mono mix and accumulates the spectral features.
pub struct SpectralFrames {
    rate: f64,
    /// Samples from `buffer_start` on.
    buffer: VecDeque<f32>,
    buffer_start: u64,
    next_long: u64,
    next_short: u64,
    long_spectrum: Vec<f64>,
    long_frames: u64,
    flatness_sum: f64,
    chroma_sum: f64,
    harmonic_sum: f64,
    sounding_frames: u64,
    chroma_frames: u64,
    harmonic_frames: u64,
    pitched_pairs: u64,
    stable_pairs: u64,
    last_pitch: Option<f64>,
    previous_log: Vec<f32>,
    envelope: Vec<f32>,
    chroma_class: Vec<Option<u8>>,
    // Scratch.
    input: Vec<f32>,
    spectrum: Vec<Complex<f32>>,
    acf_input: Vec<f32>,
    acf_spectrum: Vec<Complex<f32>>,
    acf: Vec<f32>,
    prefix: Vec<f64>,
    /// Normalised autocorrelation per lag of the current frame.
    lag_scores: Vec<f64>,
}

impl std::fmt::Debug for SpectralFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpectralFrames")
            .field("rate", &self.rate)
            .finish_non_exhaustive()
    }
}

impl SpectralFrames {
    pub fn new(sample_rate: u32) -> Self {
        let rate = f64::from(sample_rate);
        let chroma_class = (0..=LONG / 2)
            .map(|k| {
                let f = k as f64 * rate / LONG as f64;
                (CHROMA_MIN_HZ..=CHROMA_MAX_HZ).contains(&f).then(|| {
                    let semitones = (12.0 * (f / 440.0).log2()).round() as i64;
                    semitones.rem_euclid(12) as u8
                })
            })
            .collect();
        SpectralFrames {
            rate,
            buffer: VecDeque::with_capacity(LONG + SHORT),
            buffer_start: 0,
            next_long: 0,
            next_short: 0,
            long_spectrum: vec![0.0; LONG / 2 + 1],
            long_frames: 0,
            flatness_sum: 0.0,
            chroma_sum: 0.0,
            harmonic_sum: 0.0,
            sounding_frames: 0,
            chroma_frames: 0,
            harmonic_frames: 0,
            pitched_pairs: 0,
            stable_pairs: 0,
            last_pitch: None,
            previous_log: vec![0.0; SHORT / 2 + 1],
            envelope: Vec::new(),
            chroma_class,
            input: vec![0.0; LONG],
            spectrum: vec![Complex::default(); LONG / 2 + 1],
            acf_input: vec![0.0; 2 * SHORT],
            acf_spectrum: vec![Complex::default(); SHORT + 1],
            acf: vec![0.0; 2 * SHORT],
            prefix: vec![0.0; SHORT + 1],
            lag_scores: Vec::with_capacity(SHORT / 2 + 1),
        }
    }

    pub fn push(&mut self, mono: &[f32]) {
        self.buffer.extend(mono);
        self.run_frames(false);
    }

    /// Processes what the full frames have not; a track shorter than a
    /// frame is analysed as one zero-padded frame.
    pub fn finish(mut self) -> Spectral {
        if self.long_frames == 0 || self.envelope.is_empty() {
            let missing = LONG.saturating_sub(self.buffer.len());
            self.buffer.extend(std::iter::repeat_n(0.0, missing));
            self.run_frames(true);
        }
        self.summary()
    }

    fn end(&self) -> u64 {
        self.buffer_start + self.buffer.len() as u64
    }

    fn run_frames(&mut self, padding: bool) {
        loop {
            let mut progressed = false;
            if self.next_short + SHORT as u64 <= self.end()
                && (!padding || self.envelope.is_empty())
            {
                self.short_frame(self.next_short);
                if self.next_short.is_multiple_of(SHORT as u64) {
                    self.harmonic_frame(self.next_short);
                }
                self.next_short += SHORT_HOP as u64;
                progressed = true;
            }
            if self.next_long + LONG as u64 <= self.end() && (!padding || self.long_frames == 0) {
                self.long_frame(self.next_long);
                self.next_long += LONG_HOP as u64;
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        let keep_from = self.next_short.min(self.next_long);
        let drop = (keep_from.saturating_sub(self.buffer_start) as usize).min(self.buffer.len());
        self.buffer.drain(..drop);
        self.buffer_start += drop as u64;
    }

    fn copy_frame(&mut self, start: u64, len: usize) -> &mut [f32] {
        let from = (start - self.buffer_start) as usize;
        fill(&self.buffer, from, &mut self.input[..len]);
        &mut self.input[..len]
    }

    fn long_frame(&mut self, start: u64) {
        let frame = self.copy_frame(start, LONG);
        let energy: f64 = frame.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let sounding = 10.0 * (energy / LONG as f64).max(1e-30).log10() >= SILENT_DBFS;
        let plans = plans();
        for (x, w) in self.input.iter_mut().zip(&plans.long_window) {
            *x *= w;
        }
        let spectrum = &mut self.spectrum[..LONG / 2 + 1];
        // Lengths come from the plan: process cannot fail.
        if plans
            .long
            .process(&mut self.input[..LONG], spectrum)
            .is_err()
        {
            return;
        }
        for (sum, c) in self.long_spectrum.iter_mut().zip(spectrum.iter()) {
            *sum += f64::from(c.norm_sqr());
        }
        self.long_frames += 1;
        if !sounding {
            return;
        }
        let mut chroma = [0.0f64; 12];
        for (class, c) in self.chroma_class.iter().zip(spectrum.iter()) {
            if let Some(class) = class {
                chroma[usize::from(*class)] += f64::from(c.norm_sqr());
            }
        }
        let total: f64 = chroma.iter().sum();
        if total > 0.0 {
            self.chroma_sum += chroma.iter().fold(0.0f64, |m, &v| m.max(v)) / total;
            self.chroma_frames += 1;
        }
    }

    fn short_frame(&mut self, start: u64) {
        let frame = self.copy_frame(start, SHORT);
        let energy: f64 = frame.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        let rms_db = 10.0 * (energy / SHORT as f64).max(1e-30).log10();
        let plans = plans();
        for (x, w) in self.input.iter_mut().zip(&plans.short_window) {
            *x *= w;
        }
        let spectrum = &mut self.spectrum[..SHORT / 2 + 1];
        if plans
            .short
            .process(&mut self.input[..SHORT], spectrum)
            .is_err()
        {
            return;
        }
        // Onset strength: rectified rise of log magnitudes.
        // The first frame has nothing to rise from: its flux is 0.
        let mut flux = 0.0f32;
        for (previous, c) in self.previous_log.iter_mut().zip(spectrum.iter()) {
            let log = (1.0 + 1000.0 * c.norm()).ln();
            flux += (log - *previous).max(0.0);
            *previous = log;
        }
        if self.envelope.is_empty() {
            flux = 0.0;
        }
        self.envelope.push(flux);
        if rms_db < SILENT_DBFS {
            return;
        }
        self.sounding_frames += 1;
        // Flatness over the bins from 20 Hz: geometric over arithmetic mean.
        let first = (20.0 * SHORT as f64 / self.rate).ceil() as usize;
        let (mut log_sum, mut sum, mut n) = (0.0f64, 0.0f64, 0usize);
        for c in &spectrum[first.min(spectrum.len())..] {
            let p = f64::from(c.norm_sqr()) + 1e-20;
            log_sum += p.ln();
            sum += p;
            n += 1;
        }
        if n > 0 && sum > 0.0 {
            self.flatness_sum += ((log_sum / n as f64).exp() / (sum / n as f64)).clamp(0.0, 1.0);
        }
    }

    /// MPEG-7 harmonic ratio: the highest normalised autocorrelation
    /// `sum x[j] x[j-k] / sqrt(sum x[j]^2 sum x[j-k]^2)` over lags of
    /// 50 Hz to 1 kHz fundamentals; the pitch is the first lag within 95%
    /// of it.
    fn harmonic_frame(&mut self, start: u64) {
        fill(
            &self.buffer,
            (start - self.buffer_start) as usize,
            &mut self.acf_input[..SHORT],
        );
        // Energies of the frame's prefixes, before the FFT uses its input as
        // scratch.
        self.prefix[0] = 0.0;
        for (i, &x) in self.acf_input[..SHORT].iter().enumerate() {
            self.prefix[i + 1] = self.prefix[i] + f64::from(x) * f64::from(x);
        }
        let energy = self.prefix[SHORT];
        if 10.0 * (energy / SHORT as f64).max(1e-30).log10() < SILENT_DBFS {
            self.last_pitch = None;
            return;
        }
        let plans = plans();
        self.acf_input[SHORT..].fill(0.0);
        if plans
            .acf_forward
            .process(&mut self.acf_input, &mut self.acf_spectrum)
            .is_err()
        {
            return;
        }
        for c in self.acf_spectrum.iter_mut() {
            *c = Complex::new(c.norm_sqr(), 0.0);
        }
        if plans
            .acf_inverse
            .process(&mut self.acf_spectrum, &mut self.acf)
            .is_err()
        {
            return;
        }
        let scale = 1.0 / (2 * SHORT) as f64;
        let min_lag = (self.rate / MAX_PITCH_HZ).floor().max(1.0) as usize;
        let max_lag = ((self.rate / MIN_PITCH_HZ).ceil() as usize).min(SHORT / 2);
        if min_lag + 1 >= max_lag {
            return;
        }
        let mut r = std::mem::take(&mut self.lag_scores);
        r.clear();
        for lag in 0..=max_lag {
            let late = self.prefix[SHORT] - self.prefix[lag];
            let early = self.prefix[SHORT - lag];
            let denominator = (late * early).sqrt();
            let value = if denominator > 0.0 {
                f64::from(self.acf[lag]) * scale / denominator
            } else {
                0.0
            };
            r.push(value);
        }
        let best = r[min_lag..=max_lag]
            .iter()
            .fold(0.0f64, |m, &v| m.max(v))
            .clamp(0.0, 1.0);
        self.harmonic_sum += best;
        self.harmonic_frames += 1;
        let pitch = if best >= VOICED {
            // The first local maximum within 95% of the best: the period,
            // not a multiple of it.
            (min_lag..max_lag)
                .find(|&k| r[k] >= 0.95 * best && r[k] >= r[k - 1] && r[k] >= r[k + 1])
                .map(|k| self.rate / k as f64)
        } else {
            None
        };
        self.lag_scores = r;
        if let (Some(previous), Some(current)) = (self.last_pitch, pitch) {
            self.pitched_pairs += 1;
            if (1200.0 * (current / previous).log2()).abs() < STABLE_CENTS {
                self.stable_pairs += 1;
            }
        }
        self.last_pitch = pitch;
    }

    fn summary(self) -> Spectral {
        let bin_hz = self.rate / LONG as f64;
        let mut bands = [0.0f64; 7];
        let (mut total, mut bass, mut mid, mut weighted) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for (k, &p) in self.long_spectrum.iter().enumerate() {
            let f = k as f64 * bin_hz;
            if f < BAND_EDGES[0] {
                continue;
            }
            let band = BAND_EDGES.iter().rposition(|&edge| f >= edge).unwrap_or(0);
            bands[band] += p;
            total += p;
            weighted += p * f;
            if f < 250.0 {
                bass += p;
            } else if f < 4000.0 {
                mid += p;
            }
        }
        let mut rolloff_hz = 0.0;
        if total > 0.0 {
            for b in bands.iter_mut() {
                *b *= 100.0 / total;
            }
            let mut running = 0.0;
            for (k, &p) in self.long_spectrum.iter().enumerate() {
                let f = k as f64 * bin_hz;
                if f < BAND_EDGES[0] {
                    continue;
                }
                running += p;
                if running >= 0.85 * total {
                    rolloff_hz = f;
                    break;
                }
            }
        }
        let per_sounding = |sum: f64| {
            if self.sounding_frames > 0 {
                sum / self.sounding_frames as f64
            } else {
                0.0
            }
        };
        Spectral {
            bands,
            bass_mid_ratio: if mid > 0.0 {
                (bass / mid).min(1000.0)
            } else if bass > 0.0 {
                1000.0
            } else {
                0.0
            },
            centroid_hz: if total > 0.0 { weighted / total } else { 0.0 },
            rolloff_hz,
            flatness: per_sounding(self.flatness_sum),
            harmonic_ratio: if self.harmonic_frames > 0 {
                self.harmonic_sum / self.harmonic_frames as f64
            } else {
                0.0
            },
            pitch_stability: if self.pitched_pairs > 0 {
                self.stable_pairs as f64 / self.pitched_pairs as f64
            } else {
                0.0
            },
            chroma_energy: if self.chroma_frames > 0 {
                self.chroma_sum / self.chroma_frames as f64
            } else {
                0.0
            },
            envelope: self.envelope,
        }
    }
}

/// Copies `out.len()` samples from `buffer`, starting `from` its front.
fn fill(buffer: &VecDeque<f32>, from: usize, out: &mut [f32]) {
    let (a, b) = buffer.as_slices();
    for (i, slot) in out.iter_mut().enumerate() {
        let at = from + i;
        *slot = if at < a.len() { a[at] } else { b[at - a.len()] };
    }
}
