//! `mintctl bundle create | sign | verify | inspect`.

use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use mint_updater::bundle::verify::{read_header, unpack, Limits, Policy, Sink};
use mint_updater::bundle::write::{
    add_signature_to_file, build_bundle, BuildOptions, FileSource, Source,
};
use mint_updater::bundle::{self, header};
use mint_updater::manifest::{FileRole, GuardSettings, HealthCheck, Manifest, FORMAT_VERSION};
use mint_updater::{BundleError, Check, OperatorKey, TrustStore};

use super::{progress, time_arg};
use crate::engine::Engine;
use crate::golden::{self, GoldenFile};

/// Path of the model inside every bundle.
pub const MODEL_PATH: &str = "model.onnx";
/// Path of the golden cases inside a bundle.
pub const GOLDEN_PATH: &str = "golden.json";
/// Seed of `--golden auto:N` unless `--seed` is given, so that builds are reproducible.
pub const DEFAULT_SEED: u64 = 0x6d69_6e74;

/// Bundle commands.
#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Build and sign a bundle from an ONNX model.
    Create(CreateArgs),
    /// Add a signature to a bundle (threshold signing); the payload is checked first.
    Sign {
        /// The bundle, rewritten in place unless --out is given.
        bundle: PathBuf,
        /// The signer's private key (PKCS#8 PEM).
        #[arg(long)]
        key: PathBuf,
        /// Write the co-signed bundle here instead.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a bundle: exit 0 only if every check passes, 3 if one refuses it.
    Verify(VerifyArgs),
    /// Show what a bundle holds.
    Inspect {
        /// The bundle.
        bundle: PathBuf,
        /// Verify the signatures against these keys (files or directories of *.pub).
        #[arg(long, num_args = 1..)]
        trust: Vec<PathBuf>,
        /// Distinct trusted keys required.
        #[arg(long, default_value_t = 1)]
        threshold: usize,
    },
}

/// Arguments of `bundle create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The ONNX model.
    #[arg(long)]
    pub model: PathBuf,
    /// Model name (the unit of anti-rollback).
    #[arg(long)]
    pub name: String,
    /// Display version.
    #[arg(long)]
    pub version: String,
    /// Monotonic sequence number.
    #[arg(long)]
    pub sequence: u64,
    /// Signing key(s) (PKCS#8 PEM); give several for threshold signing.
    #[arg(long = "key", required = true)]
    pub keys: Vec<PathBuf>,
    /// Expiry: +30d, +12h, RFC 3339 or unix seconds.
    #[arg(long)]
    pub expires: Option<String>,
    /// Device class or architecture the bundle may install on (repeat; none = any device).
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Golden cases: a JSON file ({"cases":[{"inputs":[...],"outputs":[...]}]}) or auto:N.
    #[arg(long, default_value = "auto:8")]
    pub golden: String,
    /// Declared value range of an input: NAME=LO:HI (repeat).
    #[arg(long = "range")]
    pub ranges: Vec<String>,
    /// Seed for auto:N.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Absolute tolerance of the health check.
    #[arg(long, default_value_t = HealthCheck::default().tolerance_abs)]
    pub tolerance_abs: f64,
    /// Relative tolerance of the health check.
    #[arg(long, default_value_t = HealthCheck::default().tolerance_rel)]
    pub tolerance_rel: f64,
    /// Latency budget of one golden inference on the device, ms.
    #[arg(long, default_value_t = HealthCheck::default().latency_budget_ms)]
    pub latency_budget_ms: u32,
    /// Trial window: requests.
    #[arg(long, default_value_t = HealthCheck::default().trial_requests)]
    pub trial_requests: u32,
    /// Trial window: seconds.
    #[arg(long, default_value_t = HealthCheck::default().trial_seconds)]
    pub trial_seconds: u32,
    /// Largest error rate during the trial (0..1).
    #[arg(long, default_value_t = HealthCheck::default().max_error_rate)]
    pub max_error_rate: f64,
    /// Guard: requests per second per peer.
    #[arg(long, default_value_t = GuardSettings::default().rate_limit_per_sec)]
    pub rate_limit: u32,
    /// Guard: largest batch.
    #[arg(long, default_value_t = GuardSettings::default().max_batch)]
    pub max_batch: u32,
    /// Guard: request deadline, ms.
    #[arg(long, default_value_t = GuardSettings::default().timeout_ms)]
    pub timeout_ms: u32,
    /// Do not check the golden file's expected outputs against the model here (for testing
    /// a device's health gate with a deliberately wrong expectation).
    #[arg(long)]
    pub no_golden_check: bool,
    /// zstd level.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// Output bundle (default NAME-VERSION.mint).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Arguments of `bundle verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle.
    pub bundle: PathBuf,
    /// Trusted public keys: SPKI PEM files or directories of *.pub.
    #[arg(long, num_args = 1.., required = true)]
    pub trust: Vec<PathBuf>,
    /// Distinct trusted keys required.
    #[arg(long, default_value_t = 1)]
    pub threshold: usize,
    /// Lowest sequence accepted (anti-rollback).
    #[arg(long)]
    pub min_sequence: Option<u64>,
    /// This device's class / architecture (repeat); without it the target check is skipped.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// The clock to judge expiry by (tests): RFC 3339 or unix seconds.
    #[arg(long)]
    pub now: Option<String>,
    /// The last trusted time seen; expiry is judged against the later of it and the clock.
    #[arg(long)]
    pub trusted_time: Option<String>,
    /// Largest signed header accepted, bytes.
    #[arg(long, default_value_t = Limits::default().max_header_bytes)]
    pub max_header_bytes: u64,
    /// Largest plain file accepted, bytes.
    #[arg(long, default_value_t = Limits::default().max_file_bytes)]
    pub max_file_bytes: u64,
    /// Unpack the verified files into this new directory.
    #[arg(long)]
    pub unpack: Option<PathBuf>,
}

/// Runs a bundle command.
pub fn run(cmd: &BundleCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        BundleCommand::Create(args) => create(args, json),
        BundleCommand::Sign { bundle, key, out } => sign(bundle, key, out.as_deref(), json),
        BundleCommand::Verify(args) => verify(args, json),
        BundleCommand::Inspect {
            bundle,
            trust,
            threshold,
        } => inspect(bundle, trust, *threshold, json),
    }
}

fn create(args: &CreateArgs, json: bool) -> anyhow::Result<()> {
    let now = time_arg::now();
    let keys = args
        .keys
        .iter()
        .map(|k| {
            OperatorKey::load(k).with_context(|| format!("cannot use signing key {}", k.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let expires = args
        .expires
        .as_deref()
        .map(|e| time_arg::parse(e, now))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--expires {e}"))?;
    let model_bytes = fs::read(&args.model)
        .with_context(|| format!("cannot read model {}", args.model.display()))?;
    let engine = Engine::load_unchecked(&model_bytes)
        .with_context(|| format!("tract cannot run {}", args.model.display()))?;
    let mut inputs = engine.inputs().to_vec();
    for range in &args.ranges {
        let (name, lo, hi) = parse_range(range)?;
        let spec = inputs
            .iter_mut()
            .find(|s| s.name == name)
            .with_context(|| format!("--range {range}: the model has no input {name:?}"))?;
        spec.range = Some([lo, hi]);
    }
    let health = HealthCheck {
        golden: Some(GOLDEN_PATH.into()),
        tolerance_abs: args.tolerance_abs,
        tolerance_rel: args.tolerance_rel,
        latency_budget_ms: args.latency_budget_ms,
        trial_requests: args.trial_requests,
        trial_seconds: args.trial_seconds,
        max_error_rate: args.max_error_rate,
    };
    let golden = if let Some(n) = args.golden.strip_prefix("auto:") {
        let n: usize = n
            .parse()
            .with_context(|| format!("--golden {}: N must be a number", args.golden))?;
        golden::generate(&engine, &inputs, n, args.seed)?
    } else {
        let path = Path::new(&args.golden);
        let bytes = fs::read(path)
            .with_context(|| format!("cannot read golden file {}", path.display()))?;
        let mut file =
            GoldenFile::parse(&bytes).with_context(|| format!("golden file {}", path.display()))?;
        file.check_inputs(&inputs)
            .with_context(|| format!("golden file {} does not fit the model", path.display()))?;
        if args.no_golden_check {
            if file.cases.iter().any(|c| c.outputs.is_none()) {
                bail!("--no-golden-check needs expected outputs in every golden case");
            }
        } else {
            file.complete(&engine, health.tolerance_abs, health.tolerance_rel)
                .with_context(|| {
                    format!(
                        "the model does not reproduce golden file {} (use --no-golden-check to bundle it anyway)",
                        path.display()
                    )
                })?;
        }
        file
    };
    let manifest = Manifest {
        format: FORMAT_VERSION,
        name: args.name.clone(),
        version: args.version.clone(),
        sequence: args.sequence,
        created: now,
        expires,
        targets: args.targets.clone(),
        files: vec![],
        inputs,
        outputs: engine.outputs().to_vec(),
        reference: Some(golden.reference_stats()),
        health,
        guard: GuardSettings {
            rate_limit_per_sec: args.rate_limit,
            max_batch: args.max_batch,
            timeout_ms: args.timeout_ms,
        },
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-{}.mint", args.name, args.version)));
    let sources = [
        FileSource {
            path: MODEL_PATH.into(),
            role: FileRole::Model,
            data: Source::Bytes(model_bytes),
        },
        FileSource {
            path: GOLDEN_PATH.into(),
            role: FileRole::Golden,
            data: Source::Bytes(golden.to_json()),
        },
    ];
    let signers: Vec<&OperatorKey> = keys.iter().collect();
    let bar = progress::bytes("compress", 0);
    let options = BuildOptions {
        level: args.level,
        ..BuildOptions::default()
    };
    let manifest = build_bundle(
        manifest,
        &sources,
        &signers,
        &out,
        options,
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .with_context(|| format!("cannot build bundle {}", out.display()))?;
    bar.finish_and_clear();
    let size = fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bundle": out, "bytes": size, "manifest": manifest,
                "signers": keys.iter().map(|k| k.kid().to_hex()).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "created {} ({}): {} {} sequence {}, {} golden case(s), signed by {} key(s)",
            out.display(),
            human_bytes(size),
            manifest.name,
            manifest.version,
            manifest.sequence,
            golden.cases.len(),
            keys.len()
        );
    }
    Ok(())
}

fn sign(bundle: &Path, key: &Path, out: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let key = OperatorKey::load(key)
        .with_context(|| format!("cannot use signing key {}", key.display()))?;
    // A co-signer endorses the manifest: check first that the payload is what it describes.
    let size = fs::metadata(bundle)
        .with_context(|| format!("cannot read {}", bundle.display()))?
        .len();
    let mut input = BufReader::new(fs::File::open(bundle)?);
    let bar = progress::bytes("check", size);
    let (header, _) = bundle::check_unverified(&mut input, &mut |done| bar.set_position(done))
        .with_context(|| {
            format!(
                "{} does not match its own manifest: refusing to sign it",
                bundle.display()
            )
        })?;
    bar.finish_and_clear();
    let out = out.unwrap_or(bundle);
    add_signature_to_file(bundle, &key, out)
        .with_context(|| format!("cannot add a signature to {}", bundle.display()))?;
    let count = header.signatures.len() + 1;
    if json {
        println!(
            "{}",
            serde_json::json!({"bundle": out, "kid": key.kid().to_hex(), "signatures": count})
        );
    } else {
        println!(
            "signed {} with key {} ({count} signature(s) now)",
            out.display(),
            key.kid()
        );
    }
    Ok(())
}

/// The checks in the order they run, for the human report.
const CHECKS: [(Check, &str); 10] = [
    (Check::Framing, "magic and lengths"),
    (Check::HeaderSize, "header size limit"),
    (Check::Header, "COSE_Sign structure"),
    (Check::Signature, "signatures and threshold"),
    (Check::Manifest, "manifest"),
    (Check::Expiry, "expiry"),
    (Check::Target, "target"),
    (Check::Rollback, "anti-rollback"),
    (Check::Size, "file sizes"),
    (Check::Digest, "file digests"),
];

fn verify(args: &VerifyArgs, json: bool) -> anyhow::Result<()> {
    let trust =
        TrustStore::load(&args.trust, args.threshold).context("cannot load the trusted keys")?;
    let clock = time_arg::now();
    let now = match &args.now {
        Some(t) => time_arg::parse(t, clock).map_err(|e| anyhow::anyhow!("--now {e}"))?,
        None => clock,
    };
    let trusted_time = args
        .trusted_time
        .as_deref()
        .map(|t| time_arg::parse(t, clock))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--trusted-time {e}"))?;
    let policy = Policy {
        trust: &trust,
        now,
        trusted_time,
        device_targets: (!args.targets.is_empty()).then(|| args.targets.clone()),
        min_sequence: args.min_sequence,
        limits: Limits {
            max_header_bytes: args.max_header_bytes,
            max_file_bytes: args.max_file_bytes,
            ..Limits::default()
        },
    };
    if let Some(dir) = &args.unpack {
        fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let sink = args
        .unpack
        .as_deref()
        .map_or(Sink::Discard, Sink::Directory);
    let file = fs::File::open(&args.bundle)
        .with_context(|| format!("cannot open {}", args.bundle.display()))?;
    let mut input = BufReader::with_capacity(128 * 1024, file);
    // Header first (cheap), so that the progress bar knows the plain bytes to come.
    let bar = progress::bytes("verify", 0);
    let result = read_header(&mut input, &policy).and_then(|header| {
        bar.set_length(header.manifest.total_size());
        let files = unpack(&mut input, &header, &policy.limits, sink, &mut |done| {
            bar.set_position(done)
        })?;
        Ok((header, files))
    });
    bar.finish_and_clear();
    if let (Err(_), Some(dir)) = (&result, &args.unpack) {
        // Nothing of a refused bundle may remain.
        let _ = fs::remove_dir_all(dir);
    }
    let failed = result.as_ref().err().map(BundleError::check);
    if !json {
        for (check, label) in CHECKS {
            let skipped = match check {
                Check::Target => policy.device_targets.is_none(),
                Check::Rollback => policy.min_sequence.is_none(),
                _ => false,
            };
            match failed {
                Some(f) if f == check => {
                    eprintln!("  FAIL  {label}");
                    break;
                }
                _ if skipped => eprintln!("  skip  {label} (not asked for)"),
                _ => eprintln!("  ok    {label}"),
            }
        }
    }
    let (header, files) =
        result.with_context(|| format!("bundle {} refused", args.bundle.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bundle": args.bundle, "verified": true,
                "name": header.manifest.name, "version": header.manifest.version,
                "sequence": header.manifest.sequence,
                "manifest_sha256": hex::encode(header.manifest_sha256),
                "signers": header.signers.iter().map(|k| k.to_hex()).collect::<Vec<_>>(),
                "files": files.iter().map(|f| serde_json::json!({
                    "path": f.path, "size": f.size, "sha256": hex::encode(f.sha256)
                })).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "verified {}: {} {} sequence {}, {} file(s), signed by {} trusted key(s)",
            args.bundle.display(),
            header.manifest.name,
            header.manifest.version,
            header.manifest.sequence,
            files.len(),
            header.signers.len()
        );
    }
    Ok(())
}

fn inspect(bundle: &Path, trust: &[PathBuf], threshold: usize, json: bool) -> anyhow::Result<()> {
    let size = fs::metadata(bundle)
        .with_context(|| format!("cannot read {}", bundle.display()))?
        .len();
    let mut input = BufReader::new(fs::File::open(bundle)?);
    let verified = if trust.is_empty() {
        None
    } else {
        let store = TrustStore::load(trust, threshold).context("cannot load the trusted keys")?;
        let bytes =
            mint_updater::bundle::verify::read_framing(&mut input, bundle::MAX_HEADER_BYTES_HARD)?;
        let sign = header::decode(&bytes)?;
        let (_, signers) = header::verify(&sign, &store)
            .with_context(|| format!("bundle {} refused", bundle.display()))?;
        input = BufReader::new(fs::File::open(bundle)?);
        Some(signers.trusted.len())
    };
    let info = bundle::read_unverified(&mut input)
        .with_context(|| format!("cannot read {}", bundle.display()))?;
    let m = &info.manifest;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "bundle": bundle, "bytes": size, "header_bytes": info.header_len,
                "signatures_verified": verified.is_some(),
                "signatures": info.signatures.iter().map(|(kid, alg)| serde_json::json!({"kid": kid, "alg": alg})).collect::<Vec<_>>(),
                "manifest": m,
            })
        );
        return Ok(());
    }
    println!("bundle      {} ({})", bundle.display(), human_bytes(size));
    println!(
        "model       {} {} (sequence {})",
        m.name, m.version, m.sequence
    );
    println!("created     {}", time_arg::format(m.created));
    println!(
        "expires     {}",
        m.expires.map_or("never".into(), time_arg::format)
    );
    println!(
        "targets     {}",
        if m.targets.is_empty() {
            "any device".into()
        } else {
            m.targets.join(", ")
        }
    );
    match verified {
        Some(n) => println!(
            "signatures  {} ({n} verified from trusted keys)",
            info.signatures.len()
        ),
        None => println!(
            "signatures  {} (NOT verified: pass --trust KEY.pub to check them)",
            info.signatures.len()
        ),
    }
    for (kid, alg) in &info.signatures {
        println!("  kid {kid}  {alg}");
    }
    println!("files");
    for f in &m.files {
        println!(
            "  {:<12} {:<6} {:>10} ({} compressed)  sha256 {}",
            f.path,
            format!("{:?}", f.role).to_lowercase(),
            human_bytes(f.size),
            human_bytes(f.compressed_size),
            f.sha256
        );
    }
    for (title, specs) in [("inputs", &m.inputs), ("outputs", &m.outputs)] {
        println!("{title}");
        for s in specs.iter() {
            let range = s
                .range
                .map_or(String::new(), |[lo, hi]| format!(" range [{lo}, {hi}]"));
            println!(
                "  {:<12} {} {:?}{range}",
                s.name,
                s.datatype.name(),
                s.shape
            );
        }
    }
    let h = &m.health;
    println!(
        "health      golden {}, tolerance abs {} rel {}, latency budget {} ms, trial {} requests / {} s, max error rate {}",
        h.golden.as_deref().unwrap_or("none"),
        h.tolerance_abs,
        h.tolerance_rel,
        h.latency_budget_ms,
        h.trial_requests,
        h.trial_seconds,
        h.max_error_rate
    );
    println!(
        "guard       {} req/s per peer, max batch {}, timeout {} ms",
        m.guard.rate_limit_per_sec, m.guard.max_batch, m.guard.timeout_ms
    );
    if let Some(r) = &m.reference {
        for s in r.inputs.iter().chain(&r.outputs) {
            println!(
                "reference   {:<12} n={} mean {:.4} std {:.4} min {:.4} max {:.4}",
                s.name, s.count, s.mean, s.std, s.min, s.max
            );
        }
    }
    Ok(())
}

fn parse_range(text: &str) -> anyhow::Result<(String, f64, f64)> {
    let parsed = text.split_once('=').and_then(|(name, r)| {
        let (lo, hi) = r.split_once(':')?;
        Some((
            name.to_owned(),
            lo.trim().parse().ok()?,
            hi.trim().parse().ok()?,
        ))
    });
    match parsed {
        Some((name, lo, hi)) if lo <= hi && f64::is_finite(lo) && f64::is_finite(hi) => {
            Ok((name, lo, hi))
        }
        _ => bail!("--range {text:?}: expected NAME=LO:HI with finite LO <= HI"),
    }
}

/// Bytes in a readable unit.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
