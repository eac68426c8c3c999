//! Failpoints: named places where a fault drill kills the process, so a `kill -9` lands
//! exactly in the window that matters (ARCHITECTURE.md, "Where each guarantee lives"), or
//! where it injects an error.
//!
//! Compiled in only with the `failpoints` feature; armed by `CHOREO_FAILPOINT=<name>` (on the
//! first hit) or `CHOREO_FAILPOINT=<name>@<n>` (on the n-th hit). Without the feature [`hit`]
//! and [`inject`] are empty inline functions.

/// `CHOREO_FAILPOINT` as it was when first asked for: read once (a hot path may hit a
/// failpoint per message), never changed while the process runs.
#[cfg(feature = "failpoints")]
fn setting() -> Option<&'static str> {
    static SETTING: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    SETTING
        .get_or_init(|| std::env::var("CHOREO_FAILPOINT").ok())
        .as_deref()
}

/// Whether the armed failpoint is `name` and this hit is the n-th or later.
#[cfg(feature = "failpoints")]
fn armed(name: &str) -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some(armed) = setting() else {
        return false;
    };
    let (armed_name, nth) = match armed.split_once('@') {
        Some((n, count)) => (n, count.parse::<u64>().unwrap_or(1)),
        None => (armed, 1),
    };
    armed_name == name && HITS.fetch_add(1, Ordering::AcqRel) + 1 >= nth
}

/// Marks a failpoint: aborts the process when it is armed.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    if armed(name) {
        eprintln!("choreo failpoint {name}: aborting the process");
        std::process::abort();
    }
}

/// Marks an injection point: `true` exactly once, on the armed hit (the caller then acts as
/// if the named fault happened).
#[cfg(feature = "failpoints")]
pub fn inject(name: &str) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static FIRED: AtomicBool = AtomicBool::new(false);
    if armed(name) && !FIRED.swap(true, Ordering::AcqRel) {
        eprintln!("choreo failpoint {name}: injecting the fault");
        return true;
    }
    false
}

/// Marks a stall point: sleeps `duration` on every hit while it is armed (by name, without
/// `@n`), so a drill can make something slow, e.g. a restore a rebalance must overtake.
#[cfg(feature = "failpoints")]
pub fn stall(name: &str, duration: std::time::Duration) {
    if setting() == Some(name) {
        eprintln!("choreo failpoint {name}: stalling for {duration:?}");
        std::thread::sleep(duration);
    }
}

/// Marks a stall point (compiled out: the `failpoints` feature is off).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn stall(_name: &str, _duration: std::time::Duration) {}

/// Marks a failpoint (compiled out: the `failpoints` feature is off).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Marks an injection point (compiled out: the `failpoints` feature is off).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn inject(_name: &str) -> bool {
    false
}
