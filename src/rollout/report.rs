//! A rollout as the API shows it (`view`), and its promotion report: old against new side by side (requests,
//! errors, latency percentiles, throughput, output length, shadow agreement), the decisions timeline, as JSON
//! (the view), Markdown and an SVG chart (the weight over time and each arm's latency percentiles).

use super::run::{arm_info, Run};
use super::teacher::{Estimate, ForcedView};
use super::views::{ArmSummary, Arms, Percentiles, RolloutView, ShadowView};
use super::window::ArmStats;
use super::{stats, views::Decision};
use plotters::prelude::*;

fn percentiles(xs: &[f64]) -> Percentiles {
    let ms = |q| stats::quantile(xs, q).map(|s| s * 1000.0);
    Percentiles { p50: ms(0.5), p90: ms(0.9), p99: ms(0.99) }
}

fn summary(s: &ArmStats) -> ArmSummary {
    ArmSummary {
        requests: s.requests,
        failures: s.failures(),
        server_errors: s.server_errors,
        tokens: s.tokens,
        requests_per_s: s.throughput(),
        ttft_ms: percentiles(&s.ttft.to_vec()),
        itl_ms: percentiles(&s.itl.to_vec()),
        e2e_ms: percentiles(&s.e2e.to_vec()),
        mean_output_tokens: stats::mean_var(&s.out_len.to_vec()).0,
    }
}

/// The rollout's state now.
pub fn view(run: &Run) -> RolloutView {
    let inner = run.lock();
    let a = inner.shadow.agreement;
    let share = |m: u64, t: u64| (t > 0).then(|| m as f64 / t as f64);
    let mean = |(ttft, itl, n): (f64, f64, u64)| (n > 0).then(|| (ttft / n as f64, itl / n as f64));
    let delta = match (mean(inner.shadow.canary_time), mean(inner.shadow.aa_time)) {
        (Some(c), Some(b)) => (Some((c.0 - b.0) * 1000.0), Some((c.1 - b.1) * 1000.0)),
        _ => (None, None),
    };
    let z = stats::z_two_sided(stats::alpha_at(run.config.analysis.alpha, inner.looks.max(1)));
    RolloutView {
        id: run.id.clone(),
        state: inner.state,
        baking: inner.baking_since.is_some() && !inner.state.finished(),
        baseline: arm_info(&run.split.baseline),
        canary: arm_info(&run.split.canary),
        weight_pct: if inner.state.finished() { 0.0 } else { run.weight_pct() },
        step: inner.step,
        steps: run.config.steps.clone(),
        started_at: humantime::format_rfc3339_millis(run.started_at).to_string(),
        ended_at: inner.ended_at.map(|t| humantime::format_rfc3339_millis(t).to_string()),
        elapsed_s: run.started.elapsed().as_secs_f64(),
        reason: inner.reason.clone(),
        config: run.config.clone(),
        arms: Arms { baseline: summary(&inner.arms[0]), canary: summary(&inner.arms[1]) },
        shadow: ShadowView {
            rate: run.config.shadow_rate,
            compared: a.canary_total,
            aa_compared: a.aa_total,
            shed: inner.shadow.shed,
            agreement: share(a.canary_matches, a.canary_total),
            agreement_ci: (a.canary_total > 0).then(|| stats::wilson(a.canary_matches, a.canary_total, z)),
            aa_agreement: share(a.aa_matches, a.aa_total),
            ttft_delta_ms: delta.0,
            itl_delta_ms: delta.1,
            teacher_forced: inner.shadow.forced.view(z),
        },
        comparisons: inner.comparisons.clone(),
        decisions: inner.decisions.clone(),
    }
}

fn est(e: &Option<Estimate>) -> String {
    e.map(|e| format!("{:.3} [{:.3}, {:.3}]", e.mean, e.ci.lo, e.ci.hi)).unwrap_or_else(|| "-".into())
}

fn forced_line(tf: &ForcedView) -> String {
    format!(
        "\nTeacher-forced ({} answers scored by the canary, {} A/A, {} incomparable): top-1 agreement {} (A/A {}); KL {} nats/token (A/A {}); log-likelihood delta {} (A/A {}).\n",
        tf.compared,
        tf.aa_compared,
        tf.incomparable,
        est(&tf.top1_agreement),
        est(&tf.aa_top1_agreement),
        est(&tf.kl),
        est(&tf.aa_kl),
        est(&tf.ll_delta),
        est(&tf.aa_ll_delta)
    )
}

fn ms(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into())
}

/// The report as Markdown.
pub fn markdown(v: &RolloutView) -> String {
    let mut s = format!(
        "# Rollout {}\n\n{} -> {}: **{}**{}\n\n",
        v.id,
        v.baseline.version,
        v.canary.version,
        v.state.as_str(),
        v.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default()
    );
    s += &format!(
        "Started {}, {:.1} s; steps {:?} %, now step {} at {} %.\n\n",
        v.started_at, v.elapsed_s, v.steps, v.step, v.weight_pct
    );
    s += "| | baseline | canary |\n|---|---|---|\n";
    let (b, c) = (&v.arms.baseline, &v.arms.canary);
    let mut row =
        |name: &str, f: &dyn Fn(&ArmSummary) -> String| s.push_str(&format!("| {name} | {} | {} |\n", f(b), f(c)));
    row("slot / version", &|_| String::new());
    row("requests", &|a| a.requests.to_string());
    row("failed or refused", &|a| a.failures.to_string());
    row("server errors", &|a| a.server_errors.to_string());
    row("requests/s", &|a| format!("{:.2}", a.requests_per_s));
    for (name, p) in [("TTFT", 0), ("ITL", 1), ("e2e", 2)] {
        let pick = move |a: &ArmSummary| match p {
            0 => a.ttft_ms,
            1 => a.itl_ms,
            _ => a.e2e_ms,
        };
        row(&format!("{name} p50 / p90 / p99 (ms)"), &|a| {
            let q = pick(a);
            format!("{} / {} / {}", ms(q.p50), ms(q.p90), ms(q.p99))
        });
    }
    row("mean output tokens", &|a| format!("{:.1}", a.mean_output_tokens));
    s = s.replacen(
        "| slot / version |  |  |",
        &format!(
            "| slot / version | {} / {} | {} / {} |",
            v.baseline.slot, v.baseline.version, v.canary.slot, v.canary.version
        ),
        1,
    );
    let sh = &v.shadow;
    s += &format!(
        "\nShadow (rate {}): {} compared with the canary, {} A/A, {} shed; agreement {} (A/A {}); TTFT delta {} ms, ITL delta {} ms.\n",
        sh.rate, sh.compared, sh.aa_compared, sh.shed, opt(sh.agreement), opt(sh.aa_agreement), ms(sh.ttft_delta_ms), ms(sh.itl_delta_ms)
    );
    if let Some(tf) = &sh.teacher_forced {
        s += &forced_line(tf);
    }
    s += "\n## Latest analysis\n\n| metric | verdict | canary | baseline | threshold | samples (b/c) | interval |\n|---|---|---|---|---|---|---|\n";
    for c in &v.comparisons {
        s += &format!(
            "| {} | {:?} | {} | {} | {} | {}/{} | {} |\n",
            c.metric,
            c.verdict,
            opt(c.value),
            opt(c.baseline),
            opt(c.threshold),
            c.samples.baseline,
            c.samples.canary,
            c.ci.map(|i| format!("[{:.4}, {:.4}]", i.lo, i.hi)).unwrap_or_else(|| "-".into())
        );
    }
    s += "\n## Decisions\n\n| time | elapsed s | step | weight % | decision | metric | value | threshold | reason |\n|---|---|---|---|---|---|---|---|---|\n";
    for d in &v.decisions {
        s += &decision_row(d);
    }
    s
}

fn decision_row(d: &Decision) -> String {
    format!(
        "| {} | {:.2} | {} | {} | {} | {} | {} | {} | {} |\n",
        d.time,
        d.elapsed_s,
        d.step,
        d.weight_pct,
        d.decision.as_str(),
        d.metric.as_deref().unwrap_or("-"),
        opt(d.value),
        opt(d.threshold),
        d.reason.replace('|', "/")
    )
}

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing the report chart: {e}")
}

/// The report's chart: the canary's weight over time (top) and each arm's latency percentiles (bottom).
pub fn svg(v: &RolloutView) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (960, 720)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (top, bottom) = root.split_vertically(340);
        let t_max = v.elapsed_s.max(1.0);
        let mut w = ChartBuilder::on(&top)
            .caption(format!("rollout {}: canary weight ({})", v.id, v.state.as_str()), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..t_max, 0f64..105f64)
            .map_err(err)?;
        w.configure_mesh().x_desc("seconds since start").y_desc("weight %").draw().map_err(err)?;
        let mut pts = vec![];
        for d in &v.decisions {
            if let Some(&(_, last)) = pts.last() {
                pts.push((d.elapsed_s, last));
            }
            pts.push((d.elapsed_s, d.weight_pct));
        }
        if let Some(&(_, last)) = pts.last() {
            pts.push((t_max, if v.state.finished() { v.weight_pct } else { last }));
        }
        w.draw_series(LineSeries::new(pts, BLUE.stroke_width(2))).map_err(err)?;
        let bars = [
            ("TTFT p50", v.arms.baseline.ttft_ms.p50, v.arms.canary.ttft_ms.p50),
            ("TTFT p99", v.arms.baseline.ttft_ms.p99, v.arms.canary.ttft_ms.p99),
            ("ITL p50", v.arms.baseline.itl_ms.p50, v.arms.canary.itl_ms.p50),
            ("ITL p99", v.arms.baseline.itl_ms.p99, v.arms.canary.itl_ms.p99),
            ("e2e p50", v.arms.baseline.e2e_ms.p50, v.arms.canary.e2e_ms.p50),
            ("e2e p99", v.arms.baseline.e2e_ms.p99, v.arms.canary.e2e_ms.p99),
        ];
        let y_max = bars.iter().flat_map(|(_, b, c)| [b.unwrap_or(0.0), c.unwrap_or(0.0)]).fold(1.0, f64::max) * 1.15;
        let mut l = ChartBuilder::on(&bottom)
            .caption("latency: baseline (grey) vs canary (orange), ms", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..bars.len() as f64, 0f64..y_max)
            .map_err(err)?;
        l.configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len() * 2)
            .x_label_formatter(&|x| bars.get(x.floor() as usize).map(|b| b.0.to_string()).unwrap_or_default())
            .y_desc("ms")
            .draw()
            .map_err(err)?;
        let orange = RGBColor(230, 120, 20);
        for (i, (_, b, c)) in bars.iter().enumerate() {
            let x = i as f64;
            for (dx, val, color) in [(0.1, b, RGBColor(140, 140, 140)), (0.5, c, orange)] {
                if let Some(val) = val {
                    let r = Rectangle::new([(x + dx, 0.0), (x + dx + 0.38, *val)], color.filled());
                    l.draw_series(std::iter::once(r)).map_err(err)?;
                }
            }
        }
        root.present().map_err(err)?;
    }
    Ok(out)
}
