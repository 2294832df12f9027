//! `mintctl`: parses the command line and hands over to [`mintd::ctl`].

use clap::Parser;
use mintd::{ctl, exit};

fn main() {
    let cli = ctl::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MINT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    if let Err(err) = ctl::run(&cli) {
        std::process::exit(exit::report(&err, cli.json));
    }
}
