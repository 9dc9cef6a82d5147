//! Audio in for fpnode: decoding every common format (symphonia, libopus),
//! Chromaprint fingerprints identical to Debian's `fpcalc` 1.5.1, AcoustID's
//! query terms. docs/audio.md describes each step and what was measured.

pub mod chromaprint;
pub mod decode;
pub mod descriptor;
mod error;
mod fingerprint;
pub mod resample;

pub use error::AudioError;
pub use fingerprint::{DEFAULT_MAX_SECONDS, Fingerprint, FingerprintOptions, fingerprint};
