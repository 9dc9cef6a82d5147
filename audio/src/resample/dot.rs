//! One output sample of the polyphase filter: the dot products of a window of
//! input with one phase row (and, when the step has a fractional part, the
//! next row, interpolated linearly).
//!
//! The integer form is exact whatever the order. The float form reproduces
//! the summation order of FFmpeg's FMA3 kernel (`ff_resample_common_float_fma3`,
//! what fpcalc runs on any x86-64 CPU with AVX2 and FMA): eight lanes of fused
//! multiply-adds over the taps, the two halves added, interpolated with one more
//! fused multiply-add, then reduced pairwise. Float sums depend on their order,
//! so this is what makes 24-bit and float WAV fingerprints identical to fpcalc's
//! (docs/audio.md, "Resampling as fpcalc does").

/// Integer form (`S16P`): `16384 + sum(x * tap)`, interpolated toward the
/// next row by `frac / src_incr`, shifted down 15 bits and clipped.
pub(crate) fn dot_i16(x: &[i16], row: &[i16], next: Option<(&[i16], i64, i64)>) -> i16 {
    let dot = |taps: &[i16]| -> i32 {
        x.iter().zip(taps).fold(16384i32, |acc, (&a, &b)| {
            acc.wrapping_add(i32::from(a) * i32::from(b))
        })
    };
    let mut val = dot(row);
    if let Some((next, frac, src_incr)) = next {
        let v2 = dot(next);
        let d = i64::from(v2.wrapping_sub(val)) * frac;
        val = val.wrapping_add((d / src_incr) as i32);
    }
    (val >> 15).clamp(-32768, 32767) as i16
}

/// Whether this CPU has the AVX2 and FMA FFmpeg's kernel uses (asked once
/// per batch of outputs, not per output).
pub(crate) fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Float form (`fma`: what [`fma_available`] said); `next` carries the next row and the interpolation weight
/// `frac as f32 * (1 / src_incr as f32)`. `x` and the rows have the same
/// length (the filter length).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
pub(crate) fn dot_f32(x: &[f32], row: &[f32], next: Option<(&[f32], f32)>, fma: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if fma {
            // SAFETY: `fma` says the CPU has AVX2 and FMA, the
            // features `dot_f32_fma` is compiled for; it reads only through slices.
            #[allow(unsafe_code)]
            return unsafe { dot_f32_fma(x, row, next) };
        }
    }
    dot_f32_lanes(x, row, next, |a, b, c| a * b + c)
}

/// FFmpeg's FMA3 kernel in AVX intrinsics: one 8-lane accumulator of fused
/// multiply-adds per row, the two 128-bit halves added, interpolated with
/// one fused multiply-add, then `(a0 + a2) + (a1 + a3)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_f32_fma(x: &[f32], row: &[f32], next: Option<(&[f32], f32)>) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len().min(row.len()) / 8 * 8;
    if n != x.len() || next.is_some_and(|(r, _)| r.len() < x.len()) {
        // Lengths that are not a multiple of 8 take the portable form.
        return dot_f32_lanes(x, row, next, f32::mul_add);
    }
    #[target_feature(enable = "avx2,fma")]
    fn lanes(x: &[f32], taps: &[f32]) -> __m128 {
        let mut acc = _mm256_setzero_ps();
        for (xc, tc) in x.chunks_exact(8).zip(taps.chunks_exact(8)) {
            // SAFETY: both chunks are exactly 8 f32 long; loadu has no
            // alignment requirement.
            #[allow(unsafe_code)]
            let (a, b) = unsafe { (_mm256_loadu_ps(xc.as_ptr()), _mm256_loadu_ps(tc.as_ptr())) };
            acc = _mm256_fmadd_ps(a, b, acc);
        }
        _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc))
    }
    let mut a = lanes(&x[..n], &row[..n]);
    if let Some((next, t)) = next {
        let b = lanes(&x[..n], &next[..n]);
        a = _mm_fmadd_ps(_mm_sub_ps(b, a), _mm_set1_ps(t), a);
    }
    let halves = _mm_add_ps(a, _mm_movehl_ps(a, a));
    _mm_cvtss_f32(_mm_add_ss(halves, _mm_shuffle_ps::<1>(halves, halves)))
}

/// The FMA3 kernel's order, with `fma` as the multiply-add (fused where the
/// CPU has it; the fallback is close but not bit-identical to fpcalc).
#[inline(always)]
fn dot_f32_lanes(
    x: &[f32],
    row: &[f32],
    next: Option<(&[f32], f32)>,
    fma: impl Fn(f32, f32, f32) -> f32 + Copy,
) -> f32 {
    let lanes = |taps: &[f32]| -> [f32; 4] {
        let mut acc = [0f32; 8];
        let mut xs = x.chunks_exact(8);
        let mut ts = taps.chunks_exact(8);
        for (xc, tc) in (&mut xs).zip(&mut ts) {
            for l in 0..8 {
                acc[l] = fma(xc[l], tc[l], acc[l]);
            }
        }
        // A filter length that is not a multiple of 8: FFmpeg reads zero taps
        // past the end, which leave the lanes unchanged.
        for (l, (&a, &b)) in xs.remainder().iter().zip(ts.remainder()).enumerate() {
            acc[l] = fma(a, b, acc[l]);
        }
        [
            acc[0] + acc[4],
            acc[1] + acc[5],
            acc[2] + acc[6],
            acc[3] + acc[7],
        ]
    };
    let mut a = lanes(row);
    if let Some((next, t)) = next {
        let b = lanes(next);
        for l in 0..4 {
            a[l] = fma(b[l] - a[l], t, a[l]);
        }
    }
    let (s0, s1) = (a[0] + a[2], a[1] + a[3]);
    s0 + s1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_dot_rounds_and_clips_as_swresample() {
        let x = [1000i16; 8];
        let row = [4096i16; 8]; // sums to 32768: unity gain
        assert_eq!(dot_i16(&x, &row, None), 1000);
        let loud = [32767i16; 8];
        let gain = [8192i16; 8]; // 2x
        assert_eq!(dot_i16(&loud, &gain, None), 32767);
        // Halfway toward a row of twice the gain.
        let next = [8192i16; 8];
        assert_eq!(dot_i16(&x, &row, Some((&next, 1, 2))), 1500);
    }

    #[test]
    fn float_dot_sums_every_tap() {
        let x: Vec<f32> = (0..88).map(|i| i as f32).collect();
        let row = vec![1.0f32; 88];
        assert_eq!(
            dot_f32(&x, &row, None, fma_available()),
            (0..88).sum::<i32>() as f32
        );
        let next = vec![2.0f32; 88];
        let half = dot_f32(&x, &row, Some((&next, 0.5)), fma_available());
        assert_eq!(half, 1.5 * (0..88).sum::<i32>() as f32);
    }
}
