//! The update lifecycle of one model, as a pure state machine: [`step`] takes the durable
//! record of a model, an event and the time, and returns the next record and the actions the
//! driver must perform. No IO and no clock here: the driver ([`crate::updater`]) commits the
//! next record to the database, and only then performs the actions, feeding their outcomes
//! back as events.
//!
//! ```text
//!  (no candidate) ──Stored──► Stored ──Measured──► Activated ──HealthPassed──► Trial ──┬─► committed
//!                             (Measure)           (Serve, RunHealth)          requests, │
//!                                                                             time      └─► rolled back
//!  any candidate phase ──HealthFailed / RollbackRequested / too many Restarted──► rolled back
//! ```
//!
//! A rolled-back candidate's digest is quarantined: it is not installed again, and the
//! anti-rollback floor ([`ModelRecord::highest_sequence`]) already counts its sequence, so
//! only a newer sequence can follow it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::manifest::HealthCheck;

/// How many quarantined digests a record remembers (the oldest are forgotten first; their
/// sequences stay below the anti-rollback floor, so they still cannot come back).
pub const MAX_QUARANTINED: usize = 64;

/// The severities of [`LifecycleEvent`]s.
pub mod severity {
    /// Normal progress.
    pub const INFO: &str = "info";
    /// Something was refused or rolled back; the device is still safe.
    pub const WARNING: &str = "warning";
    /// Integrity is in question (tampering).
    pub const CRITICAL: &str = "critical";
}

/// One installed revision of a model, named by the SHA-256 of its authenticated manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// SHA-256 of the manifest bytes, lowercase hex: the store directory's name.
    pub digest: String,
    /// Display version.
    pub version: String,
    /// Anti-rollback sequence.
    pub sequence: u64,
    /// The manifest's creation time, unix seconds.
    pub created: i64,
    /// SHA-256 of the model file, lowercase hex (what the engine checks in memory).
    pub model_sha256: String,
}

impl Revision {
    fn summary(&self) -> Value {
        json!({"digest": self.digest, "version": self.version, "sequence": self.sequence})
    }
}

/// Where a candidate revision is on its way to being committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Verified and in the store; not measured yet. The committed revision is served.
    Stored,
    /// Measured, not yet serving. [`step`] moves from `Stored` to `Activated` in one durable
    /// step, so this phase is only accepted on input (it resumes like `Stored`).
    Measured,
    /// Serving; the health check is pending.
    Activated,
    /// Serving, health check passed; the trial window counts requests, errors and restarts.
    Trial,
}

impl Phase {
    /// Stable lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Stored => "stored",
            Phase::Measured => "measured",
            Phase::Activated => "activated",
            Phase::Trial => "trial",
        }
    }
}

/// A revision on its way in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The revision.
    pub rev: Revision,
    /// Its phase.
    pub phase: Phase,
    /// When it entered its phase, unix seconds (for `Trial`: when the trial window opened).
    pub since: i64,
    /// Requests counted during the trial.
    pub requests: u32,
    /// Failed requests counted during the trial.
    pub errors: u32,
    /// Daemon restarts during the trial.
    pub restarts: u32,
}

/// A digest that failed and must not be installed again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// Manifest digest.
    pub digest: String,
    /// Its sequence.
    pub sequence: u64,
    /// Why it was rolled back.
    pub reason: String,
}

/// Everything durable about one model name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Model name.
    pub name: String,
    /// The last committed revision (served when no candidate is active).
    pub committed: Option<Revision>,
    /// Previously committed revisions, newest first: operator rollback targets, kept in the
    /// store up to the configured retention.
    pub history: Vec<Revision>,
    /// The revision being installed, if any.
    pub candidate: Option<Candidate>,
    /// The highest sequence ever accepted into the store (even if it later failed): the
    /// anti-rollback floor.
    pub highest_sequence: u64,
    /// Digests that failed, oldest first, at most [`MAX_QUARANTINED`].
    pub quarantined: Vec<Quarantined>,
}

impl ModelRecord {
    /// A model never seen before.
    pub fn new(name: impl Into<String>) -> Self {
        ModelRecord {
            name: name.into(),
            committed: None,
            history: Vec::new(),
            candidate: None,
            highest_sequence: 0,
            quarantined: Vec::new(),
        }
    }

    /// What must be served now: the candidate once activated, else the committed revision.
    pub fn serving(&self) -> Option<&Revision> {
        match &self.candidate {
            Some(c) if matches!(c.phase, Phase::Activated | Phase::Trial) => Some(&c.rev),
            _ => self.committed.as_ref(),
        }
    }

    /// The quarantine entry of `digest`, if it failed before.
    pub fn quarantine_entry(&self, digest: &str) -> Option<&Quarantined> {
        self.quarantined.iter().rev().find(|q| q.digest == digest)
    }

    /// The lowest sequence a new revision may have: one above the highest accepted, or 0 for
    /// a model that never accepted anything.
    pub fn minimum_sequence(&self) -> u64 {
        let accepted_any = self.highest_sequence > 0
            || self.committed.is_some()
            || self.candidate.is_some()
            || !self.history.is_empty()
            || !self.quarantined.is_empty();
        if accepted_any {
            self.highest_sequence.saturating_add(1)
        } else {
            0
        }
    }

    /// Digests whose store directories this record needs: committed, candidate, history.
    pub fn referenced_digests(&self) -> impl Iterator<Item = &str> {
        self.committed
            .iter()
            .chain(self.candidate.as_ref().map(|c| &c.rev))
            .chain(&self.history)
            .map(|r| r.digest.as_str())
    }
}

/// When a trial ends and how it is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrialPolicy {
    /// The trial ends after this many requests...
    pub requests: u32,
    /// ...or after this many seconds, whichever comes first.
    pub seconds: u32,
    /// Largest error rate (errors / requests) that still commits.
    pub max_error_rate: f64,
    /// Restarts during the trial that roll the candidate back.
    pub max_restarts: u32,
}

impl TrialPolicy {
    /// The trial of a manifest's health section, with the configured restart limit.
    pub fn from_health(health: &HealthCheck, max_restarts: u32) -> Self {
        TrialPolicy {
            requests: health.trial_requests,
            seconds: health.trial_seconds,
            max_error_rate: health.max_error_rate,
            max_restarts,
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A verified revision reached the store.
    Stored(Revision),
    /// The candidate was measured.
    Measured,
    /// The candidate passed its health check.
    HealthPassed,
    /// The candidate failed its health check (or could not be measured or loaded).
    HealthFailed(String),
    /// A request to this model finished.
    RequestDone {
        /// Whether it succeeded.
        ok: bool,
    },
    /// Time passed (the daemon ticks every second).
    Tick,
    /// The daemon started again (fed once per model at start).
    Restarted,
    /// The operator asked for a rollback.
    RollbackRequested,
}

impl Event {
    /// Stable name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Stored(_) => "stored",
            Event::Measured => "measured",
            Event::HealthPassed => "health_passed",
            Event::HealthFailed(_) => "health_failed",
            Event::RequestDone { .. } => "request_done",
            Event::Tick => "tick",
            Event::Restarted => "restarted",
            Event::RollbackRequested => "rollback_requested",
        }
    }
}

/// What the driver must do, in order, after committing the next record.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Measure this revision (PCR extend + log), then feed [`Event::Measured`] if it is the
    /// candidate. Measuring twice after a crash is accepted: the log then holds the revision
    /// twice, which a verifier replays like any other entry.
    Measure(Revision),
    /// Run the health check, then feed [`Event::HealthPassed`] or [`Event::HealthFailed`].
    RunHealth(Revision),
    /// Serve this revision for this model now (`None`: serve nothing).
    Serve(Option<Revision>),
    /// This digest was quarantined (already in the record; for logs).
    Quarantine {
        /// Manifest digest.
        digest: String,
        /// Why.
        reason: String,
    },
    /// Record this event; the driver writes it in the same transaction as the record.
    Emit(LifecycleEvent),
    /// Delete store entries no record references any more.
    CollectGarbage,
}

/// A lifecycle or security event, as stored and published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// Unique, monotonic id assigned by the state database (0 until stored).
    pub id: u64,
    /// When, unix milliseconds.
    pub unix_ms: u64,
    /// What: `install_started`, `verified`, `stored`, `measured`, `activated`,
    /// `health_passed`, `health_failed`, `committed`, `rolled_back`, `install_refused`,
    /// `install_failed`, `quarantined`, `trial_restarted`, `tamper_detected`, ...
    pub kind: String,
    /// `info`, `warning` or `critical` ([`severity`]).
    pub severity: String,
    /// The model concerned, if any.
    pub model: Option<String>,
    /// Kind-specific details.
    pub details: Value,
}

impl LifecycleEvent {
    /// A new event (its id is assigned when it is stored).
    pub fn new(
        kind: &str,
        severity: &str,
        model: Option<&str>,
        details: Value,
        unix_ms: u64,
    ) -> Self {
        LifecycleEvent {
            id: 0,
            unix_ms,
            kind: kind.to_owned(),
            severity: severity.to_owned(),
            model: model.map(str::to_owned),
            details,
        }
    }
}

/// An event that the lifecycle cannot accept in the record's state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    /// The event is not valid in this phase.
    #[error("model {name}: event `{event}` is not valid {state}")]
    InvalidEvent {
        /// Model name.
        name: String,
        /// The event's name.
        event: &'static str,
        /// The state, in words ("with no candidate", "while the candidate is stored", ...).
        state: String,
    },
    /// No candidate to roll back and no previous committed revision.
    #[error(
        "model {name}: nothing to roll back to (no candidate and no previously committed revision)"
    )]
    NoRollbackTarget {
        /// Model name.
        name: String,
    },
    /// The revision's digest failed before.
    #[error("model {name}: revision {digest} is quarantined: {reason}")]
    Quarantined {
        /// Model name.
        name: String,
        /// Manifest digest.
        digest: String,
        /// Why it was quarantined.
        reason: String,
    },
    /// The revision's sequence is not above the anti-rollback floor.
    #[error("model {name}: sequence {sequence} is below the minimum {minimum} (anti-rollback)")]
    SequenceTooLow {
        /// Model name.
        name: String,
        /// The revision's sequence.
        sequence: u64,
        /// Lowest sequence accepted.
        minimum: u64,
    },
}

/// The reason recorded when the operator rolls back.
pub const OPERATOR_ROLLBACK: &str = "rollback requested by operator";

/// The transition function: the next record and the actions to perform, in order.
///
/// `now` is unix seconds; `trial` is the candidate's trial policy (ignored without one).
pub fn step(
    record: &ModelRecord,
    event: Event,
    now: i64,
    trial: &TrialPolicy,
) -> Result<(ModelRecord, Vec<Action>), LifecycleError> {
    let mut t = Transition {
        next: record.clone(),
        actions: Vec::new(),
        now,
    };
    let phase = record.candidate.as_ref().map(|c| c.phase);
    match (event, phase) {
        (Event::Stored(rev), None) => {
            if let Some(q) = record.quarantine_entry(&rev.digest) {
                return Err(LifecycleError::Quarantined {
                    name: record.name.clone(),
                    digest: rev.digest,
                    reason: q.reason.clone(),
                });
            }
            let minimum = record.minimum_sequence();
            if rev.sequence < minimum {
                return Err(LifecycleError::SequenceTooLow {
                    name: record.name.clone(),
                    sequence: rev.sequence,
                    minimum,
                });
            }
            t.next.highest_sequence = t.next.highest_sequence.max(rev.sequence);
            t.emit("stored", severity::INFO, rev.summary());
            t.next.candidate = Some(Candidate {
                rev: rev.clone(),
                phase: Phase::Stored,
                since: now,
                requests: 0,
                errors: 0,
                restarts: 0,
            });
            t.actions.push(Action::Measure(rev));
        }
        (Event::Measured, Some(Phase::Stored | Phase::Measured)) => {
            let c = t.candidate_mut();
            c.phase = Phase::Activated;
            c.since = now;
            let rev = c.rev.clone();
            t.emit("measured", severity::INFO, rev.summary());
            t.emit("activated", severity::INFO, rev.summary());
            t.actions.push(Action::Serve(Some(rev.clone())));
            t.actions.push(Action::RunHealth(rev));
        }
        (Event::HealthPassed, Some(Phase::Activated)) => {
            let c = t.candidate_mut();
            c.phase = Phase::Trial;
            c.since = now;
            let rev = c.rev.clone();
            t.emit(
                "health_passed",
                severity::INFO,
                json!({"digest": rev.digest, "version": rev.version, "sequence": rev.sequence,
                       "trial_requests": trial.requests, "trial_seconds": trial.seconds}),
            );
            t.finish_trial_if_due(trial);
        }
        (Event::HealthFailed(reason), Some(_)) => {
            let rev = t.candidate_mut().rev.clone();
            t.emit(
                "health_failed",
                severity::WARNING,
                json!({"digest": rev.digest, "version": rev.version, "sequence": rev.sequence,
                       "reason": reason}),
            );
            t.roll_back_candidate(&reason);
        }
        (Event::RequestDone { ok }, Some(Phase::Trial)) => {
            let c = t.candidate_mut();
            c.requests = c.requests.saturating_add(1);
            if !ok {
                c.errors = c.errors.saturating_add(1);
            }
            t.finish_trial_if_due(trial);
        }
        // Requests outside a trial (to the committed model, or to a candidate whose health
        // check is still running) are not trial accounting.
        (Event::RequestDone { .. }, _) => {}
        (Event::Tick, Some(Phase::Trial)) => t.finish_trial_if_due(trial),
        (Event::Tick, _) => {}
        (Event::Restarted, None) => {
            t.actions.push(Action::Serve(record.committed.clone()));
        }
        (Event::Restarted, Some(Phase::Stored | Phase::Measured)) => {
            let rev = t.candidate_mut().rev.clone();
            t.actions.push(Action::Serve(record.committed.clone()));
            t.actions.push(Action::Measure(rev));
        }
        (Event::Restarted, Some(Phase::Activated)) => {
            let rev = t.candidate_mut().rev.clone();
            t.actions.push(Action::Serve(Some(rev.clone())));
            t.actions.push(Action::RunHealth(rev));
        }
        (Event::Restarted, Some(Phase::Trial)) => {
            let c = t.candidate_mut();
            c.restarts = c.restarts.saturating_add(1);
            let (restarts, rev) = (c.restarts, c.rev.clone());
            if restarts >= trial.max_restarts {
                t.roll_back_candidate(&format!(
                    "crashed/restarted {restarts} times during trial (limit {})",
                    trial.max_restarts
                ));
            } else {
                t.emit(
                    "trial_restarted",
                    severity::WARNING,
                    json!({"digest": rev.digest, "version": rev.version, "sequence": rev.sequence,
                           "restarts": restarts, "max_restarts": trial.max_restarts}),
                );
                t.actions.push(Action::Serve(Some(rev)));
            }
        }
        (Event::RollbackRequested, Some(_)) => t.roll_back_candidate(OPERATOR_ROLLBACK),
        (Event::RollbackRequested, None) => {
            if t.next.history.is_empty() {
                return Err(LifecycleError::NoRollbackTarget {
                    name: record.name.clone(),
                });
            }
            let to = t.next.history.remove(0);
            let from = t.next.committed.replace(to.clone());
            t.emit(
                "rolled_back",
                severity::WARNING,
                json!({"from": from.as_ref().map(Revision::summary), "to": to.summary(),
                       "reason": OPERATOR_ROLLBACK}),
            );
            if let Some(from) = from {
                t.quarantine(&from, OPERATOR_ROLLBACK);
            }
            t.actions.push(Action::Measure(to.clone()));
            t.actions.push(Action::Serve(Some(to)));
            t.actions.push(Action::CollectGarbage);
        }
        (event, phase) => {
            return Err(LifecycleError::InvalidEvent {
                name: record.name.clone(),
                event: event.name(),
                state: match phase {
                    None => "with no candidate".to_owned(),
                    Some(p) => format!("while the candidate is {}", p.name()),
                },
            })
        }
    }
    Ok((t.next, t.actions))
}

/// Trims `record.history` to its `retain` newest entries; returns the trimmed record and the
/// revisions dropped (whose store entries may then be deleted unless another record needs
/// them).
pub fn trim_history(record: &ModelRecord, retain: usize) -> (ModelRecord, Vec<Revision>) {
    let mut next = record.clone();
    let dropped = if next.history.len() > retain {
        next.history.split_off(retain)
    } else {
        Vec::new()
    };
    (next, dropped)
}

struct Transition {
    next: ModelRecord,
    actions: Vec<Action>,
    now: i64,
}

impl Transition {
    fn candidate_mut(&mut self) -> &mut Candidate {
        // Only called in arms matched on `Some(phase)`.
        self.next
            .candidate
            .as_mut()
            .expect("matched on a candidate phase")
    }

    fn emit(&mut self, kind: &str, severity: &str, details: Value) {
        let unix_ms = u64::try_from(self.now).unwrap_or(0).saturating_mul(1000);
        self.actions.push(Action::Emit(LifecycleEvent::new(
            kind,
            severity,
            Some(&self.next.name),
            details,
            unix_ms,
        )));
    }

    fn quarantine(&mut self, rev: &Revision, reason: &str) {
        self.next.quarantined.push(Quarantined {
            digest: rev.digest.clone(),
            sequence: rev.sequence,
            reason: reason.to_owned(),
        });
        let excess = self.next.quarantined.len().saturating_sub(MAX_QUARANTINED);
        self.next.quarantined.drain(..excess);
        self.emit(
            "quarantined",
            severity::WARNING,
            json!({"digest": rev.digest, "version": rev.version, "sequence": rev.sequence,
                   "reason": reason}),
        );
        self.actions.push(Action::Quarantine {
            digest: rev.digest.clone(),
            reason: reason.to_owned(),
        });
    }

    /// Drops the candidate, quarantines it and serves the committed revision again.
    fn roll_back_candidate(&mut self, reason: &str) {
        let candidate = self
            .next
            .candidate
            .take()
            .expect("a candidate to roll back");
        let to = self.next.committed.clone();
        self.emit(
            "rolled_back",
            severity::WARNING,
            json!({"from": candidate.rev.summary(), "to": to.as_ref().map(Revision::summary),
                   "reason": reason}),
        );
        self.quarantine(&candidate.rev, reason);
        self.actions.push(Action::Serve(to));
        self.actions.push(Action::CollectGarbage);
    }

    /// Ends the trial when its requests or its time are used up: commit if the error rate is
    /// within the policy, else roll back.
    fn finish_trial_if_due(&mut self, trial: &TrialPolicy) {
        let c = self.candidate_mut().clone();
        let by_requests = c.requests >= trial.requests;
        let by_time = self.now.saturating_sub(c.since) >= i64::from(trial.seconds);
        if !(by_requests || by_time) {
            return;
        }
        let rate = if c.requests == 0 {
            0.0
        } else {
            f64::from(c.errors) / f64::from(c.requests)
        };
        if rate <= trial.max_error_rate {
            self.commit_candidate(&c);
        } else {
            self.roll_back_candidate(&format!(
                "error rate {:.1}% ({} of {} requests) above the maximum {:.1}% during the trial",
                rate * 100.0,
                c.errors,
                c.requests,
                trial.max_error_rate * 100.0
            ));
        }
    }

    fn commit_candidate(&mut self, c: &Candidate) {
        self.next.candidate = None;
        let previous = self.next.committed.replace(c.rev.clone());
        self.emit(
            "committed",
            severity::INFO,
            json!({"digest": c.rev.digest, "version": c.rev.version, "sequence": c.rev.sequence,
                   "previous": previous.as_ref().map(Revision::summary),
                   "requests": c.requests, "errors": c.errors, "restarts": c.restarts,
                   "trial_seconds": self.now.saturating_sub(c.since)}),
        );
        if let Some(previous) = previous {
            self.next.history.insert(0, previous);
        }
        self.actions.push(Action::Serve(Some(c.rev.clone())));
        self.actions.push(Action::CollectGarbage);
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
