//! The progress line on stderr: how far through the log (offsets), records/s, and the ETA
//! from the end offsets.

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How often the line is redrawn in place on a terminal.
const TERMINAL_EVERY: Duration = Duration::from_millis(500);

/// How often a line is written when stderr is not a terminal (a log file, a pipe): each one
/// stays, so fewer.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Width of the bar, in characters.
const BAR_WIDTH: usize = 30;

/// The progress line, shared by the lanes.
pub(super) struct Progress {
    enabled: bool,
    /// stderr is a terminal: one line redrawn with `\r`; otherwise a plain line now and then.
    terminal: bool,
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
            terminal: std::io::stderr().is_terminal(),
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
        // The total grows with the log: events that arrive during the rebuild are read in
        // the same pass, past the ends the pass started with. When done exceeds the total
        // known, the total is raised, so the line never shows more than 100%.
        self.total = self.total.max(self.done);
        let every = if self.terminal {
            TERMINAL_EVERY
        } else {
            PLAIN_EVERY
        };
        if self.enabled && self.last_print.elapsed() >= every {
            self.last_print = Instant::now();
            self.print();
        }
    }

    /// The last line, which stays.
    pub(super) fn finish(&mut self) {
        if self.enabled {
            self.print();
            if self.terminal {
                eprintln!();
            }
        }
    }

    fn print(&self) {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(self.frame(self.started.elapsed()).as_bytes());
        let _ = err.flush();
    }

    /// What one print writes: on a terminal the line redrawn over the last one, elsewhere a
    /// line of its own.
    fn frame(&self, elapsed: Duration) -> String {
        let line = self.line(elapsed);
        if self.terminal {
            format!("\r{line}   ")
        } else {
            format!("{line}\n")
        }
    }

    /// The line, `elapsed` after the start.
    fn line(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let rate = self.records as f64 / secs;
        let offset_rate = self.done as f64 / secs;
        let left = self.total.saturating_sub(self.done);
        let eta = if offset_rate > 0.0 {
            left as f64 / offset_rate
        } else {
            0.0
        };
        let pct = percent(self.done, self.total);
        format!(
            "rebuilding {} [{}] {pct:.0}% of the log, {} records, {rate:.0} records/s, ETA {eta:.0}s",
            self.name,
            bar(pct),
            self.records
        )
    }
}

/// How much of the log is read; an empty log is all read.
fn percent(done: u64, total: u64) -> f64 {
    if total > 0 {
        done as f64 * 100.0 / total as f64
    } else {
        100.0
    }
}

/// `#` for the part read, `-` for the rest.
fn bar(pct: f64) -> String {
    let filled = (((pct / 100.0) * BAR_WIDTH as f64) as usize).min(BAR_WIDTH);
    "#".repeat(filled) + &"-".repeat(BAR_WIDTH - filled)
}

/// Locks the shared progress line (a poisoned lock still holds usable counters).
pub(super) fn lock(progress: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    progress.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Progress {
        Progress::new(false, "users.v1")
    }

    #[test]
    fn the_line_says_how_far_how_fast_and_how_long_is_left() {
        let mut p = quiet();
        p.add_total(1_000);
        p.advance(500, 400);
        assert_eq!(
            p.line(Duration::from_secs(10)),
            "rebuilding users.v1 [###############---------------] 50% of the log, \
             400 records, 40 records/s, ETA 10s"
        );
    }

    #[test]
    fn an_empty_log_is_all_read() {
        let p = quiet();
        assert_eq!(percent(0, 0), 100.0);
        assert!(
            p.line(Duration::ZERO)
                .contains(&format!("[{}] 100% of the log", "#".repeat(BAR_WIDTH))),
            "{}",
            p.line(Duration::ZERO)
        );
    }

    #[test]
    fn events_arriving_during_the_rebuild_raise_the_total_not_the_percentage() {
        let mut p = quiet();
        p.add_total(100);
        // The pass read 30 events that arrived after it took the end offsets.
        p.advance(130, 130);
        assert_eq!(p.total, 130);
        let line = p.line(Duration::from_secs(1));
        assert!(line.contains("] 100% of the log"), "{line}");
        assert!(line.contains("ETA 0s"), "{line}");
        // The next pass: the ends moved 70 past where the lanes are now.
        p.add_total(70);
        assert_eq!(p.total, 200);
        p.advance(20, 20);
        let line = p.line(Duration::from_secs(1));
        assert!(line.contains("] 75% of the log"), "{line}");
    }

    #[test]
    fn the_percentage_never_exceeds_100() {
        let mut p = quiet();
        for step in 0..50u64 {
            if step % 7 == 0 {
                p.add_total(step * 3);
            }
            p.advance(step % 5, step % 5);
            assert!(p.done <= p.total, "step {step}");
            assert!(percent(p.done, p.total) <= 100.0, "step {step}");
        }
    }

    #[test]
    fn a_terminal_gets_the_line_redrawn_and_anything_else_plain_lines() {
        let mut p = quiet();
        p.add_total(10);
        p.advance(5, 5);
        let elapsed = Duration::from_secs(1);
        p.terminal = true;
        let redrawn = p.frame(elapsed);
        assert!(
            redrawn.starts_with("\rrebuilding users.v1 ["),
            "{redrawn:?}"
        );
        assert!(!redrawn.contains('\n'), "{redrawn:?}");
        p.terminal = false;
        let plain = p.frame(elapsed);
        assert_eq!(plain, format!("{}\n", p.line(elapsed)));
        assert!(!plain.contains('\r'), "{plain:?}");
    }

    #[test]
    fn the_bar_fills_with_the_percentage() {
        assert_eq!(bar(0.0), "-".repeat(BAR_WIDTH));
        assert_eq!(bar(100.0), "#".repeat(BAR_WIDTH));
        assert_eq!(bar(10.0), format!("{}{}", "###", "-".repeat(27)));
    }
}
