//! Everything that talks to Kafka: client settings, topics, the publisher, the consumer
//! runtime every consumer stands on, and the dead-letter writer.

pub(crate) mod client;
pub mod consumer;
mod dlq;
pub(crate) mod errors;
mod publisher;
mod raw_headers;
pub(crate) mod read_to_end;
mod record;
mod renewing;
mod schema_store;
pub(crate) mod static_member;
mod topic_partition;
mod topics;
pub(crate) mod transaction;

pub use crate::error::{PublishError, PublishErrorKind};
pub use client::{check_reachable, check_reachable_async, partition_for_key};
pub use consumer::{
    Batch, ConsumerRuntime, ConsumerSettings, ConsumerStatus, PartitionControl, PartitionLogic,
    PartitionWorker, Record, RunSummary, StartOffset, WorkerOutcome,
};
pub use dlq::{DeadLetter, DeadLetterWriter, dlq_headers};
pub(crate) use dlq::{Keep, dead_letter_parts};
pub use publisher::{Delivered, Outgoing, PUBLISH_ATTEMPTS, Publisher};
pub use record::{AsBorrowedHeaders, RecordHeaders};
pub use schema_store::{SchemaStore, StoredSchema};
pub(crate) use topic_partition::TopicPartition;
pub use topics::{TopicAdmin, TopicDescription, TopicKind, TopicSpec, TopicState};
