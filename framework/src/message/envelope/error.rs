//! Why a record is not a valid message, and the byte escaping its messages use.

/// Why a record is not a valid choreo message. Each variant names the header or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A required attribute is absent or empty; names its header (its attribute name in
    /// structured mode).
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// An attribute is present but unusable: not a UUID, not a timestamp, given twice, ...
    #[error("header {header} is invalid: {reason}")]
    BadHeader {
        /// The header (the attribute name in structured mode).
        header: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A header whose name cannot be read; `index` counts from 0 in the record's order.
    #[error("header #{index} (name {name:?}) has a name that is {reason}")]
    BadHeaderName {
        /// The header's position in the record.
        index: usize,
        /// The name, bytes other than printable ASCII escaped (`\xNN`), cut at 64.
        name: String,
        /// What is wrong with it: `"not UTF-8"` or `"empty"`.
        reason: &'static str,
    },
    /// A `ce_*` extension header that is not UTF-8 or appears more than once.
    #[error("extension attribute {name} is invalid: {reason}")]
    BadExtension {
        /// The header's name, with its `ce_` prefix.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A CloudEvents version other than 1.0; holds the version found.
    #[error("header ce_specversion is {0:?}; only \"1.0\" is supported")]
    SpecVersion(String),
    /// A structured-mode event whose value is not a CloudEvent in JSON.
    #[error("structured-mode CloudEvent (content-type {content_type}) is invalid: {reason}")]
    Structured {
        /// The record's `content-type`.
        content_type: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// A record whose key is not its `ce_subject` (the key is the subject, so that partitioning
    /// follows the entity).
    #[error("the record key {key:?} differs from header ce_subject {subject:?}")]
    KeyMismatch {
        /// The record key, escaped like a bad header name, or `<none>`.
        key: String,
        /// The `ce_subject`.
        subject: String,
    },
    /// A payload in an encoding choreo does not read; holds the `content-type`.
    #[error("content-type {0:?} is not supported (application/json and application/avro are)")]
    ContentType(String),
    /// A record without a value.
    #[error("the record has no value (payload)")]
    MissingPayload,
    /// A payload that does not decode into its event type.
    #[error("payload of {event_type} ({content_type}) cannot be decoded: {reason}")]
    Payload {
        /// The message name (`ce_type`).
        event_type: String,
        /// The payload's `content-type`.
        content_type: String,
        /// The decoder's error.
        reason: String,
    },
    /// A payload that could not be encoded.
    #[error("payload of {event_type} cannot be encoded: {reason}")]
    Encode {
        /// The message name (`ce_type`).
        event_type: String,
        /// The encoder's error.
        reason: String,
    },
    /// An Avro payload whose writer schema is in no schema store this process can see: usually
    /// a newer writer this reader has not heard of yet. Halts the partition; never a dead
    /// letter (every later record of that writer would follow it there).
    #[error(
        "payload of {event_type} was written with Avro schema {fingerprint:016x}, which is not \
         in the schema store (a newer writer not registered yet?); halting rather than \
         dead-lettering"
    )]
    UnknownSchema {
        /// The message name (`ce_type`).
        event_type: String,
        /// The writer schema's CRC-64-AVRO (Rabin) fingerprint, from the payload's header.
        fingerprint: u64,
    },
    /// The schema an event type declares does not parse: a bug that would fail every record.
    #[error("the Avro schema declared for {event_type} is invalid: {reason}")]
    BadSchema {
        /// The message name (`ce_type`).
        event_type: String,
        /// The parser's error.
        reason: String,
    },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_reader_lacks_halts() {
        let halting = [
            EnvelopeError::UnknownSchema {
                event_type: "t".into(),
                fingerprint: 1,
            },
            EnvelopeError::BadSchema {
                event_type: "t".into(),
                reason: "r".into(),
            },
        ];
        assert!(halting.iter().all(EnvelopeError::halts));
        let dead_lettered = [
            EnvelopeError::MissingHeader("ce_id"),
            EnvelopeError::MissingPayload,
            EnvelopeError::ContentType("text/csv".into()),
            EnvelopeError::Payload {
                event_type: "t".into(),
                content_type: "application/avro".into(),
                reason: "r".into(),
            },
        ];
        assert!(!dead_lettered.iter().any(EnvelopeError::halts));
    }

    #[test]
    fn escaped_bytes_are_printable_and_cut_at_64() {
        assert_eq!(escape_bytes(b"ce_id"), "ce_id");
        assert_eq!(escape_bytes(b"a\xff\x00\n"), "a\\xff\\x00\\n");
        assert_eq!(escape_bytes(&[b'x'; 64]), "x".repeat(64));
        assert_eq!(escape_bytes(&[b'x'; 65]), "x".repeat(64) + "...");
    }
}
