//! Installs racing each other, and trial accounting while a transition runs.

mod common;

use std::io::Read;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mint_updater::updater::UpdateError;

/// A reader that tells when it is first read, then waits to be released.
struct Gate {
    bytes: std::io::Cursor<Vec<u8>>,
    started: Option<mpsc::Sender<()>>,
    release: mpsc::Receiver<()>,
}

impl Read for Gate {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(started) = self.started.take() {
            started.send(()).unwrap();
            self.release.recv().unwrap();
        }
        self.bytes.read(buf)
    }
}

#[test]
fn a_second_install_racing_the_first_is_told_busy() {
    let fx = Fixture::new();
    let updater = Arc::new(fx.open());
    let first = std::fs::read(fx.bundle(&Spec::new("mlp", 1))).unwrap();
    let second = fx.bundle(&Spec::new("other", 1));
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let worker = {
        let updater = updater.clone();
        std::thread::spawn(move || {
            let mut gate = Gate {
                bytes: std::io::Cursor::new(first),
                started: Some(started_tx),
                release: release_rx,
            };
            updater.try_install(&mut gate, &mut |_| {})
        })
    };
    started_rx.recv().unwrap();
    let mut file = std::io::BufReader::new(std::fs::File::open(&second).unwrap());
    let err = updater.try_install(&mut file, &mut |_| {}).unwrap_err();
    assert!(matches!(err, UpdateError::Busy { name: None, .. }), "{err}");
    assert_eq!(err.to_string(), "busy: another install is in progress");
    release_tx.send(()).unwrap();
    on_trial(worker.join().unwrap().unwrap());
    // Once the first is done, the second goes through.
    on_trial(install(&updater, &second).unwrap());
}

#[test]
fn trial_accounting_does_not_wait_for_a_running_health_check() {
    let mut fx = Fixture::new();
    fx.health_timeout = Duration::from_millis(1500);
    let updater = Arc::new(fx.open());
    on_trial(install(&updater, &fx.bundle(&Spec::new("fast", 1))).unwrap());
    let hang = fx.bundle(&Spec::new("slow", 1).behaving("HANG"));
    let worker = {
        let updater = updater.clone();
        std::thread::spawn(move || install(&updater, &hang))
    };
    // Wait until the hung health check holds the transition lock.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fx.health.calls.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    for _ in 0..5 {
        updater.record_request("fast", true);
    }
    updater.tick();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    worker.join().unwrap().unwrap();
    // Counted as soon as the transition ended.
    updater.tick();
    assert!(record(&updater, "fast").committed.is_some());
}
