//! What a rollout is asked to do: its steps, how long each lasts, the shadow rate, the bake time, and the
//! analysis (comparisons and guards). Built from teal's defaults, then the canary model's teal.toml `[rollout]`,
//! then the `POST /admin/rollouts` body (a deep merge, like the gates), and checked against caps so that no
//! request can ask for unbounded work.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// The canary's share at each step, in percent, increasing; the last is 100.
    pub steps: Vec<f64>,
    /// Least time at each step before it may advance (it also waits for the analysis to pass).
    pub step_interval_s: f64,
    /// Share of baseline requests mirrored to the canary (never answered from it). At most 0.5.
    pub shadow_rate: f64,
    /// After promotion, how long the guards and comparisons keep watching against the previous version, which
    /// stays resident and takes all traffic back on a breach.
    pub bake_s: f64,
    pub analysis: AnalysisConfig,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            steps: vec![1.0, 5.0, 25.0, 50.0, 100.0],
            step_interval_s: 60.0,
            shadow_rate: 0.05,
            bake_s: 60.0,
            analysis: AnalysisConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisConfig {
    /// How often the comparisons run.
    pub interval_s: f64,
    /// Answers in the first seconds of each step (and of the bake) are not compared: after a weight change or a
    /// flip, queues, batch composition and caches take a moment to settle, and what the arms show then is the
    /// change, not the versions (Kayenta's "begin analysis after"). The guards watch these answers too.
    pub warmup_s: f64,
    /// Least samples per arm before a comparison can pass or fail; fewer is INCONCLUSIVE (holds the weight).
    pub min_samples: usize,
    /// The false-alarm rate of each comparison over the whole rollout, however often it looks.
    pub alpha: f64,
    /// Error rate: the canary may fail or refuse at most this share more of its requests than the baseline.
    pub error_margin: f64,
    /// Latency: the canary's quantiles may be at most this many percent above the baseline's.
    pub latency_regression_pct: f64,
    /// ...and at least this many milliseconds above: a smaller regression is below what a user notices and
    /// within a busy host's scheduling noise (a 1 ms decode step slowed by 0.3 ms is not a regression).
    pub latency_regression_min_ms: f64,
    /// A comparison rolls back only when it fails at this many consecutive looks: a failure must survive the
    /// data that arrives after it, so a burst of contention that slows one arm for a moment is not a verdict.
    pub confirm_looks: u32,
    /// Which quantiles of TTFT and ITL are compared (0.5 and 0.99 by default; a 0.99 pass needs roughly 900
    /// samples per arm at the default alpha).
    pub latency_quantiles: Vec<f64>,
    /// Output length (tokens): the canary's mean may differ from the baseline's by at most this many percent.
    pub output_length_change_pct: f64,
    /// Shadow: the canary's exact-match agreement with the live answers may be at most this far below the A/A
    /// agreement (the live version against itself).
    pub agreement_margin: f64,
    /// Least shadow comparisons before the agreement can pass or fail.
    pub min_shadow_samples: usize,
    pub guards: GuardConfig,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            interval_s: 2.0,
            warmup_s: 10.0,
            min_samples: 50,
            alpha: 0.05,
            error_margin: 0.02,
            latency_regression_pct: 20.0,
            latency_regression_min_ms: 1.0,
            confirm_looks: 2,
            latency_quantiles: vec![0.5, 0.99],
            output_length_change_pct: 50.0,
            agreement_margin: 0.1,
            min_shadow_samples: 20,
            guards: GuardConfig::default(),
        }
    }
}

/// Guards act on each canary answer as it finishes, without waiting for the analysis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Answers looked at (the canary's last N, against the baseline's last N).
    pub window: usize,
    /// A breach needs at least this many bad canary answers in the window...
    pub min_bad: usize,
    /// ...and a bad share at least this much above the baseline's.
    pub excess_rate: f64,
    /// Server errors on the canary (5xx, engine failures) that roll back at once.
    pub max_server_errors: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig { window: 20, min_bad: 5, excess_rate: 0.3, max_server_errors: 3 }
    }
}

fn within(name: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{name} must be between {lo} and {hi}, not {v}"))
    }
}

impl RolloutConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.steps.is_empty() || self.steps.len() > 100 {
            return Err("steps: 1 to 100 steps".into());
        }
        for (i, s) in self.steps.iter().enumerate() {
            within("each step", *s, 0.01, 100.0)?;
            if i > 0 && self.steps.get(i - 1).is_some_and(|p| p >= s) {
                return Err("steps must increase".into());
            }
        }
        if self.steps.last() != Some(&100.0) {
            return Err("the last step must be 100 (percent)".into());
        }
        within("step_interval_s", self.step_interval_s, 0.0, 86_400.0)?;
        within("shadow_rate", self.shadow_rate, 0.0, 0.5)?;
        within("bake_s", self.bake_s, 0.0, 86_400.0)?;
        self.analysis.validate()
    }
}

impl AnalysisConfig {
    fn validate(&self) -> Result<(), String> {
        within("analysis.interval_s", self.interval_s, 0.05, 3600.0)?;
        within("analysis.warmup_s", self.warmup_s, 0.0, 86_400.0)?;
        within("analysis.min_samples", self.min_samples as f64, 5.0, 1_000_000.0)?;
        within("analysis.alpha", self.alpha, 1e-9, 0.5)?;
        within("analysis.error_margin", self.error_margin, 0.0, 1.0)?;
        within("analysis.latency_regression_pct", self.latency_regression_pct, 0.0, 10_000.0)?;
        within("analysis.latency_regression_min_ms", self.latency_regression_min_ms, 0.0, 60_000.0)?;
        within("analysis.confirm_looks", self.confirm_looks as f64, 1.0, 100.0)?;
        within("analysis.output_length_change_pct", self.output_length_change_pct, 0.0, 10_000.0)?;
        within("analysis.agreement_margin", self.agreement_margin, 0.0, 1.0)?;
        within("analysis.min_shadow_samples", self.min_shadow_samples as f64, 1.0, 1_000_000.0)?;
        if self.latency_quantiles.len() > 8 {
            return Err("analysis.latency_quantiles: at most 8".into());
        }
        for q in &self.latency_quantiles {
            within("each latency quantile", *q, 0.01, 0.999)?;
        }
        let g = &self.guards;
        within("analysis.guards.window", g.window as f64, 5.0, 10_000.0)?;
        within("analysis.guards.min_bad", g.min_bad as f64, 1.0, g.window as f64)?;
        within("analysis.guards.excess_rate", g.excess_rate, 0.0, 1.0)?;
        within("analysis.guards.max_server_errors", g.max_server_errors as f64, 1.0, 1_000_000.0)
    }
}

/// Defaults, under the model's `[rollout]`, under the request's fields (a JSON object without `to`).
pub fn effective(model: Option<&toml::Value>, request: serde_json::Value) -> Result<RolloutConfig, String> {
    let base = serde_json::to_value(RolloutConfig::default()).map_err(|e| e.to_string())?;
    let file = match model {
        Some(v) => serde_json::to_value(v).map_err(|e| e.to_string())?,
        None => serde_json::Value::Object(Default::default()),
    };
    let merged = crate::lifecycle::spec::merge_json(crate::lifecycle::spec::merge_json(base, file), request);
    let cfg: RolloutConfig = serde_json::from_value(merged).map_err(|e| format!("rollout: {e}"))?;
    cfg.validate()?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn request_fields_override_the_model_file_and_are_checked() {
        let file: toml::Value =
            toml::from_str("steps = [10.0, 100.0]\nbake_s = 5\n[analysis]\nmin_samples = 20\n").unwrap();
        let c = effective(Some(&file), json!({"bake_s": 1, "analysis": {"alpha": 0.01}})).unwrap();
        assert_eq!(c.steps, vec![10.0, 100.0]);
        assert_eq!((c.bake_s, c.analysis.min_samples, c.analysis.alpha), (1.0, 20, 0.01));
        assert_eq!(c.shadow_rate, 0.05);
        for bad in [
            json!({"steps": [50, 10, 100]}),
            json!({"steps": [10, 50]}),
            json!({"shadow_rate": 0.9}),
            json!({"analysis": {"min_samples": 0}}),
            json!({"analysis": {"alpha": -1}}),
            json!({"stepz": [1]}),
            json!({"steps": (0..200).map(|i| i as f64 / 2.0 + 0.01).collect::<Vec<_>>()}),
        ] {
            assert!(effective(None, bad.clone()).is_err(), "{bad}");
        }
    }
}
