//! `mintctl key gen`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use mint_updater::OperatorKey;

/// Key commands.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate an Ed25519 key pair: NAME.key (PKCS#8 PEM, mode 0600) and NAME.pub (SPKI PEM).
    Gen {
        /// Path stem of the two files.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Runs a key command.
pub fn run(cmd: &KeyCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Gen { out } => {
            let key = OperatorKey::generate()?;
            let (private, public) = key
                .write_pair(out)
                .with_context(|| format!("cannot write key pair {}", out.display()))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "private_key": private, "public_key": public, "kid": key.kid().to_hex()
                    })
                );
            } else {
                println!("private key  {} (keep it secret)", private.display());
                println!("public key   {}", public.display());
                println!("key id       {}", key.kid());
            }
            Ok(())
        }
    }
}
