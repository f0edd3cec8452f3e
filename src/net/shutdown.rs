//! The process's shutdown as phases everyone can watch: the listeners (stop accepting, then close connections),
//! streaming responses (end with an error event and `[DONE]` when the deadline passes) and the admin event
//! followers (close at once).

#![deny(clippy::indexing_slicing)]

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// SIGTERM: no new connections; requests in flight may finish until the shutdown timeout.
    Draining,
    /// The shutdown timeout passed: streams end now, connections close.
    Deadline,
}

/// The sending side, held by the server.
pub struct Shutdown {
    tx: watch::Sender<Phase>,
}

/// The watching side, cheap to clone into every handler.
#[derive(Clone)]
pub struct ShutdownSignal {
    rx: watch::Receiver<Phase>,
}

impl Shutdown {
    pub fn new() -> (Shutdown, ShutdownSignal) {
        let (tx, rx) = watch::channel(Phase::Running);
        (Shutdown { tx }, ShutdownSignal { rx })
    }

    /// Moves to `phase` (never backwards).
    pub fn enter(&self, phase: Phase) {
        self.tx.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }
}

impl ShutdownSignal {
    /// A signal that never fires (tests and tools that serve without a shutdown).
    pub fn never() -> ShutdownSignal {
        let (tx, rx) = watch::channel(Phase::Running);
        std::mem::forget(tx);
        ShutdownSignal { rx }
    }

    pub fn phase(&self) -> Phase {
        *self.rx.borrow()
    }

    /// Resolves once the phase is `phase` or later.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|p| *p >= phase).await;
    }
}
