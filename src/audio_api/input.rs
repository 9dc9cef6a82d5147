//! What an audio request names: a file under a media root (a JSON body with
//! `filepath`) or the audio itself as the body, spooled to a temporary file
//! as it arrives so memory stays bounded whatever its size.

use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use axum::body::Body;
use axum::http::{HeaderMap, header};
use futures::StreamExt;
use serde::de::DeserializeOwned;

use super::error::AudioApiError;
use super::service::AudioService;

/// A JSON request body is small: it names a file.
const MAX_JSON_BYTES: usize = 1 << 20;

pub enum Input<T> {
    /// The JSON request.
    Json(T),
    /// The uploaded audio, rewound, and the extension its type suggests.
    Upload {
        file: std::fs::File,
        extension: Option<&'static str>,
    },
}

/// JSON (`application/json`) is a request naming a file; anything else
/// is audio.
pub async fn read<T: DeserializeOwned>(
    service: &AudioService,
    headers: &HeaderMap,
    body: Body,
) -> Result<Input<T>, AudioApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") {
        let bytes = axum::body::to_bytes(body, MAX_JSON_BYTES)
            .await
            .map_err(|_| AudioApiError::BadRequest("a JSON request is at most 1 MiB".into()))?;
        let request = serde_json::from_slice(&bytes)
            .map_err(|e| AudioApiError::BadRequest(format!("invalid JSON request: {e}")))?;
        return Ok(Input::Json(request));
    }
    let limit = service.options.max_upload_bytes;
    if let Some(declared) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && declared > limit
    {
        return Err(AudioApiError::PayloadTooLarge(limit));
    }
    let dir = service.options.spool_dir.clone();
    let spool = tokio::task::spawn_blocking(move || match dir {
        Some(dir) => tempfile::tempfile_in(dir),
        None => tempfile::tempfile(),
    })
    .await
    .map_err(|e| AudioApiError::Internal(format!("cannot spool the upload: {e}")))?
    .map_err(|e| AudioApiError::Internal(format!("cannot spool the upload: {e}")))?;
    let spooling = |e: std::io::Error| AudioApiError::Internal(format!("spooling the upload: {e}"));
    let mut writer = tokio::io::BufWriter::with_capacity(1 << 16, tokio::fs::File::from_std(spool));
    let mut stream = body.into_data_stream();
    let mut written = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| AudioApiError::BadRequest(format!("reading the upload: {e}")))?;
        written += chunk.len() as u64;
        if written > limit {
            return Err(AudioApiError::PayloadTooLarge(limit));
        }
        writer.write_all(&chunk).await.map_err(spooling)?;
    }
    writer.flush().await.map_err(spooling)?;
    let mut file = writer.into_inner();
    file.rewind().await.map_err(spooling)?;
    let file = file.into_std().await;
    Ok(Input::Upload {
        file,
        extension: extension_for(&content_type),
    })
}

/// Reads and drops a refused request's body (up to `limit` bytes), so its
/// client receives the answer instead of a connection reset mid-upload;
/// nothing is kept.
pub async fn discard(body: Body, limit: u64) {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        read += chunk.len() as u64;
        if read > limit {
            break;
        }
    }
}

/// The file extension a media type suggests (a hint: the content decides).
pub fn extension_for(content_type: &str) -> Option<&'static str> {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    Some(match essence {
        "audio/mpeg" | "audio/mp3" => "mp3",
        "audio/flac" | "audio/x-flac" => "flac",
        "audio/wav" | "audio/wave" | "audio/x-wav" | "audio/vnd.wave" => "wav",
        "audio/ogg" | "audio/vorbis" => "ogg",
        "audio/opus" => "opus",
        "audio/mp4" | "audio/x-m4a" | "audio/m4a" | "audio/aac" => "m4a",
        "audio/aiff" | "audio/x-aiff" => "aiff",
        "audio/webm" => "webm",
        "audio/x-matroska" | "audio/matroska" => "mkv",
        _ => return None,
    })
}
