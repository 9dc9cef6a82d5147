//! Tempo, rhythm stability and transient density from the onset envelope
//! (spectral flux every 512 samples), docs/audio.md "The descriptor".

/// Tempo range searched, in beats per minute.
const MIN_BPM: f64 = 50.0;
const MAX_BPM: f64 = 220.0;
/// The log-normal prior on tempo (librosa's: centred on 120 BPM, one octave
/// wide) that settles octave ambiguity (a 120 BPM pulse also repeats every
/// second).
const PRIOR_BPM: f64 = 120.0;
const PRIOR_OCTAVES: f64 = 1.0;
/// Transients closer than this are one.
const MIN_GAP_SECONDS: f64 = 0.05;
/// A transient stands this far above the median of the envelope around it.
const PEAK_OVER_MEDIAN: f64 = 1.5;
/// Half the window of that median.
const MEDIAN_HALF_SECONDS: f64 = 0.5;
/// And rises the log-magnitude spectrum by at least this much in total
/// (about 0.05 per bin of the 1,025): a steady tone's frame-to-frame
/// rounding noise is ~8.
const MIN_ONSET_FLUX: f32 = 50.0;
/// Fewer detected onsets than this: tempo 0.
const MIN_ONSETS_FOR_TEMPO: usize = 2;
/// Below this normalised autocorrelation there is no pulse: tempo 0.
const MIN_PULSE: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rhythm {
    pub tempo_bpm: f64,
    pub rhythm_stability: f64,
    pub transient_density: f64,
}

/// `envelope` holds one onset strength per hop, `fps` hops per second;
/// `seconds` is the analysed duration.
pub fn analyse(envelope: &[f32], fps: f64, seconds: f64) -> Rhythm {
    let (mut tempo_bpm, rhythm_stability) = tempo(envelope, fps);
    let transients = transients(envelope, fps);
    // No onsets, no beat: the periodicity of a steady sound's rounding
    // noise is not a tempo.
    if transients < MIN_ONSETS_FOR_TEMPO {
        tempo_bpm = 0.0;
    }
    Rhythm {
        tempo_bpm,
        rhythm_stability,
        transient_density: if seconds > 0.0 {
            transients as f64 / seconds
        } else {
            0.0
        },
    }
}

/// The lag of the strongest (prior-weighted) autocorrelation peak of the
/// mean-removed envelope, as BPM, and its normalised height.
fn tempo(envelope: &[f32], fps: f64) -> (f64, f64) {
    let n = envelope.len();
    let min_lag = (fps * 60.0 / MAX_BPM).floor().max(1.0) as usize;
    let max_lag = (fps * 60.0 / MIN_BPM).ceil() as usize;
    // Two periods at least, or there is no tempo to speak of.
    if n < 2 * min_lag + 2 {
        return (0.0, 0.0);
    }
    let max_lag = max_lag.min(n / 2);
    let mean = envelope.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let x: Vec<f64> = envelope.iter().map(|&v| f64::from(v) - mean).collect();
    let energy: f64 = x.iter().map(|v| v * v).sum();
    if energy <= f64::EPSILON {
        return (0.0, 0.0);
    }
    // Normalised so a perfectly periodic envelope scores 1 at its period
    // whatever the lag (each lag's sum has n - lag terms).
    let ac = |lag: usize| -> f64 {
        let sum: f64 = x[lag..].iter().zip(&x[..n - lag]).map(|(a, b)| a * b).sum();
        sum / energy * n as f64 / (n - lag) as f64
    };
    let acs: Vec<f64> = (0..=max_lag + 1)
        .map(|l| if l < n { ac(l) } else { 0.0 })
        .collect();
    let weight = |lag: f64| {
        let bpm = 60.0 * fps / lag;
        let octaves = (bpm / PRIOR_BPM).log2() / PRIOR_OCTAVES;
        (-0.5 * octaves * octaves).exp()
    };
    let mut best: Option<(usize, f64)> = None;
    for lag in min_lag.max(1)..=max_lag {
        let is_peak = acs[lag] >= acs[lag - 1] && acs[lag] >= acs[lag + 1] && acs[lag] > 0.0;
        if !is_peak {
            continue;
        }
        let score = acs[lag] * weight(lag as f64);
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((lag, score));
        }
    }
    let Some((lag, _)) = best else {
        return (0.0, 0.0);
    };
    // Parabolic interpolation between the neighbouring lags.
    let (a, b, c) = (acs[lag - 1], acs[lag], acs[lag + 1]);
    let denominator = a - 2.0 * b + c;
    let offset = if denominator.abs() > f64::EPSILON {
        (0.5 * (a - c) / denominator).clamp(-0.5, 0.5)
    } else {
        0.0
    };
    let stability = b.clamp(0.0, 1.0);
    if stability < MIN_PULSE {
        return (0.0, stability);
    }
    (60.0 * fps / (lag as f64 + offset), stability)
}

/// Local maxima of the envelope well above its local median and above its
/// mean, at least [`MIN_GAP_SECONDS`] apart.
fn transients(envelope: &[f32], fps: f64) -> usize {
    let n = envelope.len();
    if n < 3 {
        return 0;
    }
    let mean = envelope.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let half = ((MEDIAN_HALF_SECONDS * fps) as usize).max(1);
    let min_gap = ((MIN_GAP_SECONDS * fps).ceil() as usize).max(1);
    let mut window: Vec<f32> = Vec::with_capacity(2 * half + 1);
    let mut count = 0;
    let mut last: Option<usize> = None;
    for t in 1..n - 1 {
        let v = envelope[t];
        if !(v > envelope[t - 1]
            && v >= envelope[t + 1]
            && f64::from(v) > mean
            && v >= MIN_ONSET_FLUX)
        {
            continue;
        }
        window.clear();
        window.extend_from_slice(&envelope[t.saturating_sub(half)..(t + half + 1).min(n)]);
        let mid = window.len() / 2;
        let median = *window.select_nth_unstable_by(mid, f32::total_cmp).1;
        if f64::from(v) < PEAK_OVER_MEDIAN * f64::from(median) {
            continue;
        }
        if last.is_some_and(|l| t - l < min_gap) {
            continue;
        }
        last = Some(t);
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    const FPS: f64 = 44100.0 / 512.0;

    fn pulses(bpm: f64, seconds: f64) -> Vec<f32> {
        let n = (seconds * FPS) as usize;
        let period = 60.0 / bpm * FPS;
        let mut env = vec![1.0f32; n];
        let mut t = 0.0;
        while (t as usize) < n {
            env[t as usize] = 500.0;
            t += period;
        }
        env
    }

    #[test]
    fn a_pulse_train_gives_its_tempo_and_full_stability() {
        for bpm in [72.0, 90.0, 120.0, 140.0, 174.0] {
            let r = analyse(&pulses(bpm, 10.0), FPS, 10.0);
            assert!((r.tempo_bpm - bpm).abs() < bpm * 0.02, "{bpm}: {r:?}");
            assert!(r.rhythm_stability > 0.6, "{bpm}: {r:?}");
            let expected = bpm / 60.0;
            assert!(
                (r.transient_density - expected).abs() < 0.25,
                "{bpm}: {r:?}"
            );
        }
    }

    #[test]
    fn a_flat_envelope_has_no_tempo_and_no_transients() {
        let r = analyse(&vec![8.0; 1000], FPS, 1000.0 / FPS);
        assert_eq!(r, Rhythm::default());
        assert_eq!(analyse(&[], FPS, 0.0), Rhythm::default());
    }
}
