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

    /// A rebuild of this projection is running already (another process holds its lock):
    /// wait for it, or stop it, before starting another.
    #[error("a rebuild of {projection} is already running")]
    RebuildRunning {
        /// The projection's id, `{name}.v{version}`.
        projection: String,
    },

    /// A rebuild found its shadow checkpoints moved by someone else (another rebuild whose
    /// lock was lost, or one that keeps conflicting) and stopped; running it again resumes.
    #[error(
        "rebuild of {projection}: {reason}; is another rebuild running? run it again to resume"
    )]
    RebuildConflict {
        /// The projection's id, `{name}.v{version}`.
        projection: String,
        /// What moved.
        reason: String,
    },

    /// A transient failure (PostgreSQL restarting, lost connections) lasted longer than the
    /// retry budget of a job that gives up: the job stopped and can be run again.
    #[error("{what} kept failing for {waited:?}: {reason} (run it again to resume)")]
    RetriesExhausted {
        /// The job, such as `"rebuild of users.v1"`.
        what: String,
        /// How long it retried.
        waited: Duration,
        /// The last failure.
        reason: String,
    },

    /// A Kafka client (consumer, producer, admin) could not be created: librdkafka refused a
    /// setting or a file a setting names. Check the Kafka settings (`CHOREO_KAFKA_*`).
    #[error("kafka {client} settings rejected: {source}")]
    ClientCreate {
        /// The kind of client, such as `"consumer"` or `"producer"`.
        client: &'static str,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// The brokers refused an operation on a topic (creating, deleting or describing it): an
    /// authorization failure, a policy, an invalid setting.
    #[error("cannot {action} topic {topic}: {code}")]
    TopicRefused {
        /// What was refused: `"create"`, `"delete"` or `"describe"`.
        action: &'static str,
        /// The topic's name.
        topic: String,
        /// The broker's error code.
        code: rdkafka::types::RDKafkaErrorCode,
    },

    /// An Avro schema cannot be parsed or stored, or a payload does not carry a schema
    /// header.
    #[error("schema for {message_type}: {reason}")]
    SchemaInvalid {
        /// The message type the schema is for.
        message_type: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A payload names an Avro schema (by fingerprint) that this process does not know.
    #[error("the Avro schema {fingerprint:016x} of {message_type} is unknown to this process")]
    SchemaUnknown {
        /// The message type.
        message_type: String,
        /// The schema's Rabin fingerprint.
        fingerprint: u64,
    },

    /// The schema store refused a schema: old data could not be read with it, or it could not
    /// read data written with a stored version.
    #[error(
        "the Avro schema {fingerprint:016x} of {message_type} is incompatible with the schema store: {}",
        problems.join("; ")
    )]
    SchemaIncompatible {
        /// The message type.
        message_type: String,
        /// The refused schema's Rabin fingerprint.
        fingerprint: u64,
        /// Each incompatibility, naming the field and the direction.
        problems: Vec<String>,
    },

    /// A consumer could not be moved to an offset (a rewind, a position after a restore).
    #[error("cannot move {topic}[{partition}] to {to}: {reason}")]
    SeekFailed {
        /// The partition's topic.
        topic: String,
        /// The partition's number.
        partition: i32,
        /// Where it was to go, such as `"offset 42"`.
        to: String,
        /// The client's error.
        reason: String,
    },

    /// Aborting a Kafka transaction failed (not by fencing): the runtime stops, and a restart
    /// fences the old producer.
    #[error("abort_transaction failed after {after}: {source}")]
    AbortFailed {
        /// Why the transaction was being aborted.
        after: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// The command processor replaced its producer after an unknown transaction outcome, and
    /// the new producer or the restore that follows failed: the processor stops; a restart
    /// restores on assignment.
    #[error("{step} failed while replacing the producer: {reason}")]
    ReplacementFailed {
        /// What failed, such as `"starting the new producer"` or `"restore of user.commands[3]"`.
        step: String,
        /// The failure.
        reason: String,
    },

    /// The logic of a consumer runtime answered `start_offsets` with a different number of
    /// offsets than partitions asked for (a bug in the logic).
    #[error("start_offsets answered {answered} offsets for {asked} partitions")]
    StartOffsetsMiscounted {
        /// How many offsets came back.
        answered: usize,
        /// How many partitions were asked for.
        asked: usize,
    },

    /// The command bus's reply reader stopped (it panicked); every later `send_and_wait`
    /// fails at once. Make a new bus.
    #[error("the command bus's reply reader stopped: {reason}")]
    ReplyReaderStopped {
        /// Why it stopped.
        reason: String,
    },

    /// A thread or a blocking task of choreo's could not start, or ended without a result (it
    /// panicked, or the async runtime is shutting down).
    #[error("{task} failed: {reason}")]
    TaskFailed {
        /// The thread or task, such as `"starting the poll thread"` or `"metadata task"`.
        task: String,
        /// The error.
        reason: String,
    },

    /// A runtime (consumer runtime, command processor, reactor) stopped on an error no retry
    /// can fix: a fatal client error, an authorization failure, `auto.offset.reset=error`, a
    /// failed assignment. Restarting may help once the cause is fixed.
    #[error("{runtime} stopped: {reason}")]
    Stopped {
        /// The runtime, such as `"consumer group signup"` or `"command processor"`.
        runtime: String,
        /// The error it stopped on.
        reason: String,
    },
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
