//! The audio API's errors: a name and a message, `{"error": NAME,
//! "message": "..."}`, with the status docs/api.md lists for each.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fpnode_audio::AudioError;

#[derive(Debug, thiserror::Error)]
pub enum AudioApiError {
    #[error("{0}")]
    BadRequest(String),
    /// A path outside the configured media roots (or none configured).
    #[error("{0}")]
    FileNotAllowed(String),
    #[error("no such file")]
    FileNotFound,
    #[error("the upload is larger than {0} bytes")]
    PayloadTooLarge(u64),
    /// Every decode slot and waiting place is taken: retry after a second.
    #[error("every decode slot is busy")]
    Overloaded,
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error("{0}")]
    Internal(String),
}

impl AudioApiError {
    /// The error's name in responses and metrics.
    pub fn name(&self) -> &'static str {
        use AudioError as A;
        match self {
            AudioApiError::BadRequest(_) => "BadRequest",
            AudioApiError::FileNotAllowed(_) => "FileNotAllowed",
            AudioApiError::FileNotFound => "FileNotFound",
            AudioApiError::PayloadTooLarge(_) => "PayloadTooLarge",
            AudioApiError::Overloaded => "Overloaded",
            AudioApiError::Internal(_) => "InternalError",
            AudioApiError::Audio(e) => match e {
                A::Io(io) if io.kind() == std::io::ErrorKind::NotFound => "FileNotFound",
                A::Io(_) => "FileUnreadable",
                A::Empty => "EmptyFile",
                A::UnknownFormat => "UnknownFormat",
                A::NoAudioTrack => "NoAudioTrack",
                A::UnsupportedCodec(_) => "UnsupportedCodec",
                A::NoAudio => "NoAudio",
                A::Corrupt(_) => "CorruptAudio",
                A::DecoderPanic(_) => "DecoderFailed",
                A::AnalysisPanic(_) => "AnalysisFailed",
                A::Unsupported(_) => "UnsupportedAudio",
                A::Timeout => "DecodeTimeout",
                A::TooShort { .. } => "AudioTooShort",
                A::BadFingerprint(_) => "BadFingerprint",
            },
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.name() {
            "BadRequest" => StatusCode::BAD_REQUEST,
            "FileNotAllowed" => StatusCode::FORBIDDEN,
            "FileNotFound" => StatusCode::NOT_FOUND,
            "PayloadTooLarge" => StatusCode::PAYLOAD_TOO_LARGE,
            "Overloaded" => StatusCode::SERVICE_UNAVAILABLE,
            "DecodeTimeout" => StatusCode::GATEWAY_TIMEOUT,
            "InternalError" | "FileUnreadable" | "AnalysisFailed" => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }
}

impl IntoResponse for AudioApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.name(), "message": self.to_string() });
        let mut response = (self.status(), axum::Json(body)).into_response();
        if matches!(self, AudioApiError::Overloaded) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
