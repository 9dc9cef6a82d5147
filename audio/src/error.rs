//! Every way audio input can fail, named.

/// Why audio could not be decoded or fingerprinted.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot read the audio: {0}")]
    Io(#[from] std::io::Error),
    #[error("the input is empty")]
    Empty,
    #[error("not an audio file, or a container this server does not read")]
    UnknownFormat,
    #[error("the file has no audio track")]
    NoAudioTrack,
    #[error("unsupported codec: {0}")]
    UnsupportedCodec(String),
    #[error("the audio track holds no samples")]
    NoAudio,
    #[error("corrupt audio: {0}")]
    Corrupt(String),
    #[error("the decoder failed on this input: {0}")]
    DecoderPanic(String),
    /// fpnode's own analysis panicked (a bug: report it), caught so one
    /// file cannot take the process down.
    #[error("the analysis failed on this input: {0}")]
    AnalysisPanic(String),
    /// A sample rate or channel count no real audio has.
    #[error("unsupported audio format: {0}")]
    Unsupported(String),
    #[error("decoding took longer than allowed")]
    Timeout,
    #[error(
        "too short to fingerprint: {seconds:.2} s of audio, at least {min_seconds:.2} s needed"
    )]
    TooShort { seconds: f64, min_seconds: f64 },
    #[error("invalid fingerprint: {0}")]
    BadFingerprint(String),
}
