//! Chromaprint, algorithm 2 (`TEST2`, fpcalc's default), fed with mono
//! 11,025 Hz samples: bit for bit the fingerprint libchromaprint 1.5.1
//! computes (docs/audio.md, "Chromaprint").

mod chroma;
mod classify;
mod compress;
mod terms;

pub use compress::{compress, decompress};
pub use terms::{QUERY_SIZE, SILENCE, index_hashes, query_terms};

use chroma::Chroma;
use classify::Calculator;

/// Chromaprint's algorithm id for TEST2 (the first byte of a compressed
/// fingerprint).
pub const ALGORITHM_TEST2: u8 = 1;

/// Samples needed for the first item: 4,096 + 19 steps of 1,365 (5 frames
/// for the chroma filter, 16 rows per item).
pub const MIN_SAMPLES: usize = chroma::FRAME + 19 * chroma::STEP;

/// Streaming fingerprint calculator.
#[derive(Debug)]
pub struct Fingerprinter {
    chroma: Chroma,
    calculator: Calculator,
    items: Vec<u32>,
    samples: u64,
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Self::new()
    }
}

impl Fingerprinter {
    pub fn new() -> Fingerprinter {
        Fingerprinter {
            chroma: Chroma::new(),
            calculator: Calculator::default(),
            items: Vec::new(),
            samples: 0,
        }
    }

    /// Feeds mono 11,025 Hz samples.
    pub fn consume(&mut self, samples: &[i16]) {
        self.samples += samples.len() as u64;
        let (calculator, items) = (&mut self.calculator, &mut self.items);
        self.chroma.consume(samples, |row| {
            if let Some(item) = calculator.push(row) {
                items.push(item);
            }
        });
    }

    /// Samples consumed so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The raw fingerprint (Chromaprint never pads the last frame).
    pub fn finish(self) -> Vec<u32> {
        self.items
    }
}

/// Item count for `samples` mono 11,025 Hz samples.
pub fn items_for(samples: usize) -> usize {
    if samples < MIN_SAMPLES {
        return 0;
    }
    (samples - chroma::FRAME) / chroma::STEP + 1 - 4 - 15
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_count_follows_chromaprint_framing() {
        for n in [
            0,
            MIN_SAMPLES - 1,
            MIN_SAMPLES,
            MIN_SAMPLES + 1364,
            MIN_SAMPLES + 1365,
            1_323_000,
        ] {
            let samples: Vec<i16> = (0..n).map(|i| ((i * 7919) % 2000) as i16 - 1000).collect();
            let mut f = Fingerprinter::new();
            for chunk in samples.chunks(777) {
                f.consume(chunk);
            }
            assert_eq!(f.finish().len(), items_for(n), "{n}");
        }
        assert_eq!(items_for(1_323_000), 948);
    }

    #[test]
    fn silence_fingerprints_as_chromaprint_silence() {
        let mut f = Fingerprinter::new();
        f.consume(&vec![0i16; MIN_SAMPLES + 10 * 1365]);
        let items = f.finish();
        assert_eq!(items.len(), 11);
        assert!(items.iter().all(|&i| i == SILENCE), "{items:?}");
    }
}
