//! Compares two Avro schemas of one message version with Avro's own resolution rules (both
//! directions, as the schema store checks a new schema: `codec::avro::check_compatibility`).

use std::sync::Arc;

use serde_json::Value;

use crate::codec::avro::{AvroSchema, check_compatibility};

/// One incompatibility: the field (when the rules name one) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvroDifference {
    /// The field path, when known.
    pub field: Option<String>,
    /// Why a reader on one side cannot read the other side's data.
    pub reason: String,
}

fn parse(schema: &Value, which: &str) -> Result<AvroSchema, String> {
    AvroSchema::parse(&schema.to_string()).map_err(|e| format!("the {which} Avro schema: {e}"))
}

/// The incompatibilities between `old` and `new`; an error if either is not a valid schema.
pub fn compare(old: &Value, new: &Value) -> Result<Vec<AvroDifference>, String> {
    let (old, new) = (parse(old, "old")?, parse(new, "new")?);
    Ok(check_compatibility(&new, &[Arc::new(old)])
        .into_iter()
        .map(|i| {
            let reader = match i.direction {
                crate::codec::avro::Direction::Backward => {
                    "the new schema cannot read old payloads in the log"
                }
                crate::codec::avro::Direction::Forward => {
                    "consumers not yet upgraded cannot read new payloads"
                }
            };
            AvroDifference {
                field: i.field,
                reason: format!("{reader}: {}", i.reason),
            }
        })
        .collect())
}
