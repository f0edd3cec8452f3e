//! Each fault a rollout must catch, as a real model variant that passes the default gates: the rollout sends all
//! traffic back to the baseline, by the guard or comparison meant for it, and never promotes. Detection times are
//! printed (docs/benchmarks.md records them).

use super::{decision, fast, live_slot, server, start, variant, wait_end, zero, LoadGen};
use candle_core::Tensor;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Runs a rollout base -> `name` under load; returns the ended view, the instant the rollout started and the
/// load generator's record.
async fn roll(
    name: &str,
    edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>, &mut Value),
    extra: Value,
) -> (Value, Instant, super::Seen) {
    let root = tempfile::tempdir().unwrap();
    variant(root.path(), "base", |_, _| {});
    variant(root.path(), name, edit);
    let s = server(root.path(), "base", name).await;
    let load = LoadGen::start(&s.url, 8, 500);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let id = start(&s, fast("green", extra)).await;
    let v = wait_end(&s, &id, Duration::from_secs(120)).await;
    let seen = load.stop().await;
    assert_eq!(v["state"], "rolled_back", "{v:#}");
    assert!(decision(&v, "promote").is_none(), "a faulty canary was promoted: {v:#}");
    assert_eq!(live_slot(&s.admin_json("/admin/slots").await), "blue", "the baseline serves again");
    assert_eq!(v["weight_pct"], 0.0);
    (v, t0, seen)
}

fn rollback(v: &Value) -> &Value {
    decision(v, "rollback").unwrap_or_else(|| panic!("no rollback decision: {v:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_degenerate_version_is_rolled_back_by_the_repetition_guard_within_two_seconds() {
    let (v, t0, seen) =
        roll("degenerate", |t, _| zero(t, &["self_attn.o_proj.weight", "mlp.down_proj.weight"]), json!({})).await;
    let d = rollback(&v);
    assert_eq!(d["metric"], "guard_repetition", "{v:#}");
    let first_bad = seen.first_from["green"];
    let at = t0 + Duration::from_secs_f64(d["elapsed_s"].as_f64().unwrap());
    let detect = at.saturating_duration_since(first_bad);
    eprintln!("degenerate: rolled back {:.0} ms after its first answer ({})", detect.as_secs_f64() * 1e3, d["reason"]);
    assert!(detect < Duration::from_secs(2), "{detect:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_with_a_shorter_context_is_rolled_back_by_the_error_comparison() {
    let (v, _, _) = roll("shortctx", |_, c| c["max_position_embeddings"] = json!(64), json!({})).await;
    let d = rollback(&v);
    assert_eq!(d["metric"], "error_rate", "{v:#}");
    assert!(d["value"].as_f64().unwrap() > 0.1, "{d}");
    eprintln!("short context: rolled back {:.2} s after the start ({})", d["elapsed_s"].as_f64().unwrap(), d["reason"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_much_slower_version_is_rolled_back_by_the_latency_comparison() {
    let slow = |t: &mut std::collections::HashMap<String, Tensor>, c: &mut Value| {
        let layers = c["num_hidden_layers"].as_u64().unwrap() as usize;
        let last: Vec<(String, Tensor)> = t
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("model.layers.{}.", layers - 1)))
            .map(|(k, w)| (k.clone(), w.clone()))
            .collect();
        for extra in 0..120 {
            for (k, w) in &last {
                let name = k.replace(&format!("layers.{}.", layers - 1), &format!("layers.{}.", layers + extra));
                let zeroed = k.ends_with("o_proj.weight") || k.ends_with("down_proj.weight");
                t.insert(name, if zeroed { w.zeros_like().unwrap() } else { w.clone() });
            }
        }
        c["num_hidden_layers"] = json!(layers + 120);
    };
    let (v, _, _) = roll("slow", slow, json!({"shadow_rate": 0})).await;
    let d = rollback(&v);
    let metric = d["metric"].as_str().unwrap();
    assert!(metric.starts_with("ttft_") || metric.starts_with("itl_"), "{v:#}");
    eprintln!("slow: rolled back {:.2} s after the start ({})", d["elapsed_s"].as_f64().unwrap(), d["reason"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_numerically_perturbed_version_fails_shadow_agreement_and_is_never_promoted() {
    let noisy = |t: &mut std::collections::HashMap<String, Tensor>, _: &mut Value| {
        for (k, w) in t.iter_mut() {
            if k.ends_with("mlp.up_proj.weight") {
                let std = w.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
                let noise = Tensor::randn(0f32, std * 0.6, w.shape(), w.device()).unwrap();
                *w = (&*w + noise).unwrap();
            }
        }
    };
    // The latency and length comparisons are loosened, and the answer-shape guards (empty, repeating, length-cut
    // answers) need more answers than the test sends, so that only agreement can judge this version: the noise
    // often makes it repeat itself, which the repetition guard would otherwise catch first.
    let extra = json!({"analysis": {"latency_regression_pct": 1000, "output_length_change_pct": 1000,
                                    "guards": {"window": 10000, "min_bad": 10000}}});
    let (v, _, _) = roll("perturbed", noisy, extra).await;
    let d = rollback(&v);
    let metric = d["metric"].as_str().unwrap();
    assert!(metric == "shadow_agreement" || metric == "shadow_top1_agreement", "{v:#}");
    let sh = &v["shadow"];
    let tf = &sh["teacher_forced"];
    let (c, aa) = (tf["top1_agreement"]["mean"].as_f64(), tf["aa_top1_agreement"]["mean"].as_f64());
    if let (Some(c), Some(aa)) = (c, aa) {
        assert!(c < aa, "teacher-forced top-1 agreement {c} not below A/A {aa}: {v:#}");
    }
    eprintln!(
        "perturbed: rolled back by {metric} {:.2} s after the start; exact match {} (A/A {}) over {} comparisons; teacher-forced top-1 {:?} (A/A {:?}), KL {} (A/A {})",
        d["elapsed_s"].as_f64().unwrap(),
        sh["agreement"],
        sh["aa_agreement"],
        sh["compared"],
        c,
        aa,
        tf["kl"]["mean"],
        tf["aa_kl"]["mean"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_with_nan_weights_for_one_token_is_rolled_back_at_its_first_nan() {
    // The input embedding row of "▁do" (id 400, in "The little dog") is NaN, the output head (untied) is the
    // original: the default gates never use the token, and every answer to a prompt holding it ends in an
    // engine error for non-finite logits.
    let nan_row = |t: &mut std::collections::HashMap<String, Tensor>, c: &mut Value| {
        c["tie_word_embeddings"] = json!(false);
        let w = t["model.embed_tokens.weight"].clone();
        t.insert("lm_head.weight".into(), w.copy().unwrap());
        let mut rows = w.to_vec2::<f32>().unwrap();
        rows[400].iter_mut().for_each(|x| *x = f32::NAN);
        t.insert("model.embed_tokens.weight".into(), Tensor::new(rows, w.device()).unwrap());
    };
    let (v, t0, seen) = roll("nanrow", nan_row, json!({})).await;
    let d = rollback(&v);
    assert_eq!(d["metric"], "guard_nonfinite_logits", "{v:#}");
    let at = t0 + Duration::from_secs_f64(d["elapsed_s"].as_f64().unwrap());
    // The canary's first request may be the one that fails (an error names no slot): then no green answer exists.
    let after_first = match seen.first_from.get("green") {
        Some(first) => format!(
            "{:.0} ms after the canary's first answer",
            at.saturating_duration_since(*first).as_secs_f64() * 1e3
        ),
        None => "before the canary answered anything".into(),
    };
    let elapsed = d["elapsed_s"].as_f64().unwrap();
    eprintln!("NaN row: rolled back {elapsed:.2} s after the start, {after_first} ({})", d["reason"]);
}
