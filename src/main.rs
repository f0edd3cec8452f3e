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
    /// Serve a model over the OpenAI-compatible HTTP API.
    Serve(ServeArgs),
}

fn main() -> std::process::ExitCode {
    teal::telemetry::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
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
        let addr = format!("{}:{}", config.host, config.port);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        teal::server::run(config, listener, teal::server::shutdown_signal()).await
    })
}
