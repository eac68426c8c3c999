//! The envelope: CloudEvents 1.0 in the Kafka protocol binding, binary mode.
//!
//! Key = subject, value = payload, attributes in `ce_*` headers. Any Kafka client in any
//! language can read and write these records without choreo.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use rdkafka::message::{Header, OwnedHeaders};
use uuid::Uuid;

use super::structured;

/// The CloudEvents version we speak.
pub const SPEC_VERSION: &str = "1.0";

/// Header names of the binding.
pub mod headers {
    pub const SPEC_VERSION: &str = "ce_specversion";
    pub const ID: &str = "ce_id";
    pub const TYPE: &str = "ce_type";
    pub const SOURCE: &str = "ce_source";
    pub const TIME: &str = "ce_time";
    pub const SUBJECT: &str = "ce_subject";
    pub const CORRELATION_ID: &str = "ce_correlationid";
    pub const CAUSATION_ID: &str = "ce_causationid";
    pub const SEQUENCE: &str = "ce_sequence";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const TRACEPARENT: &str = "traceparent";
    /// Prefix of the CloudEvents attribute headers.
    pub const CE_PREFIX: &str = "ce_";
}

/// Why a record is not a valid choreo message. Each variant names the header or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("header {header} is invalid: {reason}")]
    BadHeader {
        header: &'static str,
        reason: String,
    },
    /// A header whose name cannot be read; `index` counts from 0 in the record's order.
    #[error("header #{index} (name {name:?}) has a name that is {reason}")]
    BadHeaderName {
        index: usize,
        name: String,
        reason: &'static str,
    },
    #[error("extension attribute {name} is invalid: {reason}")]
    BadExtension { name: String, reason: &'static str },
    #[error("header ce_specversion is {0:?}; only \"1.0\" is supported")]
    SpecVersion(String),
    /// A structured-mode event whose value is not a CloudEvent in JSON.
    #[error("structured-mode CloudEvent (content-type {content_type}) is invalid: {reason}")]
    Structured {
        content_type: String,
        reason: String,
    },
    #[error("the record key {key:?} differs from header ce_subject {subject:?}")]
    KeyMismatch { key: String, subject: String },
    #[error("content-type {0:?} is not supported (application/json and application/avro are)")]
    ContentType(String),
    #[error("the record has no value (payload)")]
    MissingPayload,
    #[error("payload of {event_type} ({content_type}) cannot be decoded: {reason}")]
    Payload {
        event_type: String,
        content_type: String,
        reason: String,
    },
    #[error("payload of {event_type} cannot be encoded: {reason}")]
    Encode { event_type: String, reason: String },
    /// An Avro payload whose writer schema is in no schema store this process can see: usually
    /// a newer writer this reader has not heard of yet. Halts the partition; never a dead
    /// letter (every later record of that writer would follow it there).
    #[error(
        "payload of {event_type} was written with Avro schema {fingerprint:016x}, which is not \
         in the schema store (a newer writer not registered yet?); halting rather than \
         dead-lettering"
    )]
    UnknownSchema {
        event_type: String,
        fingerprint: u64,
    },
    /// The schema an event type declares does not parse: a bug that would fail every record.
    #[error("the Avro schema declared for {event_type} is invalid: {reason}")]
    BadSchema { event_type: String, reason: String },
}

impl EnvelopeError {
    /// Whether the error halts the partition instead of dead-lettering the record: it is not
    /// about this record but about what the reader knows (a schema it lacks, or its own).
    pub fn halts(&self) -> bool {
        matches!(
            self,
            EnvelopeError::UnknownSchema { .. } | EnvelopeError::BadSchema { .. }
        )
    }
}

/// The attributes of a message: everything but the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Unique id (UUIDv7 for messages choreo creates), fixed before the first send. An event
    /// from another producer whose `ce_id` is not a UUID gets a UUIDv5 of its source and id
    /// ([`event_id`]); the text is kept in `foreign_id`.
    pub id: Uuid,
    /// The `ce_id` as sent, when it is not [`Metadata::id`] in choreo's own form (hyphenated,
    /// lower case): an id from another producer. Written back as `ce_id` when this metadata
    /// is written again (a dead letter, a copy).
    pub foreign_id: Option<String>,
    /// The message name, e.g. `v1.user.signedup` (`ce_type`).
    pub message_type: String,
    /// The emitting service, e.g. `/user-service`.
    pub source: String,
    /// When it happened. Projections use this, never the clock.
    pub time: DateTime<Utc>,
    /// The entity it is about; equals the Kafka key.
    pub subject: String,
    /// The conversation it belongs to.
    pub correlation_id: Uuid,
    /// The message that caused it (its own id when it starts a conversation).
    pub causation_id: Uuid,
    /// The aggregate version, for events written by a command processor.
    pub sequence: Option<u64>,
    /// `application/json` or `application/avro`.
    pub content_type: String,
    /// W3C trace context, where tracing is on.
    pub traceparent: Option<String>,
    /// Other `ce_*` extension attributes, kept as they came (without the `ce_` prefix).
    pub extensions: BTreeMap<String, String>,
}

/// Correlation and causation for a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Causation {
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
}

impl Causation {
    /// Continues the conversation of `cause`: same correlation, caused by it.
    pub fn from_cause(cause: &Metadata) -> Self {
        Self {
            correlation_id: cause.correlation_id,
            causation_id: cause.id,
        }
    }
}

impl From<&Metadata> for Causation {
    fn from(cause: &Metadata) -> Self {
        Self::from_cause(cause)
    }
}

/// The nine attributes every message carries, built from borrowed fields (the publish hot
/// path needs no owned [`Metadata`]); returns the headers and their size in bytes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn core_headers(
    id: Uuid,
    foreign_id: Option<&str>,
    message_type: &str,
    source: &str,
    subject: &str,
    time: DateTime<Utc>,
    content_type: &str,
    causation: Causation,
    capacity: usize,
) -> (OwnedHeaders, usize) {
    let mut out = OwnedHeaders::new_with_capacity(capacity);
    let mut size = 0;
    // UUIDs into stack buffers: no heap string per id.
    let (mut id_buf, mut correlation_buf, mut causation_buf) = (
        Uuid::encode_buffer(),
        Uuid::encode_buffer(),
        Uuid::encode_buffer(),
    );
    let id: &str = match foreign_id {
        Some(text) => text,
        None => id.hyphenated().encode_lower(&mut id_buf),
    };
    let correlation: &str = causation
        .correlation_id
        .hyphenated()
        .encode_lower(&mut correlation_buf);
    let causation: &str = causation
        .causation_id
        .hyphenated()
        .encode_lower(&mut causation_buf);
    let time = time.to_rfc3339_opts(SecondsFormat::Micros, true);
    for (key, value) in [
        (headers::SPEC_VERSION, SPEC_VERSION),
        (headers::ID, id),
        (headers::TYPE, message_type),
        (headers::SOURCE, source),
        (headers::TIME, time.as_str()),
        (headers::SUBJECT, subject),
        (headers::CONTENT_TYPE, content_type),
        (headers::CORRELATION_ID, correlation),
        (headers::CAUSATION_ID, causation),
    ] {
        size += key.len() + value.len();
        out = out.insert(Header {
            key,
            value: Some(value),
        });
    }
    (out, size)
}

impl Metadata {
    /// Metadata for a new message. Without a `causation`, it starts a conversation: correlation
    /// and causation are its own id.
    pub fn new(
        id: Uuid,
        message_type: impl Into<String>,
        source: impl Into<String>,
        subject: impl Into<String>,
        time: DateTime<Utc>,
        causation: Option<Causation>,
    ) -> Self {
        let causation = causation.unwrap_or(Causation {
            correlation_id: id,
            causation_id: id,
        });
        Self {
            id,
            foreign_id: None,
            message_type: message_type.into(),
            source: source.into(),
            // The wire carries microseconds; truncate now so what we send is what is read.
            time: time.trunc_subsecs(6),
            subject: subject.into(),
            correlation_id: causation.correlation_id,
            causation_id: causation.causation_id,
            sequence: None,
            content_type: crate::codec::JSON.to_owned(),
            traceparent: None,
            extensions: BTreeMap::new(),
        }
    }

    /// The Kafka headers of the binary-mode binding.
    pub fn to_headers(&self) -> OwnedHeaders {
        self.to_headers_sized().0
    }

    /// The headers and their size in bytes (keys plus values), computed as they are built.
    pub fn to_headers_sized(&self) -> (OwnedHeaders, usize) {
        let (mut out, mut size) = core_headers(
            self.id,
            self.foreign_id.as_deref(),
            &self.message_type,
            &self.source,
            &self.subject,
            self.time,
            &self.content_type,
            Causation {
                correlation_id: self.correlation_id,
                causation_id: self.causation_id,
            },
            11 + self.extensions.len(),
        );
        let mut add = |out: OwnedHeaders, key: &str, value: &str| {
            size += key.len() + value.len();
            out.insert(Header {
                key,
                value: Some(value),
            })
        };
        if let Some(sequence) = self.sequence {
            let padded = format!("{sequence:020}");
            out = add(out, headers::SEQUENCE, &padded);
        }
        if let Some(trace) = &self.traceparent {
            out = add(out, headers::TRACEPARENT, trace);
        }
        for (name, value) in &self.extensions {
            let key = format!("{}{name}", headers::CE_PREFIX);
            out = add(out, &key, value);
        }
        (out, size)
    }

    /// The `ce_id` exactly as it was sent: for an id that is not a UUID in choreo's own form,
    /// the text from the record; otherwise [`Metadata::id`] hyphenated.
    pub fn cloudevents_id(&self) -> String {
        self.foreign_id
            .clone()
            .unwrap_or_else(|| self.id.hyphenated().to_string())
    }

    /// Opens a consumed record: its attributes, checked, and its data. Accepts every event the
    /// CloudEvents 1.0 Kafka binding allows, in binary mode (attributes in `ce_*` headers)
    /// and structured mode (`application/cloudevents+json`, attributes in the value).
    pub fn open<R: WireRecord + ?Sized>(record: &R) -> Result<Opened<'_>, EnvelopeError> {
        let mut found = Found::default();
        for (index, header) in record.raw_headers().enumerate() {
            let Ok(name) = std::str::from_utf8(header.name) else {
                return Err(EnvelopeError::BadHeaderName {
                    index,
                    name: escape_bytes(header.name),
                    reason: "not UTF-8",
                });
            };
            if name.is_empty() {
                return Err(EnvelopeError::BadHeaderName {
                    index,
                    name: String::new(),
                    reason: "empty",
                });
            }
            found.take(name, header.value)?;
        }
        if let Some(content_type) = found.content_type
            && is_structured(content_type)
        {
            return structured::open(record, content_type);
        }
        let meta = found.finish(record.key(), record.timestamp_millis())?;
        Ok(Opened {
            meta,
            payload: record.value().map(Cow::Borrowed),
        })
    }

    /// The attributes of a consumed record (see [`Metadata::open`]).
    pub fn from_record<R: WireRecord + ?Sized>(record: &R) -> Result<Self, EnvelopeError> {
        Ok(Self::open(record)?.meta)
    }
}

/// One header as it came off the wire. The name is bytes too: the Kafka protocol allows any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader<'a> {
    pub name: &'a [u8],
    pub value: Option<&'a [u8]>,
}

/// What the envelope reads of a consumed record.
pub trait WireRecord {
    fn key(&self) -> Option<&[u8]>;
    /// The record value.
    fn value(&self) -> Option<&[u8]>;
    /// The record's timestamp in milliseconds since the epoch: the event's time when it
    /// carries no `ce_time`.
    fn timestamp_millis(&self) -> Option<i64>;
    /// The headers in order.
    fn raw_headers(&self) -> impl Iterator<Item = RawHeader<'_>>;
}

/// A consumed record, opened: its attributes and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened<'a> {
    pub meta: Metadata,
    /// The data: the record value in binary mode, `data` or `data_base64` in structured mode.
    pub payload: Option<Cow<'a, [u8]>>,
}

impl Opened<'_> {
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }
}

/// Whether a content type is a structured-mode CloudEvent.
fn is_structured(content_type: &str) -> bool {
    crate::codec::media_type(content_type)
        .get(..STRUCTURED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(STRUCTURED_PREFIX))
}

const STRUCTURED_PREFIX: &str = "application/cloudevents";

/// Bytes for an error message: printable ASCII as is, everything else as `\xNN`, cut at 64.
pub(crate) fn escape_bytes(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let shown = bytes.get(..MAX).unwrap_or(bytes).escape_ascii().to_string();
    if bytes.len() > MAX {
        shown + "..."
    } else {
        shown
    }
}

/// Header values found while scanning; the scan is one pass over the headers.
#[derive(Default)]
struct Found<'a> {
    spec_version: Option<&'a str>,
    id: Option<&'a str>,
    message_type: Option<&'a str>,
    source: Option<&'a str>,
    time: Option<&'a str>,
    subject: Option<&'a str>,
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    sequence: Option<&'a str>,
    content_type: Option<&'a str>,
    traceparent: Option<&'a str>,
    extensions: BTreeMap<String, String>,
}

impl<'a> Found<'a> {
    fn take(&mut self, key: &'a str, value: Option<&'a [u8]>) -> Result<(), EnvelopeError> {
        let (field, header) = match key {
            headers::SPEC_VERSION => (&mut self.spec_version, headers::SPEC_VERSION),
            headers::ID => (&mut self.id, headers::ID),
            headers::TYPE => (&mut self.message_type, headers::TYPE),
            headers::SOURCE => (&mut self.source, headers::SOURCE),
            headers::TIME => (&mut self.time, headers::TIME),
            headers::SUBJECT => (&mut self.subject, headers::SUBJECT),
            headers::CORRELATION_ID => (&mut self.correlation_id, headers::CORRELATION_ID),
            headers::CAUSATION_ID => (&mut self.causation_id, headers::CAUSATION_ID),
            headers::SEQUENCE => (&mut self.sequence, headers::SEQUENCE),
            headers::CONTENT_TYPE => (&mut self.content_type, headers::CONTENT_TYPE),
            headers::TRACEPARENT => (&mut self.traceparent, headers::TRACEPARENT),
            other => {
                if let Some(name) = other.strip_prefix(headers::CE_PREFIX) {
                    let text = value.map(std::str::from_utf8).transpose().map_err(|_| {
                        EnvelopeError::BadExtension {
                            name: other.to_owned(),
                            reason: "not UTF-8",
                        }
                    })?;
                    let previous = self
                        .extensions
                        .insert(name.to_owned(), text.unwrap_or_default().to_owned());
                    if previous.is_some() {
                        return Err(EnvelopeError::BadExtension {
                            name: other.to_owned(),
                            reason: "appears more than once",
                        });
                    }
                }
                return Ok(());
            }
        };
        if field.is_some() {
            return Err(EnvelopeError::BadHeader {
                header,
                reason: "appears more than once".into(),
            });
        }
        let value = value.ok_or_else(|| EnvelopeError::BadHeader {
            header,
            reason: "no value".into(),
        })?;
        let text = std::str::from_utf8(value).map_err(|_| EnvelopeError::BadHeader {
            header,
            reason: "not UTF-8".into(),
        })?;
        *field = Some(text);
        Ok(())
    }

    fn finish(
        self,
        key: Option<&[u8]>,
        timestamp_millis: Option<i64>,
    ) -> Result<Metadata, EnvelopeError> {
        let attributes = Attributes {
            spec_version: self.spec_version,
            id: self.id,
            message_type: self.message_type,
            source: self.source,
            time: self.time,
            subject: self.subject,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            sequence: self.sequence,
            content_type: self.content_type,
            traceparent: self.traceparent,
            extensions: self.extensions,
        };
        attributes.check(Names::BINARY, key, timestamp_millis)
    }
}

/// The attributes of an event as found, in either mode, before they are checked.
pub(super) struct Attributes<'a> {
    pub spec_version: Option<&'a str>,
    pub id: Option<&'a str>,
    pub message_type: Option<&'a str>,
    pub source: Option<&'a str>,
    pub time: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub correlation_id: Option<&'a str>,
    pub causation_id: Option<&'a str>,
    pub sequence: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    pub extensions: BTreeMap<String, String>,
}

/// What the attributes are called in each mode, for error messages.
pub(super) struct Names {
    spec_version: &'static str,
    id: &'static str,
    message_type: &'static str,
    source: &'static str,
    time: &'static str,
    subject: &'static str,
    correlation_id: &'static str,
    causation_id: &'static str,
    sequence: &'static str,
}

impl Names {
    const BINARY: Names = Names {
        spec_version: headers::SPEC_VERSION,
        id: headers::ID,
        message_type: headers::TYPE,
        source: headers::SOURCE,
        time: headers::TIME,
        subject: headers::SUBJECT,
        correlation_id: headers::CORRELATION_ID,
        causation_id: headers::CAUSATION_ID,
        sequence: headers::SEQUENCE,
    };
    pub(super) const STRUCTURED: Names = Names {
        spec_version: "specversion",
        id: "id",
        message_type: "type",
        source: "source",
        time: "time",
        subject: "subject",
        correlation_id: "correlationid",
        causation_id: "causationid",
        sequence: "sequence",
    };
}

/// Namespace of the UUIDv5 ids choreo gives events whose `ce_id` is not a UUID.
pub const FOREIGN_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c0e_7d1a_8f3b_4e62_9a41_c4f0_e2b7_d813);

/// The [`Metadata::id`] of an event with this `source` and `ce_id`: the id itself when it is
/// a UUID, otherwise a UUIDv5 of the source and the id (CloudEvents makes the pair unique, so
/// two sources may both send id `1`).
pub fn event_id(source: &str, ce_id: &str) -> Uuid {
    Uuid::parse_str(ce_id).unwrap_or_else(|_| {
        let mut name = Vec::with_capacity(source.len() + 1 + ce_id.len());
        name.extend_from_slice(source.as_bytes());
        name.push(0);
        name.extend_from_slice(ce_id.as_bytes());
        Uuid::new_v5(&FOREIGN_ID_NAMESPACE, &name)
    })
}

impl Attributes<'_> {
    pub(super) fn check(
        self,
        names: Names,
        key: Option<&[u8]>,
        timestamp_millis: Option<i64>,
    ) -> Result<Metadata, EnvelopeError> {
        let spec = self
            .spec_version
            .ok_or(EnvelopeError::MissingHeader(names.spec_version))?;
        if spec != SPEC_VERSION {
            return Err(EnvelopeError::SpecVersion(spec.to_owned()));
        }
        let required =
            |value: Option<&str>, header: &'static str| -> Result<String, EnvelopeError> {
                value
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
                    .ok_or(EnvelopeError::MissingHeader(header))
            };
        let id_text = required(self.id, names.id)?;
        let message_type = required(self.message_type, names.message_type)?;
        let source = required(self.source, names.source)?;
        let id = event_id(&source, &id_text);
        let foreign_id = (id.hyphenated().to_string() != id_text).then_some(id_text);
        let time = match self.time {
            Some(text) => DateTime::parse_from_rfc3339(text)
                .map_err(|e| EnvelopeError::BadHeader {
                    header: names.time,
                    reason: format!("not an RFC 3339 timestamp ({e})"),
                })?
                .with_timezone(&Utc),
            None => timestamp_millis
                .filter(|ms| *ms >= 0)
                .and_then(DateTime::from_timestamp_millis)
                .ok_or(EnvelopeError::MissingHeader(names.time))?,
        };
        let subject = match (self.subject, key) {
            (Some(subject), Some(key)) if subject.as_bytes() == key => subject.to_owned(),
            (None, Some(key)) if !key.is_empty() => match std::str::from_utf8(key) {
                Ok(key) => key.to_owned(),
                Err(_) => {
                    return Err(EnvelopeError::BadHeader {
                        header: names.subject,
                        reason: format!(
                            "absent, and the record key {} (its default) is not UTF-8",
                            escape_bytes(key)
                        ),
                    });
                }
            },
            (None, _) => return Err(EnvelopeError::MissingHeader(names.subject)),
            (Some(subject), key) => {
                return Err(EnvelopeError::KeyMismatch {
                    key: key.map_or_else(|| "<none>".to_owned(), escape_bytes),
                    subject: subject.to_owned(),
                });
            }
        };
        let uuid_or_own = |value: Option<&str>, header: &'static str| match value {
            None => Ok(id),
            Some(text) => Uuid::parse_str(text).map_err(|e| EnvelopeError::BadHeader {
                header,
                reason: format!("not a UUID: {e}"),
            }),
        };
        let correlation_id = uuid_or_own(self.correlation_id, names.correlation_id)?;
        let causation_id = uuid_or_own(self.causation_id, names.causation_id)?;
        let sequence = match self.sequence {
            None => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| EnvelopeError::BadHeader {
                header: names.sequence,
                reason: format!("{text:?} is not an unsigned integer"),
            })?),
        };
        Ok(Metadata {
            id,
            foreign_id,
            message_type,
            source,
            time,
            subject,
            correlation_id,
            causation_id,
            sequence,
            content_type: self
                .content_type
                .filter(|c| !c.is_empty())
                .unwrap_or(crate::codec::JSON)
                .to_owned(),
            traceparent: self.traceparent.map(str::to_owned),
            extensions: self.extensions,
        })
    }
}

/// Attributes plus a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    pub meta: Metadata,
    pub payload: T,
}

/// Where a consumed record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]@{}", self.topic, self.partition, self.offset)
    }
}

/// A decoded message as a handler receives it.
#[derive(Debug, Clone)]
pub struct Received<T> {
    pub meta: Metadata,
    pub payload: T,
    pub origin: Origin,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::RecordHeaders;

    type Pair<'a> = (&'a [u8], Option<&'a [u8]>);

    /// A record as it could come off the wire.
    struct Wire {
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        timestamp: Option<i64>,
        headers: RecordHeaders,
    }

    impl WireRecord for Wire {
        fn key(&self) -> Option<&[u8]> {
            self.key.as_deref()
        }
        fn value(&self) -> Option<&[u8]> {
            self.value.as_deref()
        }
        fn timestamp_millis(&self) -> Option<i64> {
            self.timestamp
        }
        fn raw_headers(&self) -> impl Iterator<Item = RawHeader<'_>> {
            self.headers.iter()
        }
    }

    fn wire(key: &[u8], headers: &[(&[u8], Option<&[u8]>)]) -> Wire {
        Wire {
            key: Some(key.to_vec()),
            value: Some(b"{}".to_vec()),
            timestamp: Some(1_764_000_000_123),
            headers: RecordHeaders::from_pairs(headers.iter().copied()),
        }
    }

    fn sample() -> Metadata {
        let id = Uuid::now_v7();
        let mut meta = Metadata::new(
            id,
            "v1.user.signedup",
            "/user-service",
            "ada@example.com",
            DateTime::parse_from_rfc3339("2026-11-26T10:00:00.123456Z")
                .expect("time")
                .with_timezone(&Utc),
            Some(Causation {
                correlation_id: Uuid::now_v7(),
                causation_id: Uuid::now_v7(),
            }),
        );
        meta.sequence = Some(42);
        meta.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        meta.extensions
            .insert("replyto".into(), "user-service.replies".into());
        meta
    }

    /// The sample's headers without `drop`, plus `extra`.
    fn sample_wire(meta: &Metadata, drop: &str, extra: &[(&[u8], Option<&[u8]>)]) -> Wire {
        let all = RecordHeaders::from_owned(&meta.to_headers());
        let mut pairs: Vec<(&[u8], Option<&[u8]>)> = all
            .iter()
            .filter(|h| h.name != drop.as_bytes())
            .map(|h| (h.name, h.value))
            .collect();
        pairs.extend_from_slice(extra);
        wire(meta.subject.as_bytes(), &pairs)
    }

    #[test]
    fn headers_round_trip() {
        let meta = sample();
        let headers = RecordHeaders::from_owned(&meta.to_headers());
        assert_eq!(
            headers.last(headers::SEQUENCE),
            Some(Some(&b"00000000000000000042"[..]))
        );
        let back = Metadata::from_record(&sample_wire(&meta, "", &[])).expect("decodes");
        assert_eq!(back, meta);
        assert_eq!(back.cloudevents_id(), meta.id.to_string());
    }

    #[test]
    fn required_attributes_are_named_when_missing() {
        let meta = sample();
        for name in [
            headers::ID,
            headers::TYPE,
            headers::SOURCE,
            headers::SPEC_VERSION,
        ] {
            let err = Metadata::from_record(&sample_wire(&meta, name, &[])).expect_err(name);
            assert_eq!(err, EnvelopeError::MissingHeader(name), "{name}: {err}");
        }
        let err = Metadata::from_record(&wire(b"k", &[])).expect_err("nothing");
        assert_eq!(err, EnvelopeError::MissingHeader(headers::SPEC_VERSION));
    }

    #[test]
    fn optional_attributes_take_their_defaults() {
        let meta = sample();
        // Each optional attribute alone.
        let no_time = Metadata::from_record(&sample_wire(&meta, headers::TIME, &[])).expect("time");
        assert_eq!(no_time.time.timestamp_millis(), 1_764_000_000_123);
        let no_subject =
            Metadata::from_record(&sample_wire(&meta, headers::SUBJECT, &[])).expect("subject");
        assert_eq!(no_subject.subject, meta.subject);
        let no_type = Metadata::from_record(&sample_wire(&meta, headers::CONTENT_TYPE, &[]))
            .expect("content type");
        assert_eq!(no_type.content_type, crate::codec::JSON);
        // Only what the spec requires, with an id that is not a UUID.
        let minimal = wire(
            b"order-7",
            &[
                (b"ce_specversion", Some(b"1.0")),
                (b"ce_id", Some(b"A-1")),
                (b"ce_source", Some(b"urn:shop")),
                (b"ce_type", Some(b"com.example.order.placed")),
            ],
        );
        let got = Metadata::from_record(&minimal).expect("minimal");
        assert_eq!(got.cloudevents_id(), "A-1");
        assert_eq!(got.id, event_id("urn:shop", "A-1"));
        assert_ne!(
            got.id,
            event_id("urn:other", "A-1"),
            "the source is part of it"
        );
        assert_eq!(got.id.get_version_num(), 5);
        assert_eq!((got.correlation_id, got.causation_id), (got.id, got.id));
        assert_eq!(got.subject, "order-7");
        assert_eq!(got.time.timestamp_millis(), 1_764_000_000_123);
        assert_eq!(got.sequence, None);
        // Written again, the id is the text it came as.
        let again = RecordHeaders::from_owned(&got.to_headers());
        assert_eq!(again.last(headers::ID), Some(Some(&b"A-1"[..])));
    }

    #[test]
    fn bad_headers_are_named() {
        let meta = sample();
        let cases: [(&[Pair<'_>], &str); 5] = [
            (&[(b"\xff\xfe", Some(b"x"))], "#12"),
            (&[(b"", Some(b"x"))], "empty"),
            (&[(b"ce_id", Some(b"again"))], "more than once"),
            (&[(b"ce_note", Some(b"\xff"))], "ce_note"),
            (
                &[(b"ce_note", Some(b"a")), (b"ce_note", Some(b"b"))],
                "more than once",
            ),
        ];
        for (extra, says) in cases {
            let err = Metadata::from_record(&sample_wire(&meta, "", extra)).expect_err(says);
            assert!(err.to_string().contains(says), "{says}: {err}");
        }
        let err =
            Metadata::from_record(&sample_wire(&meta, "", &[(b"\xff", None)])).expect_err("name");
        assert!(
            matches!(&err, EnvelopeError::BadHeaderName { name, .. } if name == "\\xff"),
            "{err}"
        );
        // A value that is not UTF-8 in a header that is not an attribute is not ours to judge.
        let other = sample_wire(&meta, "", &[(b"x-binary", Some(b"\xff\x00"))]);
        assert!(Metadata::from_record(&other).is_ok());
        let err = Metadata::from_record(&sample_wire(
            &meta,
            headers::CORRELATION_ID,
            &[(b"ce_correlationid", Some(b"nope"))],
        ))
        .expect_err("correlation");
        assert!(err.to_string().contains("ce_correlationid"), "{err}");
        let mismatch = Wire {
            key: Some(b"other".to_vec()),
            ..sample_wire(&meta, "", &[])
        };
        let err = Metadata::from_record(&mismatch).expect_err("key");
        assert!(matches!(err, EnvelopeError::KeyMismatch { .. }), "{err}");
    }

    fn structured(key: &[u8], event: &str) -> Wire {
        Wire {
            key: Some(key.to_vec()),
            value: Some(event.as_bytes().to_vec()),
            timestamp: Some(5),
            headers: RecordHeaders::from_pairs([(
                &b"content-type"[..],
                Some(&b"application/cloudevents+json; charset=UTF-8"[..]),
            )]),
        }
    }

    #[test]
    fn structured_mode_is_read() {
        let record = structured(
            b"order-7",
            r#"{"specversion":"1.0","id":"x-1","source":"urn:shop","type":"com.example.placed",
                "subject":"order-7","time":"2026-11-26T10:00:00Z","datacontenttype":"application/json",
                "correlationid":"0190a0b0-0000-7000-8000-000000000001","priority":3,
                "data":{"total":12}}"#,
        );
        let opened = Metadata::open(&record).expect("structured");
        assert_eq!(opened.meta.cloudevents_id(), "x-1");
        assert_eq!(opened.meta.subject, "order-7");
        assert_eq!(
            opened.meta.extensions.get("priority").map(String::as_str),
            Some("3")
        );
        assert_eq!(
            opened.meta.correlation_id.to_string(),
            "0190a0b0-0000-7000-8000-000000000001"
        );
        assert_eq!(opened.payload(), Some(&br#"{"total":12}"#[..]));
        // data_base64, and a text payload.
        let b64 = structured(
            b"k",
            r#"{"specversion":"1.0","id":"2","source":"s","type":"t","data_base64":"aGk="}"#,
        );
        assert_eq!(
            Metadata::open(&b64).expect("b64").payload(),
            Some(&b"hi"[..])
        );
        let text = structured(
            b"k",
            r#"{"specversion":"1.0","id":"3","source":"s","type":"t","datacontenttype":"text/plain","data":"hi"}"#,
        );
        assert_eq!(
            Metadata::open(&text).expect("text").payload(),
            Some(&b"hi"[..])
        );
        // What is refused names why.
        for (event, says) in [
            (r#"{"specversion":"1.0","source":"s","type":"t"}"#, "id"),
            (r#"[1]"#, "JSON object"),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":1,"data_base64":"aA=="}"#,
                "both",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"%%"}"#,
                "base64",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":"t","ext":{"a":1}}"#,
                "ext",
            ),
        ] {
            let err = Metadata::open(&structured(b"k", event)).expect_err(says);
            assert!(err.to_string().contains(says), "{says}: {err}");
        }
        let err = Metadata::open(&structured(
            b"other",
            r#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"k"}"#,
        ))
        .expect_err("key");
        assert!(matches!(err, EnvelopeError::KeyMismatch { .. }), "{err}");
    }
}
