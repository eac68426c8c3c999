//! Failpoints: named places where a fault drill kills the process, so a `kill -9` lands
//! exactly in the window that matters (ARCHITECTURE.md, "Where each guarantee lives"), or
//! where it injects an error.
//!
//! Compiled in only with the `failpoints` feature; armed by `CHOREO_FAILPOINT=<name>` (on the
//! first hit) or `CHOREO_FAILPOINT=<name>@<n>` (on the n-th hit). Hold points are armed apart,
//! several at once: `CHOREO_FAILPOINT_HOLD=<name>,<name>` with `CHOREO_FAILPOINT_HOLD_DIR`
//! (see [`hold`]). Without the feature these are all empty inline functions.

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

/// Marks a hold point: when `name` is listed in `CHOREO_FAILPOINT_HOLD` (comma-separated), its
/// first hit blocks the calling thread until the file `{CHOREO_FAILPOINT_HOLD_DIR}/{name}`
/// exists (at most ten minutes), printing `choreo failpoint {name}: holding` first. A drill
/// orders two threads of one process this way, e.g. a worker that goes on with a stale batch
/// while the poll thread is held before it learns the partition is gone; it waits on
/// conditions, never on time. Later hits pass.
#[cfg(feature = "failpoints")]
pub fn hold(name: &str) {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    static HELD: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static SETTING: std::sync::OnceLock<(Vec<String>, Option<std::path::PathBuf>)> =
        std::sync::OnceLock::new();
    let (names, dir) = SETTING.get_or_init(|| {
        let names = std::env::var("CHOREO_FAILPOINT_HOLD")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        let dir = std::env::var_os("CHOREO_FAILPOINT_HOLD_DIR").map(Into::into);
        (names, dir)
    });
    let Some(dir) = dir else { return };
    if !names.iter().any(|n| n == name) {
        return;
    }
    {
        let mut held = HELD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if held.iter().any(|n| n == name) {
            return;
        }
        held.push(name.to_owned());
    }
    let release = dir.join(name);
    eprintln!(
        "choreo failpoint {name}: holding until {} exists",
        release.display()
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while !release.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("choreo failpoint {name}: released");
}

/// Marks a hold point (compiled out: the `failpoints` feature is off).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hold(_name: &str) {}
