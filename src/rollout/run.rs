//! One rollout's state, shared by the requests that report outcomes (the API), the operator's commands and the
//! rollout's own task (task.rs). Every decision is taken here, under one lock, by `decide` (what to do now) and
//! the guard check in `observe`; the task only carries decisions out against the lifecycle.
//!
//! A guard breach sets the canary's weight to 0 inside `observe`, before the request that revealed it has been
//! answered: the next request already goes to the baseline; the task then ends the rollout (and flips back when
//! the canary had been promoted).

use super::analysis::{self, Agreement, Comparison, Samples, Verdict};
use super::config::RolloutConfig;
use super::guards;
use super::teacher::{Forced, ForcedStats};
use super::views::{ArmInfo, Decision, DecisionKind, RolloutState};
use super::window::{ArmStats, Outcome};
use crate::router::{split::ArmIdent, split::FULL, Arm, Split};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};
use tokio::sync::Notify;

/// Decisions kept per rollout (the oldest holds are dropped first past this).
const MAX_DECISIONS: usize = 2_000;
/// Mirrored requests running at once, at most.
pub const MAX_SHADOW_IN_FLIGHT: usize = 4;

pub struct Run {
    pub id: String,
    pub config: RolloutConfig,
    pub split: Arc<Split>,
    pub started: Instant,
    pub started_at: SystemTime,
    inner: Mutex<Inner>,
    /// Wakes the task (a breach, an operator command).
    pub wake: Notify,
    shadow_in_flight: AtomicUsize,
}

/// What the task must do now.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Nothing,
    /// Set the weight of the new step (already recorded).
    Advance,
    /// Flip the canary live and start baking.
    Promote,
    /// All traffic back to the baseline (a flip back when promoted), then end as `state`.
    Revert {
        state: RolloutState,
        reason: String,
    },
    /// The bake passed: remove the split, end promoted.
    Complete,
    /// A lifecycle action took the rollout's versions away: end as aborted.
    Ended(String),
}

pub(super) struct Inner {
    pub state: RolloutState,
    pub step: usize,
    pub step_started: Instant,
    pub baking_since: Option<Instant>,
    pub promoted: bool,
    /// Everything since the rollout started (the report, the guards).
    pub arms: [ArmStats; 2],
    /// Since the current step began: the analysis compares the arms under one traffic split.
    pub window: [ArmStats; 2],
    /// The baseline's last step before promotion: what the bake compares against.
    pub bake_baseline: Option<ArmStats>,
    pub shadow: ShadowStats,
    pub decisions: Vec<Decision>,
    pub comparisons: Vec<Comparison>,
    pub looks: u64,
    pub last_look: Option<Instant>,
    /// A revert asked for by a guard or an operator, not yet carried out.
    pub revert: Option<(RolloutState, String)>,
    /// An operator's promote-now.
    pub promote_now: bool,
    pub reason: Option<String>,
    pub ended_at: Option<SystemTime>,
    last_hold: String,
    /// Consecutive failing looks per metric in this step.
    fail_streaks: HashMap<String, u32>,
    /// How much data the last look saw (`data_size`).
    looked_at: u64,
}

/// The data a look compares: the current window's answers (or the bake's) and the shadow comparisons.
fn data_size(inner: &Inner) -> u64 {
    let [b, c] = &inner.window;
    let a = inner.shadow.agreement;
    b.requests + c.requests + a.canary_total + a.aa_total
}

#[derive(Debug, Clone, Default)]
pub struct ShadowStats {
    pub agreement: Agreement,
    pub shed: u64,
    /// (sum of mean TTFT, sum of mean ITL, runs) of canary and A/A shadow runs, seconds.
    pub canary_time: (f64, f64, u64),
    pub aa_time: (f64, f64, u64),
    pub forced: ForcedStats,
}

fn arm_index(a: Arm) -> usize {
    match a {
        Arm::Baseline => 0,
        Arm::Canary => 1,
    }
}

pub fn arm_info(r: &ArmIdent) -> ArmInfo {
    ArmInfo {
        slot: r.slot.as_str().into(),
        model: r.identity.name.clone(),
        version: r.identity.version.clone(),
        digest: r.identity.digest.clone(),
    }
}

impl Run {
    pub fn new(id: String, config: RolloutConfig, split: Arc<Split>) -> Run {
        let now = Instant::now();
        Run {
            id,
            config,
            split,
            started: now,
            started_at: SystemTime::now(),
            inner: Mutex::new(Inner {
                state: RolloutState::Progressing,
                step: 0,
                step_started: now,
                baking_since: None,
                promoted: false,
                arms: Default::default(),
                window: Default::default(),
                bake_baseline: None,
                shadow: ShadowStats::default(),
                decisions: vec![],
                comparisons: vec![],
                looks: 0,
                last_look: None,
                revert: None,
                promote_now: false,
                reason: None,
                ended_at: None,
                last_hold: String::new(),
                fail_streaks: HashMap::new(),
                looked_at: 0,
            }),
            wake: Notify::new(),
            shadow_in_flight: AtomicUsize::new(0),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn weight_pct(&self) -> f64 {
        f64::from(self.split.weight_bp()) / 100.0
    }

    pub fn state(&self) -> RolloutState {
        self.lock().state
    }

    /// A decision record at the current step and weight.
    pub(super) fn decision(&self, inner: &Inner, kind: DecisionKind, reason: String) -> Decision {
        Decision {
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            step: inner.step,
            weight_pct: self.weight_pct(),
            decision: kind,
            metric: None,
            value: None,
            threshold: None,
            samples: Samples { baseline: inner.arms[0].requests, canary: inner.arms[1].requests },
            ci: None,
            reason,
        }
    }

    /// After the promotion flip: the bake compares the canary from now on against the baseline's last step.
    pub(super) fn start_bake(inner: &mut Inner, now: Instant, last_step: usize) {
        inner.promoted = true;
        inner.baking_since = Some(now);
        inner.step_started = now;
        inner.step = last_step;
        let [base, _] = std::mem::take(&mut inner.window);
        inner.bake_baseline = Some(base);
        inner.fail_streaks.clear();
        inner.looked_at = 0;
        inner.last_look = None;
    }

    pub(super) fn push(inner: &mut Inner, d: Decision) {
        if inner.decisions.len() >= MAX_DECISIONS {
            if let Some(i) = inner.decisions.iter().position(|d| d.decision == DecisionKind::Hold) {
                inner.decisions.remove(i);
            } else {
                inner.decisions.remove(0);
            }
        }
        inner.decisions.push(d);
    }

    /// Records a finished request of `arm`. A canary outcome runs the guards: a breach sends all traffic to the
    /// baseline at once and returns the decision (the task carries out the rest).
    pub fn observe(&self, arm: Arm, outcome: &Outcome) -> Option<Decision> {
        let mut inner = self.lock();
        if inner.state.finished() || inner.revert.is_some() {
            return None;
        }
        let now = Instant::now();
        inner.arms[arm_index(arm)].add(outcome, now);
        if now.saturating_duration_since(inner.step_started) >= secs(self.config.analysis.warmup_s) {
            inner.window[arm_index(arm)].add(outcome, now);
        }
        if arm != Arm::Canary {
            return None;
        }
        let breach = guards::check(&inner.arms[1], &inner.arms[0], &self.config.analysis.guards)?;
        self.split.set_weight_bp(0);
        let mut d = self.decision(&inner, DecisionKind::Rollback, breach.reason.clone());
        d.metric = Some(breach.metric.into());
        d.value = Some(breach.value);
        d.threshold = Some(breach.threshold);
        d.samples = Samples { baseline: breach.baseline_samples, canary: breach.canary_samples };
        Self::push(&mut inner, d.clone());
        inner.revert = Some((RolloutState::RolledBack, format!("{}: {}", breach.metric, breach.reason)));
        drop(inner);
        self.wake.notify_one();
        Some(d)
    }

    /// Whether to mirror this baseline request now: the shadow rate, the live slot without a queue, and room
    /// under the in-flight bound. A pick that is shed is counted.
    pub fn pick_shadow(self: &Arc<Self>, live_queue: usize) -> Pick {
        let rate = self.config.shadow_rate;
        if rate <= 0.0 || rand::random::<f64>() >= rate {
            return Pick::No;
        }
        let mut inner = self.lock();
        if inner.state != RolloutState::Progressing || inner.promoted || inner.revert.is_some() {
            return Pick::No;
        }
        if live_queue > 0 || self.shadow_in_flight.load(Ordering::Acquire) >= MAX_SHADOW_IN_FLIGHT {
            inner.shadow.shed += 1;
            return Pick::Shed;
        }
        drop(inner);
        self.shadow_in_flight.fetch_add(1, Ordering::AcqRel);
        Pick::Go(ShadowTicket(self.clone()))
    }

    /// Records one shadow comparison: against the canary, or A/A (the live version against itself).
    pub fn record_shadow(&self, aa: bool, matched: bool, timing: Option<(f64, f64)>) {
        let mut inner = self.lock();
        let s = &mut inner.shadow;
        let (m, t, time) = if aa {
            (&mut s.agreement.aa_matches, &mut s.agreement.aa_total, &mut s.aa_time)
        } else {
            (&mut s.agreement.canary_matches, &mut s.agreement.canary_total, &mut s.canary_time)
        };
        *m += u64::from(matched);
        *t += 1;
        if let Some((ttft_s, itl_s)) = timing {
            time.0 += ttft_s;
            time.1 += itl_s;
            time.2 += 1;
        }
    }

    /// Records one teacher-forced comparison (None: the versions tokenized the prompt differently).
    pub fn record_forced(&self, aa: bool, f: Option<Forced>) {
        let mut inner = self.lock();
        match f {
            Some(f) => inner.shadow.forced.record(aa, f),
            None => inner.shadow.forced.incomparable += 1,
        }
    }

    /// What to do now (called by the task every tick): reverts first, then the bake, then the analysis.
    pub fn decide(&self, now: Instant) -> Action {
        if let Some(why) = self.split.ended() {
            return Action::Ended(why);
        }
        let mut inner = self.lock();
        if inner.state.finished() {
            return Action::Nothing;
        }
        if let Some((state, reason)) = inner.revert.clone() {
            return Action::Revert { state, reason };
        }
        if inner.state == RolloutState::Paused {
            return Action::Nothing;
        }
        let full = self.config.steps.get(inner.step).is_none_or(|&w| w >= 100.0);
        if !inner.promoted && (inner.promote_now || full) {
            inner.promote_now = false;
            return Action::Promote;
        }
        let due =
            inner.last_look.is_none_or(|t| now - t >= secs(self.config.analysis.interval_s)) && self.grown(&inner);
        if let Some(since) = inner.baking_since {
            if now - since >= secs(self.config.bake_s) {
                return Action::Complete;
            }
            if !due {
                return Action::Nothing;
            }
            let (_inner, fail) = self.analyse(inner, now);
            return fail.map(Self::revert).unwrap_or(Action::Nothing);
        }
        if !due {
            return Action::Nothing;
        }
        let (mut inner, fail) = self.analyse(inner, now);
        if let Some(fail) = fail {
            return Self::revert(fail);
        }
        if inner.revert.is_some() || inner.state != RolloutState::Progressing {
            return Action::Nothing;
        }
        let all_pass = inner.comparisons.iter().all(|c| c.verdict == Verdict::Pass);
        let dwelt = now - inner.step_started >= secs(self.config.step_interval_s);
        if !(all_pass && dwelt) {
            self.hold(&mut inner);
            return Action::Nothing;
        }
        // The last step is 100%: no baseline traffic is left to compare against, so passing the step before it
        // promotes (and the bake watches the canary under all the traffic).
        let pct = self.config.steps.get(inner.step + 1).copied().unwrap_or(100.0);
        if pct >= 100.0 {
            return Action::Promote;
        }
        inner.step += 1;
        inner.step_started = now;
        inner.window = Default::default();
        inner.fail_streaks.clear();
        inner.looked_at = 0;
        inner.last_hold.clear();
        self.split.set_weight_bp(bp(pct));
        let d = self.decision(&inner, DecisionKind::Advance, format!("every comparison passed; weight {pct}%"));
        Self::push(&mut inner, d);
        Action::Advance
    }

    fn revert(d: Decision) -> Action {
        Action::Revert { state: RolloutState::RolledBack, reason: d.reason }
    }

    /// Runs the comparisons; a FAIL sends all traffic to the baseline at once and is returned.
    /// Whether the window holds enough new data for another look: at least `min_samples` answers, and 25% more
    /// data than at the last look. Each look spends alpha (stats.rs), so looks at (almost) the same data would
    /// only raise the bar for every later one; looking at geometric growth keeps their number logarithmic in
    /// the samples (about 20 looks from 30 to 3,000 answers) and the comparisons' power with it. Which looks
    /// happen depends only on sample counts, never on what the data says, so the spending stays valid.
    fn grown(&self, inner: &Inner) -> bool {
        let n = data_size(inner);
        n >= self.config.analysis.min_samples as u64 && n > inner.looked_at + inner.looked_at / 4
    }

    /// One look: the comparisons run on a copy of the window, outside the lock the request path takes.
    fn analyse<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        now: Instant,
    ) -> (MutexGuard<'a, Inner>, Option<Decision>) {
        inner.looks += 1;
        inner.last_look = Some(now);
        inner.looked_at = data_size(&inner);
        let (k, bake) = (inner.looks, inner.bake_baseline.clone());
        let (canary, baseline) = (inner.window[1].clone(), inner.window[0].clone());
        let shadow = (self.config.shadow_rate > 0.0).then(|| (inner.shadow.agreement, inner.shadow.forced.clone()));
        drop(inner);
        let cfg = &self.config.analysis;
        let comparisons = match &bake {
            Some(base) => analysis::compare_bake(&canary, base, cfg, k),
            None => analysis::compare(&canary, &baseline, shadow.as_ref().map(|(a, f)| (*a, f)), cfg, k),
        };
        let mut inner = self.lock();
        inner.comparisons = comparisons;
        if inner.revert.is_some() || inner.state.finished() {
            return (inner, None);
        }
        let d = self.confirm_failure(&mut inner);
        (inner, d)
    }

    /// Counts consecutive failing looks per metric; the first metric failing `confirm_looks` in a row rolls back.
    fn confirm_failure(&self, inner: &mut Inner) -> Option<Decision> {
        let mut streaks = std::mem::take(&mut inner.fail_streaks);
        streaks.retain(|m, _| inner.comparisons.iter().any(|c| &c.metric == m && c.verdict == Verdict::Fail));
        for c in inner.comparisons.iter().filter(|c| c.verdict == Verdict::Fail) {
            *streaks.entry(c.metric.clone()).or_insert(0) += 1;
        }
        let need = self.config.analysis.confirm_looks.max(1);
        let confirmed = |c: &&Comparison| streaks.get(&c.metric).is_some_and(|&n| n >= need);
        let fail = inner.comparisons.iter().find(confirmed).cloned();
        inner.fail_streaks = streaks;
        let fail = fail?;
        self.split.set_weight_bp(0);
        let mut d = self.decision(
            inner,
            DecisionKind::Rollback,
            format!(
                "{} failed: canary {} vs baseline {} (threshold {})",
                fail.metric,
                fmt(fail.value),
                fmt(fail.baseline),
                fmt(fail.threshold)
            ),
        );
        d.metric = Some(fail.metric.clone());
        d.value = fail.value;
        d.threshold = fail.threshold;
        d.samples = fail.samples;
        d.ci = fail.ci;
        Self::push(inner, d.clone());
        inner.revert = Some((RolloutState::RolledBack, d.reason.clone()));
        Some(d)
    }

    /// Records a hold when the set of comparisons holding it changed (so the record says why the weight is not
    /// moving, without a line per look).
    fn hold(&self, inner: &mut Inner) {
        let waiting: Vec<&Comparison> = inner.comparisons.iter().filter(|c| c.verdict != Verdict::Pass).collect();
        let key = waiting.iter().map(|c| c.metric.as_str()).collect::<Vec<_>>().join(",");
        let Some(first) = waiting.first() else { return };
        if key == inner.last_hold {
            return;
        }
        let reason = format!(
            "waiting for {} (inconclusive; samples baseline {}, canary {})",
            key.replace(',', ", "),
            first.samples.baseline,
            first.samples.canary
        );
        let mut d = self.decision(inner, DecisionKind::Hold, reason);
        d.metric = Some(first.metric.clone());
        d.value = first.value;
        d.threshold = first.threshold;
        d.samples = first.samples;
        d.ci = first.ci;
        inner.last_hold = key;
        Self::push(inner, d);
    }

    /// Operator: pause (the weight stays), resume, promote now, abort.
    pub fn command(&self, kind: DecisionKind, who: &str) -> Result<(), String> {
        let mut inner = self.lock();
        if inner.state.finished() {
            return Err(format!("rollout {} has ended ({})", self.id, inner.state.as_str()));
        }
        match kind {
            DecisionKind::Pause if inner.state == RolloutState::Progressing => inner.state = RolloutState::Paused,
            DecisionKind::Resume if inner.state == RolloutState::Paused => inner.state = RolloutState::Progressing,
            DecisionKind::Promote if inner.promoted => return Err("the canary is promoted already (baking)".into()),
            DecisionKind::Promote => {
                inner.state = RolloutState::Progressing;
                inner.promote_now = true;
            }
            DecisionKind::Abort => {
                self.split.set_weight_bp(0);
                inner.revert = Some((RolloutState::Aborted, format!("aborted by {who}")));
            }
            DecisionKind::Pause | DecisionKind::Resume => {
                return Err(format!("rollout {} is {}", self.id, inner.state.as_str()))
            }
            _ => return Err("not an operator command".into()),
        }
        let d = self.decision(&inner, kind, format!("{} by {who}", kind.as_str()));
        Self::push(&mut inner, d);
        drop(inner);
        self.wake.notify_one();
        Ok(())
    }
}

/// Whether a baseline request is mirrored.
pub enum Pick {
    No,
    /// Picked, but the live slot had a queue or the in-flight bound was reached.
    Shed,
    Go(ShadowTicket),
}

/// Holds one unit of the in-flight shadow bound.
pub struct ShadowTicket(Arc<Run>);

impl ShadowTicket {
    pub fn run(&self) -> &Arc<Run> {
        &self.0
    }
}

impl Drop for ShadowTicket {
    fn drop(&mut self) {
        self.0.shadow_in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub fn bp(pct: f64) -> u32 {
    ((pct * 100.0).round() as u32).min(FULL)
}

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s.max(0.0))
}

fn fmt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into())
}
