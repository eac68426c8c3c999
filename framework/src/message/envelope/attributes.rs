//! The attributes of an event as found in either mode, checked into [`Metadata`]: required
//! ones present, defaults filled in (time from the record timestamp, subject from the key,
//! correlation and causation from the id), foreign ids kept.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::error::escape_bytes;
use super::{EnvelopeError, Metadata, SPEC_VERSION, event_id, headers};

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
    pub(super) const BINARY: Names = Names {
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
                .unwrap_or(crate::message::JSON)
                .to_owned(),
            traceparent: self.traceparent.map(str::to_owned),
            extensions: self.extensions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The four attributes the spec requires, nothing else.
    fn required() -> Attributes<'static> {
        Attributes {
            spec_version: Some("1.0"),
            id: Some("A-1"),
            message_type: Some("com.example.order.placed"),
            source: Some("urn:shop"),
            time: None,
            subject: None,
            correlation_id: None,
            causation_id: None,
            sequence: None,
            content_type: None,
            traceparent: None,
            extensions: BTreeMap::new(),
        }
    }

    #[test]
    fn absent_optional_attributes_take_their_defaults() {
        let meta = required()
            .check(Names::BINARY, Some(b"order-7"), Some(1_764_000_000_123))
            .expect("valid");
        assert_eq!(meta.id, event_id("urn:shop", "A-1"));
        assert_eq!(meta.foreign_id.as_deref(), Some("A-1"));
        assert_eq!((meta.correlation_id, meta.causation_id), (meta.id, meta.id));
        assert_eq!(meta.subject, "order-7", "the key is the subject");
        assert_eq!(meta.time.timestamp_millis(), 1_764_000_000_123);
        assert_eq!(meta.content_type, crate::message::JSON);
        assert_eq!(meta.sequence, None);
        let empty_type = Attributes {
            content_type: Some(""),
            ..required()
        };
        let meta = empty_type
            .check(Names::BINARY, Some(b"k"), Some(0))
            .expect("valid");
        assert_eq!(meta.content_type, crate::message::JSON);
    }

    #[test]
    fn a_uuid_id_in_another_form_is_kept_as_sent() {
        let upper = "0190A0B0-0000-7000-8000-000000000001";
        let meta = Attributes {
            id: Some(upper),
            ..required()
        }
        .check(Names::BINARY, Some(b"k"), Some(0))
        .expect("valid");
        assert_eq!(meta.id.to_string(), upper.to_lowercase());
        assert_eq!(meta.foreign_id.as_deref(), Some(upper));
        let own = meta.id.to_string();
        let meta = Attributes {
            id: Some(&own),
            ..required()
        }
        .check(Names::BINARY, Some(b"k"), Some(0))
        .expect("valid");
        assert_eq!(meta.foreign_id, None, "choreo's own form needs no copy");
    }

    #[test]
    fn errors_name_the_attribute_as_the_mode_calls_it() {
        let no_id = || Attributes {
            id: None,
            ..required()
        };
        assert_eq!(
            no_id().check(Names::BINARY, Some(b"k"), Some(0)),
            Err(EnvelopeError::MissingHeader("ce_id"))
        );
        assert_eq!(
            no_id().check(Names::STRUCTURED, Some(b"k"), Some(0)),
            Err(EnvelopeError::MissingHeader("id"))
        );
        let empty_source = Attributes {
            source: Some(""),
            ..required()
        };
        assert_eq!(
            empty_source.check(Names::STRUCTURED, Some(b"k"), Some(0)),
            Err(EnvelopeError::MissingHeader("source"))
        );
        let bad_sequence = Attributes {
            sequence: Some("-1"),
            ..required()
        };
        let err = bad_sequence
            .check(Names::STRUCTURED, Some(b"k"), Some(0))
            .expect_err("sequence");
        assert!(
            matches!(&err, EnvelopeError::BadHeader { header: "sequence", reason } if reason.contains("\"-1\"")),
            "{err}"
        );
        let old = Attributes {
            spec_version: Some("0.3"),
            ..required()
        };
        assert_eq!(
            old.check(Names::BINARY, Some(b"k"), Some(0)),
            Err(EnvelopeError::SpecVersion("0.3".into()))
        );
    }

    #[test]
    fn time_comes_from_ce_time_else_from_a_valid_record_timestamp() {
        let timed = Attributes {
            time: Some("2026-11-26T11:00:00.5+01:00"),
            ..required()
        };
        let meta = timed.check(Names::BINARY, Some(b"k"), None).expect("valid");
        assert_eq!(meta.time.to_rfc3339(), "2026-11-26T10:00:00.500+00:00");
        let bad = Attributes {
            time: Some("yesterday"),
            ..required()
        };
        let err = bad
            .check(Names::BINARY, Some(b"k"), None)
            .expect_err("time");
        assert!(
            matches!(&err, EnvelopeError::BadHeader { header: "ce_time", reason } if reason.contains("RFC 3339")),
            "{err}"
        );
        for timestamp in [None, Some(-1)] {
            assert_eq!(
                required().check(Names::BINARY, Some(b"k"), timestamp),
                Err(EnvelopeError::MissingHeader("ce_time")),
                "{timestamp:?}"
            );
        }
    }

    #[test]
    fn the_subject_must_match_the_key_and_defaults_to_a_utf8_key() {
        let with = |subject| Attributes {
            subject,
            ..required()
        };
        let meta = with(Some("k"))
            .check(Names::BINARY, Some(b"k"), Some(0))
            .expect("same");
        assert_eq!(meta.subject, "k");
        let err = with(Some("k"))
            .check(Names::BINARY, None, Some(0))
            .expect_err("no key");
        assert_eq!(
            err,
            EnvelopeError::KeyMismatch {
                key: "<none>".into(),
                subject: "k".into()
            }
        );
        let err = with(None)
            .check(Names::BINARY, Some(b"\xffk"), Some(0))
            .expect_err("binary key");
        assert!(
            matches!(&err, EnvelopeError::BadHeader { header: "ce_subject", reason } if reason.contains("\\xffk")),
            "{err}"
        );
        for key in [None, Some(&b""[..])] {
            assert_eq!(
                with(None).check(Names::BINARY, key, Some(0)),
                Err(EnvelopeError::MissingHeader("ce_subject"))
            );
        }
    }
}
