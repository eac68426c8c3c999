//! Avro single-object encoding: `C3 01`, the writer schema's CRC-64-AVRO (Rabin) fingerprint
//! as 8 bytes little-endian, then the Avro binary datum.
//!
//! The reader parses the header itself and looks the writer schema up by fingerprint. When the
//! writer schema is the reader's, the datum is read straight into the type (`avro_de`);
//! otherwise it is decoded with the writer schema and resolved to the reader's schema by Avro's
//! rules. (The
//! `apache-avro` single-object reader accepts only its own schema's fingerprint, so it cannot
//! read what an older or newer writer wrote.)
//!
//! Parsed schemas are kept in one process-wide table keyed by fingerprint. A fingerprint is a
//! hash of the schema's canonical form, so the table is a pure function of its keys: schemas
//! learned from one store (or namespace) can never be wrong for another. Parsing a schema and
//! computing its canonical form costs microseconds, so this is done once per schema, never per
//! message.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock, RwLock};

/// The Avro library choreo uses (its `Schema` appears in [`AvroSchema`]).
pub use apache_avro;
use apache_avro::Schema;
use apache_avro::rabin::Rabin;
use apache_avro::schema_compatibility::SchemaCompatibility;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::avro_de::{self, FastError, Plan};
use crate::message::EnvelopeError;

/// The two magic bytes of Avro single-object encoding.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Magic plus fingerprint.
pub const HEADER_LEN: usize = 10;

/// The largest string, bytes or array length the Avro decoder will allocate for. Kafka records
/// are a megabyte by default; a corrupt length prefix must not make us allocate 512 MiB (the
/// library's default) before the read fails. Process-wide: `apache-avro` keeps it in a static.
const MAX_ALLOCATION_BYTES: usize = 16 * 1024 * 1024;

/// A parsed schema and its fingerprint.
#[derive(Debug)]
pub struct AvroSchema {
    /// The parsed schema.
    pub schema: Schema,
    /// Its CRC-64-AVRO (Rabin) fingerprint, as the single-object header carries it.
    pub fingerprint: u64,
    /// The schema text as declared (with defaults and docs, which the canonical form drops and
    /// a reader needs).
    pub text: String,
    /// The schema compiled for the direct decoder, or why it cannot be (then every datum of it
    /// goes through `apache-avro`'s `Value`).
    direct: Result<Plan, String>,
    /// Where `direct` cannot be: the schema compiled for checking a datum's shape before
    /// `apache-avro` reads it (see [`avro_de::check_datum`]).
    shape: Option<Plan>,
}

impl AvroSchema {
    /// Parses a schema and computes its fingerprint.
    pub fn parse(text: &str) -> Result<Self, String> {
        apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
        // apache-avro 0.21 unwraps its name check (a record named `3` panics it), and the text
        // may come from the network (the schema store): a panic is an invalid schema.
        let schema = std::panic::catch_unwind(|| Schema::parse_str(text))
            .map_err(|panic| {
                let text = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("the parser panicked");
                format!("invalid Avro schema: {text}")
            })?
            .map_err(|e| format!("invalid Avro schema: {e}"))?;
        // `canonical_form` panics if the parsed schema cannot be turned back into JSON; it
        // should never happen for a schema the parser accepted, but the text may come from the
        // network (the schema store), so a surprise is an error, not a crash.
        let fingerprint = std::panic::catch_unwind(AssertUnwindSafe(|| fingerprint(&schema)))
            .map_err(|_| "the schema has no canonical form".to_owned())?;
        let direct = Plan::compile(&schema);
        let shape = match &direct {
            Ok(_) => None,
            Err(_) => Plan::compile_shape(&schema).ok(),
        };
        Ok(Self {
            schema,
            fingerprint,
            text: text.to_owned(),
            direct,
            shape,
        })
    }
}

/// CRC-64-AVRO of the schema's parsing canonical form.
fn fingerprint(schema: &Schema) -> u64 {
    let bytes = schema.fingerprint::<Rabin>().bytes;
    let mut le = [0u8; 8];
    le.copy_from_slice(&bytes[..8]);
    // apache-avro emits the Rabin value little-endian, as the single-object header wants it.
    u64::from_le_bytes(le)
}

/// Fingerprint -> schema, for every schema this process has seen (its own event types and
/// whatever the schema store returned).
fn by_fingerprint() -> &'static RwLock<HashMap<u64, Arc<AvroSchema>>> {
    static TABLE: OnceLock<RwLock<HashMap<u64, Arc<AvroSchema>>>> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// Declared schema text (by address: a `&'static str` constant of an event type) -> schema,
/// so a type's schema is parsed once per process, not once per message.
type DeclaredTable = RwLock<HashMap<(usize, usize), Arc<AvroSchema>>>;

fn by_declaration() -> &'static DeclaredTable {
    static TABLE: OnceLock<DeclaredTable> = OnceLock::new();
    TABLE.get_or_init(Default::default)
}

/// The schema a writer used, if this process knows it.
pub fn known(fingerprint: u64) -> Option<Arc<AvroSchema>> {
    by_fingerprint()
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&fingerprint)
        .cloned()
}

/// Makes a schema known to this process (it came from the store, or is one of our own).
pub fn remember(schema: Arc<AvroSchema>) {
    by_fingerprint()
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(schema.fingerprint)
        .or_insert(schema);
}

/// The parsed schema of a type's declaration (parsed and remembered on first use).
pub fn declared(event_type: &str, text: &'static str) -> Result<Arc<AvroSchema>, EnvelopeError> {
    let key = (text.as_ptr() as usize, text.len());
    if let Some(found) = by_declaration()
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
    {
        return Ok(Arc::clone(found));
    }
    let parsed = Arc::new(
        AvroSchema::parse(text).map_err(|reason| EnvelopeError::BadSchema {
            event_type: event_type.to_owned(),
            reason,
        })?,
    );
    // Our own schema is a writer schema too: a record we wrote decodes without a store.
    remember(Arc::clone(&parsed));
    by_declaration()
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key, Arc::clone(&parsed));
    Ok(parsed)
}

/// Encodes `value` with `schema` as a single object: header, then the datum.
pub fn encode<T: Serialize>(
    event_type: &str,
    schema: &AvroSchema,
    value: &T,
) -> Result<Vec<u8>, EnvelopeError> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&schema.fingerprint.to_le_bytes());
    // Serde straight into the Avro writer, guided by the schema: no intermediate `Value` tree.
    if apache_avro::write_avro_datum_ref(&schema.schema, value, &mut out).is_ok() {
        return Ok(out);
    }
    // That serializer knows only shapes that mirror the schema (a struct for a record); a map
    // or a flattened struct goes through a `Value`, resolved to the schema. Slower, and only
    // taken by such types.
    out.truncate(HEADER_LEN);
    let encoded = apache_avro::to_value(value)
        .and_then(|v| v.resolve(&schema.schema))
        .and_then(|v| apache_avro::to_avro_datum(&schema.schema, v));
    match encoded {
        Ok(datum) => {
            out.extend_from_slice(&datum);
            Ok(out)
        }
        Err(e) => Err(EnvelopeError::Encode {
            event_type: event_type.to_owned(),
            reason: format!("Avro: {e}"),
        }),
    }
}

/// How deep records may nest in a datum read with another writer schema than the reader's
/// (schema resolution by apache-avro, whose cost doubles per level of a union holding a
/// record: 2^16 steps stay well under a second, and the stack in bounds).
pub const MAX_RESOLVE_DEPTH: usize = 16;

/// Splits a single-object payload into the writer's fingerprint and the datum.
pub fn split_header(payload: &[u8]) -> Result<(u64, &[u8]), String> {
    if payload.len() < 2 || payload[..2] != MAGIC {
        let start: Vec<String> = payload.iter().take(2).map(|b| format!("{b:02X}")).collect();
        return Err(format!(
            "not Avro single-object encoding: the payload starts with [{}], expected [C3 01]",
            start.join(" ")
        ));
    }
    if payload.len() < HEADER_LEN {
        return Err(format!(
            "truncated Avro single-object header: {} bytes, the header alone has {HEADER_LEN}",
            payload.len()
        ));
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&payload[2..HEADER_LEN]);
    Ok((u64::from_le_bytes(fp), &payload[HEADER_LEN..]))
}

/// Decodes a single-object payload: the writer schema by fingerprint, resolved to `reader`
/// (or read as written when the type declares no schema).
///
/// Two paths. When the writer used the reader's schema (or there is no reader schema), the
/// datum is read straight into `T` by the direct decoder (`avro_de`), which answers serde as
/// `apache_avro::from_value` would. Otherwise, and for the schema shapes the direct decoder
/// leaves out (the logical types decimal, big-decimal, uuid and duration; arrays of items that
/// take no bytes; a record read as a Rust enum), `apache-avro` decodes to its `Value`, resolves
/// it to the reader's schema by Avro's rules, and maps it onto `T`.
pub fn decode<T: DeserializeOwned>(
    event_type: &str,
    content_type: &str,
    payload: &[u8],
    reader: Option<&AvroSchema>,
) -> Result<T, EnvelopeError> {
    let bad = |reason: String| EnvelopeError::Payload {
        event_type: event_type.to_owned(),
        content_type: content_type.to_owned(),
        reason,
    };
    let (fingerprint, mut datum) = split_header(payload).map_err(bad)?;
    let writer = known(fingerprint).ok_or_else(|| EnvelopeError::UnknownSchema {
        event_type: event_type.to_owned(),
        fingerprint,
    })?;
    let leftover = |left: usize| {
        bad(format!(
            "{left} bytes left after the Avro datum (writer schema {fingerprint:016x}): corrupt or \
             written with another schema"
        ))
    };
    // Same schema: no resolution needed (the common case, and the cheaper one).
    let resolve_to = reader
        .filter(|r| r.fingerprint != fingerprint)
        .map(|r| &r.schema);
    if let (None, Ok(plan)) = (resolve_to, &writer.direct) {
        match avro_de::from_datum::<T>(plan, datum) {
            Ok((value, 0)) => return Ok(value),
            Ok((_, left)) => return Err(leftover(left)),
            Err(FastError::Invalid(reason)) => return Err(bad(format!("Avro: {reason}"))),
            // Found at run time (a record read as a Rust enum): the `Value` path below.
            Err(FastError::Unsupported(_)) => {}
        }
    }
    // The library reads a datum cut short as nulls and recurses without a bound: walk it by
    // the writer's schema first (bounded depth, every byte accounted for). Resolving to
    // another reader schema costs the library twice per level where a union holds a record
    // (it resolves the value to find the branch, then again): exponential in the nesting, so
    // that path takes records nested at most `MAX_RESOLVE_DEPTH` deep.
    let max_depth = if resolve_to.is_some() {
        MAX_RESOLVE_DEPTH
    } else {
        avro_de::MAX_DEPTH
    };
    if let Some(plan) = writer.direct.as_ref().ok().or(writer.shape.as_ref()) {
        match avro_de::check_datum(plan, datum, max_depth) {
            Ok(0) => {}
            Ok(left) => return Err(leftover(left)),
            Err(reason) => return Err(bad(format!("Avro: {reason}"))),
        }
    }
    let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        apache_avro::from_avro_datum(&writer.schema, &mut datum, resolve_to)
    }))
    .map_err(|_| bad("the Avro decoder panicked on this payload".to_owned()))?;
    let value = decoded.map_err(|e| bad(format!("Avro: {e}")))?;
    if !datum.is_empty() {
        return Err(leftover(datum.len()));
    }
    apache_avro::from_value::<T>(&value).map_err(|e| bad(format!("Avro value: {e}")))
}

/// Which way a compatibility check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Readers with the new schema cannot read what the stored schema wrote (old events in the
    /// log, replayed by the new code).
    Backward,
    /// Readers with the stored schema cannot read what the new schema writes (services not yet
    /// upgraded, reading new events).
    Forward,
}

/// One failed check of a new schema against a stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// Which way the check failed.
    pub direction: Direction,
    /// The stored version it was checked against.
    pub stored_fingerprint: u64,
    /// The field (when the library names one) and the reason.
    pub field: Option<String>,
    /// Why the reader cannot read the writer's data.
    pub reason: String,
}

impl std::fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stored = format!("stored {:016x}", self.stored_fingerprint);
        let (writer, reader) = match self.direction {
            Direction::Backward => (stored.as_str(), "new"),
            Direction::Forward => ("new", stored.as_str()),
        };
        write!(
            f,
            "{:?}: a reader with the {reader} schema cannot read data written with the {writer} schema",
            self.direction
        )?;
        if let Some(field) = &self.field {
            write!(f, ": field {field:?}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Checks `new` against every `stored` version in both directions: old writer / new reader
/// (the new code replays the log) and new writer / old reader (old services read new events).
/// Returns every failure; empty means compatible.
pub fn check_compatibility(new: &AvroSchema, stored: &[Arc<AvroSchema>]) -> Vec<Incompatibility> {
    let mut out = Vec::new();
    for old in stored {
        if old.fingerprint == new.fingerprint {
            continue;
        }
        for (direction, writer, reader) in [
            (Direction::Backward, &old.schema, &new.schema),
            (Direction::Forward, &new.schema, &old.schema),
        ] {
            if let Err(e) = SchemaCompatibility::can_read(writer, reader) {
                let (field, reason) = describe(&e);
                out.push(Incompatibility {
                    direction,
                    stored_fingerprint: old.fingerprint,
                    field,
                    reason,
                });
            }
        }
    }
    out
}

/// The field a compatibility error is about (nested fields joined with dots) and its reason.
fn describe(error: &apache_avro::error::CompatibilityError) -> (Option<String>, String) {
    use apache_avro::error::CompatibilityError as C;
    match error {
        C::MissingDefaultValue(field) => (
            Some(field.clone()),
            "the reader has this field, the writer does not, and it has no default".to_owned(),
        ),
        C::FieldTypeMismatch(field, inner) => {
            let (nested, reason) = describe(inner);
            let path = match nested {
                Some(n) => format!("{field}.{n}"),
                None => field.clone(),
            };
            (Some(path), format!("the types do not match: {reason}"))
        }
        other => (None, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    const V1: &str = r#"{"type":"record","name":"UserSignedUp","namespace":"test.avro","fields":[
        {"name":"user_id","type":"string"},
        {"name":"email","type":"string"}]}"#;
    /// V1 plus a field with a default: compatible both ways.
    const V2: &str = r#"{"type":"record","name":"UserSignedUp","namespace":"test.avro","fields":[
        {"name":"user_id","type":"string"},
        {"name":"email","type":"string"},
        {"name":"plan","type":"string","default":"free"}]}"#;
    /// V1 plus a field without a default: new readers cannot read old data.
    const V3: &str = r#"{"type":"record","name":"UserSignedUp","namespace":"test.avro","fields":[
        {"name":"user_id","type":"string"},
        {"name":"email","type":"string"},
        {"name":"age","type":"int"}]}"#;
    /// V1 with email as an int: incompatible both ways.
    const V4: &str = r#"{"type":"record","name":"UserSignedUp","namespace":"test.avro","fields":[
        {"name":"user_id","type":"string"},
        {"name":"email","type":"int"}]}"#;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct One {
        user_id: String,
        email: String,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Two {
        user_id: String,
        email: String,
        plan: String,
    }

    fn schema(text: &'static str) -> Arc<AvroSchema> {
        declared("v1.user.signedup", text).expect("schema parses")
    }

    #[test]
    fn header_is_magic_then_little_endian_rabin_fingerprint() {
        let s = schema(V1);
        let bytes = encode(
            "t",
            &s,
            &One {
                user_id: "u1".into(),
                email: "a@b".into(),
            },
        )
        .expect("encode");
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        assert_eq!(&bytes[2..10], &s.fingerprint.to_le_bytes());
        // Cross-check with apache-avro's own single-object writer: same header, same bytes.
        let mut theirs = Vec::new();
        let mut writer =
            apache_avro::GenericSingleObjectWriter::new_with_capacity(&s.schema, 64).expect("w");
        let value = apache_avro::to_value(One {
            user_id: "u1".into(),
            email: "a@b".into(),
        })
        .expect("value");
        writer.write_value(value, &mut theirs).expect("write");
        assert_eq!(bytes, theirs);
    }

    #[test]
    fn evolution_matrix_old_writer_new_reader_and_back() {
        let (v1, v2) = (schema(V1), schema(V2));
        let old = One {
            user_id: "u1".into(),
            email: "ada@example.com".into(),
        };
        // Old writer, new reader: the missing field takes its default.
        let bytes = encode("t", &v1, &old).expect("encode v1");
        let read: Two = decode("t", "application/avro", &bytes, Some(&v2)).expect("v1 -> v2");
        assert_eq!(
            read,
            Two {
                user_id: "u1".into(),
                email: "ada@example.com".into(),
                plan: "free".into()
            }
        );
        // New writer, old reader: the extra field is skipped.
        let new = Two {
            user_id: "u2".into(),
            email: "bob@example.com".into(),
            plan: "pro".into(),
        };
        let bytes = encode("t", &v2, &new).expect("encode v2");
        let read: One = decode("t", "application/avro", &bytes, Some(&v1)).expect("v2 -> v1");
        assert_eq!(
            read,
            One {
                user_id: "u2".into(),
                email: "bob@example.com".into()
            }
        );
        // Same schema both sides, and no reader schema at all (read as written).
        let read: Two = decode("t", "application/avro", &bytes, Some(&v2)).expect("v2 -> v2");
        assert_eq!(read, new);
        let read: Two = decode("t", "application/avro", &bytes, None).expect("as written");
        assert_eq!(read, new);
    }

    #[test]
    fn incompatible_reader_is_a_payload_error_naming_the_field() {
        let (v1, v3) = (schema(V1), schema(V3));
        let bytes = encode(
            "t",
            &v1,
            &One {
                user_id: "u".into(),
                email: "e".into(),
            },
        )
        .expect("encode");
        let err = decode::<serde_json::Value>("t", "application/avro", &bytes, Some(&v3))
            .expect_err("no default for age");
        assert!(matches!(err, EnvelopeError::Payload { .. }), "{err}");
        assert!(err.to_string().contains("age"), "{err}");
    }

    #[test]
    fn compatibility_check_names_field_and_direction() {
        let (v1, v2, v3, v4) = (schema(V1), schema(V2), schema(V3), schema(V4));
        assert!(check_compatibility(&v2, &[Arc::clone(&v1)]).is_empty());
        assert!(check_compatibility(&v1, &[Arc::clone(&v2)]).is_empty());

        // Adding a field without a default breaks old-writer/new-reader only.
        let found = check_compatibility(&v3, &[Arc::clone(&v1), Arc::clone(&v2)]);
        let backward: Vec<_> = found
            .iter()
            .filter(|i| i.direction == Direction::Backward)
            .collect();
        assert_eq!(backward.len(), 2, "{found:?}");
        assert!(
            backward.iter().all(|i| i.field.as_deref() == Some("age")),
            "{found:?}"
        );
        assert!(
            found.iter().all(|i| i.direction == Direction::Backward),
            "{found:?}"
        );
        assert!(found[0].to_string().contains("\"age\""), "{}", found[0]);

        // Changing a type breaks both directions, naming the field.
        let found = check_compatibility(&v4, &[v1]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().all(|i| i.field.as_deref() == Some("email")),
            "{found:?}"
        );
    }

    #[test]
    fn bad_payloads_are_precise_errors() {
        let v1 = schema(V1);
        let good = encode(
            "t",
            &v1,
            &One {
                user_id: "u1".into(),
                email: "e".into(),
            },
        )
        .expect("encode");
        let reason = |bytes: &[u8]| match decode::<One>("t", "application/avro", bytes, Some(&v1)) {
            Err(EnvelopeError::Payload { reason, .. }) => reason,
            other => panic!("expected a payload error, got {other:?}"),
        };
        assert!(reason(b"").contains("starts with []"));
        assert!(reason(b"{\"user_id\":1}").contains("expected [C3 01]"));
        assert!(reason(&good[..6]).contains("truncated"));
        // Datum cut short.
        assert!(reason(&good[..good.len() - 1]).starts_with("Avro"));
        // Trailing garbage.
        let mut long = good.clone();
        long.extend_from_slice(b"xyz");
        assert!(reason(&long).contains("3 bytes left"));
        // A string length prefix of ~4 GiB must fail without allocating it.
        let mut huge = good[..HEADER_LEN].to_vec();
        huge.extend_from_slice(&[0xFE, 0xFF, 0xFF, 0xFF, 0x1F]);
        assert!(reason(&huge).starts_with("Avro"));
        // An unknown fingerprint is its own error (it halts, it is not a dead letter).
        let mut unknown = good.clone();
        unknown[2..10].copy_from_slice(&0x0123_4567_89ab_cdef_u64.to_le_bytes());
        let err = decode::<One>("t", "application/avro", &unknown, Some(&v1)).expect_err("unknown");
        assert_eq!(
            err,
            EnvelopeError::UnknownSchema {
                event_type: "t".into(),
                fingerprint: 0x0123_4567_89ab_cdef
            }
        );
        assert!(err.halts());
    }

    /// V1 with an optional nickname last.
    const V5: &str = r#"{"type":"record","name":"UserSignedUp","namespace":"test.avro","fields":[
        {"name":"user_id","type":"string"},
        {"name":"email","type":"string"},
        {"name":"nick","type":["null","string"],"default":null}]}"#;
    /// V5 plus a field with a default: reading V5 data with it takes the `Value` path.
    const V6: &str = r#"{"type":"record","name":"UserSignedUp","namespace":"test.avro","fields":[
        {"name":"user_id","type":"string"},
        {"name":"email","type":"string"},
        {"name":"nick","type":["null","string"],"default":null},
        {"name":"plan","type":"string","default":"free"}]}"#;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Five {
        user_id: String,
        email: String,
        nick: Option<String>,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Six {
        user_id: String,
        email: String,
        nick: Option<String>,
        plan: String,
    }

    #[test]
    fn the_evolution_path_refuses_a_datum_cut_before_an_optional_field() {
        let (v5, v6) = (schema(V5), schema(V6));
        let bytes = encode(
            "t",
            &v5,
            &Five {
                user_id: "u1".into(),
                email: "e".into(),
                nick: None,
            },
        )
        .expect("encode");
        let read: Six = decode("t", "application/avro", &bytes, Some(&v6)).expect("whole datum");
        assert_eq!(read.nick, None);
        assert_eq!(read.plan, "free");
        // Without its last byte (the union index of `nick`) the library alone reads a null.
        let cut = &bytes[..bytes.len() - 1];
        match decode::<Six>("t", "application/avro", cut, Some(&v6)) {
            Err(EnvelopeError::Payload { reason, .. }) => {
                assert!(reason.starts_with("Avro"), "{reason}")
            }
            other => panic!("a cut datum must be refused, got {other:?}"),
        }
    }

    const LIST_V1: &str = r#"{"type":"record","name":"Link","namespace":"test.avro","fields":[
        {"name":"next","type":["null","Link"],"default":null}]}"#;
    const LIST_V2: &str = r#"{"type":"record","name":"Link","namespace":"test.avro","fields":[
        {"name":"next","type":["null","Link"],"default":null},
        {"name":"tag","type":"string","default":""}]}"#;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Link {
        next: Option<Box<Link>>,
        tag: String,
    }

    #[test]
    fn the_evolution_path_refuses_records_nested_deeper_than_the_limit() {
        let (v1, v2) = (
            declared("v1.link.added", LIST_V1).expect("schema"),
            declared("v1.link.added", LIST_V2).expect("schema"),
        );
        let datum = |depth: usize| {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&v1.fingerprint.to_le_bytes());
            // `depth` links (union branch 1, zig-zag 2), then the null that ends the list.
            bytes.extend(std::iter::repeat_n(0x02u8, depth));
            bytes.push(0x00);
            bytes
        };
        let shallow: Link = decode("t", "application/avro", &datum(3), Some(&v2)).expect("3 deep");
        assert!(shallow.next.is_some());
        // The library would recurse once per byte: a 1 MB record would overflow the stack.
        match decode::<Link>(
            "t",
            "application/avro",
            &datum(avro_de::MAX_DEPTH + 10),
            Some(&v2),
        ) {
            Err(EnvelopeError::Payload { reason, .. }) => {
                assert!(reason.contains("deeper than"), "{reason}")
            }
            other => panic!("a datum nested too deep must be refused, got {other:?}"),
        }
    }
}
