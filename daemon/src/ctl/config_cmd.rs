//! `mintctl config check`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use mint_config::Config;

/// Configuration commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a mintd.toml: every problem is named with its key and reason.
    Check {
        /// The file to check.
        file: PathBuf,
        /// Print the effective configuration (defaults filled in).
        #[arg(long)]
        print: bool,
    },
}

/// Runs a config command.
pub fn run(cmd: &ConfigCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check { file, print } => {
            let config = Config::load_existing(file)
                .with_context(|| format!("configuration {} is not valid", file.display()))?;
            if json {
                println!("{}", serde_json::json!({ "file": file, "valid": true }));
            } else {
                println!("{}: valid", file.display());
            }
            if *print {
                print!("{}", config.to_toml_string()?);
            }
            Ok(())
        }
    }
}
