//! Read-your-writes: wait until a view has passed given offsets.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::checkpoint::{self, Slot};
use crate::backoff::Backoff;
use crate::error::{Error, Result};

/// Waits until projection `projection` (`{name}.v{version}`) has applied every
/// `(topic, partition, offset)` given (its checkpoint is past each offset), or fails with
/// [`Error::Timeout`]. A caller that just wrote (and got the offsets back) calls this before
/// querying the view, so it reads its own write.
pub async fn wait_for(
    pool: &PgPool,
    projection: &str,
    offsets: &[(String, i32, i64)],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    // Polls soon, then less often: 2 ms doubling to 50 ms, with jitter.
    let mut backoff = Backoff::doubling(Duration::from_millis(2), Duration::from_millis(50));
    let mut pending: Vec<&(String, i32, i64)> = offsets.iter().collect();
    loop {
        let mut conn = pool.acquire().await.map_err(|e| Error::Postgres {
            op: "acquire",
            source: e,
        })?;
        let mut still = Vec::with_capacity(pending.len());
        for item in pending {
            let (topic, partition, offset) = item;
            let now = checkpoint::read(&mut conn, projection, Slot::Live, topic, *partition)
                .await
                .map_err(|e| Error::Postgres {
                    op: "read checkpoint",
                    source: e,
                })?;
            if now.is_none_or(|next| next <= *offset) {
                still.push(item);
            }
        }
        drop(conn);
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!(
                    "projection {projection} to pass {:?}",
                    still
                        .iter()
                        .map(|(t, p, o)| format!("{t}[{p}]@{o}"))
                        .collect::<Vec<_>>()
                ),
                after: timeout,
            });
        }
        pending = still;
        let delay = backoff.next();
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}
