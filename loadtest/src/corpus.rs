//! Deterministic corpus: fingerprint `id` has `hashes` uniformly random u32
//! hashes drawn from a generator seeded with `seed ^ id`, so any stored
//! fingerprint can be rebuilt (to make queries) without keeping the corpus.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

#[derive(Clone, Copy, Debug)]
pub struct Corpus {
    pub seed: u64,
    pub hashes: usize,
}

impl Corpus {
    pub fn fingerprint(&self, id: u32) -> Vec<u32> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(
            self.seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        (0..self.hashes).map(|_| rng.r#gen::<u32>()).collect()
    }

    /// A stored fingerprint with each hash replaced by a random one with
    /// probability `noise`.
    pub fn noisy_query(&self, id: u32, noise: f64, rng: &mut impl Rng) -> Vec<u32> {
        self.fingerprint(id)
            .into_iter()
            .map(|h| if rng.gen_bool(noise) { rng.r#gen() } else { h })
            .collect()
    }
}
