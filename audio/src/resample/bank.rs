//! The polyphase filter bank of FFmpeg's libswresample, built exactly as
//! `swr_init` builds it with the options fpcalc 1.5.1 sets (`filter_size=16,
//! phase_shift=8, linear_interp=1, cutoff=0.8`, Kaiser window beta 9): the same
//! doubles, the same rounding, so the taps are bit for bit those FFmpeg uses.
//! docs/audio.md ("Resampling as fpcalc does") and the Python reference in
//! docs/research/chromaprint/pyswr.py.

use std::f64::consts::PI;

/// fpcalc's resampler options.
const FILTER_SIZE: f64 = 16.0;
const PHASE_SHIFT: u32 = 8;
const CUTOFF: f64 = 0.8;
const KAISER_BETA: f64 = 9.0;

/// The filter bank and stepping constants for one input rate.
#[derive(Debug, Clone)]
pub(crate) struct Bank {
    /// Taps per output sample.
    pub filter_length: usize,
    /// Row stride of the bank: `filter_length` rounded up to 8.
    pub alloc: usize,
    /// Number of phases (rows), plus one extra row for interpolation.
    pub phase_count: usize,
    /// Integer taps (`S16P` internal format), `alloc * (phase_count + 1)`.
    pub taps_i16: Vec<i16>,
    /// Float taps (`FLTP` internal format), same layout.
    pub taps_f32: Vec<f32>,
    /// Fixed-point stepping: each output advances `dst_incr / src_incr`
    /// phases, split into `div` whole phases and `modulo` of `src_incr`.
    pub src_incr: i64,
    pub div: usize,
    pub modulo: i64,
}

fn eval_poly(coeffs: &[f64], x: f64) -> f64 {
    let mut sum = coeffs[coeffs.len() - 1];
    for &c in coeffs[..coeffs.len() - 1].iter().rev() {
        sum *= x;
        sum += c;
    }
    sum
}

/// The modified Bessel function I0, Blair and Edwards' rational
/// approximation, as `libswresample/resample.c` computes it (its constants
/// verbatim, hence more digits than a double holds).
#[allow(clippy::excessive_precision)]
fn bessel(x: f64) -> f64 {
    const P1: [f64; 15] = [
        -2.2335582639474375249e+15,
        -5.5050369673018427753e+14,
        -3.2940087627407749166e+13,
        -8.4925101247114157499e+11,
        -1.1912746104985237192e+10,
        -1.0313066708737980747e+08,
        -5.9545626019847898221e+05,
        -2.4125195876041896775e+03,
        -7.0935347449210549190e+00,
        -1.5453977791786851041e-02,
        -2.5172644670688975051e-05,
        -3.0517226450451067446e-08,
        -2.6843448573468483278e-11,
        -1.5982226675653184646e-14,
        -5.2487866627945699800e-18,
    ];
    const Q1: [f64; 6] = [
        -2.2335582639474375245e+15,
        7.8858692566751002988e+12,
        -1.2207067397808979846e+10,
        1.0377081058062166144e+07,
        -4.8527560179962773045e+03,
        1.0,
    ];
    const P2: [f64; 7] = [
        -2.2210262233306573296e-04,
        1.3067392038106924055e-02,
        -4.4700805721174453923e-01,
        5.5674518371240761397e+00,
        -2.3517945679239481621e+01,
        3.1611322818701131207e+01,
        -9.6090021968656180000e+00,
    ];
    const Q2: [f64; 8] = [
        -5.5194330231005480228e-04,
        3.2547697594819615062e-02,
        -1.1151759188741312645e+00,
        1.3982595353892851542e+01,
        -6.0228002066743340583e+01,
        8.5539563258012929600e+01,
        -3.1446690275135491500e+01,
        1.0,
    ];
    if x == 0.0 {
        return 1.0;
    }
    let x = x.abs();
    if x <= 15.0 {
        let y = x * x;
        return eval_poly(&P1, y) / eval_poly(&Q1, y);
    }
    let y = 1.0 / x - 1.0 / 15.0;
    let r = eval_poly(&P2, y) / eval_poly(&Q2, y);
    (x.exp() / x.sqrt()) * r
}

fn gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `lrintf` then `av_clip_int16`: round half to even in single precision.
fn tap_i16(v: f64) -> i16 {
    let r = (v as f32).round_ties_even();
    r.clamp(-32768.0, 32767.0) as i16
}

impl Bank {
    /// The bank for resampling `in_rate` to `out_rate`. Both must be > 0.
    pub fn new(in_rate: u32, out_rate: u32) -> Bank {
        let (in_rate, out_rate) = (i64::from(in_rate), i64::from(out_rate));
        let factor = (out_rate as f64 * CUTOFF / in_rate as f64).min(1.0);
        let mut phase_count: i64 = 1 << PHASE_SHIFT;
        let mut filter_length = ((FILTER_SIZE / factor).ceil() as usize).max(1);
        if filter_length > 1 {
            filter_length = (filter_length + 1) & !1;
        }
        let g = gcd(out_rate, in_rate);
        if out_rate / g <= phase_count {
            phase_count = out_rate / g;
        }
        let pc = phase_count as usize;
        let alloc = (filter_length + 7) & !7;
        let mut taps_i16 = vec![0i16; alloc * (pc + 1)];
        let mut taps_f32 = vec![0f32; alloc * (pc + 1)];
        let phases_built = if pc % 2 == 1 { pc } else { pc / 2 + 1 };
        let center = (filter_length as i64 - 1) / 2;
        let mut norm = 0.0f64;
        let mut tab = vec![0f64; filter_length];
        for ph in 0..phases_built {
            let mut s = if factor == 1.0 {
                (PI * ph as f64 / pc as f64).sin() * if center & 1 == 1 { 1.0 } else { -1.0 }
            } else {
                0.0
            };
            for (i, t) in tab.iter_mut().enumerate() {
                let x = PI * ((i as i64 - center) as f64 - ph as f64 / pc as f64) * factor;
                let mut y = if x == 0.0 {
                    1.0
                } else if factor == 1.0 {
                    s / x
                } else {
                    x.sin() / x
                };
                let w = 2.0 * x / (factor * filter_length as f64 * PI);
                y *= bessel(KAISER_BETA * (1.0 - w * w).max(0.0).sqrt());
                *t = y;
                s = -s;
                if ph == 0 {
                    norm += y;
                }
            }
            for (i, &t) in tab.iter().enumerate() {
                taps_i16[ph * alloc + i] = tap_i16(t * 32768.0 / norm);
                taps_f32[ph * alloc + i] = (t * 1.0 / norm) as f32;
            }
            if pc.is_multiple_of(2) {
                for i in 0..filter_length {
                    taps_i16[(pc - ph) * alloc + filter_length - 1 - i] = taps_i16[ph * alloc + i];
                    taps_f32[(pc - ph) * alloc + filter_length - 1 - i] = taps_f32[ph * alloc + i];
                }
            }
        }
        // swresample's extra row for interpolating past the last phase: phase
        // 0 shifted by one tap.
        taps_i16.copy_within(0..alloc - 1, alloc * pc + 1);
        taps_i16[alloc * pc] = taps_i16[alloc - 1];
        taps_f32.copy_within(0..alloc - 1, alloc * pc + 1);
        taps_f32[alloc * pc] = taps_f32[alloc - 1];

        let (mut src_incr, mut dst_incr) = (out_rate, in_rate * phase_count);
        let g = gcd(src_incr, dst_incr);
        (src_incr, dst_incr) = (src_incr / g, dst_incr / g);
        while dst_incr < (1 << 20) && src_incr < (1 << 20) {
            dst_incr *= 2;
            src_incr *= 2;
        }
        Bank {
            filter_length,
            alloc,
            phase_count: pc,
            taps_i16,
            taps_f32,
            src_incr,
            div: (dst_incr / src_incr) as usize,
            modulo: dst_incr % src_incr,
        }
    }

    /// Taps of one phase row (`alloc` long; the padding taps are zero).
    pub fn row_i16(&self, phase: usize) -> &[i16] {
        &self.taps_i16[phase * self.alloc..(phase + 1) * self.alloc]
    }

    pub fn row_f32(&self, phase: usize) -> &[f32] {
        &self.taps_f32[phase * self.alloc..(phase + 1) * self.alloc]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bank_has_the_shape_fpcalc_uses() {
        // Values from swresample's own `swr_init` for fpcalc's options,
        // read with the ctypes oracle (docs/research/chromaprint/oracle.py).
        let b = Bank::new(44100, 11025);
        assert_eq!(
            (b.filter_length, b.phase_count, b.div, b.modulo),
            (80, 1, 4, 0)
        );
        let b = Bank::new(48000, 11025);
        assert_eq!(
            (b.filter_length, b.phase_count, b.div, b.modulo),
            (88, 147, 640, 0)
        );
        let b = Bank::new(22050, 11025);
        assert_eq!((b.filter_length, b.phase_count), (40, 1));
        // Phase 0 of a low-pass filter sums to unity gain.
        let sum: i32 = Bank::new(44100, 11025)
            .row_i16(0)
            .iter()
            .map(|&t| i32::from(t))
            .sum();
        assert!((sum - 32768).abs() <= 40, "{sum}");
        let b = Bank::new(32000, 11025);
        assert!(b.modulo != 0, "32 kHz needs interpolation between phases");
    }
}
