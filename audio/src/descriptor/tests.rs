//! Each field on synthetic signals whose answer is known (docs/audio.md,
//! "The descriptor", lists the expected values and why).

use std::f64::consts::PI;

use super::*;

const RATE: u32 = 44100;

fn frames(seconds: f64) -> usize {
    (seconds * f64::from(RATE)) as usize
}

/// Interleaved stereo from a function of (frame, channel).
fn stereo(seconds: f64, mut f: impl FnMut(usize, usize) -> f64) -> Vec<f32> {
    (0..frames(seconds))
        .flat_map(|i| [f(i, 0) as f32, f(i, 1) as f32])
        .collect()
}

fn sine(freq: f64, amplitude: f64, i: usize) -> f64 {
    amplitude * (2.0 * PI * freq * i as f64 / f64::from(RATE)).sin()
}

/// xorshift64*: uniform in [-1, 1), reproducible, one stream per seed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

fn describe(samples: &[f32], channels: usize) -> Descriptor {
    match describe_samples(samples, RATE, channels) {
        Ok(d) => d,
        Err(e) => panic!("describe: {e}"),
    }
}

fn near(what: &str, got: f64, want: f64, tolerance: f64) {
    assert!(
        (got - want).abs() <= tolerance,
        "{what}: got {got}, want {want} ± {tolerance}"
    );
}

#[test]
fn a_440_hz_sine() {
    let d = describe(&stereo(5.0, |i, _| sine(440.0, 0.5, i)), 2);
    near("centroid", d.spectral_centroid_hz, 440.0, 20.0);
    near("rolloff", d.spectral_rolloff_hz, 440.0, 20.0);
    assert!(d.spectral_flatness < 0.01, "{d:?}");
    assert!(d.freq_250_500_hz > 99.0, "{d:?}");
    assert!(d.bass_mid_ratio < 0.01, "{d:?}");
    assert!(d.harmonic_ratio > 0.9, "{d:?}");
    assert!(d.pitch_stability > 0.95, "{d:?}");
    assert!(d.chroma_energy > 0.9, "{d:?}");
    near("crest (sqrt 2)", d.crest_factor_db, 3.01, 0.05);
    near("silence", d.silence_ratio, 0.0, 0.0);
    near("width", d.stereo_width, 0.0, 1e-9);
    near("correlation", d.phase_correlation, 1.0, 1e-9);
    near("peak consistency", d.peak_consistency, 1.0, 0.01);
    assert!(d.dynamic_range_variation < 0.05, "{d:?}");
    assert!(d.loudness_variation_std < 0.05, "{d:?}");
    near("transients", d.transient_density, 0.0, 0.0);
    near("tempo of a steady tone", d.tempo_bpm, 0.0, 0.0);
}

#[test]
fn white_noise_with_independent_channels() {
    let (mut left, mut right) = (Noise(1), Noise(2));
    let samples: Vec<f32> = (0..frames(10.0))
        .flat_map(|_| [0.5 * left.next() as f32, 0.5 * right.next() as f32])
        .collect();
    let d = describe(&samples, 2);
    // The mono mix of independent noises is still white.
    near(
        "centroid",
        d.spectral_centroid_hz,
        (20.0 + 22050.0) / 2.0,
        300.0,
    );
    near(
        "rolloff",
        d.spectral_rolloff_hz,
        20.0 + 0.85 * 22030.0,
        300.0,
    );
    // Bands in proportion to their width.
    near("6k+", d.freq_6000_plus_hz, 100.0 * 16050.0 / 22030.0, 1.5);
    near(
        "500-2000",
        d.freq_500_2000_hz,
        100.0 * 1500.0 / 22030.0,
        0.5,
    );
    // Flatness of a white power spectrum: exp(-Euler's gamma) = 0.56.
    near("flatness", d.spectral_flatness, 0.5615, 0.05);
    assert!(d.harmonic_ratio < 0.3, "{d:?}");
    assert!(d.chroma_energy < 0.2, "{d:?}");
    assert!(d.pitch_stability < 0.2, "{d:?}");
    // Uniform noise: crest sqrt(3) = 4.77 dB.
    near("crest", d.crest_factor_db, 4.77, 0.1);
    near("width", d.stereo_width, 0.5, 0.02);
    near("correlation", d.phase_correlation, 0.0, 0.02);
    assert!(d.rhythm_stability < 0.3, "{d:?}");
    assert!(d.transient_density < 1.0, "{d:?}");
}

#[test]
fn pink_noise_has_equal_energy_per_octave() {
    // Paul Kellet's pink filter (accurate to 0.05 dB above 9 Hz at 44.1 kHz).
    let mut noise = Noise(3);
    let mut b = [0.0f64; 7];
    let mono: Vec<f32> = (0..frames(30.0))
        .map(|_| {
            let w = noise.next();
            b[0] = 0.99886 * b[0] + w * 0.0555179;
            b[1] = 0.99332 * b[1] + w * 0.0750759;
            b[2] = 0.96900 * b[2] + w * 0.1538520;
            b[3] = 0.86650 * b[3] + w * 0.3104856;
            b[4] = 0.55000 * b[4] + w * 0.5329522;
            b[5] = -0.7616 * b[5] - w * 0.0168980;
            let pink = b[0] + b[1] + b[2] + b[3] + b[4] + b[5] + b[6] + w * 0.5362;
            b[6] = w * 0.115926;
            (pink * 0.05) as f32
        })
        .collect();
    let d = describe(&mono, 1);
    let octaves = (22050.0f64 / 20.0).log2();
    let share = |lo: f64, hi: f64| 100.0 * (hi / lo).log2() / octaves;
    near("20-60", d.freq_20_60_hz, share(20.0, 60.0), 2.5);
    near("60-250", d.freq_60_250_hz, share(60.0, 250.0), 2.0);
    near("250-500", d.freq_250_500_hz, share(250.0, 500.0), 1.5);
    near("500-2000", d.freq_500_2000_hz, share(500.0, 2000.0), 1.5);
    near("2000-4000", d.freq_2000_4000_hz, share(2000.0, 4000.0), 1.5);
    near("4000-6000", d.freq_4000_6000_hz, share(4000.0, 6000.0), 1.0);
    near("6000+", d.freq_6000_plus_hz, share(6000.0, 22050.0), 1.5);
    let total: f64 = d.to_vec()[..7].iter().sum();
    near("bands sum", total, 100.0, 1e-6);
    // Mono: no side signal.
    near("width", d.stereo_width, 0.0, 0.0);
    near("correlation", d.phase_correlation, 1.0, 0.0);
}

#[test]
fn a_120_bpm_click_track() {
    // A 5 ms decaying 2 kHz click every half second, silence between.
    let period = frames(0.5);
    let click = frames(0.005);
    let mono: Vec<f32> = (0..frames(10.0))
        .map(|i| {
            let t = i % period;
            if t < click {
                (sine(2000.0, 0.8, t) * (-(t as f64) / click as f64 * 3.0).exp()) as f32
            } else {
                0.0
            }
        })
        .collect();
    let d = describe(&mono, 1);
    near("tempo", d.tempo_bpm, 120.0, 2.0);
    assert!(d.rhythm_stability > 0.5, "{d:?}");
    near("transients per second", d.transient_density, 2.0, 0.2);
    // One 50 ms block in ten holds a click.
    near("silence", d.silence_ratio, 0.9, 0.02);
}

#[test]
fn silence() {
    let d = describe(&vec![0.0; 2 * frames(3.0)], 2);
    near("loudness", d.loudness_lufs, SILENT_LUFS, 0.0);
    near("silence", d.silence_ratio, 1.0, 0.0);
    let mut rest = d.to_vec();
    rest[7] = 0.0; // loudness
    rest[13] = 0.0; // silence ratio
    assert!(rest.iter().all(|&v| v == 0.0), "{d:?}");
}

#[test]
fn the_ebu_reference_tone_measures_minus_23_lufs() {
    // EBU Tech 3341, case 1: a 1 kHz stereo sine at -23 dBFS reads -23 LUFS.
    let amplitude = 10f64.powf(-23.0 / 20.0);
    let d = describe(&stereo(20.0, |i, _| sine(1000.0, amplitude, i)), 2);
    near("loudness", d.loudness_lufs, -23.0, 0.1);
    near("loudness variation", d.loudness_variation_std, 0.0, 0.05);
}

#[test]
fn level_steps_give_loudness_and_peak_variation() {
    // 2 s at a level, 2 s 20 dB lower, four times over.
    let d = describe(
        &stereo(16.0, |i, _| {
            let loud = (i / frames(2.0)).is_multiple_of(2);
            sine(1000.0, if loud { 0.5 } else { 0.05 }, i)
        }),
        2,
    );
    near("loudness variation", d.loudness_variation_std, 10.0, 1.0);
    near("peak consistency", d.peak_consistency, 0.55, 0.05);
    // Each 400 ms block is still a sine: the crest factor does not vary.
    assert!(d.dynamic_range_variation < 0.2, "{d:?}");
}

#[test]
fn alternating_tone_and_noise_vary_in_crest_factor() {
    let mut noise = Noise(5);
    let d = describe(
        &stereo(8.0, |i, _| {
            if (i / frames(0.4)).is_multiple_of(2) {
                sine(500.0, 0.5, i)
            } else {
                0.5 * noise.next()
            }
        })
        .chunks(2)
        .flat_map(|f| [f[0], f[0]])
        .collect::<Vec<_>>(),
        2,
    );
    // Half the blocks at 3.01 dB, half near 4.77 dB: a spread of ~0.88 dB.
    near(
        "dynamic range variation",
        d.dynamic_range_variation,
        0.88,
        0.2,
    );
}

#[test]
fn opposite_channels_are_wide_and_anti_correlated() {
    let d = describe(
        &stereo(3.0, |i, c| {
            if c == 0 {
                sine(300.0, 0.5, i)
            } else {
                -sine(300.0, 0.5, i)
            }
        }),
        2,
    );
    near("width", d.stereo_width, 1.0, 1e-9);
    near("correlation", d.phase_correlation, -1.0, 1e-9);
}

#[test]
fn a_low_tone_is_all_bass() {
    let d = describe(&stereo(3.0, |i, _| sine(100.0, 0.5, i)), 2);
    assert!(d.freq_60_250_hz > 99.0, "{d:?}");
    assert!(d.bass_mid_ratio > 100.0, "{d:?}");
    assert!(d.pitch_stability > 0.95 && d.harmonic_ratio > 0.9, "{d:?}");
}

#[test]
fn tracks_shorter_than_a_frame_and_bad_parameters() {
    let d = describe(&stereo(0.05, |i, _| sine(440.0, 0.5, i)), 2);
    near(
        "centroid of a short tone",
        d.spectral_centroid_hz,
        440.0,
        60.0,
    );
    assert_eq!(d.tempo_bpm, 0.0);
    assert!(describe_samples(&[], RATE, 2).is_ok());
    assert!(matches!(
        describe_samples(&[0.0], 0, 1),
        Err(AudioError::Corrupt(_))
    ));
    assert!(matches!(
        describe_samples(&[0.0], RATE, 0),
        Err(AudioError::Corrupt(_))
    ));
}
