//! Opening a consumed record: binary mode read here, structured mode handed on.

use std::borrow::Cow;

use super::binary::Found;
use super::error::escape_bytes;
use super::{EnvelopeError, Metadata, structured};

impl Metadata {
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
    /// The header's name.
    pub name: &'a [u8],
    /// The header's value; `None` for a null value.
    pub value: Option<&'a [u8]>,
}

/// What the envelope reads of a consumed record.
pub trait WireRecord {
    /// The record key: the subject when it carries no `ce_subject`.
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
    /// The attributes, checked.
    pub meta: Metadata,
    /// The data: the record value in binary mode, `data` or `data_base64` in structured mode.
    pub payload: Option<Cow<'a, [u8]>>,
}

impl Opened<'_> {
    /// The data, borrowed.
    pub fn payload(&self) -> Option<&[u8]> {
        self.payload.as_deref()
    }
}

/// Whether a content type is a structured-mode CloudEvent.
fn is_structured(content_type: &str) -> bool {
    crate::message::media_type(content_type)
        .get(..STRUCTURED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(STRUCTURED_PREFIX))
}

const STRUCTURED_PREFIX: &str = "application/cloudevents";

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::kafka::RecordHeaders;
    use crate::message::{Causation, event_id, headers};

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
    fn structured_mode_is_told_by_the_media_type() {
        for yes in [
            "application/cloudevents+json",
            "Application/CloudEvents+JSON; charset=UTF-8",
            "application/cloudevents-batch+json",
        ] {
            assert!(is_structured(yes), "{yes}");
        }
        for no in [
            "application/json",
            "application/avro",
            "application/cloudevent",
            "",
        ] {
            assert!(!is_structured(no), "{no}");
        }
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
        assert_eq!(no_type.content_type, crate::message::JSON);
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
