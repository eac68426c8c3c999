//! The envelope: CloudEvents 1.0 in the Kafka protocol binding, binary mode.
//!
//! Key = subject, value = payload, attributes in `ce_*` headers. Any Kafka client in any
//! language can read and write these records without choreo.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use uuid::Uuid;

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
    #[error("header ce_specversion is {0:?}; only \"1.0\" is supported")]
    SpecVersion(String),
    #[error(
        "structured-mode CloudEvents (content-type {0}) are not accepted; send binary mode: \
         attributes in ce_* headers, the data as the record value"
    )]
    StructuredMode(String),
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
    /// Unique id (UUIDv7 for messages choreo creates), fixed before the first send.
    pub id: Uuid,
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
    let id: &str = id.hyphenated().encode_lower(&mut id_buf);
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

    /// Reads the attributes from a record's headers and checks the key against the subject.
    pub fn from_record<H: Headers>(
        headers: Option<&H>,
        key: Option<&[u8]>,
    ) -> Result<Self, EnvelopeError> {
        let mut found = Found::default();
        if let Some(headers) = headers {
            for header in headers.iter() {
                found.take(header.key, header.value)?;
            }
        }
        let meta = found.finish()?;
        match key {
            Some(key) if key == meta.subject.as_bytes() => Ok(meta),
            key => Err(EnvelopeError::KeyMismatch {
                key: key.map_or_else(
                    || "<none>".to_owned(),
                    |k| String::from_utf8_lossy(k).into_owned(),
                ),
                subject: meta.subject,
            }),
        }
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
        let slot = match key {
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
                    let value = value
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .unwrap_or_default();
                    self.extensions.insert(name.to_owned(), value.to_owned());
                }
                return Ok(());
            }
        };
        let (field, header) = slot;
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

    fn finish(self) -> Result<Metadata, EnvelopeError> {
        // Structured mode first: such a record has no ce_ headers at all, and "missing ce_id"
        // would hide the real problem.
        if let Some(ct) = self.content_type
            && ct
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("application/cloudevents")
        {
            return Err(EnvelopeError::StructuredMode(ct.to_owned()));
        }
        let spec = self
            .spec_version
            .ok_or(EnvelopeError::MissingHeader(headers::SPEC_VERSION))?;
        if spec != SPEC_VERSION {
            return Err(EnvelopeError::SpecVersion(spec.to_owned()));
        }
        let required = |value: Option<&'a str>, header: &'static str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or(EnvelopeError::MissingHeader(header))
        };
        let uuid = |value: Option<&'a str>, header: &'static str| {
            Uuid::parse_str(required(value, header)?).map_err(|e| EnvelopeError::BadHeader {
                header,
                reason: format!("not a UUID: {e}"),
            })
        };
        let id = uuid(self.id, headers::ID)?;
        let message_type = required(self.message_type, headers::TYPE)?;
        let source = required(self.source, headers::SOURCE)?;
        let time_text = required(self.time, headers::TIME)?;
        let time = DateTime::parse_from_rfc3339(time_text)
            .map_err(|e| EnvelopeError::BadHeader {
                header: headers::TIME,
                reason: format!("not an RFC 3339 timestamp ({e})"),
            })?
            .with_timezone(&Utc);
        let subject = required(self.subject, headers::SUBJECT)?;
        let content_type = required(self.content_type, headers::CONTENT_TYPE)?;
        let correlation_id = uuid(self.correlation_id, headers::CORRELATION_ID)?;
        let causation_id = uuid(self.causation_id, headers::CAUSATION_ID)?;
        let sequence = match self.sequence {
            None => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| EnvelopeError::BadHeader {
                header: headers::SEQUENCE,
                reason: format!("{text:?} is not an unsigned integer"),
            })?),
        };
        Ok(Metadata {
            id,
            message_type: message_type.to_owned(),
            source: source.to_owned(),
            time,
            subject: subject.to_owned(),
            correlation_id,
            causation_id,
            sequence,
            content_type: content_type.to_owned(),
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

    #[test]
    fn headers_round_trip() {
        let meta = sample();
        let headers = meta.to_headers();
        let seq = headers
            .iter()
            .find(|h| h.key == headers::SEQUENCE)
            .and_then(|h| h.value);
        assert_eq!(seq, Some(&b"00000000000000000042"[..]));
        let back =
            Metadata::from_record(Some(&headers), Some(b"ada@example.com")).expect("decodes");
        assert_eq!(back, meta);
    }

    #[test]
    fn errors_name_the_header() {
        let meta = sample();
        let drop_header = |name: &str| {
            let mut out = OwnedHeaders::new();
            for h in meta.to_headers().iter().filter(|h| h.key != name) {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
            out
        };
        for name in [
            headers::ID,
            headers::TYPE,
            headers::SOURCE,
            headers::TIME,
            headers::SUBJECT,
            headers::CONTENT_TYPE,
            headers::CORRELATION_ID,
            headers::CAUSATION_ID,
            headers::SPEC_VERSION,
        ] {
            let err = Metadata::from_record(Some(&drop_header(name)), Some(b"ada@example.com"))
                .expect_err(name);
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        let bad_id = drop_header(headers::ID).insert(Header {
            key: headers::ID,
            value: Some("nope"),
        });
        let err =
            Metadata::from_record(Some(&bad_id), Some(b"ada@example.com")).expect_err("bad id");
        assert!(
            err.to_string().contains("ce_id") && err.to_string().contains("UUID"),
            "{err}"
        );
        let err = Metadata::from_record(Some(&meta.to_headers()), Some(b"other")).expect_err("key");
        assert!(matches!(err, EnvelopeError::KeyMismatch { .. }), "{err}");
        let err = Metadata::from_record::<OwnedHeaders>(None, None).expect_err("nothing");
        assert_eq!(err, EnvelopeError::MissingHeader(headers::SPEC_VERSION));
        let structured = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/cloudevents+json"),
        });
        let err = Metadata::from_record(Some(&structured), None).expect_err("structured");
        assert!(matches!(err, EnvelopeError::StructuredMode(_)), "{err}");
    }
}
