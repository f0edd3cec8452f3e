//! Error types. `TealError` is what the library returns; each variant has a stable `error_type()` label that the
//! HTTP layer (api/error.rs, the only place errors become responses) and metrics use.

use thiserror::Error;

pub type Result<T, E = TealError> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum TealError {
    #[error("model files are invalid: {0}")]
    InvalidModel(String),
    #[error("unsupported model: {0}")]
    UnsupportedModel(String),
    #[error("model not found: {0}")]
    ModelNotFound(String),
    #[error("i/o error on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("chat template error: {0}")]
    Template(String),
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("device error: {0}")]
    Device(String),
    #[error("engine stopped")]
    EngineStopped,
    /// A request (a warm-up or gate probe) the engine refused as it would refuse a client's.
    #[error("request refused: {0}")]
    Request(String),
}

impl TealError {
    /// A stable label for logs and metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            TealError::InvalidModel(_) => "invalid_model",
            TealError::UnsupportedModel(_) => "unsupported_model",
            TealError::ModelNotFound(_) => "model_not_found",
            TealError::Io { .. } => "io_error",
            TealError::Tokenizer(_) => "tokenizer_error",
            TealError::Template(_) => "template_error",
            TealError::Tensor(_) => "tensor_error",
            TealError::Config(_) => "config_error",
            TealError::Device(_) => "device_error",
            TealError::EngineStopped => "engine_stopped",
            TealError::Request(_) => "request_refused",
        }
    }

    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        TealError::Io { path: path.as_ref().display().to_string(), source }
    }
}
