//! The `teal` command line. Parsing only; the work is in the library.

use clap::{Parser, Subcommand};
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
    teal::telemetry::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Admin(args) => teal::cli::admin::run(*args),
        Command::Bench(args) => teal::bench::run(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.with_file()?.resolve()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listeners = teal::server::Listeners::bind(&config).await?;
        teal::server::run(config, listeners, teal::server::shutdown_signal()).await
    })
}
