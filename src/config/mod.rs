//! Server configuration: every `teal serve` flag, its `TEAL_*` environment variable, and the same keys in an
//! optional teal.toml (flags and env win over the file, the file over built-in defaults). Resolved and
//! validated once into `Config`.

pub mod defaults;

use crate::error::{Result, TealError};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Flags of `teal serve`. All optional here so the file can fill what the command line leaves out.
#[derive(Debug, Clone, Default, Args, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// Model for the blue slot, live at start (same as --blue): a Hugging Face directory, a .gguf file, or a
    /// name under --models-dir. Without it, the default model of the models directory is served.
    #[arg(long, env = "TEAL_MODEL", conflicts_with = "blue")]
    pub model: Option<PathBuf>,
    /// Model for the blue slot, loaded, warmed, gated and made live at start
    #[arg(long, env = "TEAL_BLUE")]
    pub blue: Option<PathBuf>,
    /// Model for the green slot, loaded, warmed and gated at start as the standby
    #[arg(long, env = "TEAL_GREEN")]
    pub green: Option<PathBuf>,
    /// Device of the blue slot [default: --device]
    #[arg(long, env = "TEAL_BLUE_DEVICE")]
    pub blue_device: Option<String>,
    /// Device of the green slot [default: --device]
    #[arg(long, env = "TEAL_GREEN_DEVICE")]
    pub green_device: Option<String>,
    /// Address of the admin API; a non-loopback address needs an explicit token
    #[arg(long, env = "TEAL_ADMIN_HOST")]
    pub admin_host: Option<String>,
    /// Port of the admin API
    #[arg(long, env = "TEAL_ADMIN_PORT")]
    pub admin_port: Option<u16>,
    /// Admin API bearer token. Without it (and without a token file), a random token is generated and written
    /// to <state-dir>/admin.token
    #[arg(long, env = "TEAL_ADMIN_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub admin_token: Option<String>,
    /// File holding the admin API bearer token
    #[arg(long, env = "TEAL_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// A second admin token that may look at everything (the dashboard, GET routes) and change nothing; at
    /// least 16 characters, not the admin token
    #[arg(long, env = "TEAL_ADMIN_VIEWER_TOKEN", hide_env_values = true)]
    #[serde(skip)]
    pub admin_viewer_token: Option<String>,
    /// File holding the viewer token (owner-readable only, like the admin token file)
    #[arg(long, env = "TEAL_ADMIN_VIEWER_TOKEN_FILE")]
    pub admin_viewer_token_file: Option<PathBuf>,
    /// Keep chat sessions in Redis (redis://host:port/db) instead of in memory, shared by every teal process
    /// using it
    #[arg(long, env = "TEAL_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Join a fleet of replicas that flip together through Redis: the fleet's name (replicas with the same name
    /// and Redis are one fleet)
    #[arg(long, env = "TEAL_FLEET_NAME")]
    pub fleet_name: Option<String>,
    /// The fleet's Redis (redis://host:port/db) [default: --redis-url]
    #[arg(long, env = "TEAL_FLEET_REDIS_URL")]
    pub fleet_redis_url: Option<String>,
    /// This replica's id in the fleet [default: the host name, the pod's name under Kubernetes]
    #[arg(long, env = "TEAL_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Milliseconds from a fleet commit to the moment every replica flips [default: 300]
    #[arg(long, env = "TEAL_FLEET_ACTIVATE_DELAY_MS")]
    pub fleet_activate_delay_ms: Option<u64>,
    /// Seconds the members may take to prepare a fleet flip (a load, warm-up and gates) [default: 120]
    #[arg(long, env = "TEAL_FLEET_PREPARE_TIMEOUT")]
    pub fleet_prepare_timeout: Option<f64>,
    /// Seconds a session lives without use
    #[arg(long, env = "TEAL_SESSION_TTL")]
    pub session_ttl: Option<u64>,
    /// When the session store fails, serve without history (with a warning header) instead of 503
    #[arg(long, env = "TEAL_SESSION_FAIL_OPEN")]
    pub session_fail_open: Option<bool>,
    /// Largest session history in bytes; more gets 413
    #[arg(long, env = "TEAL_MAX_SESSION_BYTES")]
    pub max_session_bytes: Option<usize>,
    /// Most sessions the in-memory store keeps (least recently used go first)
    #[arg(long, env = "TEAL_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Where teal keeps its audit log (audit.jsonl) and generated admin token
    #[arg(long, env = "TEAL_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// The model repository
    #[arg(long, env = "TEAL_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Address to listen on
    #[arg(long, env = "TEAL_HOST")]
    pub host: Option<String>,
    /// Port to listen on
    #[arg(long, env = "TEAL_PORT")]
    pub port: Option<u16>,
    /// Device: cpu, cuda or cuda:N
    #[arg(long, env = "TEAL_DEVICE")]
    pub device: Option<String>,
    /// Weight dtype: auto, f32, f16 or bf16. auto keeps GGUF quantized and loads safetensors as f32;
    /// a float dtype dequantizes GGUF weights to it
    #[arg(long, env = "TEAL_DTYPE")]
    pub dtype: Option<String>,
    /// Name clients put in "model" [default: the model's directory or file name]
    #[arg(long, env = "TEAL_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// KV cache pool size in tokens, shared by all running requests
    #[arg(long, env = "TEAL_MAX_TOTAL_TOKENS")]
    pub max_total_tokens: Option<usize>,
    /// Most requests decoded together
    #[arg(long, env = "TEAL_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Most new tokens per engine step; longer prompts are prefilled in chunks
    #[arg(long, env = "TEAL_MAX_STEP_TOKENS")]
    pub max_step_tokens: Option<usize>,
    /// Turn off prefix caching (on by default: full KV blocks of finished requests are kept and reused by
    /// later prompts that start with the same tokens, per slot)
    #[arg(long, env = "TEAL_NO_PREFIX_CACHE", num_args = 0..=1, default_missing_value = "true")]
    pub no_prefix_cache: Option<bool>,
    /// Most requests waiting for a place in the batch; more get 429
    #[arg(long, env = "TEAL_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// KV cache block size in tokens
    #[arg(long, env = "TEAL_BLOCK_SIZE")]
    pub block_size: Option<usize>,
    /// Largest request body in bytes; larger gets 413
    #[arg(long, env = "TEAL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Seconds to let in-flight requests finish after SIGTERM or ctrl-c
    #[arg(long, env = "TEAL_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<u64>,
    /// Log prompts and messages (off by default: they are user data)
    #[arg(long, env = "TEAL_LOG_PROMPTS")]
    pub log_prompts: Option<bool>,
    /// Memory teal may use per device for model weights, KV pools and workspace: a fraction of the device
    /// (0.9, 90%), a size (8GiB), or per device (cpu=4GiB,cuda:0=0.8); loads that do not fit are refused
    /// [default: 0.9]
    #[arg(long, env = "TEAL_MEMORY_BUDGET", value_delimiter = ',')]
    pub memory_budget: Option<Vec<String>>,
    /// A rollback to a parked slot: wake it first, or refuse
    #[arg(long, env = "TEAL_PARKED_ROLLBACK", value_parser = ["wake", "refuse"])]
    pub parked_rollback: Option<String>,
    /// Embedding and image models: how long the first request of a batch waits for others, in milliseconds
    /// (0: batch only what is already queued)
    #[arg(long, env = "TEAL_BATCH_DELAY_MS")]
    pub batch_delay_ms: Option<f64>,
    /// Embedding and image models: most inputs run as one batch (1 turns dynamic batching off)
    #[arg(long, env = "TEAL_BATCH_MAX_SIZE")]
    pub batch_max_size: Option<usize>,
    /// Largest image accepted for classification, in pixels (width x height)
    #[arg(long, env = "TEAL_MAX_IMAGE_PIXELS")]
    pub max_image_pixels: Option<u64>,
    /// Compute threads for CPU inference [default: all cores]
    #[arg(long, env = "TEAL_THREADS")]
    pub threads: Option<usize>,
    /// Largest prompt (or the messages of one chat request) in bytes of text, refused before tokenizing; a
    /// model's own bound (its longest request in tokens x its longest token) may be lower
    #[arg(long, env = "TEAL_MAX_PROMPT_BYTES")]
    pub max_prompt_bytes: Option<usize>,
    /// Most stop_token_ids in one request
    #[arg(long, env = "TEAL_MAX_STOP_TOKEN_IDS")]
    pub max_stop_token_ids: Option<usize>,
    /// Most images (or tensors) in one KServe request
    #[arg(long, env = "TEAL_MAX_IMAGES_PER_REQUEST")]
    pub max_images_per_request: Option<usize>,
    /// Most pixels of all images of one KServe request together, read from their headers before decoding
    ///
    #[arg(long, env = "TEAL_MAX_REQUEST_PIXELS")]
    pub max_request_pixels: Option<u64>,
    /// Seconds a request body may take to arrive; slower gets 408
    #[arg(long, env = "TEAL_BODY_TIMEOUT")]
    pub body_timeout: Option<f64>,
    /// Seconds a request's headers may take to arrive; also how long an idle keep-alive connection stays open
    ///
    #[arg(long, env = "TEAL_HEADER_TIMEOUT")]
    pub header_timeout: Option<f64>,
    /// Seconds a response write may make no progress (a client that stopped reading) before the connection is
    /// closed and its request's KV cache freed
    #[arg(long, env = "TEAL_WRITE_TIMEOUT")]
    pub write_timeout: Option<f64>,
    /// Most open connections on the API port; more are closed at once
    #[arg(long, env = "TEAL_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most open connections on the admin port (counted apart, so the API port cannot starve it)
    #[arg(long, env = "TEAL_ADMIN_MAX_CONNECTIONS")]
    pub admin_max_connections: Option<usize>,
    /// Threads that tokenize prompts, render chat templates and decode images [default: the number of cores]
    #[arg(long, env = "TEAL_PREPROCESS_THREADS")]
    pub preprocess_threads: Option<usize>,
    /// Requests that may wait for a preprocessing thread; more get 429
    #[arg(long, env = "TEAL_PREPROCESS_QUEUE")]
    pub preprocess_queue: Option<usize>,
    /// Log format: text (colours only on a terminal) or json (one object per line, for log shippers)
    ///
    #[arg(long, env = "TEAL_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Configuration file [default: ./teal.toml when it exists]
    #[arg(long, env = "TEAL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub memory_budget: crate::memory::budget::BudgetSpec,
    /// A rollback to a parked slot wakes it (else it is refused).
    pub wake_on_rollback: bool,
    /// The blue slot's model at start (`--model` or `--blue`); None: the model repository's default.
    pub blue: Option<PathBuf>,
    pub green: Option<PathBuf>,
    /// Default device of (blue, green).
    pub slot_devices: [String; 2],
    pub admin_host: String,
    pub admin_port: u16,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub admin_viewer_token: Option<String>,
    pub admin_viewer_token_file: Option<PathBuf>,
    pub state_dir: PathBuf,
    pub redis_url: Option<String>,
    /// Fleet mode (`--fleet-name`).
    pub fleet: Option<crate::fleet::FleetSettings>,
    pub session_ttl_s: u64,
    pub session_fail_open: bool,
    pub max_session_bytes: usize,
    pub max_sessions: usize,
    pub models_dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub device: String,
    pub dtype: String,
    pub served_model_name: Option<String>,
    pub engine: crate::engine::EngineConfig,
    /// Dynamic batching of the embedding and image kinds.
    pub batch: crate::batcher::BatchConfig,
    /// What one public request may cost.
    pub limits: crate::api::limits::RequestLimits,
    /// Connection limits of the API and the admin listeners.
    pub api_conns: crate::net::ConnLimits,
    pub admin_conns: crate::net::ConnLimits,
    pub preprocess_threads: usize,
    pub preprocess_queue: usize,
    pub shutdown_timeout_s: u64,
    pub log_prompts: bool,
    pub threads: Option<usize>,
}

impl ServeArgs {
    /// Fills unset fields from teal.toml (the `--config` file, or ./teal.toml when present). Every key of the
    /// file is a field of `ServeArgs` (an unknown key is an error naming it), and every field the command line
    /// leaves unset takes the file's value: the merge goes through the fields' serialised form, so a new flag
    /// needs no line here.
    pub fn with_file(self) -> Result<Self> {
        let path = match &self.config {
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from("teal.toml")).filter(|p| p.is_file()),
        };
        let Some(path) = path else { return Ok(self) };
        let text = std::fs::read_to_string(&path).map_err(|e| TealError::io(&path, e))?;
        let file: ServeArgs =
            toml::from_str(&text).map_err(|e| TealError::Config(format!("{}: {e}", path.display())))?;
        self.over(file)
    }

    /// `self`, with each field it leaves unset taken from `file`.
    fn over(self, file: ServeArgs) -> Result<Self> {
        let bad = |e: serde_json::Error| TealError::Config(format!("merging teal.toml: {e}"));
        let mut merged = serde_json::to_value(&self).map_err(bad)?;
        let from_file = serde_json::to_value(&file).map_err(bad)?;
        if let (Some(m), Some(f)) = (merged.as_object_mut(), from_file.as_object()) {
            for (key, value) in f {
                if m.get(key).is_none_or(|v| v.is_null()) {
                    m.insert(key.clone(), value.clone());
                }
            }
        }
        let mut out: ServeArgs = serde_json::from_value(merged).map_err(bad)?;
        // Never read from the file (a token belongs in a token file, the config path is the file itself).
        (out.admin_token, out.admin_viewer_token, out.config) =
            (self.admin_token, self.admin_viewer_token, self.config);
        Ok(out)
    }

    fn engine_config(&self) -> Result<crate::engine::EngineConfig> {
        let d = crate::engine::EngineConfig::default();
        let engine = crate::engine::EngineConfig {
            max_total_tokens: self.max_total_tokens.unwrap_or(d.max_total_tokens),
            block_size: self.block_size.unwrap_or(d.block_size),
            max_batch_size: self.max_batch_size.unwrap_or(d.max_batch_size),
            max_step_tokens: self.max_step_tokens.unwrap_or(d.max_step_tokens),
            max_queue: self.max_queue.unwrap_or(d.max_queue),
            prefix_cache: !self.no_prefix_cache.unwrap_or(!d.prefix_cache),
        };
        if engine.block_size == 0 || engine.max_batch_size == 0 || engine.max_step_tokens == 0 {
            return Err(TealError::Config("block size, batch size and step tokens must be positive".into()));
        }
        if engine.max_total_tokens < 2 * engine.block_size {
            return Err(TealError::Config("max-total-tokens must hold at least two blocks".into()));
        }
        Ok(engine)
    }

    fn batch_config(&self) -> Result<crate::batcher::BatchConfig> {
        let delay_ms = self.batch_delay_ms.unwrap_or_default();
        if !(0.0..=10_000.0).contains(&delay_ms) || self.batch_max_size == Some(0) {
            return Err(TealError::Config("batch-delay-ms must be 0..=10000 and batch-max-size positive".into()));
        }
        Ok(crate::batcher::BatchConfig {
            max_batch: self.batch_max_size.unwrap_or_default(),
            max_delay: std::time::Duration::from_secs_f64(delay_ms / 1e3),
            ..Default::default()
        })
    }

    fn request_limits(&self) -> Result<crate::api::limits::RequestLimits> {
        let d = crate::api::limits::RequestLimits::default();
        Ok(crate::api::limits::RequestLimits {
            max_body_bytes: self.max_body_bytes.unwrap_or(d.max_body_bytes),
            body_timeout: secs("body-timeout", self.body_timeout)?,
            max_prompt_bytes: self.max_prompt_bytes.unwrap_or(d.max_prompt_bytes),
            max_stop_token_ids: self.max_stop_token_ids.unwrap_or(d.max_stop_token_ids),
            max_images_per_request: self.max_images_per_request.unwrap_or(d.max_images_per_request).max(1),
            max_request_pixels: self.max_request_pixels.unwrap_or(d.max_request_pixels),
            max_image_pixels: self.max_image_pixels.unwrap_or(d.max_image_pixels),
        })
    }

    fn conn_limits(&self, max: usize) -> Result<crate::net::ConnLimits> {
        Ok(crate::net::ConnLimits {
            max_connections: max.max(1),
            header_timeout: secs("header-timeout", self.header_timeout)?,
            write_timeout: secs("write-timeout", self.write_timeout)?,
        })
    }

    /// The configuration these settings describe: every unset flag takes its value from `defaults()`, then
    /// each value is checked.
    pub fn resolve(self) -> Result<Config> {
        if self.model.is_some() && self.blue.is_some() {
            return Err(TealError::Config("--model and --blue name the same slot; give one".into()));
        }
        let mut merged = self.over(defaults::defaults())?;
        merged.admin_token = merged.admin_token.filter(|t| !t.is_empty());
        merged.admin_viewer_token = merged.admin_viewer_token.filter(|t| !t.is_empty());
        merged.checked()
    }

    fn checked(self) -> Result<Config> {
        let fleet = fleet_settings(&self)?;
        let (engine, batch, limits) = (self.engine_config()?, self.batch_config()?, self.request_limits()?);
        let api_conns = self.conn_limits(self.max_connections.unwrap_or_default())?;
        let admin_conns = self.conn_limits(self.admin_max_connections.unwrap_or_default())?;
        let device = self.device.unwrap_or_default();
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let memory_budget = crate::memory::budget::BudgetSpec::parse(&self.memory_budget.unwrap_or_default())
            .map_err(TealError::Config)?;
        Ok(Config {
            fleet,
            memory_budget,
            wake_on_rollback: self.parked_rollback.as_deref() != Some("refuse"),
            blue: self.model.or(self.blue),
            green: self.green,
            slot_devices: [
                self.blue_device.unwrap_or_else(|| device.clone()),
                self.green_device.unwrap_or_else(|| device.clone()),
            ],
            admin_host: self.admin_host.unwrap_or_default(),
            admin_port: self.admin_port.unwrap_or_default(),
            admin_token: self.admin_token,
            admin_token_file: self.admin_token_file,
            admin_viewer_token: self.admin_viewer_token,
            admin_viewer_token_file: self.admin_viewer_token_file,
            state_dir: self.state_dir.unwrap_or_default(),
            redis_url: self.redis_url,
            session_ttl_s: self.session_ttl.unwrap_or_default(),
            session_fail_open: self.session_fail_open.unwrap_or_default(),
            max_session_bytes: self.max_session_bytes.unwrap_or_default(),
            max_sessions: self.max_sessions.unwrap_or_default(),
            models_dir: self.models_dir.unwrap_or_default(),
            host: self.host.unwrap_or_default(),
            port: self.port.unwrap_or_default(),
            device,
            dtype: self.dtype.unwrap_or_default(),
            served_model_name: self.served_model_name,
            engine,
            batch,
            api_conns,
            admin_conns,
            limits,
            preprocess_threads: self.preprocess_threads.unwrap_or(cores).max(1),
            preprocess_queue: self.preprocess_queue.unwrap_or_default(),
            shutdown_timeout_s: self.shutdown_timeout.unwrap_or_default(),
            log_prompts: self.log_prompts.unwrap_or_default(),
            threads: self.threads,
        })
    }
}

/// Fleet mode's settings, when `--fleet-name` is given: a name and replica id of safe characters (they are
/// parts of Redis keys), a Redis, and bounded timings.
fn fleet_settings(a: &ServeArgs) -> Result<Option<crate::fleet::FleetSettings>> {
    let Some(name) = a.fleet_name.clone() else { return Ok(None) };
    let safe = |what: &str, v: &str| {
        let ok = !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if ok {
            Ok(())
        } else {
            Err(TealError::Config(format!("{what} must be 1-128 letters, digits, '.', '_' or '-', not {v:?}")))
        }
    };
    safe("--fleet-name", &name)?;
    let redis_url =
        a.fleet_redis_url.clone().or_else(|| a.redis_url.clone()).ok_or_else(|| {
            TealError::Config("fleet mode (--fleet-name) needs --fleet-redis-url or --redis-url".into())
        })?;
    let host = std::env::var("HOSTNAME").ok().or_else(|| std::fs::read_to_string("/etc/hostname").ok());
    let replica_id = a.replica_id.clone().or(host.map(|h| h.trim().to_string())).unwrap_or_else(|| "teal".into());
    safe("--replica-id", &replica_id)?;
    let delay = a.fleet_activate_delay_ms.unwrap_or(300);
    if !(10..=60_000).contains(&delay) {
        return Err(TealError::Config("--fleet-activate-delay-ms must be between 10 and 60000".into()));
    }
    Ok(Some(crate::fleet::FleetSettings {
        name,
        redis_url,
        replica_id,
        activate_delay: std::time::Duration::from_millis(delay),
        prepare_timeout: secs("--fleet-prepare-timeout", Some(a.fleet_prepare_timeout.unwrap_or(120.0)))?,
    }))
}

/// A duration flag in seconds, within 1 ms..=1 day.
fn secs(name: &str, v: Option<f64>) -> Result<std::time::Duration> {
    let v = v.unwrap_or_default();
    if !(0.001..=86_400.0).contains(&v) {
        return Err(TealError::Config(format!("{name} must be between 0.001 and 86400 seconds")));
    }
    Ok(std::time::Duration::from_secs_f64(v))
}

impl Config {
    /// The blue slot's model at start: `--model`/`--blue` (a path, or a name inside the models directory) or
    /// the repository's default (the name in models/DEFAULT, else its only model).
    pub fn blue_path(&self) -> Result<PathBuf> {
        match &self.blue {
            Some(m) => Ok(self.in_repo(m)),
            None => default_model(&self.models_dir),
        }
    }

    /// The green slot's model at start, if one was named.
    pub fn green_path(&self) -> Option<PathBuf> {
        self.green.as_ref().map(|m| self.in_repo(m))
    }

    fn in_repo(&self, m: &Path) -> PathBuf {
        let inside = self.models_dir.join(m);
        if m.exists() || !inside.exists() {
            m.to_path_buf()
        } else {
            inside
        }
    }
}

fn default_model(dir: &Path) -> Result<PathBuf> {
    let hint = "run scripts/fetch-models.sh to fetch the demo model, or pass --model";
    if let Ok(name) = std::fs::read_to_string(dir.join("DEFAULT")) {
        return Ok(dir.join(name.trim()));
    }
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|_| TealError::ModelNotFound(format!("no models directory at {}; {hint}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() || p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match entries.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(TealError::ModelNotFound(format!("{} holds no model; {hint}", dir.display()))),
        _ => Err(TealError::ModelNotFound(format!(
            "{} holds several models; name one with --model or in {}/DEFAULT",
            dir.display(),
            dir.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_fills_only_what_flags_leave_out() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("teal.toml");
        std::fs::write(&f, "port = 9000\nhost = \"0.0.0.0\"\nmax-batch-size = 4\n").unwrap();
        let args = ServeArgs { port: Some(7000), config: Some(f), ..Default::default() };
        let c = args.with_file().unwrap().resolve().unwrap();
        assert_eq!((c.port, c.host.as_str(), c.engine.max_batch_size), (7000, "0.0.0.0", 4));
    }

    /// Every flag of `teal serve` is also a key of teal.toml: a file that sets all of them fills all of them.
    #[test]
    fn every_flag_can_come_from_the_file() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let sample = |id: &str| match id {
            "memory_budget" => "[\"cpu=1GiB\"]".to_string(),
            "session_fail_open" | "log_prompts" | "no_prefix_cache" => "true".into(),
            "batch_delay_ms" | "body_timeout" | "header_timeout" | "write_timeout" => "1.5".into(),
            "model"
            | "blue"
            | "green"
            | "state_dir"
            | "models_dir"
            | "admin_token_file"
            | "admin_viewer_token_file" => "\"/x\"".into(),
            "host" | "admin_host" | "device" | "blue_device" | "green_device" | "dtype" | "served_model_name"
            | "redis_url" | "parked_rollback" | "log_format" | "fleet_name" | "fleet_redis_url" | "replica_id" => {
                "\"x\"".into()
            }
            "fleet_prepare_timeout" => "1.5".into(),
            _ => "7".into(),
        };
        let ids: Vec<String> = Cli::command()
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .filter(|id| !matches!(id.as_str(), "admin_token" | "admin_viewer_token" | "config"))
            .collect();
        assert!(ids.len() > 40, "{ids:?}");
        let text: String = ids.iter().map(|id| format!("{} = {}\n", id.replace('_', "-"), sample(id))).collect();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("teal.toml");
        std::fs::write(&f, text).unwrap();
        let merged = ServeArgs { config: Some(f), ..Default::default() }.with_file().unwrap();
        let v = serde_json::to_value(&merged).unwrap();
        for id in &ids {
            assert!(!v[id.replace('_', "-")].is_null(), "{id} was not taken from the file");
        }
    }

    #[test]
    fn fleet_mode_needs_a_redis_and_safe_names() {
        let fleet = |name: &str, redis: Option<&str>, id: Option<&str>| {
            let a = ServeArgs {
                fleet_name: Some(name.into()),
                redis_url: redis.map(String::from),
                replica_id: id.map(String::from),
                ..Default::default()
            };
            a.resolve().map(|c| c.fleet.unwrap())
        };
        let f = fleet("prod", Some("redis://127.0.0.1:1/"), Some("r-1.a")).unwrap();
        assert_eq!((f.name.as_str(), f.replica_id.as_str(), f.activate_delay.as_millis()), ("prod", "r-1.a", 300));
        assert!(fleet("prod", None, Some("r1")).unwrap_err().to_string().contains("--redis-url"));
        assert!(fleet("a:b", Some("redis://x/"), Some("r1")).is_err(), "':' would split the Redis keys");
        assert!(fleet("prod", Some("redis://x/"), Some("r 1")).is_err());
        assert!(ServeArgs::default().resolve().unwrap().fleet.is_none());
    }

    #[test]
    fn unknown_keys_and_bad_limits_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("teal.toml");
        std::fs::write(&f, "prot = 1\n").unwrap();
        let e = ServeArgs { config: Some(f), ..Default::default() }.with_file().unwrap_err().to_string();
        assert!(e.contains("unknown field `prot`"), "{e}");
        assert!(ServeArgs { max_batch_size: Some(0), ..Default::default() }.resolve().is_err());
    }

    #[test]
    fn default_model_is_the_only_one_or_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(default_model(dir.path()).is_err());
        std::fs::create_dir(dir.path().join("a")).unwrap();
        assert_eq!(default_model(dir.path()).unwrap(), dir.path().join("a"));
        std::fs::create_dir(dir.path().join("b")).unwrap();
        assert!(default_model(dir.path()).is_err());
        std::fs::write(dir.path().join("DEFAULT"), "b\n").unwrap();
        assert_eq!(default_model(dir.path()).unwrap(), dir.path().join("b"));
    }
}
