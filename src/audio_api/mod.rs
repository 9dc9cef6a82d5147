//! The audio endpoints (docs/api.md, "Audio"): `POST /fingerprint` (the 25-D
//! descriptor library scanners call), `GET /health`, `POST /_fingerprint`
//! (Chromaprint, AcoustID's query terms and the hashes to index), served by
//! `fpnode serve` and by `fpnode audio-server`; search by audio is in the
//! search handler, through [`AudioService::fingerprint_bytes`].
//!
//! Decoding runs on blocking threads, at most `--max-decodes` at once.

mod error;
mod handlers;
mod input;
mod service;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

pub use error::AudioApiError;
pub use handlers::{blocking, max_seconds};
pub use input::extension_for;
pub use service::{AudioOptions, AudioService};

pub fn router(service: Arc<AudioService>) -> Router {
    Router::new()
        .route("/health", get(handlers::health))
        .route("/fingerprint", post(handlers::descriptor))
        .route("/_fingerprint", post(handlers::chromaprint))
        .with_state(service)
}
