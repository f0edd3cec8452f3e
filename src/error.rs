//! Error types. `TealError` is what the library returns; api/error.rs is the one place it becomes an HTTP answer.

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
    /// The KV pool cannot hold what a step or a sequence needs.
    #[error("KV cache exhausted: {0}")]
    KvCacheFull(String),
    #[error("engine stopped")]
    EngineStopped,
    /// A request (a warm-up or gate probe) the engine refused as it would refuse a client's.
    #[error("request refused: {0}")]
    Request(String),
}

impl TealError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        TealError::Io { path: path.as_ref().display().to_string(), source }
    }
}

/// A panic payload as text.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f`, turning a panic into `Err("internal error while {doing} (panic: ...)")`: the one way a thread that
/// runs model code (engine steps, batches, loads, park and wake) keeps a bug in one request or one file from
/// taking the thread down.
pub fn catching<T>(doing: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|p| format!("internal error while {doing} (panic: {})", panic_text(p.as_ref())))
}
