//! The `teal` command line. Parsing only; the work is in the library.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use teal::config::ServeArgs;

/// teal: an inference server with blue/green model slots (OpenAI-compatible API).
#[derive(Parser)]
#[command(name = "teal", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve models in blue/green slots over the OpenAI-compatible HTTP API, with the admin API beside it.
    Serve(Box<ServeArgs>),
    /// Drive a running server's admin API: status, load, flip, rollback, unload, events, wait.
    Admin(Box<teal::cli::admin::AdminArgs>),
    /// Benchmark a server: serve (latency/throughput by load), flip (flips under load), cold-warm.
    Bench(Box<teal::bench::BenchArgs>),
}

fn main() -> std::process::ExitCode {
    let matches = teal::config::defaults::with_defaults_in_help(Cli::command()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Serve(args) => {
            let sub = matches.subcommand_matches("serve");
            let on_command_line: Vec<&str> =
                [("admin_token", "--admin-token"), ("admin_viewer_token", "--admin-viewer-token")]
                    .into_iter()
                    .filter(|(id, _)| {
                        sub.and_then(|m| m.value_source(id)).is_some_and(|s| s == ValueSource::CommandLine)
                    })
                    .map(|(_, flag)| flag)
                    .collect();
            serve(*args, &on_command_line)
        }
        Command::Admin(args) => {
            teal::telemetry::init_logging(false);
            teal::cli::admin::run(*args)
        }
        Command::Bench(args) => {
            teal::telemetry::init_logging(false);
            teal::bench::run(*args)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs, tokens_on_command_line: &[&str]) -> anyhow::Result<()> {
    let args = args.with_file()?;
    teal::telemetry::init_logging(args.log_format.as_deref() == Some("json"));
    for flag in tokens_on_command_line {
        tracing::warn!(
            "{flag} on the command line is visible to every user of this machine (ps); use its TEAL_ variable \
             or {flag}-file"
        );
    }
    let config = args.resolve()?;
    teal::server::raise_open_files_limit(&config);
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        let listeners = teal::server::Listeners::bind(&config).await?;
        teal::server::run(config, listeners, teal::server::shutdown_signal()).await
    });
    // A load or gate thread that hangs must not keep the process alive: the server has already stopped.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}
