//! Threads for work on untrusted model files: a dedicated OS thread with a known, generous stack (parsers of
//! JSON, Jinja and tokenizer files recurse on nesting they bound themselves, and a thread pool's default stack
//! is smaller), and a panic guard, so what a file can do to the thread ends as an error for that operation.

/// Set when an operation is cancelled (or timed out); the job on its thread checks it between stages.
pub type CancelFlag = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// Stack of every loader and preparation thread.
pub const STACK_BYTES: usize = 64 << 20;

pub use crate::error::panic_text;

/// Runs `f` on a new thread named `name`, catching a panic: Err holds its message.
pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new().name(name.into()).stack_size(STACK_BYTES).spawn(move || {
        if let Err(panic) = crate::error::catching("running a lifecycle thread", f) {
            tracing::error!(%panic, "a lifecycle thread panicked");
        }
    })?;
    Ok(())
}

/// Runs `f` on a guarded thread and waits for it without blocking the runtime. A panic becomes an error
/// ("internal error while running NAME (panic: ...)").
pub async fn run<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name_owned = format!("running {name}");
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(crate::error::catching(&name_owned, f));
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    rx.await.map_err(|_| "the worker thread ended without an answer".to_string())?
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn panics_become_errors() {
        assert_eq!(super::run("t", || 7).await, Ok(7));
        let e = super::run("t", || -> u8 { panic!("boom") }).await.unwrap_err();
        assert!(e.contains("boom"), "{e}");
    }
}
