//! `choreo projections status`: each projection's checkpoints against the end of the log.
//! Rebuilds need the projection's code, so they live in the service's own binary.

use std::collections::BTreeMap;

use anyhow::Context as _;
use rdkafka::consumer::Consumer;

use crate::connect::Services;
use crate::reader::REQUEST_TIMEOUT;
use crate::show;

#[derive(Debug, clap::Subcommand)]
pub enum ProjectionsCommand {
    /// Per projection, slot (live or shadow), topic and partition: the checkpoint (next
    /// offset to apply), the end of the partition (last stable offset) and the lag between
    /// them
    Status,
}

pub async fn run(services: &Services, command: ProjectionsCommand) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::Status => status(services).await,
    }
}

/// The checkpoint table of the framework's migrations. Read with SQL rather than through
/// `choreo::projection`: the CLI stands beside `service` and uses only the layers below the
/// wings (DESIGN §6).
const CHECKPOINTS: &str = "choreo_meta.checkpoints";

/// One row of the checkpoint table.
#[derive(sqlx::FromRow)]
struct Checkpoint {
    projection: String,
    slot: String,
    topic: String,
    partition: i32,
    next_offset: i64,
}

/// Log start and end (last stable offset) of a partition.
type Offsets = (i64, i64);

async fn status(services: &Services) -> anyhow::Result<()> {
    let pool = services.database().await?;
    // The table appears with the first projection that runs (its migrations create it);
    // before that there is nothing to report, which is not an error.
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(CHECKPOINTS)
        .fetch_one(&pool)
        .await
        .with_context(|| format!("looking for the table {CHECKPOINTS}"))?;
    if !exists {
        println!(
            "no projections have run yet (there is no {CHECKPOINTS} in {})",
            services.postgres.redacted_url()
        );
        return Ok(());
    }
    let checkpoints: Vec<Checkpoint> = sqlx::query_as(&format!(
        "SELECT projection, slot, topic, partition, next_offset FROM {CHECKPOINTS} \
         WHERE slot IN ('live', 'shadow') ORDER BY projection, slot, topic, partition"
    ))
    .fetch_all(&pool)
    .await
    .with_context(|| format!("reading {CHECKPOINTS}"))?;
    pool.close().await;
    if checkpoints.is_empty() {
        println!("no projections have run yet ({CHECKPOINTS} is empty)");
        return Ok(());
    }

    let consumer = services.reader()?;
    // Several projections read the same partitions: ask for each partition's offsets once.
    let mut offsets: BTreeMap<(&str, i32), Result<Offsets, String>> = BTreeMap::new();
    for c in &checkpoints {
        offsets
            .entry((c.topic.as_str(), c.partition))
            .or_insert_with(|| {
                // Under read_committed the high watermark is the last stable offset: the end
                // a projection can reach.
                consumer
                    .fetch_watermarks(&c.topic, c.partition, REQUEST_TIMEOUT)
                    .map_err(|e| e.to_string())
            });
    }

    let rows: Vec<Vec<String>> = checkpoints
        .iter()
        .map(|c| {
            let (end, lag, note) = match &offsets[&(c.topic.as_str(), c.partition)] {
                Ok((low, high)) => (
                    high.to_string(),
                    (high - c.next_offset).to_string(),
                    note(c.next_offset, *low, *high),
                ),
                Err(e) => ("?".into(), "?".into(), format!("cannot read offsets: {e}")),
            };
            vec![
                c.projection.clone(),
                c.slot.clone(),
                c.topic.clone(),
                c.partition.to_string(),
                c.next_offset.to_string(),
                end,
                lag,
                note,
            ]
        })
        .collect();
    show::table(
        &mut std::io::stdout().lock(),
        &[
            "PROJECTION",
            "SLOT",
            "TOPIC",
            "PARTITION",
            "CHECKPOINT",
            "END",
            "LAG",
            "NOTE",
        ],
        &rows,
    )?;
    Ok(())
}

/// A checkpoint outside [log start, end] halts its partition: say why.
fn note(checkpoint: i64, low: i64, high: i64) -> String {
    if checkpoint > high {
        "checkpoint beyond the end of the log: was the topic recreated?".into()
    } else if checkpoint < low {
        format!("retention deleted offsets {checkpoint}..{low} the view never saw")
    } else {
        String::new()
    }
}
