//! The API's errors: one name each, as fpindex names them, answered as
//! `{"error": "<Name>"}` (MessagePack `{"e": "<Name>"}`) in the negotiated format.

use axum::http::StatusCode;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("BadRequest")]
    BadRequest,
    #[error("InvalidIndexName")]
    InvalidIndexName,
    #[error("InvalidFingerprintId")]
    InvalidFingerprintId,
    #[error("TooManyChanges")]
    TooManyChanges,
    #[error("TooManyHashes")]
    TooManyHashes,
    #[error("QueryTooLong")]
    QueryTooLong,
    #[error("PayloadTooLarge")]
    PayloadTooLarge,
    #[error("IndexNotFound")]
    IndexNotFound,
    #[error("FingerprintNotFound")]
    FingerprintNotFound,
    #[error("NotFound")]
    NotFound,
    #[error("MethodNotAllowed")]
    MethodNotAllowed,
    #[error("VersionMismatch")]
    VersionMismatch,
    #[error("IndexAlreadyExists")]
    IndexAlreadyExists,
    #[error("OlderIndexAlreadyExists")]
    OlderIndexAlreadyExists,
    #[error("NewerIndexAlreadyExists")]
    NewerIndexAlreadyExists,
    #[error("UnsupportedMediaType")]
    UnsupportedMediaType,
    #[error("IndexNotReady")]
    IndexNotReady,
    /// The index's files failed to open when the node started (named in the
    /// log and by `fpnode inspect --verify`).
    #[error("IndexFailed")]
    IndexFailed,
    #[error("SearchTimeout")]
    SearchTimeout,
    #[error("Unavailable")]
    Unavailable,
    #[error("Overloaded")]
    Overloaded,
    #[error("InternalError")]
    Internal,
    /// A search failed inside the engine (a panic: its worker was replaced).
    #[error("SearchFailed")]
    SearchFailed,
    /// Replica mode: the index is bootstrapping from the stream.
    #[error("LOADING")]
    Loading,
    /// `_stream`: a line (or MessagePack value) that is not a change object.
    #[error("InvalidLine")]
    InvalidLine,
    /// `_stream`: a line longer than the limit (docs/api.md).
    #[error("LineTooLong")]
    LineTooLong,
    /// `_stream`: the body ended inside a MessagePack value.
    #[error("TruncatedBody")]
    TruncatedBody,
    /// `_stream`: the body sent nothing for 5 minutes.
    #[error("BodyTimeout")]
    BodyTimeout,
    /// `/_jobs`: no job of that id (or it was pruned).
    #[error("JobNotFound")]
    JobNotFound,
    /// `DELETE /_jobs/:id` of a job that has already ended.
    #[error("JobFinished")]
    JobFinished,
    /// `POST /_jobs`: an unknown kind, a missing or unknown parameter.
    #[error("InvalidJob")]
    InvalidJob,
    /// The job queue is full: retry later.
    #[error("TooManyJobs")]
    TooManyJobs,
    /// An import file outside `--import-dir` (or none configured).
    #[error("FileNotAllowed")]
    FileNotAllowed,
    #[error("FileNotFound")]
    FileNotFound,
    /// Authentication is on and the request has no bearer token.
    #[error("Unauthorized")]
    Unauthorized,
    /// A bearer token that is not (or no longer) configured.
    #[error("InvalidToken")]
    InvalidToken,
    /// The token's role does not cover the endpoint.
    #[error("Forbidden")]
    Forbidden,
}

impl ApiError {
    pub fn status(self) -> StatusCode {
        use ApiError::*;
        match self {
            BadRequest | InvalidIndexName | InvalidFingerprintId | TooManyChanges
            | TooManyHashes | QueryTooLong | InvalidLine | TruncatedBody | InvalidJob => {
                StatusCode::BAD_REQUEST
            }
            FileNotAllowed | Forbidden => StatusCode::FORBIDDEN,
            Unauthorized | InvalidToken => StatusCode::UNAUTHORIZED,
            PayloadTooLarge | LineTooLong => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            IndexNotFound | FingerprintNotFound | NotFound | JobNotFound | FileNotFound => {
                StatusCode::NOT_FOUND
            }
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            VersionMismatch
            | IndexAlreadyExists
            | OlderIndexAlreadyExists
            | NewerIndexAlreadyExists
            | JobFinished => StatusCode::CONFLICT,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IndexNotReady | IndexFailed | SearchTimeout | Unavailable | Overloaded | Loading
            | TooManyJobs => StatusCode::SERVICE_UNAVAILABLE,
            Internal | SearchFailed => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds a client should wait before retrying, for errors that pass.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            ApiError::Overloaded
            | ApiError::Unavailable
            | ApiError::IndexNotReady
            | ApiError::Loading => Some(1),
            ApiError::TooManyJobs => Some(5),
            _ => None,
        }
    }
}
