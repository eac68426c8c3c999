//! Reads a topic by direct assignment (no group membership, no commits): from chosen offsets
//! up to the end offsets taken when it opens, or on and on when following.

use std::sync::Arc;

use choreo::kafka::Record;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::connect::Services;

/// How long a metadata or watermark request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A bounded read that sees nothing for this long reports a stall instead of hanging.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where each partition starts.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// The log start offset (the oldest record retention kept).
    Beginning,
    /// The end offset: only records written from now on.
    End,
    /// A given offset (the log start, if retention already deleted it).
    At(i64),
}

/// The offsets of one partition when the reader opened.
#[derive(Debug, Clone, Copy)]
pub struct Watermarks {
    pub low: i64,
    /// Under `read_committed`, the last stable offset: the end of what a reader may see.
    pub high: i64,
}

/// A topic being read.
pub struct LogReader {
    consumer: BaseConsumer,
    topic: String,
    follow: bool,
    /// End offset per partition still being read. A bounded read is done when it is empty.
    pending: BTreeMap<i32, i64>,
    watermarks: BTreeMap<i32, Watermarks>,
}

impl LogReader {
    /// Assigns `partitions` of `topic` (all when `None`) at `start`.
    pub fn open(
        services: &Services,
        topic: &str,
        partitions: Option<&[i32]>,
        start: Start,
        follow: bool,
    ) -> anyhow::Result<Self> {
        let consumer = services.reader()?;
        let existing = partitions_of(&consumer, topic)?;
        let chosen = match partitions {
            None => existing,
            Some(wanted) => {
                if let Some(missing) = wanted.iter().find(|p| !existing.contains(p)) {
                    bail!(
                        "topic {topic} has no partition {missing} (it has {})",
                        existing.len()
                    );
                }
                wanted.to_vec()
            }
        };
        let mut assignment = TopicPartitionList::new();
        let mut pending = BTreeMap::new();
        let mut watermarks = BTreeMap::new();
        for partition in chosen {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                .with_context(|| format!("reading the offsets of {topic}[{partition}]"))?;
            let from = match start {
                Start::Beginning => low,
                Start::End => high,
                Start::At(offset) => offset.max(low),
            };
            assignment
                .add_partition_offset(topic, partition, Offset::Offset(from))
                .context("building the assignment")?;
            if from < high {
                pending.insert(partition, high);
            }
            watermarks.insert(partition, Watermarks { low, high });
        }
        consumer
            .assign(&assignment)
            .with_context(|| format!("assigning the partitions of {topic}"))?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            follow,
            pending,
            watermarks,
        })
    }

    /// The offsets of each assigned partition when the reader opened.
    pub fn watermarks(&self) -> &BTreeMap<i32, Watermarks> {
        &self.watermarks
    }

    /// The next record, or `None` once every partition reached its end offset (never, when
    /// following).
    pub fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        let mut last_progress = Instant::now();
        loop {
            if !self.follow && self.pending.is_empty() {
                return Ok(None);
            }
            if !self.follow && last_progress.elapsed() > STALL_TIMEOUT {
                bail!(
                    "reading {} made no progress for {STALL_TIMEOUT:?}; is Kafka still up? \
                     (`scripts/dev-services status`)",
                    self.topic
                );
            }
            match self.consumer.poll(Duration::from_millis(500)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    self.pending.remove(&partition);
                    last_progress = Instant::now();
                }
                Some(Err(error)) => self.on_error(error)?,
                Some(Ok(message)) => {
                    last_progress = Instant::now();
                    if self.follow {
                        return Ok(Some(Record::copy(&message, Arc::from(message.topic()))));
                    }
                    let partition = message.partition();
                    let Some(&end) = self.pending.get(&partition) else {
                        // Written after the read began, on a partition already finished.
                        continue;
                    };
                    if message.offset() + 1 >= end {
                        self.pending.remove(&partition);
                    }
                    if message.offset() < end {
                        return Ok(Some(Record::copy(&message, Arc::from(message.topic()))));
                    }
                }
            }
        }
    }

    /// Connection trouble is reported and retried by librdkafka itself; a topic that vanished
    /// or a fatal error ends the read.
    fn on_error(&self, error: KafkaError) -> anyhow::Result<()> {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                bail!("topic {} no longer exists", self.topic)
            }
            _ if matches!(error, KafkaError::MessageConsumptionFatal(_)) => {
                Err(error).with_context(|| format!("reading {}", self.topic))
            }
            _ => {
                eprintln!("warning: reading {}: {error}", self.topic);
                Ok(())
            }
        }
    }
}

/// The partition ids of `topic`, or an error saying it does not exist.
pub fn partitions_of(consumer: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .with_context(|| format!("reading the metadata of topic {topic}"))?;
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .filter(|t| t.error().is_none() && !t.partitions().is_empty());
    match found {
        Some(t) => Ok(t.partitions().iter().map(|p| p.id()).collect()),
        None => bail!("topic {topic} does not exist (see `choreo topics list`)"),
    }
}
