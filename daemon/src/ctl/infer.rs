//! `mintctl infer NAME --input FILE`: one inference through the local daemon.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;

use crate::client::Client;

/// Values shown per output before the rest is summarised (`--json` shows everything).
const SHOWN_VALUES: usize = 16;

/// Largest request file read.
const MAX_INPUT_BYTES: u64 = 64 * 1024 * 1024;

/// `mintctl infer`.
#[derive(Debug, Args)]
pub struct InferArgs {
    /// Model name.
    pub name: String,
    /// An Open Inference Protocol v2 request (`{"inputs": [{"name", "datatype", "shape",
    /// "data"}]}`), or `-` for stdin.
    #[arg(long)]
    pub input: PathBuf,
}

/// Sends the request and prints the outputs (`--json`: the daemon's answer as it is).
pub fn infer(client: &Client, args: &InferArgs, json: bool) -> anyhow::Result<()> {
    let name = &args.name;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        bail!("model name {name:?} may only hold letters, digits, '.', '_' and '-'");
    }
    let (what, text) = if args.input.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .take(MAX_INPUT_BYTES)
            .read_to_string(&mut text)
            .context("cannot read the request from stdin")?;
        ("stdin".to_owned(), text)
    } else {
        let path = &args.input;
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_INPUT_BYTES).read_to_string(&mut text))
            .with_context(|| format!("cannot read {}", path.display()))?;
        (path.display().to_string(), text)
    };
    let request: Value = serde_json::from_str(&text)
        .with_context(|| format!("{what} is not a JSON inference request"))?;
    if !request["inputs"].is_array() {
        bail!("{what} has no \"inputs\" array: expected {{\"inputs\": [{{\"name\", \"datatype\", \"shape\", \"data\"}}]}}");
    }
    let reply = client
        .post_json(&format!("/v2/models/{name}/infer"), &request)
        .with_context(|| format!("inference on model {name} failed"))?;
    if json {
        println!("{reply}");
        return Ok(());
    }
    println!(
        "{} {}{}",
        reply["model_name"].as_str().unwrap_or(name),
        reply["model_version"].as_str().unwrap_or("?"),
        reply["id"]
            .as_str()
            .map_or_else(String::new, |id| format!(" (request {id})"))
    );
    for out in reply["outputs"].as_array().into_iter().flatten() {
        println!("{}", output_line(out));
    }
    Ok(())
}

/// `  name DATATYPE [shape]: v1, v2, ... (N values)`.
fn output_line(out: &Value) -> String {
    let shape: Vec<String> = out["shape"]
        .as_array()
        .into_iter()
        .flatten()
        .map(ToString::to_string)
        .collect();
    let values = out["data"].as_array().cloned().unwrap_or_default();
    let mut shown: Vec<String> = values
        .iter()
        .take(SHOWN_VALUES)
        .map(ToString::to_string)
        .collect();
    if values.len() > SHOWN_VALUES {
        shown.push(format!("... ({} values)", values.len()));
    }
    format!(
        "  {} {} [{}]: {}",
        out["name"].as_str().unwrap_or("?"),
        out["datatype"].as_str().unwrap_or("?"),
        shape.join(", "),
        shown.join(", ")
    )
}
