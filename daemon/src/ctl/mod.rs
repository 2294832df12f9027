//! `mintctl`: the operator's tool. Each subcommand is a module; `main.rs` only parses and
//! calls [`run`].

pub mod bundle;
pub mod config_cmd;
pub mod device;
pub mod fleet;
pub mod infer;
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
    /// The daemon's socket (default $MINTD_SOCKET, else /run/mintd/mintd.sock).
    #[arg(long, global = true)]
    pub socket: Option<std::path::PathBuf>,
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
    /// Ask the local daemon to install a bundle.
    Install(device::InstallArgs),
    /// The daemon's status: device, uptime, models served.
    Status,
    /// Every installed model with its lifecycle state.
    Models,
    /// Roll a model back (a model on trial, or the committed one to the previous).
    Rollback {
        /// Model name.
        name: String,
    },
    /// Lifecycle and security events.
    Events(device::EventsArgs),
    /// One inference through the daemon (Open Inference Protocol v2 JSON).
    Infer(infer::InferArgs),
    /// The fleet over MQTT: watch devices and events, push signed commands.
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
}

/// Runs a parsed command line.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Key(cmd) => key::run(cmd, cli.json),
        Command::Bundle(cmd) => bundle::run(cmd.as_ref(), cli.json),
        Command::Config(cmd) => config_cmd::run(cmd, cli.json),
        Command::Install(args) => device::install(&client(cli), args, cli.json),
        Command::Status => device::status(&client(cli), cli.json),
        Command::Models => device::models(&client(cli), cli.json),
        Command::Rollback { name } => device::rollback(&client(cli), name, cli.json),
        Command::Events(args) => device::events(&client(cli), args, cli.json),
        Command::Infer(args) => infer::infer(&client(cli), args, cli.json),
        Command::Fleet(cmd) => fleet::run(cmd, cli.json),
    }
}

fn client(cli: &Cli) -> crate::client::Client {
    crate::client::Client::new(device::socket_path(cli.socket.as_ref()))
}
