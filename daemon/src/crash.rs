//! Crash points: named places between two stores that a later step depends on (the record
//! before the head that publishes it, the journal before the slot, `done` before `head`...).
//!
//! With the test-only `crashpoints` feature (enabled for `cargo test` through the crate's
//! dev-dependency on itself, never for `pip install` or `cargo build`), a daemon started with
//! `SURPD_TEST_CRASH_AT=N` aborts at the Nth point it passes: no unwinding, no destructor,
//! no flush, exactly what SIGKILL leaves. `SURPD_TEST_CRASH_AT=0` counts without crashing,
//! and the daemon logs how many points it passed when it stops, so a harness can crash at
//! every point of an operation sequence in turn (`daemon/tests/crashpoints.rs`).
//!
//! Without the feature, [`point`] is an empty inline function.

#[cfg(feature = "crashpoints")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Once;

    /// 0 = not armed (count only); n = abort at the nth point.
    static AT: AtomicU64 = AtomicU64::new(0);
    static PASSED: AtomicU64 = AtomicU64::new(0);
    static INIT: Once = Once::new();

    fn init() {
        INIT.call_once(|| {
            if let Some(n) = std::env::var("SURPD_TEST_CRASH_AT").ok().and_then(|s| s.parse().ok())
            {
                AT.store(n, Ordering::Relaxed);
            }
        });
    }

    pub fn point(name: &'static str) {
        init();
        let n = PASSED.fetch_add(1, Ordering::Relaxed) + 1;
        if n == AT.load(Ordering::Relaxed) {
            eprintln!("surpd crash point {n} {name}: aborting");
            std::process::abort();
        }
    }

    pub fn passed() -> u64 {
        PASSED.load(Ordering::Relaxed)
    }
}

/// A crash point (see the module doc). `name` says which store was just made.
#[cfg(feature = "crashpoints")]
#[inline]
pub fn point(name: &'static str) {
    imp::point(name)
}

#[cfg(not(feature = "crashpoints"))]
#[inline(always)]
pub fn point(_name: &'static str) {}

/// How many crash points this process passed (0 without the feature).
pub fn passed() -> u64 {
    #[cfg(feature = "crashpoints")]
    {
        imp::passed()
    }
    #[cfg(not(feature = "crashpoints"))]
    {
        0
    }
}

/// Test-only: panic here (a bug standing in) when `SURPD_TEST_PANIC` names this place.
/// Without the `crashpoints` feature, nothing.
#[inline(always)]
pub fn panic_point(_name: &'static str) {
    #[cfg(feature = "crashpoints")]
    if std::env::var("SURPD_TEST_PANIC").is_ok_and(|v| v == _name) {
        panic!("SURPD_TEST_PANIC at {_name}");
    }
}
