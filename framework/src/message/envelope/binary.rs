//! Binary mode: attributes in `ce_*` headers, found in one pass over the headers.

use std::collections::BTreeMap;

use super::attributes::{Attributes, Names};
use super::{EnvelopeError, Metadata, headers};

/// Header values found while scanning; the scan is one pass over the headers.
#[derive(Default)]
pub(super) struct Found<'a> {
    spec_version: Option<&'a str>,
    id: Option<&'a str>,
    message_type: Option<&'a str>,
    source: Option<&'a str>,
    time: Option<&'a str>,
    subject: Option<&'a str>,
    correlation_id: Option<&'a str>,
    causation_id: Option<&'a str>,
    sequence: Option<&'a str>,
    pub(super) content_type: Option<&'a str>,
    traceparent: Option<&'a str>,
    extensions: BTreeMap<String, String>,
}

impl<'a> Found<'a> {
    pub(super) fn take(
        &mut self,
        key: &'a str,
        value: Option<&'a [u8]>,
    ) -> Result<(), EnvelopeError> {
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

    pub(super) fn finish(
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
