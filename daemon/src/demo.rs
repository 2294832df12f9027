//! `mintd demo`: a self-contained tour on built-in defaults, in a temporary directory.
//!
//! Every step runs the real `mintctl` code path (the command line is parsed by the same clap
//! definitions) and the tour fails if any step does not behave as it should, so it doubles
//! as a smoke test.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;
use mint_updater::Check;

use crate::ctl::{self, Cli};
use crate::exit;

/// The example model (a 16→64→4 MLP), built into the binary so the tour needs no files.
pub const EXAMPLE_MODEL: &[u8] = include_bytes!("../../tests/fixtures/models/mlp.onnx");

struct Tour {
    dir: PathBuf,
    start: Instant,
    step: usize,
}

impl Tour {
    fn say(&mut self, title: &str) {
        self.step += 1;
        println!();
        println!(
            "[{:>6.2}s] {}. {title}",
            self.start.elapsed().as_secs_f64(),
            self.step
        );
    }

    fn mintctl(&self, args: &str) -> anyhow::Result<()> {
        println!("  $ mintctl {args}");
        let argv = std::iter::once("mintctl").chain(args.split_whitespace());
        let cli = Cli::try_parse_from(argv).context("demo command line")?;
        std::env::set_current_dir(&self.dir)?;
        ctl::run(&cli)
    }

    fn expect_ok(&self, args: &str) -> anyhow::Result<()> {
        self.mintctl(args)
            .with_context(|| format!("demo step `mintctl {args}` should have succeeded"))
    }

    fn expect_refused(&self, args: &str, check: Check) -> anyhow::Result<()> {
        self.expect_refused_by(args, &[check])
    }

    fn expect_refused_by(&self, args: &str, checks: &[Check]) -> anyhow::Result<()> {
        match self.mintctl(args) {
            Ok(()) => bail!("`mintctl {args}` accepted a bundle it must refuse"),
            Err(e) => {
                let got = exit::refused_check(&e);
                println!(
                    "  -> refused by check `{}` (exit {}): {}",
                    got.map_or("none", Check::name),
                    exit::code(&e) as i32,
                    e.chain()
                        .last()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                );
                if !got.is_some_and(|g| checks.contains(&g)) {
                    bail!("expected one of {checks:?} to refuse, got {got:?}: {e:#}");
                }
                Ok(())
            }
        }
    }

    fn flip(&self, from: &str, to: &str, offset: u64) -> anyhow::Result<()> {
        let mut bytes = fs::read(self.dir.join(from))?;
        let at = offset as usize;
        bytes[at] ^= 0x01;
        fs::write(self.dir.join(to), bytes)?;
        println!("  (copied {from} to {to} and flipped one bit at byte {at})");
        Ok(())
    }
}

/// Runs the tour in a fresh temporary directory (kept if `keep` names one).
pub fn run(keep: Option<&Path>) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new().prefix("mintd-demo-").tempdir()?;
    let dir = match keep {
        Some(d) => {
            fs::create_dir_all(d)?;
            d.canonicalize()?
        }
        None => tmp.path().to_owned(),
    };
    let previous = std::env::current_dir().ok();
    let result = tour(&dir);
    if let Some(p) = previous {
        let _ = std::env::set_current_dir(p);
    }
    match &result {
        Ok(()) => {
            println!("\nThe tour passed: every bundle was accepted or refused as it should be.")
        }
        Err(_) => println!("\nThe tour FAILED (files kept in {})", dir.display()),
    }
    if result.is_err() || keep.is_some() {
        let _ = tmp.keep();
    }
    result
}

fn tour(dir: &Path) -> anyhow::Result<()> {
    println!("mintd demo: the life of a signed model bundle");
    println!("working in {}", dir.display());
    fs::write(dir.join("mlp.onnx"), EXAMPLE_MODEL)?;
    let mut t = Tour {
        dir: dir.to_owned(),
        start: Instant::now(),
        step: 0,
    };
    t.say("The fleet operator makes a signing key (and someone else makes another)");
    t.expect_ok("key gen --out operator")?;
    t.expect_ok("key gen --out intruder")?;

    t.say("Build and sign a bundle of the example model; golden cases are run through tract");
    t.expect_ok(
        "bundle create --model mlp.onnx --name mlp --version 1.0.0 --sequence 1 \
         --key operator.key --expires +30d --target generic --range input=-1:1 \
         --golden auto:8 --out mlp-1.0.0.mint",
    )?;

    t.say("Inspect it, checking the signature against the operator's public key");
    t.expect_ok("bundle inspect mlp-1.0.0.mint --trust operator.pub")?;

    t.say("A device verifies it: every check passes");
    t.expect_ok(
        "bundle verify mlp-1.0.0.mint --trust operator.pub --target generic --min-sequence 1",
    )?;

    t.say("Tamper with the model bytes: the digest check refuses it");
    let header_len = {
        let bytes = fs::read(dir.join("mlp-1.0.0.mint"))?;
        u64::from(u32::from_be_bytes(bytes[8..12].try_into()?))
    };
    let payload = 12 + header_len;
    let size = fs::metadata(dir.join("mlp-1.0.0.mint"))?.len();
    // The model frame is first; its middle is a literal-heavy stretch of weights.
    t.flip(
        "mlp-1.0.0.mint",
        "tampered-model.mint",
        payload + (size - payload) / 4,
    )?;
    // A flipped bit in a zstd frame shows up as a digest mismatch, or earlier as a frame that
    // no longer decodes to its declared size: both refuse the bundle.
    t.expect_refused_by(
        "bundle verify tampered-model.mint --trust operator.pub",
        &[Check::Digest, Check::Size],
    )?;

    t.say("Tamper with the signed manifest: the signature check refuses it");
    t.flip(
        "mlp-1.0.0.mint",
        "tampered-header.mint",
        12 + header_len / 2,
    )?;
    t.expect_refused(
        "bundle verify tampered-header.mint --trust operator.pub",
        Check::Signature,
    )?;

    t.say("A device that trusts only another key refuses the bundle");
    t.expect_refused(
        "bundle verify mlp-1.0.0.mint --trust intruder.pub",
        Check::Signature,
    )?;

    t.say("A device that already runs sequence 2 refuses the older bundle (anti-rollback)");
    t.expect_refused(
        "bundle verify mlp-1.0.0.mint --trust operator.pub --min-sequence 2",
        Check::Rollback,
    )?;

    t.say("Sixty days later the bundle has expired");
    let later = super::ctl::time_arg::now() + 60 * 86_400;
    t.expect_refused(
        &format!("bundle verify mlp-1.0.0.mint --trust operator.pub --now {later}"),
        Check::Expiry,
    )?;

    t.say("A device of another class refuses it");
    t.expect_refused(
        "bundle verify mlp-1.0.0.mint --trust operator.pub --target jetson-nano",
        Check::Target,
    )?;
    Ok(())
}
