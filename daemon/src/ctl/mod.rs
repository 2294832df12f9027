//! `mintctl`: the operator's tool. Each subcommand is a module; `main.rs` only parses and
//! calls [`run`].

pub mod bundle;
pub mod config_cmd;
pub mod key;
pub mod progress;
pub mod time_arg;

use clap::{Parser, Subcommand};

/// mintctl — make keys, build and sign model bundles, verify and inspect them.
#[derive(Debug, Parser)]
#[command(name = "mintctl", version, about)]
pub struct Cli {
    /// Machine-readable output (one JSON document on stdout; errors as {"error": ...}).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Operator keys (Ed25519).
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Model bundles: create, sign, verify, inspect.
    #[command(subcommand)]
    Bundle(Box<bundle::BundleCommand>),
    /// Configuration files.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
}

/// Runs a parsed command line.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Key(cmd) => key::run(cmd, cli.json),
        Command::Bundle(cmd) => bundle::run(cmd.as_ref(), cli.json),
        Command::Config(cmd) => config_cmd::run(cmd, cli.json),
    }
}
