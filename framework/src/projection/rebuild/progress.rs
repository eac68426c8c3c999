//! The progress line on stderr.

use std::io::Write;
use std::time::{Duration, Instant};

/// The progress line: how far through the log (offsets), records/s, and the ETA from the end
/// offsets.
pub(super) struct Progress {
    enabled: bool,
    name: String,
    /// Offsets to read, and read so far.
    total: u64,
    done: u64,
    records: u64,
    started: Instant,
    last_print: Instant,
}

impl Progress {
    pub(super) fn new(enabled: bool, name: &str) -> Self {
        let now = Instant::now();
        Self {
            enabled,
            name: name.to_owned(),
            total: 0,
            done: 0,
            records: 0,
            started: now,
            last_print: now,
        }
    }

    /// More offsets to read (the ends moved since the last pass).
    pub(super) fn add_total(&mut self, more: u64) {
        self.total = (self.total + more).max(self.done);
    }

    pub(super) fn advance(&mut self, offsets: u64, records: u64) {
        self.done += offsets;
        self.records += records;
        if self.enabled && self.last_print.elapsed() >= Duration::from_millis(500) {
            self.last_print = Instant::now();
            self.print();
        }
    }

    fn print(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.records as f64 / secs;
        let offset_rate = self.done as f64 / secs;
        let left = self.total.saturating_sub(self.done);
        let eta = if offset_rate > 0.0 {
            left as f64 / offset_rate
        } else {
            0.0
        };
        let pct = if self.total > 0 {
            self.done as f64 * 100.0 / self.total as f64
        } else {
            100.0
        };
        let width = 30usize;
        let filled = ((pct / 100.0) * width as f64) as usize;
        let bar: String = "#".repeat(filled.min(width)) + &"-".repeat(width - filled.min(width));
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\rrebuilding {} [{bar}] {pct:.0}% of the log, {} records, {rate:.0} records/s, ETA {eta:.0}s   ",
            self.name, self.records
        );
        let _ = err.flush();
    }

    pub(super) fn finish(&mut self) {
        if self.enabled {
            self.print();
            eprintln!();
        }
    }
}

/// Locks the shared progress line (a poisoned lock still holds usable counters).
pub(super) fn lock(progress: &std::sync::Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    progress
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
