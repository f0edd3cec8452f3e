//! Every default of `teal serve`, written once: `defaults()` is what a flag left unset (on the command line, in
//! the environment and in teal.toml) becomes, `resolve` merges it under the user's settings, and the `--help`
//! text's `[default: …]` is printed from it. Limits owned by a module come from that module's `Default`.

use super::ServeArgs;
use crate::api::limits::RequestLimits;
use crate::engine::EngineConfig;
use std::path::PathBuf;

/// The value of every flag that has a fixed default. Flags whose default depends on something else (the
/// slot devices follow `--device`, threads follow the cores, the served name follows the model) stay None.
pub fn defaults() -> ServeArgs {
    let (e, l) = (EngineConfig::default(), RequestLimits::default());
    let batch = crate::batcher::BatchConfig::default();
    ServeArgs {
        admin_host: Some("127.0.0.1".into()),
        admin_port: Some(8081),
        session_ttl: Some(3600),
        session_fail_open: Some(false),
        max_session_bytes: Some(1 << 20),
        max_sessions: Some(10_000),
        state_dir: Some(PathBuf::from(".teal")),
        models_dir: Some(PathBuf::from("models")),
        host: Some("127.0.0.1".into()),
        port: Some(8080),
        device: Some("cpu".into()),
        dtype: Some("auto".into()),
        max_total_tokens: Some(e.max_total_tokens),
        max_batch_size: Some(e.max_batch_size),
        max_step_tokens: Some(e.max_step_tokens),
        max_queue: Some(e.max_queue),
        no_prefix_cache: Some(!e.prefix_cache),
        block_size: Some(e.block_size),
        max_body_bytes: Some(l.max_body_bytes),
        shutdown_timeout: Some(30),
        log_prompts: Some(false),
        parked_rollback: Some("wake".into()),
        batch_delay_ms: Some(batch.max_delay.as_secs_f64() * 1e3),
        batch_max_size: Some(batch.max_batch),
        max_image_pixels: Some(l.max_image_pixels),
        max_prompt_bytes: Some(l.max_prompt_bytes),
        max_stop_token_ids: Some(l.max_stop_token_ids),
        max_images_per_request: Some(l.max_images_per_request),
        max_request_pixels: Some(l.max_request_pixels),
        body_timeout: Some(l.body_timeout.as_secs_f64()),
        header_timeout: Some(30.0),
        write_timeout: Some(30.0),
        max_connections: Some(1024),
        admin_max_connections: Some(64),
        preprocess_queue: Some(256),
        log_format: Some("text".into()),
        ..Default::default()
    }
}

/// `teal`'s command line with each `serve` flag's default appended to its help, from `defaults()`.
pub fn with_defaults_in_help(cmd: clap::Command) -> clap::Command {
    cmd.mut_subcommand("serve", |serve| {
        let values = serde_json::to_value(defaults()).unwrap_or_default();
        let ids: Vec<String> = serve.get_arguments().map(|a| a.get_id().to_string()).collect();
        ids.into_iter().fold(serve, |serve, id| match shown(&values[id.replace('_', "-")]) {
            Some(v) => serve.mut_arg(&id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help} [default: {v}]"))
            }),
            None => serve,
        })
    })
}

/// A default as the help shows it; None when the flag has none.
fn shown(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Serve(ServeArgs),
    }

    #[test]
    fn the_help_shows_each_default_once_from_the_one_table() {
        let cmd = with_defaults_in_help(Cli::command());
        let serve = cmd.find_subcommand("serve").unwrap();
        let help = |id: &str| {
            let a = serve.get_arguments().find(|a| a.get_id() == id).unwrap();
            a.get_help().map(|h| h.to_string()).unwrap_or_default()
        };
        assert!(help("admin_port").ends_with("[default: 8081]"), "{}", help("admin_port"));
        assert!(help("max_total_tokens").ends_with(&format!("[default: {}]", EngineConfig::default().max_total_tokens)));
        assert!(help("log_format").ends_with("[default: text]"));
        for a in serve.get_arguments() {
            let h = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(h.matches("[default:").count() <= 1, "{}: {h}", a.get_id());
        }
    }

    #[test]
    fn an_empty_command_line_resolves_to_the_defaults() {
        let c = ServeArgs::default().resolve().unwrap();
        let d = defaults();
        assert_eq!(c.port, d.port.unwrap());
        assert_eq!(c.admin_port, d.admin_port.unwrap());
        assert_eq!(c.engine.max_total_tokens, d.max_total_tokens.unwrap());
        assert_eq!(c.limits.max_body_bytes, d.max_body_bytes.unwrap());
        assert_eq!(c.batch.max_batch, d.batch_max_size.unwrap());
        assert_eq!(c.api_conns.max_connections, d.max_connections.unwrap());
        assert_eq!(c.shutdown_timeout_s, d.shutdown_timeout.unwrap());
    }
}
