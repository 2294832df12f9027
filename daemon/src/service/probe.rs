//! The daemon's side of the updater's traits: the health probe runs the bundle's golden cases
//! through tract within the latency budget; the measurer appends to the measurement log.

use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mint_attest::{MeasurementKind, MeasurementLog, NewMeasurement};
use mint_updater::updater::{HealthProbe, HealthReport, InstalledModel, Measurer};

use super::registry::Registry;
use crate::golden::GoldenFile;

/// Golden cases through the real engine.
pub struct TractProbe {
    /// Where loaded engines live (the probe loads through it so serving reuses the engine).
    pub registry: Arc<Registry>,
}

impl HealthProbe for TractProbe {
    fn check(&self, model: &InstalledModel) -> Result<HealthReport, String> {
        let health = &model.manifest.health;
        let loaded = self.registry.load(model).map_err(|e| e.to_string())?;
        let Some(golden_path) = &health.golden else {
            return Ok(HealthReport {
                cases: 0,
                worst_latency_ms: 0.0,
            });
        };
        let bytes = fs::read(model.dir.join(golden_path))
            .map_err(|e| format!("cannot read golden cases {golden_path}: {e}"))?;
        let golden = GoldenFile::parse(&bytes).map_err(|e| e.to_string())?;
        let mut worst = 0f64;
        for (i, case) in golden.cases.iter().enumerate() {
            let one = GoldenFile {
                cases: vec![case.clone()],
            };
            let start = Instant::now();
            one.check(&loaded.engine, health.tolerance_abs, health.tolerance_rel)
                .map_err(|e| {
                    e.to_string()
                        .replacen("golden case #0", &format!("golden case #{i}"), 1)
                })?;
            let ms = start.elapsed().as_secs_f64() * 1e3;
            worst = worst.max(ms);
            if ms > f64::from(health.latency_budget_ms) {
                return Err(format!(
                    "golden case #{i} took {ms:.1} ms, above the latency budget of {} ms",
                    health.latency_budget_ms
                ));
            }
        }
        Ok(HealthReport {
            cases: golden.cases.len(),
            worst_latency_ms: worst,
        })
    }
}

/// Measures each activated model into the measurement log (the TPM PCR comes with the
/// attestation milestone; until then the log's replayed value is the software PCR).
pub struct LogMeasurer {
    log: Mutex<MeasurementLog>,
    pcr: u8,
}

impl LogMeasurer {
    /// Opens (or creates) the log.
    pub fn open(path: PathBuf, pcr: u8) -> Result<Self, String> {
        let log = MeasurementLog::open(&path)
            .map_err(|e| format!("cannot open measurement log {}: {e}", path.display()))?;
        Ok(LogMeasurer {
            log: Mutex::new(log),
            pcr,
        })
    }
}

impl Measurer for LogMeasurer {
    fn measure(&self, model: &InstalledModel) -> Result<(), String> {
        let mut log = self
            .log
            .lock()
            .map_err(|_| "measurement log lock poisoned")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        for (kind, digest) in [
            (MeasurementKind::Manifest, &model.rev.digest),
            (MeasurementKind::Model, &model.rev.model_sha256),
        ] {
            let digest = mint_attest::pcr::digest_from_hex(digest)
                .ok_or_else(|| format!("digest {digest} is not SHA-256 hex"))?;
            log.append(NewMeasurement {
                pcr: self.pcr,
                kind,
                name: model.name.clone(),
                version: model.rev.version.clone(),
                sequence: model.rev.sequence,
                digest,
                unix_time: now,
            })
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
