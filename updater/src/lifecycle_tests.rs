//! Every (phase, event) pair with the exact next record and actions, the trial arithmetic,
//! and random event sequences against the lifecycle's invariants.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::*;

const NOW: i64 = 1_000_000;

fn rev(sequence: u64) -> Revision {
    rev_variant(sequence, 0)
}

/// Same sequence, different content when `variant` differs.
fn rev_variant(sequence: u64, variant: u64) -> Revision {
    Revision {
        digest: format!("{:032x}{:032x}", variant, sequence),
        version: format!("1.{sequence}.{variant}"),
        sequence,
        created: 100 + sequence as i64,
        model_sha256: format!("{:064x}", sequence + 1000),
    }
}

fn trial() -> TrialPolicy {
    TrialPolicy {
        requests: 10,
        seconds: 60,
        max_error_rate: 0.2,
        max_restarts: 3,
    }
}

fn summary(r: &Revision) -> Value {
    json!({"digest": r.digest, "version": r.version, "sequence": r.sequence})
}

fn emit(kind: &str, severity: &str, details: Value) -> Action {
    Action::Emit(LifecycleEvent {
        id: 0,
        unix_ms: NOW as u64 * 1000,
        kind: kind.into(),
        severity: severity.into(),
        model: Some("m".into()),
        details,
    })
}

/// Committed 2, history [1], no candidate.
fn idle() -> ModelRecord {
    ModelRecord {
        name: "m".into(),
        committed: Some(rev(2)),
        history: vec![rev(1)],
        candidate: None,
        highest_sequence: 2,
        quarantined: vec![],
    }
}

/// `idle()` with candidate 3 in `phase`, entered 10 s ago.
fn with(phase: Phase) -> ModelRecord {
    ModelRecord {
        candidate: Some(Candidate {
            rev: rev(3),
            phase,
            since: NOW - 10,
            requests: 0,
            errors: 0,
            restarts: 0,
        }),
        highest_sequence: 3,
        ..idle()
    }
}

fn run(record: &ModelRecord, event: Event) -> (ModelRecord, Vec<Action>) {
    step(record, event, NOW, &trial()).unwrap()
}

fn assert_invalid(record: &ModelRecord, event: Event, state: &str) {
    let name = event.name();
    let err = step(record, event, NOW, &trial()).unwrap_err();
    assert_eq!(
        err,
        LifecycleError::InvalidEvent {
            name: "m".into(),
            event: name,
            state: state.into(),
        }
    );
}

fn assert_noop(record: &ModelRecord, event: Event) {
    assert_eq!(run(record, event), (record.clone(), vec![]));
}

fn quarantined(r: &Revision, reason: &str) -> Quarantined {
    Quarantined {
        digest: r.digest.clone(),
        sequence: r.sequence,
        reason: reason.into(),
    }
}

/// The expected record and actions when candidate 3 of `with(_)` is rolled back.
fn rolled_back(reason: &str) -> (ModelRecord, Vec<Action>) {
    let record = ModelRecord {
        candidate: None,
        quarantined: vec![quarantined(&rev(3), reason)],
        ..with(Phase::Stored)
    };
    let actions = vec![
        emit(
            "rolled_back",
            "warning",
            json!({"from": summary(&rev(3)), "to": summary(&rev(2)), "reason": reason}),
        ),
        emit(
            "quarantined",
            "warning",
            json!({"digest": rev(3).digest, "version": rev(3).version, "sequence": 3,
                   "reason": reason}),
        ),
        Action::Quarantine {
            digest: rev(3).digest,
            reason: reason.into(),
        },
        Action::Serve(Some(rev(2))),
        Action::CollectGarbage,
    ];
    (record, actions)
}

fn health_failed(reason: &str) -> (ModelRecord, Vec<Action>) {
    let (record, mut actions) = rolled_back(reason);
    actions.insert(
        0,
        emit(
            "health_failed",
            "warning",
            json!({"digest": rev(3).digest, "version": rev(3).version, "sequence": 3,
                   "reason": reason}),
        ),
    );
    (record, actions)
}

/// The expected record and actions when candidate 3 of `c` commits.
fn committed(c: &Candidate) -> (ModelRecord, Vec<Action>) {
    let record = ModelRecord {
        committed: Some(rev(3)),
        history: vec![rev(2), rev(1)],
        candidate: None,
        highest_sequence: 3,
        ..idle()
    };
    let actions = vec![
        emit(
            "committed",
            "info",
            json!({"digest": rev(3).digest, "version": rev(3).version, "sequence": 3,
                   "previous": summary(&rev(2)), "requests": c.requests, "errors": c.errors,
                   "restarts": c.restarts, "trial_seconds": NOW - c.since}),
        ),
        Action::Serve(Some(rev(3))),
        Action::CollectGarbage,
    ];
    (record, actions)
}

// ---- no candidate ----

#[test]
fn idle_stored_starts_a_candidate_and_measures() {
    let (next, actions) = run(&idle(), Event::Stored(rev(3)));
    let expected = ModelRecord {
        candidate: Some(Candidate {
            rev: rev(3),
            phase: Phase::Stored,
            since: NOW,
            requests: 0,
            errors: 0,
            restarts: 0,
        }),
        ..with(Phase::Stored)
    };
    assert_eq!(next, expected);
    assert_eq!(
        actions,
        vec![
            emit("stored", "info", summary(&rev(3))),
            Action::Measure(rev(3))
        ]
    );
}

#[test]
fn idle_measured_is_invalid() {
    assert_invalid(&idle(), Event::Measured, "with no candidate");
}

#[test]
fn idle_health_passed_is_invalid() {
    assert_invalid(&idle(), Event::HealthPassed, "with no candidate");
}

#[test]
fn idle_health_failed_is_invalid() {
    assert_invalid(
        &idle(),
        Event::HealthFailed("x".into()),
        "with no candidate",
    );
}

#[test]
fn idle_request_done_is_ignored() {
    assert_noop(&idle(), Event::RequestDone { ok: false });
}

#[test]
fn idle_tick_is_ignored() {
    assert_noop(&idle(), Event::Tick);
}

#[test]
fn idle_restarted_serves_the_committed_revision() {
    assert_eq!(
        run(&idle(), Event::Restarted),
        (idle(), vec![Action::Serve(Some(rev(2)))])
    );
    let empty = ModelRecord::new("m");
    assert_eq!(
        run(&empty, Event::Restarted),
        (empty.clone(), vec![Action::Serve(None)])
    );
}

#[test]
fn idle_rollback_switches_to_history_and_quarantines_the_committed() {
    let (next, actions) = run(&idle(), Event::RollbackRequested);
    let expected = ModelRecord {
        committed: Some(rev(1)),
        history: vec![],
        quarantined: vec![quarantined(&rev(2), OPERATOR_ROLLBACK)],
        ..idle()
    };
    assert_eq!(next, expected);
    assert_eq!(
        actions,
        vec![
            emit(
                "rolled_back",
                "warning",
                json!({"from": summary(&rev(2)), "to": summary(&rev(1)),
                       "reason": OPERATOR_ROLLBACK})
            ),
            emit(
                "quarantined",
                "warning",
                json!({"digest": rev(2).digest, "version": rev(2).version, "sequence": 2,
                       "reason": OPERATOR_ROLLBACK})
            ),
            Action::Quarantine {
                digest: rev(2).digest,
                reason: OPERATOR_ROLLBACK.into()
            },
            Action::Measure(rev(1)),
            Action::Serve(Some(rev(1))),
            Action::CollectGarbage,
        ]
    );
}

#[test]
fn idle_rollback_without_history_is_an_error() {
    let record = ModelRecord {
        history: vec![],
        ..idle()
    };
    assert_eq!(
        step(&record, Event::RollbackRequested, NOW, &trial()).unwrap_err(),
        LifecycleError::NoRollbackTarget { name: "m".into() }
    );
    assert!(step(
        &ModelRecord::new("m"),
        Event::RollbackRequested,
        NOW,
        &trial()
    )
    .is_err());
}

// ---- Stored ----

#[test]
fn stored_stored_is_invalid() {
    assert_invalid(
        &with(Phase::Stored),
        Event::Stored(rev(4)),
        "while the candidate is stored",
    );
}

fn activated_after_measured(from: Phase) {
    let (next, actions) = run(&with(from), Event::Measured);
    let mut expected = with(Phase::Activated);
    expected.candidate.as_mut().unwrap().since = NOW;
    assert_eq!(next, expected);
    assert_eq!(
        actions,
        vec![
            emit("measured", "info", summary(&rev(3))),
            emit("activated", "info", summary(&rev(3))),
            Action::Serve(Some(rev(3))),
            Action::RunHealth(rev(3)),
        ]
    );
}

#[test]
fn stored_measured_activates_and_runs_health() {
    activated_after_measured(Phase::Stored);
}

#[test]
fn stored_health_passed_is_invalid() {
    assert_invalid(
        &with(Phase::Stored),
        Event::HealthPassed,
        "while the candidate is stored",
    );
}

#[test]
fn stored_health_failed_rolls_back() {
    assert_eq!(
        run(
            &with(Phase::Stored),
            Event::HealthFailed("measurement failed".into())
        ),
        health_failed("measurement failed")
    );
}

#[test]
fn stored_request_done_is_ignored() {
    assert_noop(&with(Phase::Stored), Event::RequestDone { ok: true });
}

#[test]
fn stored_tick_is_ignored() {
    assert_noop(&with(Phase::Stored), Event::Tick);
}

#[test]
fn stored_restarted_serves_committed_and_measures_again() {
    assert_eq!(
        run(&with(Phase::Stored), Event::Restarted),
        (
            with(Phase::Stored),
            vec![Action::Serve(Some(rev(2))), Action::Measure(rev(3))]
        )
    );
}

#[test]
fn stored_rollback_rolls_the_candidate_back() {
    assert_eq!(
        run(&with(Phase::Stored), Event::RollbackRequested),
        rolled_back(OPERATOR_ROLLBACK)
    );
}

// ---- Measured ----

#[test]
fn measured_stored_is_invalid() {
    assert_invalid(
        &with(Phase::Measured),
        Event::Stored(rev(4)),
        "while the candidate is measured",
    );
}

#[test]
fn measured_measured_activates() {
    activated_after_measured(Phase::Measured);
}

#[test]
fn measured_health_passed_is_invalid() {
    assert_invalid(
        &with(Phase::Measured),
        Event::HealthPassed,
        "while the candidate is measured",
    );
}

#[test]
fn measured_health_failed_rolls_back() {
    assert_eq!(
        run(&with(Phase::Measured), Event::HealthFailed("x".into())),
        health_failed("x")
    );
}

#[test]
fn measured_request_done_is_ignored() {
    assert_noop(&with(Phase::Measured), Event::RequestDone { ok: false });
}

#[test]
fn measured_tick_is_ignored() {
    assert_noop(&with(Phase::Measured), Event::Tick);
}

#[test]
fn measured_restarted_measures_again() {
    assert_eq!(
        run(&with(Phase::Measured), Event::Restarted),
        (
            with(Phase::Measured),
            vec![Action::Serve(Some(rev(2))), Action::Measure(rev(3))]
        )
    );
}

#[test]
fn measured_rollback_rolls_the_candidate_back() {
    assert_eq!(
        run(&with(Phase::Measured), Event::RollbackRequested),
        rolled_back(OPERATOR_ROLLBACK)
    );
}

// ---- Activated ----

#[test]
fn activated_stored_is_invalid() {
    assert_invalid(
        &with(Phase::Activated),
        Event::Stored(rev(4)),
        "while the candidate is activated",
    );
}

#[test]
fn activated_measured_is_invalid() {
    assert_invalid(
        &with(Phase::Activated),
        Event::Measured,
        "while the candidate is activated",
    );
}

#[test]
fn activated_health_passed_opens_the_trial() {
    let (next, actions) = run(&with(Phase::Activated), Event::HealthPassed);
    let mut expected = with(Phase::Trial);
    expected.candidate.as_mut().unwrap().since = NOW;
    assert_eq!(next, expected);
    assert_eq!(
        actions,
        vec![emit(
            "health_passed",
            "info",
            json!({"digest": rev(3).digest, "version": rev(3).version, "sequence": 3,
                   "trial_requests": 10, "trial_seconds": 60})
        )]
    );
}

#[test]
fn activated_health_failed_rolls_back() {
    assert_eq!(
        run(
            &with(Phase::Activated),
            Event::HealthFailed("golden case #0 differs".into())
        ),
        health_failed("golden case #0 differs")
    );
}

#[test]
fn activated_request_done_is_not_trial_accounting() {
    assert_noop(&with(Phase::Activated), Event::RequestDone { ok: false });
}

#[test]
fn activated_tick_is_ignored_even_long_after() {
    let mut record = with(Phase::Activated);
    record.candidate.as_mut().unwrap().since = NOW - 10_000;
    assert_noop(&record, Event::Tick);
}

#[test]
fn activated_restarted_serves_the_candidate_and_reruns_health() {
    assert_eq!(
        run(&with(Phase::Activated), Event::Restarted),
        (
            with(Phase::Activated),
            vec![Action::Serve(Some(rev(3))), Action::RunHealth(rev(3))]
        )
    );
}

#[test]
fn activated_rollback_rolls_the_candidate_back() {
    assert_eq!(
        run(&with(Phase::Activated), Event::RollbackRequested),
        rolled_back(OPERATOR_ROLLBACK)
    );
}

// ---- Trial ----

#[test]
fn trial_stored_is_invalid() {
    assert_invalid(
        &with(Phase::Trial),
        Event::Stored(rev(4)),
        "while the candidate is trial",
    );
}

#[test]
fn trial_measured_is_invalid() {
    assert_invalid(
        &with(Phase::Trial),
        Event::Measured,
        "while the candidate is trial",
    );
}

#[test]
fn trial_health_passed_is_invalid() {
    assert_invalid(
        &with(Phase::Trial),
        Event::HealthPassed,
        "while the candidate is trial",
    );
}

#[test]
fn trial_health_failed_rolls_back() {
    assert_eq!(
        run(&with(Phase::Trial), Event::HealthFailed("x".into())),
        health_failed("x")
    );
}

#[test]
fn trial_request_done_counts() {
    let (next, actions) = run(&with(Phase::Trial), Event::RequestDone { ok: false });
    let mut expected = with(Phase::Trial);
    let c = expected.candidate.as_mut().unwrap();
    c.requests = 1;
    c.errors = 1;
    assert_eq!((next, actions), (expected, vec![]));
}

#[test]
fn trial_tick_before_the_end_changes_nothing() {
    let mut record = with(Phase::Trial);
    record.candidate.as_mut().unwrap().since = NOW - 59;
    assert_noop(&record, Event::Tick);
}

#[test]
fn trial_restarted_counts_and_keeps_serving_the_candidate() {
    let (next, actions) = run(&with(Phase::Trial), Event::Restarted);
    let mut expected = with(Phase::Trial);
    expected.candidate.as_mut().unwrap().restarts = 1;
    assert_eq!(next, expected);
    assert_eq!(
        actions,
        vec![
            emit(
                "trial_restarted",
                "warning",
                json!({"digest": rev(3).digest, "version": rev(3).version, "sequence": 3,
                       "restarts": 1, "max_restarts": 3})
            ),
            Action::Serve(Some(rev(3))),
        ]
    );
}

#[test]
fn trial_rollback_rolls_the_candidate_back() {
    assert_eq!(
        run(&with(Phase::Trial), Event::RollbackRequested),
        rolled_back(OPERATOR_ROLLBACK)
    );
}

// ---- the trial's end ----

#[test]
fn trial_commits_at_the_request_count_within_the_error_rate() {
    let mut record = with(Phase::Trial);
    let c = record.candidate.as_mut().unwrap();
    c.requests = 9;
    c.errors = 1;
    let (next, actions) = run(&record, Event::RequestDone { ok: false });
    // 2 of 10 = 20%, exactly the maximum: commits.
    let mut done = record.candidate.clone().unwrap();
    done.requests = 10;
    done.errors = 2;
    assert_eq!((next, actions), committed(&done));
}

#[test]
fn trial_rolls_back_above_the_error_rate() {
    let mut record = with(Phase::Trial);
    let c = record.candidate.as_mut().unwrap();
    c.requests = 9;
    c.errors = 2;
    let (next, actions) = run(&record, Event::RequestDone { ok: false });
    let reason = "error rate 30.0% (3 of 10 requests) above the maximum 20.0% during the trial";
    assert_eq!((next, actions), rolled_back(reason));
}

#[test]
fn trial_commits_by_time_on_tick() {
    let mut record = with(Phase::Trial);
    let c = record.candidate.as_mut().unwrap();
    c.since = NOW - 60;
    c.requests = 3;
    let done = c.clone();
    assert_eq!(run(&record, Event::Tick), committed(&done));
}

#[test]
fn trial_with_no_requests_commits_by_time() {
    let mut record = with(Phase::Trial);
    record.candidate.as_mut().unwrap().since = NOW - 61;
    let done = record.candidate.clone().unwrap();
    assert_eq!(run(&record, Event::Tick), committed(&done));
}

#[test]
fn trial_rolls_back_at_the_restart_limit() {
    let mut record = with(Phase::Trial);
    record.candidate.as_mut().unwrap().restarts = 2;
    assert_eq!(
        run(&record, Event::Restarted),
        rolled_back("crashed/restarted 3 times during trial (limit 3)")
    );
}

#[test]
fn an_empty_trial_window_commits_when_health_passes() {
    let policy = TrialPolicy {
        requests: 0,
        ..trial()
    };
    let (next, actions) = step(&with(Phase::Activated), Event::HealthPassed, NOW, &policy).unwrap();
    assert_eq!(next.committed, Some(rev(3)));
    assert!(next.candidate.is_none());
    assert_eq!(actions.len(), 4, "{actions:?}"); // health_passed, committed, Serve, GC
    assert_eq!(actions[2], Action::Serve(Some(rev(3))));
}

#[test]
fn a_first_install_that_fails_serves_nothing() {
    let record = ModelRecord::new("m");
    let (record, _) = run(&record, Event::Stored(rev(0)));
    let (record, actions) = run(&record, Event::HealthFailed("bad".into()));
    assert_eq!(record.committed, None);
    assert_eq!(record.highest_sequence, 0);
    assert!(actions.contains(&Action::Serve(None)));
    // The floor now counts sequence 0: it is not accepted again.
    assert_eq!(record.minimum_sequence(), 1);
}

// ---- guards ----

#[test]
fn a_quarantined_digest_is_not_stored_again() {
    let (record, _) = run(&with(Phase::Activated), Event::HealthFailed("bad".into()));
    let again = Revision {
        sequence: 9,
        ..rev(3)
    };
    assert_eq!(
        step(&record, Event::Stored(again), NOW, &trial()).unwrap_err(),
        LifecycleError::Quarantined {
            name: "m".into(),
            digest: rev(3).digest,
            reason: "bad".into()
        }
    );
}

#[test]
fn a_sequence_not_above_the_floor_is_not_stored() {
    for sequence in [1, 2] {
        let err = step(
            &idle(),
            Event::Stored(rev_variant(sequence, 7)),
            NOW,
            &trial(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            LifecycleError::SequenceTooLow {
                name: "m".into(),
                sequence,
                minimum: 3
            }
        );
    }
    // A failed candidate still raised the floor.
    let (record, _) = run(&with(Phase::Stored), Event::HealthFailed("x".into()));
    assert_eq!(record.highest_sequence, 3);
    assert!(step(&record, Event::Stored(rev_variant(3, 1)), NOW, &trial()).is_err());
    assert!(step(&record, Event::Stored(rev(4)), NOW, &trial()).is_ok());
}

#[test]
fn quarantine_keeps_the_newest_entries() {
    let mut record = ModelRecord::new("m");
    for s in 1..=(MAX_QUARANTINED as u64 + 5) {
        let (r, _) = run(&record, Event::Stored(rev(s)));
        let (r, _) = run(&r, Event::HealthFailed(format!("fail {s}")));
        record = r;
    }
    assert_eq!(record.quarantined.len(), MAX_QUARANTINED);
    assert_eq!(record.quarantined[0].sequence, 6);
    assert_eq!(
        record.quarantined.last().unwrap().sequence,
        MAX_QUARANTINED as u64 + 5
    );
}

#[test]
fn trim_history_keeps_the_newest() {
    let record = ModelRecord {
        history: vec![rev(5), rev(4), rev(3)],
        ..idle()
    };
    let (next, dropped) = trim_history(&record, 1);
    assert_eq!(next.history, vec![rev(5)]);
    assert_eq!(dropped, vec![rev(4), rev(3)]);
    assert_eq!(trim_history(&record, 3), (record.clone(), vec![]));
}

#[test]
fn serving_follows_the_phase() {
    assert_eq!(idle().serving(), Some(&rev(2)));
    assert_eq!(with(Phase::Stored).serving(), Some(&rev(2)));
    assert_eq!(with(Phase::Measured).serving(), Some(&rev(2)));
    assert_eq!(with(Phase::Activated).serving(), Some(&rev(3)));
    assert_eq!(with(Phase::Trial).serving(), Some(&rev(3)));
}

#[test]
fn records_round_trip_through_json() {
    let record = with(Phase::Trial);
    let json = serde_json::to_string(&record).unwrap();
    assert!(json.contains("\"phase\":\"trial\""), "{json}");
    assert_eq!(serde_json::from_str::<ModelRecord>(&json).unwrap(), record);
}

// ---- random sequences ----

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Half the time the event that moves the record on, else anything (mostly refused).
fn random_event(rng: &mut Rng, record: &ModelRecord) -> Event {
    if rng.below(2) == 0 {
        return match record.candidate.as_ref().map(|c| c.phase) {
            None => Event::Stored(rev_variant(
                record.highest_sequence + rng.below(3),
                rng.below(3),
            )),
            Some(Phase::Stored | Phase::Measured) => Event::Measured,
            Some(Phase::Activated) if rng.below(5) == 0 => Event::HealthFailed("unhealthy".into()),
            Some(Phase::Activated) => Event::HealthPassed,
            Some(Phase::Trial) if rng.below(3) == 0 => Event::Tick,
            Some(Phase::Trial) => Event::RequestDone {
                ok: rng.below(4) != 0,
            },
        };
    }
    match rng.below(10) {
        0 | 1 => Event::Stored(rev_variant(rng.below(25), rng.below(3))),
        2 => Event::Measured,
        3 => Event::HealthPassed,
        4 => Event::HealthFailed("random failure".into()),
        5 | 6 => Event::RequestDone {
            ok: rng.below(5) != 0,
        },
        7 => Event::Tick,
        8 => Event::Restarted,
        _ => Event::RollbackRequested,
    }
}

#[test]
fn random_sequences_keep_the_invariants() {
    let (mut commits, mut rollbacks, mut refused) = (0, 0, 0);
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let policy = TrialPolicy {
            requests: rng.below(6) as u32,
            seconds: rng.below(20) as u32,
            max_error_rate: [0.0, 0.25, 0.5, 1.0][rng.below(4) as usize],
            max_restarts: rng.below(4) as u32,
        };
        let mut record = ModelRecord::new("m");
        let mut ever_quarantined: HashSet<String> = HashSet::new();
        let mut now = 1_000;
        for i in 0..400 {
            now += rng.below(4) as i64;
            let event = random_event(&mut rng, &record);
            let shown = format!("{event:?}");
            let Ok((next, actions)) = step(&record, event, now, &policy) else {
                refused += 1;
                continue;
            };
            for action in &actions {
                match action {
                    Action::Emit(e) if e.kind == "committed" => commits += 1,
                    Action::Emit(e) if e.kind == "rolled_back" => rollbacks += 1,
                    _ => {}
                }
            }
            let ctx = || {
                format!("seed {seed} step {i} event {shown}\nrecord {record:?}\nnext {next:?}\nactions {actions:?}")
            };
            for action in &actions {
                if let Action::Serve(Some(r)) = action {
                    let known = next.committed.as_ref() == Some(r)
                        || next.candidate.as_ref().map(|c| &c.rev) == Some(r);
                    assert!(known, "serves an unknown revision: {}", ctx());
                }
            }
            if let Some(Action::Serve(last)) =
                actions.iter().rev().find(|a| matches!(a, Action::Serve(_)))
            {
                assert_eq!(last.as_ref(), next.serving(), "{}", ctx());
            }
            ever_quarantined.extend(next.quarantined.iter().map(|q| q.digest.clone()));
            if let Some(c) = &next.committed {
                assert!(
                    !ever_quarantined.contains(&c.digest),
                    "a quarantined digest is committed: {}",
                    ctx()
                );
                assert!(c.sequence <= next.highest_sequence, "{}", ctx());
            }
            if let Some(c) = &next.candidate {
                assert!(!ever_quarantined.contains(&c.rev.digest), "{}", ctx());
                assert!(c.rev.sequence <= next.highest_sequence, "{}", ctx());
            }
            assert!(
                next.highest_sequence >= record.highest_sequence,
                "the floor went down: {}",
                ctx()
            );
            let referenced: Vec<&str> = next.referenced_digests().collect();
            let unique: HashSet<&&str> = referenced.iter().collect();
            assert_eq!(unique.len(), referenced.len(), "a digest twice: {}", ctx());
            record = next;
        }
    }
    // The sequences reach every kind of ending, not just refusals.
    assert!(
        commits > 500 && rollbacks > 500 && refused > 500,
        "{commits} {rollbacks} {refused}"
    );
}
