//! Structured-mode CloudEvents: the record value is the whole event in the JSON event format
//! (`content-type: application/cloudevents+json`), attributes and data together. choreo
//! writes binary mode only, but reads this too, since the Kafka protocol binding allows it and
//! other producers (the CloudEvents SDKs among them) send it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::Value;

use super::attributes::{Attributes, Names};
use super::{EnvelopeError, Metadata, Opened, WireRecord};

/// The one event format choreo reads in structured mode.
const JSON_FORMAT: &str = "application/cloudevents+json";

/// Members that are attributes choreo reads itself (the rest are extensions).
const KNOWN: [&str; 11] = [
    "specversion",
    "id",
    "type",
    "source",
    "time",
    "subject",
    "datacontenttype",
    "correlationid",
    "causationid",
    "sequence",
    "traceparent",
];

/// Opens a structured-mode record whose content type is `content_type`.
pub(super) fn open<'r, R: WireRecord + ?Sized>(
    record: &'r R,
    content_type: &str,
) -> Result<Opened<'r>, EnvelopeError> {
    let bad = |reason: String| EnvelopeError::Structured {
        content_type: content_type.to_owned(),
        reason,
    };
    if !crate::message::media_type(content_type).eq_ignore_ascii_case(JSON_FORMAT) {
        return Err(bad(format!(
            "only the JSON event format ({JSON_FORMAT}) is read"
        )));
    }
    let value = record.value().ok_or(EnvelopeError::MissingPayload)?;
    let event: serde_json::Map<String, Value> =
        serde_json::from_slice(value).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let mut texts: BTreeMap<&str, String> = BTreeMap::new();
    for (name, member) in &event {
        if name == "data" || name == "data_base64" {
            continue;
        }
        let text = match member {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            // The JSON format treats a null attribute as absent.
            Value::Null => continue,
            Value::Array(_) | Value::Object(_) => {
                return Err(bad(format!(
                    "attribute {name:?} is an array or object; attributes are strings, numbers \
                     or booleans"
                )));
            }
        };
        texts.insert(name.as_str(), text);
    }
    let attributes = Attributes {
        spec_version: texts.get("specversion").map(String::as_str),
        id: texts.get("id").map(String::as_str),
        message_type: texts.get("type").map(String::as_str),
        source: texts.get("source").map(String::as_str),
        time: texts.get("time").map(String::as_str),
        subject: texts.get("subject").map(String::as_str),
        correlation_id: texts.get("correlationid").map(String::as_str),
        causation_id: texts.get("causationid").map(String::as_str),
        sequence: texts.get("sequence").map(String::as_str),
        content_type: texts.get("datacontenttype").map(String::as_str),
        traceparent: texts.get("traceparent").map(String::as_str),
        extensions: texts
            .iter()
            .filter(|(name, _)| !KNOWN.contains(name))
            .map(|(name, text)| ((*name).to_owned(), text.clone()))
            .collect(),
    };
    let meta = attributes.check(Names::STRUCTURED, record.key(), record.timestamp_millis())?;
    let payload = data(&event, &meta).map_err(bad)?;
    Ok(Opened {
        meta,
        payload: payload.map(Cow::Owned),
    })
}

/// The event's data as bytes: `data_base64` decoded, or `data` as JSON text (a string member
/// of a non-JSON content type is its text).
fn data(
    event: &serde_json::Map<String, Value>,
    meta: &Metadata,
) -> Result<Option<Vec<u8>>, String> {
    match (event.get("data"), event.get("data_base64")) {
        (Some(_), Some(_)) => Err("both data and data_base64 are present".into()),
        (None, None) | (Some(Value::Null), None) => Ok(None),
        (None, Some(Value::String(encoded))) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map(Some)
            .map_err(|e| format!("data_base64 is not base64: {e}")),
        (None, Some(_)) => Err("data_base64 is not a string".into()),
        (Some(Value::String(text)), None) if !crate::message::is_json(&meta.content_type) => {
            Ok(Some(text.clone().into_bytes()))
        }
        (Some(value), None) => serde_json::to_vec(value)
            .map(Some)
            .map_err(|e| format!("data cannot be written as JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;

    fn event(json: &str) -> serde_json::Map<String, Value> {
        serde_json::from_str(json).expect("object")
    }

    fn meta(content_type: &str) -> Metadata {
        let mut meta = Metadata::new(Uuid::now_v7(), "t", "s", "k", Utc::now(), None);
        meta.content_type = content_type.to_owned();
        meta
    }

    #[test]
    fn data_is_json_text_or_decoded_base64() {
        let json = meta("application/json");
        let text = meta("text/plain");
        assert_eq!(
            data(&event(r#"{"data":{"a":[1,2]}}"#), &json),
            Ok(Some(br#"{"a":[1,2]}"#.to_vec()))
        );
        assert_eq!(
            data(&event(r#"{"data":"hi"}"#), &json),
            Ok(Some(br#""hi""#.to_vec())),
            "a JSON string stays JSON"
        );
        assert_eq!(
            data(&event(r#"{"data":"hi"}"#), &text),
            Ok(Some(b"hi".to_vec()))
        );
        assert_eq!(
            data(&event(r#"{"data_base64":"AP8="}"#), &json),
            Ok(Some(vec![0, 255]))
        );
        assert_eq!(data(&event(r#"{"data":null}"#), &json), Ok(None));
        assert_eq!(data(&event("{}"), &json), Ok(None));
        let err = data(&event(r#"{"data_base64":1}"#), &json).expect_err("number");
        assert!(err.contains("not a string"), "{err}");
    }

    #[test]
    fn only_the_json_event_format_is_read() {
        struct Raw(Vec<u8>);
        impl WireRecord for Raw {
            fn key(&self) -> Option<&[u8]> {
                Some(b"k")
            }
            fn value(&self) -> Option<&[u8]> {
                Some(&self.0)
            }
            fn timestamp_millis(&self) -> Option<i64> {
                Some(0)
            }
            fn raw_headers(&self) -> impl Iterator<Item = crate::message::RawHeader<'_>> {
                std::iter::empty()
            }
        }
        let record = Raw(br#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#.to_vec());
        assert!(open(&record, "application/cloudevents+json; charset=utf-8").is_ok());
        let err = open(&record, "application/cloudevents+avro").expect_err("avro");
        assert!(
            matches!(&err, EnvelopeError::Structured { content_type, reason }
                if content_type == "application/cloudevents+avro" && reason.contains(JSON_FORMAT)),
            "{err}"
        );
    }
}
