//! The crate's error type. One enum for the crate, plus the subsystem errors it wraps, so a
//! caller can tell a bad declaration from an unreachable service from a broker failure.

use std::time::Duration;

use uuid::Uuid;

use crate::message::{EnvelopeError, NameError};

/// `Result` with the crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in choreo's infrastructure code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A message or topic name breaks the naming rules.
    #[error(transparent)]
    Name(#[from] NameError),

    /// A message could not be decoded from its Kafka record.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),

    /// The Kafka cluster did not answer.
    #[error(
        "cannot reach Kafka at {brokers}: {reason}; start it with `scripts/dev-services up` \
         or set CHOREO_KAFKA_BROKERS"
    )]
    KafkaUnreachable {
        /// The bootstrap brokers tried (`host:port`, comma-separated).
        brokers: String,
        /// The client's error.
        reason: String,
    },

    /// The cluster answered but refused this client: the TLS handshake or the SASL
    /// authentication failed (a wrong password, an untrusted CA, a missing client
    /// certificate). Starting services will not help; the security settings will.
    #[error(
        "Kafka at {brokers} refused this client: {reason}; check the security settings \
         (CHOREO_KAFKA_SECURITY_PROTOCOL, CHOREO_KAFKA_SSL_CA_FILE, CHOREO_KAFKA_SSL_CERT_FILE/_KEY_FILE, \
         CHOREO_KAFKA_SASL_MECHANISM/_USERNAME/_PASSWORD)"
    )]
    KafkaRefused {
        /// The bootstrap servers tried.
        brokers: String,
        /// librdkafka's reason (it never holds the password).
        reason: String,
    },

    /// PostgreSQL did not answer.
    #[error(
        "cannot reach PostgreSQL at {target}: {reason}; start it with `scripts/dev-services up` \
         or set CHOREO_DATABASE_URL"
    )]
    PostgresUnreachable {
        /// The database URL tried, with the password redacted.
        target: String,
        /// The driver's error.
        reason: String,
    },

    /// An existing topic differs from its declaration; we never change it silently.
    #[error("topic {topic} does not match its declaration: {mismatch}")]
    TopicMismatch {
        /// The topic's name.
        topic: String,
        /// What differs (partition count or a config value), and what to do about it.
        mismatch: String,
    },

    /// A topic the code needs is missing.
    #[error("topic {0} does not exist; create it with `choreo topics create` or `ensure_topics`")]
    TopicMissing(String),

    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Publishing failed.
    #[error(transparent)]
    Publish(#[from] PublishError),

    /// A Kafka call failed.
    #[error("kafka {op} failed: {source}")]
    Kafka {
        /// The call that failed, such as `"subscribe"`.
        op: &'static str,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// A PostgreSQL call failed.
    #[error("postgres {op} failed: {source}")]
    Postgres {
        /// The call that failed, such as `"read checkpoint"`.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },

    /// Applying the framework's migrations failed.
    #[error("migrating the choreo schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// A partition was halted: processing it further could lose or corrupt data.
    #[error("partition {topic}[{partition}] halted: {reason}")]
    Halted {
        /// The partition's topic.
        topic: String,
        /// The partition's number.
        partition: i32,
        /// Why it was halted.
        reason: String,
    },

    /// An operation did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was awaited, such as `"topic user.events to appear"`.
        what: String,
        /// How long it was awaited.
        after: Duration,
    },

    /// Another instance took over this runtime's identity (its transactional id or its static
    /// `group.instance.id`: same service and ordinal): this one stops for good, since
    /// restarting it would fence the newer one.
    #[error("{runtime} fenced by a newer instance with the same identity: {reason}")]
    Fenced {
        /// The part that was fenced, such as `"command processor"` or `"reactor welcome"`.
        runtime: String,
        /// The client's error.
        reason: String,
    },

    /// Code running inside a runtime panicked (a bug); the panic was caught and the runtime
    /// stopped.
    #[error("{what} panicked: {message}")]
    Panicked {
        /// What panicked, such as `"command processor"` or `"start_offsets"`.
        what: String,
        /// The panic's message.
        message: String,
    },

    /// A Kafka transaction's outcome is unknown (a timed-out commit may still land): the
    /// runtime stops, and a restart fences the old producer.
    #[error("transaction outcome unknown: {0}")]
    TransactionUnknown(String),

    /// A rebuild lost its lock, and another rebuild holds it now.
    #[error(
        "rebuild of {projection}: lost its lock, and another rebuild holds it now; run it again to resume"
    )]
    RebuildLockLost {
        /// The projection's id, `{name}.v{version}`.
        projection: String,
    },

    /// A runtime stopped because of another unrecoverable error.
    #[error("runtime stopped: {0}")]
    Runtime(String),
}

impl Error {
    pub(crate) fn kafka(op: &'static str, source: rdkafka::error::KafkaError) -> Self {
        Error::Kafka { op, source }
    }
}

/// Why a publish failed, and whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishErrorKind {
    /// Try again with the same [`Outgoing`](crate::kafka::Outgoing) (same id): a timeout, a full queue, a leader move,
    /// or a fatal producer error after which the producer was replaced.
    Retriable,
    /// The record cannot succeed (a missing topic, an authorization failure), or a producer
    /// with a fatal error could not be replaced.
    Fatal,
    /// The record is bigger than `message.max.bytes`.
    TooLarge,
    /// The payload could not be encoded.
    Encode,
}

/// A failed publish.
#[derive(Debug, Clone, thiserror::Error)]
#[error("publishing {message_id} to {topic} failed ({kind:?}): {reason}")]
pub struct PublishError {
    /// Why it failed, and whether trying again can help.
    pub kind: PublishErrorKind,
    /// The topic it was sent to.
    pub topic: String,
    /// The message's id, the same on every attempt; nil for a dead letter.
    pub message_id: Uuid,
    /// What the producer, the encoder or the schema store reported.
    pub reason: String,
}

impl PublishError {
    /// Whether sending the same [`Outgoing`](crate::kafka::Outgoing) again may succeed.
    pub fn is_retriable(&self) -> bool {
        self.kind == PublishErrorKind::Retriable
    }
}
