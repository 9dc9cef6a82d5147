//! The audio handlers; docs/api.md, "Audio", shows each with curl.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use fpnode_audio::decode::Source;
use fpnode_audio::descriptor::{DescribeOptions, Description, describe};
use fpnode_audio::{Fingerprint, FingerprintOptions};
use serde::{Deserialize, Serialize};

use super::error::AudioApiError;
use super::input::{self, Input};
use super::service::{Admission, AudioService};

pub async fn health(State(service): State<Arc<AudioService>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_sec": service.started.elapsed().as_secs(),
    }))
}

#[derive(Debug, Deserialize)]
pub struct DescriptorRequest {
    #[serde(default)]
    track_id: serde_json::Value,
    filepath: String,
}

#[derive(Debug, Deserialize, Default)]
pub struct UploadParams {
    #[serde(default)]
    track_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct Metadata {
    duration_sec: f64,
    sample_rate: u32,
    channels: usize,
    format: &'static str,
    codec: &'static str,
}

#[derive(Debug, Serialize)]
struct DescriptorResponse {
    track_id: serde_json::Value,
    fingerprint: fpnode_audio::descriptor::Descriptor,
    metadata: Metadata,
    processing_time_ms: f64,
    cached: bool,
}

/// `POST /fingerprint`: the 25-D descriptor of a file under a media root
/// (`{"track_id", "filepath"}`) or of the uploaded audio (`?track_id=`).
pub async fn descriptor(
    State(service): State<Arc<AudioService>>,
    Query(params): Query<UploadParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = descriptor_inner(&service, params, &headers, body, started).await;
    finish("fingerprint", started, result)
}

async fn descriptor_inner(
    service: &Arc<AudioService>,
    params: UploadParams,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<DescriptorResponse, AudioApiError> {
    let (admission, input) = admitted::<DescriptorRequest>(service, headers, body).await?;
    let options = DescribeOptions {
        max_seconds: None,
        deadline: None,
    };
    let (track_id, description, cached) = match input {
        Input::Json(request) => {
            let media = open_media(service, &request.filepath).await?;
            if let Some(hit) = service.cached(&media.key) {
                (request.track_id, hit, true)
            } else {
                let key = media.key.clone();
                let description = blocking(service, &admission, move |deadline| {
                    describe(
                        Source::Handle {
                            file: &media.file,
                            extension: media.extension.as_deref(),
                        },
                        &DescribeOptions {
                            deadline: Some(deadline),
                            ..options
                        },
                    )
                })
                .await?;
                service.remember(key, description.clone());
                (request.track_id, description, false)
            }
        }
        Input::Upload { file, extension } => {
            let description = blocking(service, &admission, move |deadline| {
                describe(
                    Source::Handle {
                        file: &file,
                        extension,
                    },
                    &DescribeOptions {
                        deadline: Some(deadline),
                        ..options
                    },
                )
            })
            .await?;
            let track_id = params
                .track_id
                .map_or(serde_json::Value::Null, serde_json::Value::from);
            (track_id, description, false)
        }
    };
    metrics::counter!("fpnode_audio_files_total", "format" => description.info.format).increment(1);
    Ok(DescriptorResponse {
        track_id,
        fingerprint: description.descriptor,
        metadata: metadata(&description),
        processing_time_ms: started.elapsed().as_secs_f64() * 1000.0,
        cached,
    })
}

fn metadata(d: &Description) -> Metadata {
    Metadata {
        duration_sec: d.duration,
        sample_rate: d.info.sample_rate,
        channels: d.info.channels,
        format: d.info.format,
        codec: d.info.codec,
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct ChromaprintParams {
    /// Seconds fingerprinted (fpcalc's `-length`, default 120; 0 = all).
    length: Option<f64>,
    /// Include the raw items.
    #[serde(default)]
    raw: bool,
}

#[derive(Debug, Deserialize)]
pub struct ChromaprintRequest {
    filepath: String,
    length: Option<f64>,
    #[serde(default)]
    raw: bool,
}

#[derive(Debug, Serialize)]
struct ChromaprintResponse {
    duration: f64,
    /// fpcalc's compressed form.
    fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    items: Option<Vec<u32>>,
    /// AcoustID's 120 query terms: what to search with.
    terms: Vec<u32>,
    /// Every distinct masked item: what to index for this recording so
    /// that any excerpt of it is found.
    hashes: Vec<u32>,
    metadata: Metadata,
    processing_time_ms: f64,
}

/// `POST /_fingerprint`: Chromaprint of a file under a media root or of the
/// uploaded audio, with AcoustID's query terms and the hashes to index.
pub async fn chromaprint(
    State(service): State<Arc<AudioService>>,
    Query(params): Query<ChromaprintParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = chromaprint_inner(&service, params, &headers, body, started).await;
    finish("_fingerprint", started, result)
}

async fn chromaprint_inner(
    service: &Arc<AudioService>,
    params: ChromaprintParams,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<ChromaprintResponse, AudioApiError> {
    let (admission, input) = admitted::<ChromaprintRequest>(service, headers, body).await?;
    let (fp, raw) = match input {
        Input::Json(request) => {
            let media = open_media(service, &request.filepath).await?;
            let length = max_seconds(request.length)?;
            let fp = blocking(service, &admission, move |deadline| {
                fpnode_audio::fingerprint(
                    Source::Handle {
                        file: &media.file,
                        extension: media.extension.as_deref(),
                    },
                    &FingerprintOptions {
                        max_seconds: length,
                        deadline: Some(deadline),
                    },
                )
            })
            .await?;
            (fp, request.raw)
        }
        Input::Upload { file, extension } => {
            let length = max_seconds(params.length)?;
            let fp = blocking(service, &admission, move |deadline| {
                fpnode_audio::fingerprint(
                    Source::Handle {
                        file: &file,
                        extension,
                    },
                    &FingerprintOptions {
                        max_seconds: length,
                        deadline: Some(deadline),
                    },
                )
            })
            .await?;
            (fp, params.raw)
        }
    };
    metrics::counter!("fpnode_audio_files_total", "format" => fp.info.format).increment(1);
    Ok(chromaprint_response(fp, raw, started))
}

fn chromaprint_response(fp: Fingerprint, raw: bool, started: Instant) -> ChromaprintResponse {
    ChromaprintResponse {
        duration: fp.duration,
        fingerprint: fp.compressed(),
        terms: fp.query_terms(),
        hashes: fpnode_audio::chromaprint::index_hashes(&fp.items),
        metadata: Metadata {
            duration_sec: fp.duration,
            sample_rate: fp.info.sample_rate,
            channels: fp.info.channels,
            format: fp.info.format,
            codec: fp.info.codec,
        },
        items: raw.then_some(fp.items),
        processing_time_ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}

/// Opens a file under a media root, on a blocking thread.
async fn open_media(
    service: &Arc<AudioService>,
    path: &str,
) -> Result<super::service::MediaFile, AudioApiError> {
    let (svc, path) = (service.clone(), path.to_owned());
    tokio::task::spawn_blocking(move || svc.open_media(&path))
        .await
        .map_err(|e| AudioApiError::Internal(e.to_string()))?
}

/// Admits the request (refused: its body is drained, docs/api.md) and reads
/// what it names.
async fn admitted<T: serde::de::DeserializeOwned>(
    service: &AudioService,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Admission, Input<T>), AudioApiError> {
    let admission = match service.admit() {
        Ok(a) => a,
        Err(e) => {
            input::discard(body, service.options.max_upload_bytes).await;
            return Err(e);
        }
    };
    Ok((admission, input::read::<T>(service, headers, body).await?))
}

/// `length` as fingerprint options take it: 120 by default, 0 for all.
pub fn max_seconds(length: Option<f64>) -> Result<Option<f64>, AudioApiError> {
    match length {
        None => Ok(Some(fpnode_audio::DEFAULT_MAX_SECONDS)),
        Some(l) if !(l.is_finite() && l >= 0.0) => Err(AudioApiError::BadRequest(
            "length must be a number of seconds >= 0".into(),
        )),
        Some(0.0) => Ok(None),
        Some(l) => Ok(Some(l)),
    }
}

/// Runs `work` on a blocking thread once a decode slot is free, with the
/// decode deadline.
pub async fn blocking<T: Send + 'static>(
    service: &AudioService,
    admission: &Admission,
    work: impl FnOnce(Instant) -> Result<T, fpnode_audio::AudioError> + Send + 'static,
) -> Result<T, AudioApiError> {
    let permit = admission.slot().await?;
    let deadline = Instant::now() + service.options.decode_timeout;
    let gauge = metrics::gauge!("fpnode_audio_decodes_in_flight");
    gauge.increment(1.0);
    let result = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work(deadline)
    })
    .await;
    gauge.decrement(1.0);
    result
        .map_err(|e| AudioApiError::Internal(format!("the decode thread failed: {e}")))?
        .map_err(AudioApiError::from)
}

fn finish<T: Serialize>(
    endpoint: &'static str,
    started: Instant,
    result: Result<T, AudioApiError>,
) -> Response {
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.name(),
    };
    metrics::counter!("fpnode_audio_requests_total", "endpoint" => endpoint, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("fpnode_audio_request_duration_seconds", "endpoint" => endpoint)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(body) => Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}
