//! From samples to normalised chroma rows: Chromaprint's frames of 4,096
//! samples every 1,365, Hamming window, FFT, the energy of bins 10 to 1,307
//! folded into 12 pitch classes, a 5-frame smoothing filter and euclidean
//! normalisation. The float roundings are Chromaprint's (docs/audio.md,
//! "Chromaprint"), which is what makes the fingerprints bit-identical.

use std::collections::VecDeque;
use std::f64::consts::PI;
use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

pub(crate) const FRAME: usize = 4096;
pub(crate) const STEP: usize = 1365;
const RATE: f64 = 11025.0;
/// Bins of 28 Hz and 3,520 Hz: `round(FRAME * f / RATE)`.
const MIN_BIN: usize = 10;
const MAX_BIN: usize = 1308;
const FILTER: [f64; 5] = [0.25, 0.75, 1.0, 0.75, 0.25];

pub(crate) type Row = [f64; 12];

/// Consumes samples, yields one normalised chroma row per frame once the
/// smoothing filter has five frames.
pub(crate) struct Chroma {
    window: Vec<f32>,
    notes: Vec<u8>,
    fft: Arc<dyn RealToComplex<f64>>,
    input: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    /// Samples not yet consumed by a frame.
    pending: VecDeque<i16>,
    /// The last five frames' raw chroma, for the filter.
    recent: VecDeque<Row>,
}

impl std::fmt::Debug for Chroma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chroma")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Chroma {
    pub fn new() -> Chroma {
        // (float)((1/32767) * Hamming(i)): Chromaprint folds the scaling of
        // 16-bit samples into its window, in double, stored as float.
        let window = (0..FRAME)
            .map(|i| {
                ((1.0 / 32767.0) * (0.54 - 0.46 * (i as f64 * 2.0 * PI / (FRAME - 1) as f64).cos()))
                    as f32
            })
            .collect();
        let mut notes = vec![0u8; FRAME];
        for (i, note) in notes.iter_mut().enumerate().take(MAX_BIN).skip(MIN_BIN) {
            let freq = i as f64 * RATE / FRAME as f64;
            let octave = (freq / (440.0 / 16.0)).ln() / 2f64.ln();
            *note = (12.0 * (octave - octave.floor())) as u8;
        }
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(FRAME);
        Chroma {
            window,
            notes,
            input: fft.make_input_vec(),
            spectrum: fft.make_output_vec(),
            scratch: fft.make_scratch_vec(),
            fft,
            pending: VecDeque::with_capacity(FRAME + STEP),
            recent: VecDeque::with_capacity(5),
        }
    }

    /// Feeds samples; calls `row` for each filtered, normalised chroma row.
    pub fn consume(&mut self, samples: &[i16], mut row: impl FnMut(&Row)) {
        let mut rest = samples;
        while !rest.is_empty() {
            let take = (FRAME - self.pending.len()).min(rest.len());
            self.pending.extend(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == FRAME {
                let features = self.frame();
                self.pending.drain(..STEP);
                if self.recent.len() == 5 {
                    self.recent.pop_front();
                }
                self.recent.push_back(features);
                if self.recent.len() == 5 {
                    row(&self.filtered());
                }
            }
        }
    }

    /// One frame's 12 chroma energies.
    fn frame(&mut self) -> Row {
        for ((dst, &s), &w) in self.input.iter_mut().zip(&self.pending).zip(&self.window) {
            *dst = f64::from(f32::from(s) * w);
        }
        // The lengths come from the plan itself: process cannot fail.
        let _ =
            self.fft
                .process_with_scratch(&mut self.input, &mut self.spectrum, &mut self.scratch);
        let mut features = [0f64; 12];
        for i in MIN_BIN..MAX_BIN {
            let c = self.spectrum[i];
            let (re, im) = (c.re as f32, c.im as f32);
            let energy = re * re + im * im;
            features[usize::from(self.notes[i])] += f64::from(energy);
        }
        features
    }

    /// The smoothing filter over the last five frames, then normalised;
    /// rows with a norm under 0.01 become zero.
    fn filtered(&self) -> Row {
        let mut r = [0f64; 12];
        for (i, v) in r.iter_mut().enumerate() {
            for (frame, coef) in self.recent.iter().zip(FILTER) {
                *v += frame[i] * coef;
            }
        }
        let sq: f64 = r.iter().fold(0.0, |acc, v| acc + v * v);
        let norm = sq.sqrt();
        if norm < 0.01 {
            return [0.0; 12];
        }
        r.map(|v| v / norm)
    }
}
