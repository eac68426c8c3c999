//! The rebuild's Kafka side: consumers without a group (partitions assigned directly,
//! nothing committed), the partitions to read, watermarks, polling.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::Offset;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka::Record;
use crate::kafka::TopicPartition;
use crate::kafka::client;

/// A consumer for a rebuild: partitions are assigned directly, nothing is committed to Kafka.
pub(super) fn rebuild_consumer(kafka: &KafkaConfig, id: &str) -> Result<Arc<BaseConsumer>> {
    Ok(Arc::new(
        client::reader(kafka, &format!("{id}.rebuild"), &[])
            .create()
            .map_err(|e| Error::ClientCreate {
                client: "consumer",
                source: e,
            })?,
    ))
}

/// Every partition of `topics`, then of `redrive` if it exists (a missing topic of `topics`
/// is an error).
pub(super) async fn partitions(
    consumer: &Arc<BaseConsumer>,
    topics: Vec<String>,
    redrive: String,
) -> Result<Vec<TopicPartition>> {
    let c = Arc::clone(consumer);
    tokio::task::spawn_blocking(move || -> Result<Vec<TopicPartition>> {
        let mut out = Vec::new();
        for topic in topics.iter().chain(std::iter::once(&redrive)) {
            let metadata = c
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .map_err(|e| Error::kafka("fetch metadata", e))?;
            let count = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len());
            if count == 0 && *topic == redrive {
                continue;
            }
            if count == 0 {
                return Err(Error::TopicMissing(topic.clone()));
            }
            out.extend((0..count as i32).map(|p| TopicPartition::new(topic.as_str(), p)));
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::TaskFailed {
        task: "metadata task".into(),
        reason: e.to_string(),
    })?
}

pub(super) async fn watermarks(
    consumer: &Arc<BaseConsumer>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64)> {
    let c = Arc::clone(consumer);
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        c.fetch_watermarks(&topic, partition, Duration::from_secs(10))
    })
    .await
    .map_err(|e| Error::TaskFailed {
        task: "watermark task".into(),
        reason: e.to_string(),
    })?
    .map_err(|e| Error::kafka("fetch watermarks", e))
}

/// Polls up to `max` records (waiting at most ~200 ms for the first) off the async threads.
pub(super) async fn poll_batch(
    consumer: Arc<BaseConsumer>,
    max: usize,
) -> Result<(Arc<BaseConsumer>, Vec<Record>)> {
    tokio::task::spawn_blocking(move || {
        let mut out: Vec<Record> = Vec::with_capacity(max.min(10_000));
        let mut timeout = Duration::from_millis(200);
        while out.len() < max {
            match consumer.poll(timeout) {
                Some(Ok(message)) => {
                    let topic = match out.last() {
                        Some(last) if last.topic() == message.topic() => {
                            Arc::clone(last.topic_arc())
                        }
                        _ => Arc::from(message.topic()),
                    };
                    out.push(Record::copy(&message, topic));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "rebuild consumer error");
                    break;
                }
                None => break,
            }
            timeout = Duration::ZERO;
        }
        (consumer, out)
    })
    .await
    .map(Ok)
    .map_err(|e| Error::TaskFailed {
        task: "poll task".into(),
        reason: e.to_string(),
    })?
}

/// Moves positions forward to the consumer's own (it passes transaction markers).
pub(super) fn refresh_positions(
    consumer: &BaseConsumer,
    positions: &mut HashMap<TopicPartition, i64>,
) {
    if let Ok(list) = consumer.position() {
        for element in list.elements() {
            if let Offset::Offset(o) = element.offset()
                && let Some(p) =
                    positions.get_mut(&TopicPartition::new(element.topic(), element.partition()))
                && o > *p
            {
                *p = o;
            }
        }
    }
}
