//! A message with its payload, and where a consumed one came from.

use std::fmt;

use super::Metadata;

/// Attributes plus a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope<T> {
    /// The attributes.
    pub meta: Metadata,
    /// The payload.
    pub payload: T,
}

/// Where a consumed record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The topic it was read from.
    pub topic: String,
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset in that partition.
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
    /// The attributes.
    pub meta: Metadata,
    /// The decoded payload.
    pub payload: T,
    /// Where the record was read from.
    pub origin: Origin,
}
