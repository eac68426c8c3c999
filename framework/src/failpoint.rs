//! Failpoints: named places where a fault drill kills the process, so a `kill -9` lands
//! exactly in the window that matters (RELIABILITY.md).
//!
//! Compiled in only with the `failpoints` feature; armed by `CHOREO_FAILPOINT=<name>` (kill
//! on the first hit) or `CHOREO_FAILPOINT=<name>@<n>` (kill on the n-th hit). Without the
//! feature [`hit`] is an empty inline function.

/// Marks a failpoint.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Ok(armed) = std::env::var("CHOREO_FAILPOINT") else {
        return;
    };
    let (armed_name, nth) = match armed.split_once('@') {
        Some((n, count)) => (n.to_owned(), count.parse::<u64>().unwrap_or(1)),
        None => (armed, 1),
    };
    if armed_name == name && HITS.fetch_add(1, Ordering::AcqRel) + 1 >= nth {
        eprintln!("choreo failpoint {name}: aborting the process");
        std::process::abort();
    }
}

/// Marks a failpoint (compiled out: the `failpoints` feature is off).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
