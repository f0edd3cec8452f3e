//! Constrained decoding inside the engine: a sequence's grammar matcher and its token mask. The mask for the
//! next token is computed on a helper thread as soon as the previous token is known, so it overlaps the next
//! forward pass instead of adding to it; the sampler waits for it only if it is not ready yet. Sequences
//! without a grammar never touch this module.

use crate::models::grammar::Closing;
use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// A compiled grammar in its initial state, as the API hands it to the engine. Each sequence (each of `n`
/// choices) starts its own matcher from it.
#[derive(Clone)]
pub struct Prepared {
    matcher: Arc<Matcher>,
    closing: Arc<Closing>,
    /// Tokens kept for the ending: once no more than this many remain in the budget, the output is steered to
    /// its fastest end.
    pub reserve: usize,
}

impl Prepared {
    pub fn new(matcher: Matcher, closing: Arc<Closing>, reserve: usize) -> Self {
        Prepared { matcher: Arc::new(matcher), closing, reserve }
    }
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prepared(grammar)")
    }
}

impl PartialEq for Prepared {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.matcher, &other.matcher)
    }
}

type MaskResult = (Box<Matcher>, Result<SimpleVob, String>);

enum State {
    /// The mask for the next token is being computed.
    Computing(Receiver<MaskResult>),
    Ready(Box<Matcher>, SimpleVob),
    Failed(String),
}

/// One sequence's grammar state.
pub struct Constraint {
    state: State,
    closing: Arc<Closing>,
    reserve: usize,
    depth: Depth,
}

/// How deeply the output so far is nested (open arrays and objects, an open string): each open level costs a
/// token or so to close.
#[derive(Default)]
struct Depth {
    open: usize,
    in_string: bool,
    escaped: bool,
}

impl Depth {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.open += 1,
                b'}' | b']' => self.open = self.open.saturating_sub(1),
                _ => {}
            }
        }
    }
}

impl Constraint {
    /// Starts from the grammar's initial state and begins computing the first mask.
    pub fn start(prepared: &Prepared) -> Self {
        Constraint {
            state: compute(Box::new((*prepared.matcher).clone())),
            closing: prepared.closing.clone(),
            reserve: prepared.reserve,
            depth: Depth::default(),
        }
    }

    /// Tokens to keep for the ending now: the reserve from the start plus two per open level.
    pub fn reserve(&self) -> usize {
        self.reserve + 2 * (self.depth.open + usize::from(self.depth.in_string))
    }

    /// Sets every token the grammar does not allow next to negative infinity (`closing`: also every token
    /// that does not lead fastest to the end). Fails when the grammar is in an error state or allows nothing.
    pub fn apply(&mut self, logits: &mut [f32], closing: bool) -> Result<(), String> {
        self.wait();
        match &self.state {
            State::Ready(_, mask) => {
                if mask.is_zero() {
                    return Err("the grammar allows no token here".into());
                }
                let n = mask.len();
                let allowed = |i: u32| (i as usize) < n && mask.is_allowed(i);
                let kept = if closing { self.closing.narrow(allowed, self.depth.in_string) } else { None };
                match kept {
                    Some(ids) => {
                        let keep: Vec<(u32, f32)> =
                            ids.iter().filter_map(|&i| logits.get(i as usize).map(|&l| (i, l))).collect();
                        logits.iter_mut().for_each(|l| *l = f32::NEG_INFINITY);
                        for (i, l) in keep {
                            if let Some(x) = logits.get_mut(i as usize) {
                                *x = l;
                            }
                        }
                    }
                    None => {
                        for (i, l) in logits.iter_mut().enumerate() {
                            if !allowed(i as u32) {
                                *l = f32::NEG_INFINITY;
                            }
                        }
                    }
                }
                Ok(())
            }
            State::Failed(e) => Err(e.clone()),
            State::Computing(_) => Err("the grammar's mask was lost".into()),
        }
    }

    /// Feeds the chosen token. Ok(true) when the grammar is complete (nothing more may follow); otherwise the
    /// next mask starts computing.
    pub fn advance(&mut self, token: u32) -> Result<bool, String> {
        self.wait();
        let state = std::mem::replace(&mut self.state, State::Failed("the grammar is in use".into()));
        let State::Ready(mut m, _) = state else {
            self.state = state;
            return Err(self.error());
        };
        self.depth.feed(self.closing.bytes(token));
        if let Err(e) = m.consume_token(token) {
            self.state = State::Failed(e.to_string());
            return Err(self.error());
        }
        if m.is_stopped() {
            self.state = State::Failed("the grammar is complete".into());
            return Ok(true);
        }
        self.state = compute(m);
        Ok(false)
    }

    fn error(&self) -> String {
        match &self.state {
            State::Failed(e) => e.clone(),
            _ => "the grammar failed".into(),
        }
    }

    /// Waits for a mask being computed.
    fn wait(&mut self) {
        if let State::Computing(rx) = &self.state {
            self.state = match rx.recv() {
                Ok((m, Ok(mask))) => State::Ready(m, mask),
                Ok((_, Err(e))) => State::Failed(e),
                Err(_) => State::Failed("the grammar's mask computation failed".into()),
            };
        }
    }
}

/// Computes `m`'s next mask on a helper thread (inline if no thread can be started).
fn compute(m: Box<Matcher>) -> State {
    let (tx, rx) = sync_channel(1);
    let job = move |mut m: Box<Matcher>| {
        let mask = m.compute_mask().map_err(|e| e.to_string());
        (m, mask)
    };
    let slot = Arc::new(std::sync::Mutex::new(Some(m)));
    let taken = slot.clone();
    let spawned = std::thread::Builder::new().name("teal-grammar".into()).spawn(move || {
        if let Some(m) = taken.lock().ok().and_then(|mut g| g.take()) {
            let _ = tx.send(job(m));
        }
    });
    if spawned.is_err() {
        if let Some(m) = slot.lock().ok().and_then(|mut g| g.take()) {
            return match job(m) {
                (m, Ok(mask)) => State::Ready(m, mask),
                (_, Err(e)) => State::Failed(e),
            };
        }
    }
    State::Computing(rx)
}
