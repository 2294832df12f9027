//! Periodic re-verification of the model store, on its own low-priority thread.
//!
//! Every `monitor.rehash_interval_secs` the store entries the models refer to are hashed
//! again at no more than `monitor.rehash_bytes_per_sec` ([`Updater::verify_store`]). A copy
//! that changed is reported once (`tamper_detected`, critical) and never loaded again; the
//! model in memory keeps serving, because it was checked right before it was parsed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mint_updater::updater::Updater;

/// Counters of the re-verification, for `/metrics` and telemetry.
#[derive(Debug, Default)]
pub struct StoreWatch {
    /// Completed passes.
    pub passes: AtomicU64,
    /// Entries found tampered since start.
    pub tampered: AtomicU64,
    /// Bytes hashed since start.
    pub bytes: AtomicU64,
    /// When the last pass completed, unix seconds (0 = never).
    pub last_pass_unix: AtomicU64,
}

/// The re-verification thread; stopped (and joined) on drop.
pub struct Reverifier {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reverifier {
    /// Starts the thread, or nothing when `interval` is zero.
    pub fn start(
        updater: Arc<Updater>,
        watch: Arc<StoreWatch>,
        interval: Duration,
        bytes_per_sec: u64,
    ) -> std::io::Result<Option<Self>> {
        if interval.is_zero() {
            tracing::info!("store re-verification is off (monitor.rehash_interval_secs = 0)");
            return Ok(None);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("mintd-reverify".into())
                .spawn(move || {
                    lower_priority();
                    run(&updater, &watch, interval, bytes_per_sec, &stop);
                })?
        };
        Ok(Some(Self {
            stop,
            thread: Some(thread),
        }))
    }
}

impl Drop for Reverifier {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn run(
    updater: &Updater,
    watch: &StoreWatch,
    interval: Duration,
    bytes_per_sec: u64,
    stop: &AtomicBool,
) {
    let stopped = || stop.load(Ordering::Acquire);
    loop {
        let until = Instant::now() + interval;
        while !stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::park_timeout(left);
        }
        if stopped() {
            return;
        }
        let started = Instant::now();
        match updater.verify_store(bytes_per_sec, &stopped) {
            Ok(check) => {
                watch.bytes.fetch_add(check.bytes, Ordering::Relaxed);
                if check.stopped {
                    return;
                }
                watch
                    .tampered
                    .fetch_add(check.tampered.len() as u64, Ordering::Relaxed);
                watch.passes.fetch_add(1, Ordering::Relaxed);
                watch.last_pass_unix.store(unix_secs(), Ordering::Relaxed);
                tracing::info!(
                    intact = check.intact,
                    tampered = check.tampered.len(),
                    bytes = check.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "store re-verified"
                );
            }
            Err(e) => tracing::error!(error = %e, "store re-verification failed"),
        }
    }
}

/// Asks the kernel to run this thread last: nice 19 and the idle I/O class. Under the
/// shipped systemd unit both calls are filtered (`@resources`, answered with EPERM); the
/// read rate bound still holds, so a refusal is only logged.
fn lower_priority() {
    // SAFETY: setpriority takes three integers and touches no memory of ours; `who = 0`
    // means the calling thread on Linux.
    let nice = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    // IOPRIO_WHO_PROCESS = 1, IOPRIO_CLASS_IDLE = 3 shifted by IOPRIO_CLASS_SHIFT = 13.
    // SAFETY: ioprio_set takes three integers and touches no memory of ours; `who = 0` is
    // the calling thread.
    let io = unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, 3 << 13) };
    if nice != 0 || io != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the re-verification thread's priority; its read rate is still bounded"
        );
    }
}

fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
