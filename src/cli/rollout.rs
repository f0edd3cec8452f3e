//! `teal admin rollout`: start a rollout, watch it (a progress display until it ends), pause, resume, promote,
//! abort, and read its promotion report (Markdown, JSON or SVG).

use super::admin::Client;
use crate::rollout::views::{RolloutState, RolloutView};
use anyhow::{bail, Context};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start moving traffic to the standby in steps (then watch it, unless --no-wait)
    Start {
        /// The slot to roll out to [default: the standby]
        #[arg(long)]
        to: Option<String>,
        /// Canary shares in percent, e.g. 1,5,25,50,100
        #[arg(long, value_delimiter = ',')]
        steps: Option<Vec<f64>>,
        #[arg(long)]
        step_interval_s: Option<f64>,
        #[arg(long)]
        shadow_rate: Option<f64>,
        #[arg(long)]
        bake_s: Option<f64>,
        /// Analysis settings as JSON, or @FILE
        #[arg(long)]
        analysis: Option<String>,
        /// Return once the rollout has started
        #[arg(long)]
        no_wait: bool,
    },
    /// The rollout's state, weight, latest analysis and decisions [default: the current one]
    Status {
        id: Option<String>,
    },
    /// Follow a rollout until it ends
    Watch {
        id: Option<String>,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Go to 100% and flip now (the bake still runs)
    Promote {
        id: String,
    },
    /// All traffic back to the version that was live when the rollout started
    Abort {
        id: String,
    },
    /// The promotion report
    Report {
        id: Option<String>,
        /// markdown, json or svg
        #[arg(long, default_value = "markdown")]
        format: String,
        /// Write to this file instead of standard output
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub(crate) async fn run(c: &Client, cmd: RolloutCommand, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        RolloutCommand::Start { to, steps, step_interval_s, shadow_rate, bake_s, analysis, no_wait } => {
            let mut body = json!({"to": to});
            for (k, v) in [
                ("steps", json!(steps)),
                ("step_interval_s", json!(step_interval_s)),
                ("shadow_rate", json!(shadow_rate)),
                ("bake_s", json!(bake_s)),
            ] {
                if !v.is_null() {
                    body[k] = v;
                }
            }
            if let Some(a) = analysis {
                body["analysis"] = super::admin::read_json_arg(&a)?;
            }
            let v: RolloutView = c.typed(Method::POST, "/admin/rollouts", Some(body)).await?;
            if no_wait {
                return print(as_json, &v);
            }
            let end = watch(c, &v.id, !as_json).await?;
            print(as_json, &end)?;
            if end.state != RolloutState::Promoted {
                bail!("rollout {} ended {}", end.id, end.state.as_str());
            }
        }
        RolloutCommand::Status { id } => print(as_json, &get(c, id.as_deref()).await?)?,
        RolloutCommand::Watch { id } => {
            let id = get(c, id.as_deref()).await?.id;
            print(as_json, &watch(c, &id, !as_json).await?)?
        }
        RolloutCommand::Pause { id } => print(as_json, &command(c, &id, "pause").await?)?,
        RolloutCommand::Resume { id } => print(as_json, &command(c, &id, "resume").await?)?,
        RolloutCommand::Promote { id } => print(as_json, &command(c, &id, "promote").await?)?,
        RolloutCommand::Abort { id } => print(as_json, &command(c, &id, "abort").await?)?,
        RolloutCommand::Report { id, format, out } => {
            let id = id.unwrap_or_else(|| "current".into());
            let text = c.text(&format!("/admin/rollouts/{id}/report?format={format}")).await?;
            match out {
                Some(p) => std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?,
                None => print!("{text}"),
            }
        }
    }
    Ok(())
}

async fn get(c: &Client, id: Option<&str>) -> anyhow::Result<RolloutView> {
    c.typed(Method::GET, &format!("/admin/rollouts/{}", id.unwrap_or("current")), None).await
}

async fn command(c: &Client, id: &str, action: &str) -> anyhow::Result<RolloutView> {
    c.typed(Method::POST, &format!("/admin/rollouts/{id}/{action}"), None).await
}

/// Polls the rollout until it ends, with a bar of the canary's weight and the latest decision.
async fn watch(c: &Client, id: &str, bar: bool) -> anyhow::Result<RolloutView> {
    let pb = if bar { ProgressBar::new(100) } else { ProgressBar::hidden() };
    pb.set_style(ProgressStyle::with_template("{spinner} [{bar:40}] {pos:>3}% {msg}")?.progress_chars("=> "));
    loop {
        let v = get(c, Some(id)).await?;
        pb.set_position(v.weight_pct.round() as u64);
        let last = v.decisions.last().map(|d| format!("{}: {}", d.decision.as_str(), d.reason)).unwrap_or_default();
        pb.set_message(format!("{}{} {last}", v.state.as_str(), if v.baking { " (baking)" } else { "" }));
        if v.state.finished() {
            pb.finish_and_clear();
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn print(as_json: bool, v: &RolloutView) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    println!(
        "rollout {}: {}{} at {}% (step {} of {:?}); {} {} -> {} {}",
        v.id,
        v.state.as_str(),
        if v.baking { " (baking)" } else { "" },
        v.weight_pct,
        v.step,
        v.steps,
        v.baseline.slot,
        v.baseline.version,
        v.canary.slot,
        v.canary.version
    );
    if let Some(r) = &v.reason {
        println!("  reason: {r}");
    }
    for cmp in &v.comparisons {
        let f = |x: Option<f64>| x.map(|x| format!("{x:.4}")).unwrap_or_else(|| "-".into());
        println!(
            "  {:<18} {:<13} canary {} baseline {} threshold {} (samples {}/{})",
            cmp.metric,
            format!("{:?}", cmp.verdict),
            f(cmp.value),
            f(cmp.baseline),
            f(cmp.threshold),
            cmp.samples.baseline,
            cmp.samples.canary
        );
    }
    for d in v.decisions.iter().rev().take(10).rev() {
        println!("  {:>8.2}s {:<8} {:>6}% {}", d.elapsed_s, d.decision.as_str(), d.weight_pct, d.reason);
    }
    Ok(())
}
