//! The versioning rule, enforced: a change to a message's payload under the same `v{N}` name
//! must not break its readers; a breaking change is a new message, `v{N+1}`.
//!
//! [`check`] compares two AsyncAPI documents of one service (as [`super::AsyncApi`] writes
//! them) message by message, matched by name (`v1.user.signedup`):
//!
//! - JSON payloads field by field (see the rules below); Avro payloads with Avro's own schema
//!   resolution rules in both directions (the schema store's check);
//! - **breaking**: a field removed or renamed; a type changed, narrowed or widened (an
//!   `Option` added or dropped too); `format`, `const`, bounds or `pattern` changed; a
//!   required field added (no serde default) or an optional one made required; an enum value
//!   or a variant added or removed; a field added to an object that refuses unknown fields;
//!   the payload's content type changed; a channel's partition count changed (keys would
//!   move to other partitions);
//! - **additive** (reported, never failing): an optional field added, a new message, a new
//!   version of a message, a new channel; a message no longer in the new document is noted
//!   (consumers may still wait for it), not failed.
//!
//! Both readers matter because a `v{N}` message is read both ways while a change rolls out:
//! new code reads the old payloads in the log (rebuilds, restores) and consumers not yet
//! upgraded read the new ones.

mod avro;
mod json;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

pub use avro::AvroDifference;
pub use json::{Difference, Side};

/// A breaking change found by [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The message name (`v1.user.signedup`), or `topic {name}` for a channel.
    pub subject: String,
    /// The field path (`address.city`, `tags[]`), if the problem is about one.
    pub field: Option<String>,
    /// What changed and why it breaks.
    pub reason: String,
    /// The name to publish the change under instead (`v2.user.signedup`), for messages.
    pub publish_instead: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.subject)?;
        if let Some(field) = &self.field {
            write!(f, ": field {field}")?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(next) = &self.publish_instead {
            write!(f, "; publish the change as {next} instead")?;
        }
        Ok(())
    }
}

/// What [`check`] found: the breaking changes and notes on the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Breaking changes; the check fails if there is any.
    pub problems: Vec<Problem>,
    /// Additive changes and removals, for information.
    pub notes: Vec<String>,
}

impl Report {
    /// True if nothing breaks.
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }
}

/// `v{N+1}.{entity}.{verb}` for `v{N}.{entity}.{verb}`.
pub fn next_version(name: &str) -> Option<String> {
    let (major, rest) = name.strip_prefix('v')?.split_once('.')?;
    let major: u32 = major.parse().ok()?;
    Some(format!("v{}.{rest}", major.checked_add(1)?))
}

/// A message of a document: its payload and whether it is Avro.
struct Message<'a> {
    payload: &'a Value,
    avro: bool,
}

/// The messages of a document by name (`components.messages.*.name`).
fn messages<'a>(
    document: &'a Value,
    which: &str,
) -> Result<BTreeMap<&'a str, Message<'a>>, String> {
    if document.get("asyncapi").and_then(Value::as_str).is_none() {
        return Err(format!(
            "the {which} document is not an AsyncAPI document (no `asyncapi` field)"
        ));
    }
    let mut out = BTreeMap::new();
    let Some(all) = document
        .pointer("/components/messages")
        .and_then(Value::as_object)
    else {
        return Ok(out);
    };
    for (id, message) in all {
        let name = message.get("name").and_then(Value::as_str).unwrap_or(id);
        let payload = message.get("payload").unwrap_or(&Value::Null);
        let format = payload.get("schemaFormat").and_then(Value::as_str);
        let (payload, avro) = match format {
            Some(f) if f.starts_with("application/vnd.apache.avro") => {
                (payload.get("schema").unwrap_or(&Value::Null), true)
            }
            Some(_) => (payload.get("schema").unwrap_or(&Value::Null), false),
            None => (payload, false),
        };
        out.insert(name, Message { payload, avro });
    }
    Ok(out)
}

/// Partition counts of the channels by address.
fn partitions(document: &Value) -> BTreeMap<&str, i64> {
    let mut out = BTreeMap::new();
    if let Some(channels) = document.get("channels").and_then(Value::as_object) {
        for channel in channels.values() {
            let address = channel.get("address").and_then(Value::as_str);
            let count = channel
                .pointer("/bindings/kafka/partitions")
                .and_then(Value::as_i64);
            if let (Some(address), Some(count)) = (address, count) {
                out.insert(address, count);
            }
        }
    }
    out
}

/// Compares the `old` and `new` documents of a service; an error if either is not an AsyncAPI
/// document or holds an Avro schema that does not parse.
pub fn check(old: &Value, new: &Value) -> Result<Report, String> {
    let (before, after) = (messages(old, "old")?, messages(new, "new")?);
    let mut report = Report::default();
    for (name, was) in &before {
        let Some(now) = after.get(name) else {
            report.notes.push(format!(
                "{name}: no longer in the document (its consumers may still wait for it)"
            ));
            continue;
        };
        let problem = |field: Option<String>, reason: String| Problem {
            subject: (*name).to_owned(),
            field,
            reason,
            publish_instead: next_version(name),
        };
        match (was.avro, now.avro) {
            (true, true) => {
                for d in
                    avro::compare(was.payload, now.payload).map_err(|e| format!("{name}: {e}"))?
                {
                    report.problems.push(problem(d.field, d.reason));
                }
            }
            (false, false) => {
                let sides = (
                    Side {
                        schema: was.payload,
                        document: old,
                    },
                    Side {
                        schema: now.payload,
                        document: new,
                    },
                );
                for d in json::compare(sides.0, sides.1) {
                    let field = (!d.field.is_empty()).then(|| d.field.clone());
                    if d.breaking {
                        report.problems.push(problem(field, d.reason));
                    } else {
                        report
                            .notes
                            .push(format!("{name}: field {}: {}", d.field, d.reason));
                    }
                }
            }
            (was_avro, _) => report.problems.push(problem(
                None,
                format!(
                    "the payload changed from {} to {}: consumers not yet upgraded cannot read it",
                    if was_avro { "Avro" } else { "JSON" },
                    if was_avro { "JSON" } else { "Avro" },
                ),
            )),
        }
    }
    for name in after.keys().filter(|n| !before.contains_key(*n)) {
        report.notes.push(format!("{name}: new message"));
    }
    let (old_partitions, new_partitions) = (partitions(old), partitions(new));
    for (topic, count) in &old_partitions {
        if let Some(now) = new_partitions.get(topic)
            && now != count
        {
            report.problems.push(Problem {
                subject: format!("topic {topic}"),
                field: None,
                reason: format!(
                    "partition count changed from {count} to {now}: keys would move to other partitions (an entity's order is lost); create a new topic instead"
                ),
                publish_instead: None,
            });
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
