//! Every classification of a Kafka error in one place: what a failed publish means to its
//! caller ([`PublishErrorKind`], defined with the crate's errors), and what a failed transactional operation means to a runtime
//! (`TxError`).

use crate::error::PublishErrorKind;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode as Code;

/// Sorts a produce error into retriable, fatal and too large.
pub(crate) fn publish_kind(error: &KafkaError) -> PublishErrorKind {
    match error.rdkafka_error_code() {
        Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize | Code::MessageBatchTooLarge) => {
            PublishErrorKind::TooLarge
        }
        Some(
            Code::UnknownTopicOrPartition
            | Code::UnknownTopic
            | Code::UnknownPartition
            | Code::InvalidTopic
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::TransactionalIdAuthorizationFailed
            | Code::InvalidRecord
            | Code::InvalidRequiredAcks
            | Code::Fatal
            | Code::Fenced
            | Code::ProducerFenced
            | Code::OutOfOrderSequenceNumber
            | Code::UnsupportedVersion
            | Code::PurgeQueue
            | Code::PurgeInflight,
        ) => PublishErrorKind::Fatal,
        _ => PublishErrorKind::Retriable,
    }
}

/// What to do after a transactional operation failed.
#[derive(Debug)]
pub(crate) enum TxError {
    /// Abort the transaction and rewind the consumer to the batch start.
    Abortable(String),
    /// Another instance took our transactional id: stop and never recreate.
    Fenced(String),
    /// Unknown outcome (a timed-out commit may still land): stop; a restart fences the old
    /// producer.
    Fatal(String),
    /// One record was refused for its content (too large, invalid, a partition that does not
    /// exist): sending it again cannot succeed. `input` is the index, in the batch, of the
    /// record that made it, once the runtime knows; the runtime aborts, sets that input aside
    /// (a rejection or a dead letter instead) and runs the batch again.
    Refused {
        reason: String,
        input: Option<usize>,
    },
}

impl TxError {
    /// Names the input whose output was refused.
    pub(crate) fn for_input(self, index: usize) -> Self {
        match self {
            TxError::Refused { reason, .. } => TxError::Refused {
                reason,
                input: Some(index),
            },
            other => other,
        }
    }
}

/// Whether the broker or the client refused a record for what it is (never for where or when
/// it was sent: an unknown partition may be the producer's stale metadata, a CRC failure a
/// corruption on the way, and both are retried as abortable).
fn refused_for_content(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::MessageBatchTooLarge
                | Code::InvalidRecord
                | Code::BadMessage
        )
    )
}

/// Sorts a transactional error (ARCHITECTURE.md, "Command processing").
pub(crate) fn classify(op: &str, e: &KafkaError) -> TxError {
    let text = format!("{op}: {e}");
    if !matches!(e, KafkaError::Transaction(_)) && refused_for_content(e) {
        return TxError::Refused {
            reason: text,
            input: None,
        };
    }
    match e {
        KafkaError::Transaction(rd) if rd.is_fatal() => {
            // Fencing by a newer producer with our transactional id is PRODUCER_FENCED
            // (librdkafka: `Fenced`) since KIP-588. INVALID_PRODUCER_EPOCH means the
            // coordinator bumped our epoch itself (it aborted a transaction that timed out
            // while a broker restarted; seen on the three-node cluster's rolling restart):
            // the outcome of the open transaction is settled, the producer is not usable, and
            // a new one is what it takes.
            if matches!(rd.code(), Code::Fenced | Code::ProducerFenced) {
                TxError::Fenced(text)
            } else {
                TxError::Fatal(text)
            }
        }
        KafkaError::Transaction(rd) if rd.txn_requires_abort() => TxError::Abortable(text),
        _ => match e.rdkafka_error_code() {
            Some(Code::Fenced | Code::ProducerFenced) => TxError::Fenced(text),
            // A produce() after the transaction became abortable fails with State; unknown
            // partitions and CRC failures may pass (stale metadata, a corruption on the way).
            Some(
                Code::PurgeQueue
                | Code::PurgeInflight
                | Code::InvalidTransactionalState
                | Code::State
                | Code::UnknownPartition
                | Code::InvalidMessage,
            ) => TxError::Abortable(text),
            _ => TxError::Fatal(text),
        },
    }
}

/// Classifies a failed `commit_transaction`: librdkafka reports a failed flush inside the
/// commit as `Flush`, which carries no flag saying what it means, so it counts as unknown
/// (the commit may still land).
pub(crate) fn classify_commit(e: &KafkaError) -> TxError {
    match classify("commit_transaction", e) {
        TxError::Abortable(t) if matches!(e, KafkaError::Flush(_)) => TxError::Fatal(t),
        other => other,
    }
}
