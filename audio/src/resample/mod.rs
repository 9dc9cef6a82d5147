//! Resampling to Chromaprint's mono 11,025 Hz, as fpcalc does it: FFmpeg's
//! libswresample with fpcalc's options, each channel resampled first and the
//! results downmixed, the integer path for 16-bit (or narrower) integer input
//! and the float path otherwise, never flushed. Streaming: input arrives in
//! chunks of any size and only a filter's length of it is kept.
//! docs/audio.md, "Resampling as fpcalc does".

mod bank;
mod dot;

use bank::Bank;
use dot::{dot_f32, dot_i16, fma_available};

/// Chromaprint's sample rate.
pub const CHROMAPRINT_RATE: u32 = 11_025;

/// Which of swresample's internal formats a stream goes through: it picks
/// `S16P` when the decoded samples are integers of at most 16 bits, `FLTP`
/// otherwise (24/32-bit integers, floats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplePath {
    Int16,
    Float,
}

/// Input consumed so far is dropped once this many samples have been used.
const DRAIN_AT: usize = 16_384;

/// Per channel input, with swresample's mirrored start: the first output is
/// centred on the first sample, and the samples before it are `x[1..=half]`
/// reversed.
#[derive(Debug, Default)]
struct Channel<T> {
    /// Input samples, the window of the next output starting at `pos`.
    buf: Vec<T>,
}

/// A streaming resampler from `in_rate` and `channels` to mono 11,025 Hz S16.
#[derive(Debug)]
pub struct Resampler {
    /// `None` when the input is already at 11,025 Hz: only the downmix runs.
    bank: Option<Bank>,
    path: SamplePath,
    ints: Vec<Channel<i16>>,
    floats: Vec<Channel<f32>>,
    /// Whether the mirrored start has been put in front of the input.
    started: bool,
    pos: usize,
    index: usize,
    frac: i64,
    /// Per-channel outputs of one push, before the downmix.
    out_i16: Vec<Vec<i16>>,
    out_f32: Vec<Vec<f32>>,
}

impl Resampler {
    /// `in_rate` > 0 and `channels` > 0 (the decoder checks both).
    pub fn new(in_rate: u32, channels: usize, path: SamplePath) -> Resampler {
        let channels = channels.max(1);
        let bank =
            (in_rate != CHROMAPRINT_RATE).then(|| Bank::new(in_rate.max(1), CHROMAPRINT_RATE));
        Resampler {
            bank,
            path,
            ints: (0..channels).map(|_| Channel::default()).collect(),
            floats: (0..channels).map(|_| Channel::default()).collect(),
            started: false,
            pos: 0,
            index: 0,
            frac: 0,
            out_i16: vec![Vec::new(); channels],
            out_f32: vec![Vec::new(); channels],
        }
    }

    pub fn path(&self) -> SamplePath {
        self.path
    }

    /// Feeds interleaved 16-bit samples; appends the mono output to `out`.
    pub fn push_i16(&mut self, interleaved: &[i16], out: &mut Vec<i16>) {
        match self.path {
            SamplePath::Int16 => {
                deinterleave(interleaved, &mut self.ints, |s| s);
                self.run_i16(out);
            }
            SamplePath::Float => {
                deinterleave(interleaved, &mut self.floats, |s| f32::from(s) / 32768.0);
                self.run_f32(out);
            }
        }
    }

    /// Feeds interleaved float samples (full scale +-1.0); appends the mono
    /// output to `out`.
    pub fn push_f32(&mut self, interleaved: &[f32], out: &mut Vec<i16>) {
        match self.path {
            SamplePath::Float => {
                deinterleave(interleaved, &mut self.floats, |s| s);
                self.run_f32(out);
            }
            SamplePath::Int16 => {
                deinterleave(interleaved, &mut self.ints, f32_to_i16);
                self.run_i16(out);
            }
        }
    }

    /// Outputs whose window is complete, per channel, then downmixed.
    fn run_i16(&mut self, out: &mut Vec<i16>) {
        let Some(bank) = &self.bank else {
            let n = self.ints[0].buf.len();
            downmix_i16(
                &self.ints.iter().map(|c| &c.buf[..]).collect::<Vec<_>>(),
                n,
                out,
            );
            self.ints.iter_mut().for_each(|c| c.buf.clear());
            return;
        };
        if !self.started && !start_mirrored(&mut self.ints, bank) {
            return;
        }
        self.started = true;
        let fl = bank.filter_length;
        let interpolate = bank.modulo != 0;
        let mut state = (self.pos, self.index, self.frac);
        for (ch, res) in self.ints.iter().zip(self.out_i16.iter_mut()) {
            res.clear();
            let (mut pos, mut index, mut frac) = (self.pos, self.index, self.frac);
            while pos + fl <= ch.buf.len() {
                let x = &ch.buf[pos..pos + fl];
                let next =
                    interpolate.then(|| (&bank.row_i16(index + 1)[..fl], frac, bank.src_incr));
                res.push(dot_i16(x, &bank.row_i16(index)[..fl], next));
                (pos, index, frac) = step(bank, pos, index, frac);
            }
            state = (pos, index, frac);
        }
        (self.pos, self.index, self.frac) = state;
        let n = self.out_i16[0].len();
        downmix_i16(
            &self.out_i16.iter().map(|c| &c[..]).collect::<Vec<_>>(),
            n,
            out,
        );
        self.drain_consumed();
    }

    fn run_f32(&mut self, out: &mut Vec<i16>) {
        let Some(bank) = &self.bank else {
            let n = self.floats[0].buf.len();
            downmix_f32(
                &self.floats.iter().map(|c| &c.buf[..]).collect::<Vec<_>>(),
                n,
                out,
            );
            self.floats.iter_mut().for_each(|c| c.buf.clear());
            return;
        };
        if !self.started && !start_mirrored(&mut self.floats, bank) {
            return;
        }
        self.started = true;
        let fl = bank.filter_length;
        let interpolate = bank.modulo != 0;
        let inv = 1.0f32 / bank.src_incr as f32;
        let fma = fma_available();
        let mut state = (self.pos, self.index, self.frac);
        for (ch, res) in self.floats.iter().zip(self.out_f32.iter_mut()) {
            res.clear();
            let (mut pos, mut index, mut frac) = (self.pos, self.index, self.frac);
            while pos + fl <= ch.buf.len() {
                let x = &ch.buf[pos..pos + fl];
                let next = interpolate.then(|| (&bank.row_f32(index + 1)[..fl], frac as f32 * inv));
                res.push(dot_f32(x, &bank.row_f32(index)[..fl], next, fma));
                (pos, index, frac) = step(bank, pos, index, frac);
            }
            state = (pos, index, frac);
        }
        (self.pos, self.index, self.frac) = state;
        let n = self.out_f32[0].len();
        downmix_f32(
            &self.out_f32.iter().map(|c| &c[..]).collect::<Vec<_>>(),
            n,
            out,
        );
        self.drain_consumed();
    }

    fn drain_consumed(&mut self) {
        if self.pos < DRAIN_AT {
            return;
        }
        let pos = self.pos;
        self.ints
            .iter_mut()
            .for_each(|c| drop(c.buf.drain(..pos.min(c.buf.len()))));
        self.floats
            .iter_mut()
            .for_each(|c| drop(c.buf.drain(..pos.min(c.buf.len()))));
        self.pos = 0;
    }
}

/// Advances one output: `div` phases and `modulo / src_incr` of one.
fn step(bank: &Bank, mut pos: usize, mut index: usize, mut frac: i64) -> (usize, usize, i64) {
    frac += bank.modulo;
    index += bank.div;
    if frac >= bank.src_incr {
        frac -= bank.src_incr;
        index += 1;
    }
    pos += index / bank.phase_count;
    index %= bank.phase_count;
    (pos, index, frac)
}

/// Puts `x[half], ..., x[1]` in front of each channel once `x[half]` has
/// arrived; false until then.
fn start_mirrored<T: Copy>(channels: &mut [Channel<T>], bank: &Bank) -> bool {
    let half = (bank.filter_length - 1) / 2;
    if channels[0].buf.len() <= half {
        return false;
    }
    for ch in channels.iter_mut() {
        let mirror: Vec<T> = (1..=half).rev().map(|j| ch.buf[j]).collect();
        ch.buf.splice(0..0, mirror);
    }
    true
}

fn deinterleave<S: Copy, T>(interleaved: &[S], channels: &mut [Channel<T>], conv: impl Fn(S) -> T) {
    let n = channels.len();
    for frame in interleaved.chunks_exact(n) {
        for (ch, &s) in channels.iter_mut().zip(frame) {
            ch.buf.push(conv(s));
        }
    }
}

/// swresample's float to S16: `lrintf(x * 32768)`, clipped.
fn f32_to_i16(x: f32) -> i16 {
    (x * 32768.0).round_ties_even().clamp(-32768.0, 32767.0) as i16
}

/// Stereo in the integer path: `(L + R + 1) >> 1` (swresample's rematrix
/// with two 0.5 coefficients in Q15). More than two channels are averaged,
/// which is close to, not the same as, swresample's surround matrix.
fn downmix_i16(channels: &[&[i16]], n: usize, out: &mut Vec<i16>) {
    match channels {
        [mono] => out.extend_from_slice(&mono[..n]),
        [l, r] => out.extend(
            l[..n]
                .iter()
                .zip(&r[..n])
                .map(|(&l, &r)| ((i32::from(l) + i32::from(r) + 1) >> 1) as i16),
        ),
        many => {
            let k = many.len() as i32;
            out.extend((0..n).map(|i| {
                let sum: i32 = many.iter().map(|c| i32::from(c[i])).sum();
                (sum + k / 2).div_euclid(k) as i16
            }))
        }
    }
}

/// Stereo in the float path: `0.5 * L + 0.5 * R`, then to S16.
fn downmix_f32(channels: &[&[f32]], n: usize, out: &mut Vec<i16>) {
    match channels {
        [mono] => out.extend(mono[..n].iter().map(|&x| f32_to_i16(x))),
        [l, r] => out.extend(
            l[..n]
                .iter()
                .zip(&r[..n])
                .map(|(&l, &r)| f32_to_i16(l * 0.5 + r * 0.5)),
        ),
        many => {
            let k = 1.0 / many.len() as f32;
            out.extend((0..n).map(|i| f32_to_i16(many.iter().map(|c| c[i] * k).sum())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f64, n: usize, channels: usize) -> Vec<i16> {
        (0..n)
            .flat_map(|i| {
                let v = (10000.0
                    * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin())
                    as i16;
                std::iter::repeat_n(v, channels)
            })
            .collect()
    }

    #[test]
    fn output_length_follows_the_rate_ratio_and_is_chunk_independent() {
        for (rate, channels) in [(44100, 2), (48000, 2), (22050, 1), (32000, 1), (8000, 1)] {
            let input = sine(rate, 440.0, rate as usize * 2, channels);
            let mut whole = Vec::new();
            Resampler::new(rate, channels, SamplePath::Int16).push_i16(&input, &mut whole);
            let mut chunked = Vec::new();
            let mut r = Resampler::new(rate, channels, SamplePath::Int16);
            for chunk in input.chunks(1000 * channels + channels) {
                r.push_i16(chunk, &mut chunked);
            }
            assert_eq!(whole, chunked, "{rate}");
            let expected = 2 * CHROMAPRINT_RATE as usize;
            assert!(
                whole.len() <= expected && whole.len() + 100 > expected,
                "{rate}: {}",
                whole.len()
            );
            // A 440 Hz sine passes the low-pass filter at the same amplitude.
            let peak = whole[1000..]
                .iter()
                .map(|s| s.unsigned_abs())
                .max()
                .unwrap_or(0);
            assert!((9800..=10200).contains(&peak), "{rate}: peak {peak}");
        }
    }

    #[test]
    fn float_and_integer_paths_agree_to_a_step() {
        let input = sine(48000, 1000.0, 48000, 2);
        let floats: Vec<f32> = input.iter().map(|&s| f32::from(s) / 32768.0).collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        Resampler::new(48000, 2, SamplePath::Int16).push_i16(&input, &mut a);
        Resampler::new(48000, 2, SamplePath::Float).push_f32(&floats, &mut b);
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| (i32::from(*x) - i32::from(*y)).abs() <= 2)
        );
    }

    #[test]
    fn a_tone_above_the_cutoff_is_removed() {
        let input = sine(44100, 6000.0, 44100, 1);
        let mut out = Vec::new();
        Resampler::new(44100, 1, SamplePath::Int16).push_i16(&input, &mut out);
        let peak = out[1000..]
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap_or(0);
        assert!(peak < 200, "peak {peak}");
    }
}
