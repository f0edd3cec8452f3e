//! Threads for work on untrusted model files: a dedicated OS thread with a known, generous stack (parsers of
//! JSON, Jinja and tokenizer files recurse on nesting they bound themselves, and a thread pool's default stack
//! is smaller), and a panic guard, so what a file can do to the thread ends as an error for that operation.

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Set when an operation is cancelled (or timed out); the job on its thread checks it between stages.
pub type CancelFlag = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// Stack of every loader and preparation thread.
pub const STACK_BYTES: usize = 64 << 20;

/// A panic payload as text.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `f` on a new thread named `name`, catching a panic: Err holds its message.
pub fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    std::thread::Builder::new().name(name.into()).stack_size(STACK_BYTES).spawn(move || {
        if let Err(p) = catch_unwind(AssertUnwindSafe(f)) {
            tracing::error!(panic = %panic_text(p.as_ref()), "a lifecycle thread panicked");
        }
    })?;
    Ok(())
}

/// Runs `f` on a guarded thread and waits for it without blocking the runtime. A panic becomes an error
/// ("internal error (panic): ...").
pub async fn run<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let out = catch_unwind(AssertUnwindSafe(f))
                .map_err(|p| format!("internal error (panic): {}", panic_text(p.as_ref())));
            let _ = tx.send(out);
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
