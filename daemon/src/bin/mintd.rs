//! `mintd`: the device service (`mintd [--config PATH]`) and the tour (`mintd demo`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mint_config::Config;
use mintd::{demo, exit};

/// mintd — model-integrity runtime for edge devices.
#[derive(Debug, Parser)]
#[command(name = "mintd", version, about)]
struct Args {
    /// Configuration file; a missing file means built-in defaults.
    #[arg(long, default_value = mint_config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A self-contained tour on built-in defaults, in a temporary directory.
    Demo {
        /// Keep the tour's files in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
        /// Report to this MQTT broker (HOST:PORT) instead of a mosquitto the tour starts.
        #[arg(long)]
        broker: Option<String>,
    },
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MINT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match &args.command {
        Some(Command::Demo { keep, broker }) => demo::run(keep.as_deref(), broker.as_deref()),
        None => serve(&args.config),
    };
    if let Err(err) = result {
        std::process::exit(exit::report(&err, false));
    }
}

fn serve(path: &std::path::Path) -> anyhow::Result<()> {
    let (config, source) = Config::load_with_source(path)?;
    tracing::info!(device = %config.device.id, config = ?source, "configuration loaded");
    mintd::service::run(config)
}
