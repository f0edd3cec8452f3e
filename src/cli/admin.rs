//! `teal admin`: the admin API from the command line. Readable tables by default, the server's JSON with
//! `--json`; a progress bar while a load runs. Exit status 1 when the server refuses or an operation fails.

use crate::lifecycle::{OpStatus, Operation, Phase, Status};
use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin API base URL
    #[arg(long, env = "TEAL_ADMIN_URL", default_value = "http://127.0.0.1:8081")]
    pub url: String,
    /// Bearer token [default: the token file]
    #[arg(long, env = "TEAL_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the token [default: <state-dir>/admin.token, as `teal serve` writes it]
    #[arg(long, env = "TEAL_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The server's state directory (for the generated token)
    #[arg(long, env = "TEAL_STATE_DIR", default_value = ".teal")]
    pub state_dir: PathBuf,
    /// Print the server's JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    /// Why: sent with every change (X-Teal-Reason) and written to the audit log with it
    #[arg(long, global = true, env = "TEAL_ADMIN_REASON")]
    pub reason: Option<String>,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Both slots: state, model, version, device, gates
    Status,
    /// Load a model into a slot (warm-up and gates run before it is ready)
    Load {
        /// blue or green
        slot: String,
        /// A name in the server's model root, or a path under it
        model: String,
        #[arg(long)]
        version: Option<String>,
        #[arg(long)]
        device: Option<String>,
        #[arg(long)]
        dtype: Option<String>,
        /// Skip warm-up (the first requests after a flip pay for it)
        #[arg(long)]
        no_warmup: bool,
        /// Gate overrides as JSON, or @FILE
        #[arg(long)]
        gates: Option<String>,
        /// Return once the load has started
        #[arg(long)]
        no_wait: bool,
    },
    /// Make the standby live
    Flip {
        /// Refuse unless this slot is live now
        #[arg(long)]
        expect_live: Option<String>,
        /// Skip the gates (audited; not in a fleet flip)
        #[arg(long)]
        force: bool,
        /// In fleet mode: flip this replica only
        #[arg(long)]
        local: bool,
    },
    /// Go back to the previous live slot (in fleet mode: every replica, unless --local)
    Rollback {
        /// In fleet mode: roll back this replica only
        #[arg(long)]
        local: bool,
    },
    /// Fleet mode: the replicas, their versions, epochs and staleness, and the committed target
    Fleet,
    /// Unload a standby slot
    Unload { slot: String },
    /// Per device and per slot: weights, shared weights, KV pool, workspace, free within the budget
    Memory,
    /// Free a ready standby's device memory (weights to host memory, KV pool released)
    Park { slot: String },
    /// Bring a parked standby back to its device and warm it
    Wake { slot: String },
    /// The audit log
    Events {
        /// Keep printing new events
        #[arg(long)]
        follow: bool,
        /// Only events after this sequence number
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Cancel a running operation (load, park, wake): its slot fails with "cancelled by the operator"
    Cancel {
        /// Operation id (op-N)
        operation: String,
    },
    /// Progressive delivery: canary steps, shadow traffic, automatic rollback, the promotion report
    Rollout {
        #[command(subcommand)]
        command: super::rollout::RolloutCommand,
    },
    /// Wait for an operation to finish, or for a slot to reach a state
    Wait {
        /// Operation id (op-N)
        operation: Option<String>,
        #[arg(long)]
        slot: Option<String>,
        /// ready, live, empty, failed, ...
        #[arg(long, default_value = "ready")]
        state: String,
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
}

/// An authenticated admin API client (also used by `teal bench`).
pub(crate) struct Client {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
    /// `--reason`, percent-encoded for the X-Teal-Reason header.
    pub reason: Option<String>,
}

impl Client {
    /// The token comes from `token`, else `token_file`, else `<state_dir>/admin.token`.
    pub fn connect(
        url: &str,
        token: Option<String>,
        token_file: Option<PathBuf>,
        state_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let token = match token {
            Some(t) => t,
            None => {
                let path = token_file.unwrap_or_else(|| state_dir.join("admin.token"));
                let t = std::fs::read_to_string(&path).with_context(|| {
                    format!("no admin token: set TEAL_ADMIN_TOKEN or --token-file ({} unreadable)", path.display())
                })?;
                t.trim().to_string()
            }
        };
        let url = url.trim_end_matches('/').to_string();
        Ok(Client { http: reqwest::Client::new(), url, token, reason: None })
    }

    /// Sends `reason` with every call (the server audits it with each change).
    pub fn with_reason(mut self, reason: Option<String>) -> Self {
        self.reason =
            reason.map(|r| percent_encoding::utf8_percent_encode(&r, percent_encoding::NON_ALPHANUMERIC).to_string());
        self
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token);
        if let Some(r) = &self.reason {
            req = req.header("x-teal-reason", r);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the admin API at {}", self.url))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = v["error"]["message"].as_str().map(String::from).unwrap_or_else(|| v.to_string());
            bail!("{status}: {msg}");
        }
        Ok(v)
    }

    /// A call whose answer is text (a report in Markdown or SVG).
    pub async fn text(&self, path: &str) -> anyhow::Result<String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.url))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{status}: {text}");
        }
        Ok(text)
    }

    /// A call whose answer is one of the admin API's typed views.
    pub async fn typed<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let v = self.call(method, path, body).await?;
        serde_json::from_value(v).with_context(|| format!("unexpected answer from {path}"))
    }

    pub async fn status(&self) -> anyhow::Result<Status> {
        self.typed(Method::GET, "/admin/slots", None).await
    }

    /// Starts an operation (load, park, wake) and returns it as the 202 answer names it.
    pub async fn start(&self, path: &str, body: Option<Value>) -> anyhow::Result<Operation> {
        #[derive(serde::Deserialize)]
        struct Started {
            operation: Operation,
        }
        Ok(self.typed::<Started>(Method::POST, path, body).await?.operation)
    }
}

/// Runs one `teal admin` command.
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    let client = Client::connect(&args.url, args.token.clone(), args.token_file.clone(), &args.state_dir)?
        .with_reason(args.reason.clone());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(dispatch(&client, args.command, args.json))
}

async fn dispatch(c: &Client, cmd: AdminCommand, as_json: bool) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Status => print_or(as_json, &c.status().await?, status_table),
        AdminCommand::Load { slot, model, version, device, dtype, no_warmup, gates, no_wait } => {
            let gates = gates.map(|g| read_json_arg(&g)).transpose()?;
            let mut body =
                json!({"model": model, "version": version, "device": device, "dtype": dtype, "gates": gates});
            if no_warmup {
                body["warmup"] = json!({"enabled": false});
            }
            let started = c.start(&format!("/admin/slots/{slot}/load"), Some(body)).await?;
            if no_wait {
                print_or(as_json, &json!({"operation": started}), |_| println!("started {}", started.id));
                return Ok(());
            }
            let op = follow_operation(c, &started.id, !as_json, Duration::from_secs(3600)).await?;
            print_or(as_json, &op, operation_line);
            check_operation(&op)?;
        }
        AdminCommand::Flip { expect_live, force, local } => {
            let mut body = json!({"expect_live": expect_live, "force": force});
            if local {
                body["fleet"] = json!(false);
            }
            let v = c.call(Method::POST, "/admin/flip", Some(body)).await?;
            print_or(as_json, &v, super::fleet::flip_line);
        }
        AdminCommand::Rollback { local } => {
            let body = local.then(|| json!({"fleet": false}));
            let v = c.call(Method::POST, "/admin/rollback", body).await?;
            print_or(as_json, &v, super::fleet::flip_line);
        }
        AdminCommand::Fleet => {
            let v: crate::fleet::views::FleetView = c.typed(Method::GET, "/admin/fleet", None).await?;
            print_or(as_json, &v, super::fleet::table);
        }
        AdminCommand::Unload { slot } => {
            let v: crate::lifecycle::Unloaded = c.typed(Method::DELETE, &format!("/admin/slots/{slot}"), None).await?;
            print_or(as_json, &v, |v| {
                println!("{} unloaded ({})", v.slot, v.unloaded_version.as_deref().unwrap_or("-"))
            });
        }
        AdminCommand::Memory => {
            let v = c.call(Method::GET, "/admin/memory", None).await?;
            print_or(as_json, &v, memory_table);
        }
        AdminCommand::Park { slot } => park_or_wake(c, &slot, "park", as_json).await?,
        AdminCommand::Wake { slot } => park_or_wake(c, &slot, "wake", as_json).await?,
        AdminCommand::Events { follow, after } => events(c, follow, after, as_json).await?,
        AdminCommand::Rollout { command } => super::rollout::run(c, command, as_json).await?,
        AdminCommand::Cancel { operation } => {
            let op = c.typed(Method::POST, &format!("/admin/operations/{operation}/cancel"), None).await?;
            print_or(as_json, &op, operation_line);
        }
        AdminCommand::Wait { operation, slot, state, timeout_s } => {
            let limit = Duration::from_secs(timeout_s);
            match (operation, slot) {
                (Some(id), _) => {
                    let op = follow_operation(c, &id, false, limit).await?;
                    print_or(as_json, &op, operation_line);
                    check_operation(&op)?;
                }
                (None, Some(slot)) => wait_state(c, &slot, &state, limit).await?,
                (None, None) => bail!("give an operation id or --slot"),
            }
        }
    }
    Ok(())
}

async fn park_or_wake(c: &Client, slot: &str, action: &str, as_json: bool) -> anyhow::Result<()> {
    let started = c.start(&format!("/admin/slots/{slot}/{action}"), None).await?;
    let op = follow_operation(c, &started.id, !as_json, Duration::from_secs(3600)).await?;
    print_or(as_json, &op, operation_line);
    check_operation(&op)
}

pub(crate) fn read_json_arg(s: &str) -> anyhow::Result<Value> {
    let text = match s.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => s.to_string(),
    };
    serde_json::from_str(&text).context("the argument is not valid JSON")
}

fn print_or<T: Serialize>(as_json: bool, v: &T, table: impl Fn(&T)) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        table(v);
    }
}

fn check_operation(op: &Operation) -> anyhow::Result<()> {
    if op.status == OpStatus::Failed {
        bail!("{} failed: {}", op.kind, op.error.as_deref().unwrap_or("unknown reason"));
    }
    if op.gates_passed == Some(false) {
        bail!("loaded, but its gates failed (see `teal admin status`); a flip needs --force");
    }
    Ok(())
}

pub(crate) async fn follow_operation(c: &Client, id: &str, bar: bool, limit: Duration) -> anyhow::Result<Operation> {
    let pb = if bar { ProgressBar::new(100) } else { ProgressBar::hidden() };
    pb.set_style(
        ProgressStyle::with_template("{spinner} {prefix:>8} [{bar:30}] {pos:>3}% {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let t0 = Instant::now();
    loop {
        let op: Operation = c.typed(Method::GET, &format!("/admin/operations/{id}"), None).await?;
        pb.set_prefix(op.phase.to_string());
        pb.set_position((op.progress * 100.0) as u64);
        if op.finished() {
            pb.finish_and_clear();
            return Ok(op);
        }
        if t0.elapsed() > limit {
            pb.abandon();
            bail!("operation {id} still running after {}s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_state(c: &Client, slot: &str, state: &str, limit: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let name = crate::slot::SlotName::parse(slot).ok_or_else(|| anyhow!("no slot {slot}; use blue or green"))?;
        let now = c.status().await?.slots.get(name).state.clone();
        if now == state {
            println!("{slot} is {state}");
            return Ok(());
        }
        if t0.elapsed() > limit {
            bail!("{slot} is {now}, not {state}, after {}s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn events(c: &Client, follow: bool, after: u64, as_json: bool) -> anyhow::Result<()> {
    if !follow {
        let v = c.call(Method::GET, &format!("/admin/events?after={after}"), None).await?;
        for ev in v["events"].as_array().into_iter().flatten() {
            print_or(as_json, ev, event_line);
        }
        return Ok(());
    }
    let url = format!("{}/admin/events?follow=true&after={after}", c.url);
    let resp = c.http.get(url).bearer_auth(&c.token).send().await?.error_for_status()?;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            if let Some(ev) = line.trim_end().strip_prefix("data: ").and_then(|d| serde_json::from_str::<Value>(d).ok())
            {
                print_or(as_json, &ev, event_line);
            }
        }
    }
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn status_table(v: &Status) {
    println!(
        "{:<6} {:<9} {:<4} {:<28} {:<14} {:<7} {:>9}  GATES",
        "SLOT", "STATE", "LIVE", "MODEL", "VERSION", "DEVICE", "IN-FLIGHT"
    );
    for sl in [&v.slots.blue, &v.slots.green] {
        let gates = match &sl.gates {
            None => "-".to_string(),
            Some(g) if g.passed => "passed".into(),
            Some(g) if g.forced => "forced".into(),
            Some(g) => format!("failed: {}", g.first_failure().unwrap_or_default()),
        };
        let state = match &sl.reason {
            Some(r) => format!("{} ({r})", sl.state),
            None => sl.state.clone(),
        };
        let (name, version, device) = match &sl.model {
            Some(m) => (m.name.as_str(), m.version.as_str(), m.device.as_str()),
            None => ("-", "-", "-"),
        };
        println!(
            "{:<6} {state:<9} {:<4} {name:<28} {version:<14} {device:<7} {:>9}  {gates}",
            sl.slot,
            if sl.live { "*" } else { "" },
            sl.in_flight,
        );
    }
}

fn gib(v: &Value) -> String {
    v.as_u64().map(crate::memory::budget::human).unwrap_or_else(|| "-".into())
}

fn memory_table(v: &Value) {
    println!(
        "{:<8} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "DEVICE", "TOTAL", "BUDGET", "HELD", "WEIGHTS", "SHARED", "KV", "FREE"
    );
    for d in v["devices"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11} {:>11}",
            s(&d["device"]),
            gib(&d["total_bytes"]),
            gib(&d["budget_bytes"]),
            gib(&d["held_bytes"]),
            gib(&d["weights_bytes"]),
            gib(&d["shared_bytes"]),
            gib(&d["kv_cache_bytes"]),
            gib(&d["free_within_budget_bytes"]),
        );
    }
    println!();
    println!(
        "{:<6} {:<9} {:<8} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "SLOT", "STATE", "DEVICE", "WEIGHTS", "SHARED", "KV", "HOST", "ESTIMATE"
    );
    for sl in v["slots"].as_array().into_iter().flatten() {
        let est = sl["estimate"].as_object().map(|e| e.values().filter_map(Value::as_u64).sum::<u64>());
        println!(
            "{:<6} {:<9} {:<8} {:>11} {:>11} {:>11} {:>11} {:>11}",
            s(&sl["slot"]),
            s(&sl["state"]),
            s(&sl["device"]),
            gib(&sl["weights_bytes"]),
            gib(&sl["shared_bytes"]),
            gib(&sl["kv_cache_bytes"]),
            gib(&sl["host_bytes"]),
            est.map(crate::memory::budget::human).unwrap_or_else(|| "-".into()),
        );
    }
    if let Some(rss) = v["process_resident_bytes"].as_u64() {
        println!("\nprocess resident memory: {}", crate::memory::budget::human(rss));
    }
}

fn operation_line(op: &Operation) {
    let t = |p| op.timing(p).unwrap_or(0.0);
    println!(
        "{} {} on {}: {} (load {:.2}s, warm-up {:.2}s, gates {:.2}s){}",
        op.id,
        op.model,
        op.slot,
        op.status,
        t(Phase::Loading),
        t(Phase::Warming),
        t(Phase::Gating),
        op.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
    );
}

pub(crate) fn flip_line(v: &Value) {
    let f = &v["flip"];
    println!(
        "live: {} ({}), was {} ({}); swap {:.1} us, flip {:.1} us{}",
        s(&f["live"]),
        s(&f["version"]),
        s(&f["previous"]),
        s(&f["previous_version"]),
        f["swap_us"].as_f64().unwrap_or(0.0),
        v["flip_us"].as_f64().unwrap_or(0.0),
        if f["forced"] == true { " (forced: gates skipped)" } else { "" }
    );
}

fn event_line(ev: &Value) {
    println!(
        "{:>5} {} {:<15} {:<6} {:<8} {} -> {}{}{}",
        s(&ev["seq"]),
        s(&ev["time"]),
        s(&ev["action"]),
        s(&ev["slot"]),
        s(&ev["outcome"]),
        s(&ev["from_version"]),
        s(&ev["to_version"]),
        if ev["forced"] == true { " forced" } else { "" },
        ev["reason"].as_str().map(|r| format!(" ({r})")).unwrap_or_default()
    );
}
