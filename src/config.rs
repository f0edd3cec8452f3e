//! Server configuration: every `teal serve` flag, its `TEAL_*` environment variable, and the same keys in an
//! optional teal.toml (flags and env win over the file, the file over built-in defaults). Resolved and
//! validated once into `Config`.

use crate::error::{Result, TealError};
use clap::Args;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Flags of `teal serve`. All optional here so the file can fill what the command line leaves out.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// Model to serve: a Hugging Face directory, a .gguf file, or a name under --models-dir.
    /// Without it, the default model of the models directory is served.
    #[arg(long, env = "TEAL_MODEL")]
    pub model: Option<PathBuf>,
    /// The model repository [default: models]
    #[arg(long, env = "TEAL_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1]
    #[arg(long, env = "TEAL_HOST")]
    pub host: Option<String>,
    /// Port to listen on [default: 8080]
    #[arg(long, env = "TEAL_PORT")]
    pub port: Option<u16>,
    /// Device: cpu, cuda or cuda:N [default: cpu]
    #[arg(long, env = "TEAL_DEVICE")]
    pub device: Option<String>,
    /// Weight dtype: auto, f32, f16 or bf16. auto keeps GGUF quantized and loads safetensors as f32;
    /// a float dtype dequantizes GGUF weights to it [default: auto]
    #[arg(long, env = "TEAL_DTYPE")]
    pub dtype: Option<String>,
    /// Name clients put in "model" [default: the model's directory or file name]
    #[arg(long, env = "TEAL_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// KV cache pool size in tokens, shared by all running requests [default: 16384]
    #[arg(long, env = "TEAL_MAX_TOTAL_TOKENS")]
    pub max_total_tokens: Option<usize>,
    /// Most requests decoded together [default: 32]
    #[arg(long, env = "TEAL_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Most new tokens per engine step; longer prompts are prefilled in chunks [default: 512]
    #[arg(long, env = "TEAL_MAX_STEP_TOKENS")]
    pub max_step_tokens: Option<usize>,
    /// Most requests waiting for a place in the batch; more get 429 [default: 256]
    #[arg(long, env = "TEAL_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// KV cache block size in tokens [default: 16]
    #[arg(long, env = "TEAL_BLOCK_SIZE")]
    pub block_size: Option<usize>,
    /// Largest request body in bytes; larger gets 413 [default: 4194304]
    #[arg(long, env = "TEAL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Seconds to let in-flight requests finish after SIGTERM or ctrl-c [default: 30]
    #[arg(long, env = "TEAL_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<u64>,
    /// Log prompts and messages (off by default: they are user data)
    #[arg(long, env = "TEAL_LOG_PROMPTS")]
    pub log_prompts: Option<bool>,
    /// Compute threads for CPU inference [default: all cores]
    #[arg(long, env = "TEAL_THREADS")]
    pub threads: Option<usize>,
    /// Configuration file [default: ./teal.toml when it exists]
    #[arg(long, env = "TEAL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub model: Option<PathBuf>,
    pub models_dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub device: String,
    pub dtype: String,
    pub served_model_name: Option<String>,
    pub engine: crate::engine::EngineConfig,
    pub max_body_bytes: usize,
    pub shutdown_timeout_s: u64,
    pub log_prompts: bool,
    pub threads: Option<usize>,
}

macro_rules! merge {
    ($a:ident, $b:ident, $($f:ident),*) => { $( if $a.$f.is_none() { $a.$f = $b.$f.clone(); } )* };
}

impl ServeArgs {
    /// Fills unset fields from teal.toml (the `--config` file, or ./teal.toml when present).
    pub fn with_file(mut self) -> Result<Self> {
        let path = match &self.config {
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from("teal.toml")).filter(|p| p.is_file()),
        };
        let Some(path) = path else { return Ok(self) };
        let text = std::fs::read_to_string(&path).map_err(|e| TealError::io(&path, e))?;
        let file: ServeArgs =
            toml::from_str(&text).map_err(|e| TealError::Config(format!("{}: {e}", path.display())))?;
        merge!(
            self,
            file,
            model,
            models_dir,
            host,
            port,
            device,
            dtype,
            served_model_name,
            max_total_tokens,
            max_batch_size,
            max_step_tokens,
            max_queue,
            block_size,
            max_body_bytes,
            shutdown_timeout,
            log_prompts,
            threads
        );
        Ok(self)
    }

    pub fn resolve(self) -> Result<Config> {
        let d = crate::engine::EngineConfig::default();
        let engine = crate::engine::EngineConfig {
            max_total_tokens: self.max_total_tokens.unwrap_or(d.max_total_tokens),
            block_size: self.block_size.unwrap_or(d.block_size),
            max_batch_size: self.max_batch_size.unwrap_or(d.max_batch_size),
            max_step_tokens: self.max_step_tokens.unwrap_or(d.max_step_tokens),
            max_queue: self.max_queue.unwrap_or(d.max_queue),
        };
        if engine.block_size == 0 || engine.max_batch_size == 0 || engine.max_step_tokens == 0 {
            return Err(TealError::Config("block size, batch size and step tokens must be positive".into()));
        }
        if engine.max_total_tokens < 2 * engine.block_size {
            return Err(TealError::Config("max-total-tokens must hold at least two blocks".into()));
        }
        Ok(Config {
            model: self.model,
            models_dir: self.models_dir.unwrap_or_else(|| PathBuf::from("models")),
            host: self.host.unwrap_or_else(|| "127.0.0.1".into()),
            port: self.port.unwrap_or(8080),
            device: self.device.unwrap_or_else(|| "cpu".into()),
            dtype: self.dtype.unwrap_or_else(|| "auto".into()),
            served_model_name: self.served_model_name,
            engine,
            max_body_bytes: self.max_body_bytes.unwrap_or(4 << 20),
            shutdown_timeout_s: self.shutdown_timeout.unwrap_or(30),
            log_prompts: self.log_prompts.unwrap_or(false),
            threads: self.threads,
        })
    }
}

impl Config {
    /// The model to serve: `--model` (a path, or a name inside the models directory) or the repository's
    /// default (the name in models/DEFAULT, else its only model).
    pub fn model_path(&self) -> Result<PathBuf> {
        if let Some(m) = &self.model {
            let inside = self.models_dir.join(m);
            return Ok(if m.exists() || !inside.exists() { m.clone() } else { inside });
        }
        default_model(&self.models_dir)
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

    #[test]
    fn unknown_keys_and_bad_limits_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("teal.toml");
        std::fs::write(&f, "prot = 1\n").unwrap();
        assert!(ServeArgs { config: Some(f), ..Default::default() }.with_file().is_err());
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
