//! `mintctl install | status | models | rollback | events`: the local daemon, over its socket.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

use crate::client::Client;

/// `mintctl install`.
#[derive(Debug, Args)]
pub struct InstallArgs {
    /// A bundle file (streamed to the daemon), or an http(s) URL (fetched by the daemon).
    pub bundle: String,
    /// Send only the path: the daemon opens the file itself (it must be readable by mintd).
    #[arg(long)]
    pub by_path: bool,
    /// With a URL: the SHA-256 of the bundle file, checked by the daemon.
    #[arg(long)]
    pub sha256: Option<String>,
    /// With a URL: the size of the bundle file in bytes (default: the server's
    /// Content-Length, at most limits.max_bundle_bytes).
    #[arg(long)]
    pub size: Option<u64>,
}

/// `mintctl events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events after this id.
    #[arg(long, default_value_t = 0)]
    pub after: u64,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
}

/// Installs a bundle through the daemon.
pub fn install(client: &Client, args: &InstallArgs, json: bool) -> anyhow::Result<()> {
    let is_url = args.bundle.starts_with("http://") || args.bundle.starts_with("https://");
    if !is_url && (args.sha256.is_some() || args.size.is_some()) {
        bail!("--sha256 and --size go with a URL; a local bundle is read whole by the daemon");
    }
    let path = Path::new(&args.bundle);
    let reply = if is_url {
        // The daemon downloads (resuming after cuts) while it verifies.
        client.post_json(
            "/v1/install",
            &json!({"url": args.bundle, "sha256": args.sha256.as_ref().map(|s| s.to_ascii_lowercase()), "size": args.size}),
        )
    } else if args.by_path {
        let absolute = path
            .canonicalize()
            .with_context(|| format!("cannot find bundle {}", path.display()))?;
        client.post_json("/v1/install", &json!({ "path": absolute }))
    } else {
        if !path.is_file() {
            bail!("bundle {} is not a readable file", path.display());
        }
        client.post_file("/v1/install", path)
    }
    .with_context(|| format!("install of {} failed", path.display()))?;
    if json {
        println!("{reply}");
    } else {
        let m = &reply["model"];
        match reply["outcome"].as_str() {
            Some("already_installed") => println!(
                "{} {} (sequence {}) is already installed",
                m["name"].as_str().unwrap_or("?"),
                m["version"].as_str().unwrap_or("?"),
                m["sequence"]
            ),
            Some(outcome) => println!(
                "installed {} {} (sequence {}): {}",
                m["name"].as_str().unwrap_or("?"),
                m["version"].as_str().unwrap_or("?"),
                m["sequence"],
                outcome.replace('_', " ")
            ),
            None => println!("{reply}"),
        }
    }
    Ok(())
}

/// Prints the daemon's status.
pub fn status(client: &Client, json: bool) -> anyhow::Result<()> {
    let s = client
        .get("/v1/status")
        .context("cannot get the daemon's status")?;
    if json {
        println!("{s}");
        return Ok(());
    }
    println!(
        "device     {} ({} / {})",
        s["device"]["id"].as_str().unwrap_or("?"),
        s["device"]["class"].as_str().unwrap_or("?"),
        s["device"]["arch"].as_str().unwrap_or("?")
    );
    println!(
        "mintd      {} up {} s, ready {}",
        s["version"].as_str().unwrap_or("?"),
        s["uptime_secs"],
        s["ready"]
    );
    println!("attest     {}", s["attestation"].as_str().unwrap_or("?"));
    let serving = s["serving"].as_array().cloned().unwrap_or_default();
    if serving.is_empty() {
        println!("serving    nothing");
    }
    for m in serving {
        println!("serving    {}", model_line(&m));
    }
    Ok(())
}

/// Prints every model the daemon knows, with its lifecycle state.
pub fn models(client: &Client, json: bool) -> anyhow::Result<()> {
    let reply = client.get("/v1/models").context("cannot list models")?;
    if json {
        println!("{reply}");
        return Ok(());
    }
    let models = reply["models"].as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        println!("no models installed");
    }
    for r in models {
        println!("{}", r["name"].as_str().unwrap_or("?"));
        match r["committed"].as_object() {
            Some(_) => println!("  committed  {}", rev_line(&r["committed"])),
            None => println!("  committed  none"),
        }
        if let Some(c) = r["candidate"].as_object() {
            println!(
                "  candidate  {} [{}], {} request(s), {} error(s), {} restart(s)",
                rev_line(&r["candidate"]["rev"]),
                c.get("phase").and_then(Value::as_str).unwrap_or("?"),
                r["candidate"]["requests"],
                r["candidate"]["errors"],
                r["candidate"]["restarts"]
            );
        }
        for h in r["history"].as_array().into_iter().flatten() {
            println!("  previous   {}", rev_line(h));
        }
        for q in r["quarantined"].as_array().into_iter().flatten() {
            println!(
                "  quarantined {} (sequence {}): {}",
                short(q["digest"].as_str().unwrap_or("")),
                q["sequence"],
                q["reason"].as_str().unwrap_or("")
            );
        }
        println!("  highest accepted sequence {}", r["highest_sequence"]);
    }
    Ok(())
}

/// Rolls a model back.
pub fn rollback(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let reply = client
        .post_json(&format!("/v1/rollback/{name}"), &json!({}))
        .with_context(|| format!("rollback of {name} failed"))?;
    if json {
        println!("{reply}");
    } else {
        match reply["serving"].as_object() {
            Some(_) => println!(
                "rolled back {name}: now serving {}",
                model_line(&reply["serving"])
            ),
            None => println!("rolled back {name}: nothing is served now"),
        }
    }
    Ok(())
}

/// Prints lifecycle and security events.
pub fn events(client: &Client, args: &EventsArgs, json: bool) -> anyhow::Result<()> {
    let reply = client
        .get(&format!(
            "/v1/events?after={}&limit={}",
            args.after, args.limit
        ))
        .context("cannot read events")?;
    if json {
        println!("{reply}");
        return Ok(());
    }
    for e in reply["events"].as_array().into_iter().flatten() {
        let when = e["unix_ms"]
            .as_i64()
            .map_or(String::new(), |ms| super::time_arg::format(ms / 1000));
        println!(
            "#{:<4} {when} {:<8} {:<16} {:<8} {}",
            e["id"],
            e["severity"].as_str().unwrap_or(""),
            e["kind"].as_str().unwrap_or(""),
            e["model"].as_str().unwrap_or("-"),
            summary(&e["details"])
        );
    }
    Ok(())
}

/// The details of an event in a few words: which revision, and why.
fn summary(d: &Value) -> String {
    let rev = |r: &Value| {
        r["version"].as_str().map(|v| {
            format!(
                "{v} (seq {}, {})",
                r["sequence"],
                short(r["digest"].as_str().unwrap_or(""))
            )
        })
    };
    let mut parts = Vec::new();
    if let (Some(from), Some(to)) = (rev(&d["from"]), rev(&d["to"])) {
        parts.push(format!("{from} -> {to}"));
    } else if let Some(from) = rev(&d["from"]) {
        parts.push(format!("{from} -> nothing"));
    } else if let Some(r) = rev(d) {
        parts.push(r);
    }
    if let Some(check) = d["check"].as_str() {
        parts.push(format!("check {check}"));
    }
    if let Some(reason) = d["reason"].as_str() {
        parts.push(reason.to_owned());
    }
    if parts.is_empty() {
        d.to_string()
    } else {
        parts.join(": ")
    }
}

fn model_line(m: &Value) -> String {
    format!(
        "{} {} (sequence {}, {})",
        m["name"].as_str().unwrap_or("?"),
        m["version"].as_str().unwrap_or("?"),
        m["sequence"],
        short(m["digest"].as_str().unwrap_or(""))
    )
}

fn rev_line(r: &Value) -> String {
    format!(
        "{} (sequence {}, {})",
        r["version"].as_str().unwrap_or("?"),
        r["sequence"],
        short(r["digest"].as_str().unwrap_or(""))
    )
}

fn short(digest: &str) -> String {
    digest.chars().take(12).collect()
}

/// The socket path: `--socket`, else `MINTD_SOCKET`, else the default.
pub fn socket_path(flag: Option<&PathBuf>) -> PathBuf {
    flag.cloned()
        .or_else(|| std::env::var_os("MINTD_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/run/mintd/mintd.sock"))
}
