//! The librdkafka context of the runtime's consumer: logs and errors into `tracing` (the
//! rebalance callback is in `rebalance.rs`).

use std::sync::Arc;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

use super::PartitionLogic;
use super::shared::Shared;

/// The librdkafka context: our rebalance handling and logs into `tracing`.
pub(super) struct RuntimeContext<L: PartitionLogic> {
    pub(super) shared: Arc<Shared<L>>,
}

impl<L: PartitionLogic> ClientContext for RuntimeContext<L> {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(group = %self.shared.settings.group_id, %error, reason, "kafka client error");
    }
}

/// librdkafka's log lines into `tracing` (target `librdkafka`), at the matching level.
pub(crate) fn forward_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", fac, "{message}");
        }
        RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", fac, "{message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{message}"),
    }
}
