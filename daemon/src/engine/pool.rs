//! Run states kept between inferences: one in a slot taken and given back with a single
//! atomic swap each, the rest behind a lock.
//!
//! Most of the time one request at a time runs a model, and its state goes back before the
//! next one starts: that state lives in the hot slot, and taking and returning it costs two
//! atomic operations instead of a lock's four (lock and unlock, twice). For a model of a few
//! microseconds that is a measurable share of the guard (docs/performance.md). Runs that
//! overlap take states from the locked list, or a fresh one.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

/// At most `max` states of type `T`, kept for reuse.
///
/// `StatePool<T>` is `Send` and `Sync` exactly when `T` is `Send`: `AtomicPtr` is both for
/// any `T`, and the `Mutex<Vec<Box<T>>>` beside it is both only when `T: Send`. That is what
/// moving a state between threads through the pool needs, as with a `Mutex<Vec<T>>`.
pub(crate) struct StatePool<T> {
    /// Null, or a pointer from `Box::into_raw` that only the pool owns.
    hot: AtomicPtr<T>,
    rest: Mutex<Vec<Box<T>>>,
    max: usize,
}

impl<T> StatePool<T> {
    /// A pool holding `first`, keeping at most `max` (at least one) states.
    pub(crate) fn new(first: T, max: usize) -> Self {
        Self {
            hot: AtomicPtr::new(Box::into_raw(Box::new(first))),
            rest: Mutex::new(Vec::new()),
            max: max.max(1),
        }
    }

    /// A kept state, if any.
    pub(crate) fn take(&self) -> Option<Box<T>> {
        let hot = self.hot.swap(ptr::null_mut(), Ordering::Acquire);
        if !hot.is_null() {
            // SAFETY: a non-null pointer in `hot` came from `Box::into_raw` (in `new` or
            // `give`) and belongs to the pool alone. The swap took it out and left null, so
            // no other call can obtain it: this one owns it, and rebuilds the box once.
            return Some(unsafe { Box::from_raw(hot) });
        }
        self.rest.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keeps `state` for a later run, or drops it when the pool is full.
    pub(crate) fn give(&self, state: Box<T>) {
        let raw = Box::into_raw(state);
        let kept =
            self.hot
                .compare_exchange(ptr::null_mut(), raw, Ordering::Release, Ordering::Relaxed);
        if kept.is_ok() {
            return;
        }
        // SAFETY: `raw` came from `Box::into_raw` just above and the failed exchange did not
        // store it anywhere: this call still owns it alone.
        let state = unsafe { Box::from_raw(raw) };
        let mut rest = self.rest.lock().unwrap_or_else(|p| p.into_inner());
        if rest.len() + 1 < self.max {
            rest.push(state);
        }
    }

    /// How many states are kept (the hot one counted when present).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let hot = usize::from(!self.hot.load(Ordering::Acquire).is_null());
        hot + self.rest.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl<T> Drop for StatePool<T> {
    fn drop(&mut self) {
        let hot = *self.hot.get_mut();
        if !hot.is_null() {
            // SAFETY: `&mut self` excludes every other call; a non-null `hot` came from
            // `Box::into_raw` and is owned by the pool, which frees it once, here.
            drop(unsafe { Box::from_raw(hot) });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    /// A state that counts how many of its kind are alive.
    struct Counted(Arc<AtomicUsize>);

    impl Counted {
        fn new(alive: &Arc<AtomicUsize>) -> Self {
            alive.fetch_add(1, Ordering::SeqCst);
            Counted(alive.clone())
        }
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn states_go_round_the_hot_slot_then_the_list_and_never_beyond_the_limit() {
        let alive = Arc::new(AtomicUsize::new(0));
        let pool = StatePool::new(Counted::new(&alive), 3);
        assert_eq!(pool.len(), 1);
        let a = pool.take().expect("the first state");
        assert!(pool.take().is_none(), "one state was kept");
        pool.give(a);
        let a = pool.take().expect("the state given back");
        // Four overlapping runs give four states back: three are kept, one is dropped.
        let more: Vec<_> = (0..3).map(|_| Box::new(Counted::new(&alive))).collect();
        pool.give(a);
        for s in more {
            pool.give(s);
        }
        assert_eq!(pool.len(), 3);
        assert_eq!(alive.load(Ordering::SeqCst), 3);
        drop(pool);
        assert_eq!(
            alive.load(Ordering::SeqCst),
            0,
            "the pool frees what it keeps"
        );
    }

    #[test]
    fn threads_taking_and_giving_at_once_neither_lose_nor_duplicate_a_state() {
        let alive = Arc::new(AtomicUsize::new(0));
        let pool = StatePool::new(Counted::new(&alive), 8);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let state = pool
                            .take()
                            .unwrap_or_else(|| Box::new(Counted::new(&alive)));
                        std::hint::spin_loop();
                        pool.give(state);
                    }
                });
            }
        });
        // Every state ever made is either kept or was dropped for want of room: none leaked,
        // none freed twice (the count would wrap).
        let kept = pool.len();
        assert!((1..=8).contains(&kept), "{kept} kept");
        assert_eq!(alive.load(Ordering::SeqCst), kept);
        drop(pool);
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }
}
