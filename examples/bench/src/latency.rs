//! Open-loop load and latency percentiles, for `send-wait` and `e2e-latency`.
//!
//! Open loop: request `i` is due at `start + i / rate` whether or not earlier ones have
//! finished, and its latency is measured from that due time, not from when it was actually
//! sent, so a sender that falls behind shows up in the figures instead of hiding in them.
//! Everything in flight is polled from one task (no task per request).

use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;

/// Fires `n` requests at `rate` per second; `fire(i, due)` starts request `i` and resolves
/// when it is done (to the instant it was observed done, or an error). Returns the latencies
/// from each due time, in request order.
pub async fn open_loop<F, Fut>(rate: f64, n: u64, mut fire: F) -> anyhow::Result<Vec<Duration>>
where
    F: FnMut(u64, Instant) -> Fut,
    Fut: Future<Output = anyhow::Result<Instant>>,
{
    let period = Duration::from_secs_f64(1.0 / rate);
    // A short lead so the first due time is not already past.
    let start = Instant::now() + Duration::from_millis(20);
    let mut latencies = vec![Duration::ZERO; usize::try_from(n)?];
    let mut inflight = FuturesUnordered::new();
    let mut next = 0u64;
    let mut behind = Duration::ZERO;
    loop {
        if next < n {
            let due = start + period.mul_f64(next as f64);
            tokio::select! {
                biased;
                Some((i, due, done)) = inflight.next(), if !inflight.is_empty() => {
                    record(&mut latencies, i, due, done)?;
                }
                _ = tokio::time::sleep_until(due.into()) => {
                    behind = behind.max(Instant::now().saturating_duration_since(due));
                    let request = fire(next, due);
                    let i = next;
                    inflight.push(async move { (i, due, request.await) });
                    next += 1;
                }
            }
        } else {
            match inflight.next().await {
                Some((i, due, done)) => record(&mut latencies, i, due, done)?,
                None => break,
            }
        }
    }
    if behind > Duration::from_millis(50) {
        eprintln!(
            "note: the load generator started a request up to {} ms late (counted in the latency)",
            behind.as_millis()
        );
    }
    Ok(latencies)
}

fn record(
    latencies: &mut [Duration],
    i: u64,
    due: Instant,
    done: anyhow::Result<Instant>,
) -> anyhow::Result<()> {
    let done = done.map_err(|e| e.context(format!("request {i}")))?;
    latencies[usize::try_from(i)?] = done.saturating_duration_since(due);
    Ok(())
}

/// Latencies of one side, over its rounds.
#[derive(Debug, Default, Clone)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    pub fn extend(&mut self, more: &[Duration]) {
        self.0.extend_from_slice(more);
    }

    /// The `q` quantile (nearest rank), in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.0, q)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// The `q` quantile (nearest rank) of `values`, in milliseconds; 0 for none.
pub fn quantile_ms(values: &[Duration], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e3
}

/// One line of a round: count, p50, p90, p99, max.
pub fn describe(values: &[Duration]) -> String {
    format!(
        "{} requests, p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        values.len(),
        quantile_ms(values, 0.5),
        quantile_ms(values, 0.9),
        quantile_ms(values, 0.99),
        quantile_ms(values, 1.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&values, 0.99), 99.0);
        assert_eq!(quantile_ms(&values, 0.5), 50.0);
        assert_eq!(quantile_ms(&values, 1.0), 100.0);
        assert_eq!(quantile_ms(&values[..1], 0.99), 1.0);
        assert_eq!(quantile_ms(&[], 0.99), 0.0);
    }
}
