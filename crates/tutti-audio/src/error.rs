use std::path::PathBuf;

/// Everything that can go wrong between a path and a feature matrix. Every variant that concerns
/// a file names it.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("{path}: cannot open: {error}")]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a recognised audio file ({reason})")]
    NotAudio { path: PathBuf, reason: String },
    #[error("{path}: unsupported audio ({reason})")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: corrupt audio: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: truncated: decoded {decoded} of {expected} frames the header announces")]
    Truncated {
        path: PathBuf,
        decoded: u64,
        expected: u64,
    },
    #[error("{path}: empty: the file holds no audio samples")]
    Empty { path: PathBuf },
    #[error("{path}: sample {index} (at {seconds:.3} s) is {value}; audio must be finite")]
    NonFinite {
        path: PathBuf,
        index: u64,
        seconds: f64,
        value: f32,
    },
    #[error("{path}: implausible sample rate {sample_rate_hz} Hz (accepted: 1000..=768000)")]
    BadSampleRate { path: PathBuf, sample_rate_hz: u32 },
    #[error(
        "{path}: {duration_secs:.1} s of audio exceeds the limit of {limit_secs:.1} s (raise it with --max-duration-secs)"
    )]
    TooLong {
        path: PathBuf,
        duration_secs: f64,
        limit_secs: f64,
    },
    #[error(
        "{path}: the requested segment starts at {start_secs:.3} s, after the end of the audio ({duration_secs:.3} s)"
    )]
    SegmentOutOfRange {
        path: PathBuf,
        start_secs: f64,
        duration_secs: f64,
    },
    #[error("audio too short for {front_end}: {samples} samples, at least {minimum} needed")]
    TooShort {
        front_end: &'static str,
        samples: usize,
        minimum: usize,
    },
    #[error("resampler: {0}")]
    Resample(String),
    #[error("invalid front-end configuration: {0}")]
    Config(String),
}
