//! Deterministic corpus: fingerprint `id` is drawn from a generator seeded with
//! `seed ^ id`, so any stored fingerprint can be rebuilt (to make queries)
//! without keeping the corpus.
//!
//! Distributions: `uniform` (every hash a random u32: the worst case for
//! compression, and the common case for search cost), or `skewed`: each hash
//! is, with probability `share`, one of only `frequent` values, like the
//! hashes silence and hum produce in real audio (long posting lists every
//! query touches), or `correlated`: like Chromaprint, whose consecutive
//! hashes come from overlapping audio frames, each hash is the previous one
//! with a few bits flipped (neighbouring hashes share most of their bits).

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

#[derive(Clone, Copy, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(tag = "distribution", rename_all = "snake_case")]
pub enum Distribution {
    Uniform,
    Skewed {
        /// How many distinct frequent hashes there are.
        frequent: u32,
        /// Share of all hashes that are frequent ones.
        share: f64,
    },
    Correlated {
        /// Bits flipped between consecutive hashes.
        flip: u32,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Corpus {
    pub seed: u64,
    pub hashes: usize,
    pub distribution: Distribution,
}

/// The `k`-th frequent hash: spread over the u32 range, fixed for a seed.
fn frequent_hash(seed: u64, k: u32) -> u32 {
    let mut x = (seed ^ 0xF00D).wrapping_add(u64::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (x >> 32) as u32
}

impl Corpus {
    pub fn fingerprint(&self, id: u32) -> Vec<u32> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(
            self.seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let mut previous: u32 = rng.r#gen();
        (0..self.hashes)
            .map(|_| match self.distribution {
                Distribution::Skewed { frequent, share }
                    if frequent > 0 && rng.gen_bool(share.clamp(0.0, 1.0)) =>
                {
                    frequent_hash(self.seed, rng.gen_range(0..frequent))
                }
                Distribution::Correlated { flip } => {
                    for _ in 0..flip {
                        previous ^= 1 << rng.gen_range(0..32);
                    }
                    previous
                }
                _ => rng.r#gen::<u32>(),
            })
            .collect()
    }

    /// Writes fingerprints `first..=last` as the MessagePack records
    /// `fpnode import` reads (`{"i": id, "h": [...]}`, one after another).
    pub fn write_msgpack(
        &self,
        out: &mut impl std::io::Write,
        first: u32,
        last: u32,
    ) -> anyhow::Result<()> {
        #[derive(serde::Serialize)]
        struct Record<'a> {
            i: u32,
            h: &'a [u32],
        }
        for id in first..=last {
            let h = self.fingerprint(id);
            rmp_serde::encode::write_named(out, &Record { i: id, h: &h })?;
        }
        Ok(())
    }

    /// A stored fingerprint with each hash replaced by a random one with
    /// probability `noise`, and dropped with probability `drop`.
    pub fn query(&self, id: u32, noise: f64, drop: f64, rng: &mut impl Rng) -> Vec<u32> {
        let (noise, drop) = (noise.clamp(0.0, 1.0), drop.clamp(0.0, 1.0));
        let mut out = Vec::new();
        for h in self.fingerprint(id) {
            if rng.gen_bool(drop) {
                continue;
            }
            out.push(if rng.gen_bool(noise) { rng.r#gen() } else { h });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_deterministic_and_skew_concentrates_hashes() {
        let uniform = Corpus {
            seed: 7,
            hashes: 120,
            distribution: Distribution::Uniform,
        };
        assert_eq!(uniform.fingerprint(5), uniform.fingerprint(5));
        assert_ne!(uniform.fingerprint(5), uniform.fingerprint(6));
        let skewed = Corpus {
            distribution: Distribution::Skewed {
                frequent: 16,
                share: 0.5,
            },
            ..uniform
        };
        let mut counts = std::collections::HashMap::new();
        for id in 1..=1000 {
            for h in skewed.fingerprint(id) {
                *counts.entry(h).or_insert(0u32) += 1;
            }
        }
        let top: u32 = {
            let mut v: Vec<u32> = counts.values().copied().collect();
            v.sort_unstable_by(|a, b| b.cmp(a));
            v.iter().take(16).sum()
        };
        // About half of the 120,000 hashes are one of the 16 frequent values.
        assert!((50_000..70_000).contains(&top), "{top}");
    }

    #[test]
    fn correlated_hashes_differ_from_their_neighbours_in_few_bits() {
        let c = Corpus {
            seed: 3,
            hashes: 120,
            distribution: Distribution::Correlated { flip: 2 },
        };
        let h = c.fingerprint(11);
        let bits: u32 = h.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).sum();
        // Two flips per step: 0 (the same bit twice) or 2 bits differ.
        assert!((119..=2 * 119).contains(&bits), "{bits}");
        let uniform = Corpus {
            distribution: Distribution::Uniform,
            ..c
        };
        let u = uniform.fingerprint(11);
        let ubits: u32 = u.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).sum();
        assert!(ubits > 119 * 12, "{ubits}");
    }

    #[test]
    fn queries_replace_and_drop_hashes_at_the_given_rates() {
        let c = Corpus {
            seed: 1,
            hashes: 1000,
            distribution: Distribution::Uniform,
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let q = c.query(9, 0.0, 0.0, &mut rng);
        assert_eq!(q, c.fingerprint(9));
        let q = c.query(9, 0.0, 0.25, &mut rng);
        assert!((650..850).contains(&q.len()), "{}", q.len());
        let stored: std::collections::HashSet<u32> = c.fingerprint(9).into_iter().collect();
        let q = c.query(9, 0.3, 0.0, &mut rng);
        let kept = q.iter().filter(|h| stored.contains(h)).count();
        assert!((600..800).contains(&kept), "{kept}");
    }
}
