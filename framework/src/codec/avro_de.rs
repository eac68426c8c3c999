//! A serde `Deserializer` over an Avro binary datum, driven by the writer's schema: the hot path
//! of [`super::avro::decode`] when the writer used the reader's own schema (same fingerprint),
//! which is what a service reads back in steady state.
//!
//! `apache-avro` decodes a datum into its `Value` tree and then maps the tree onto `T`; most of
//! the time went into building the tree (a `String` per field name and per value, a `Box` per
//! union, a `HashMap` per map). This reads the bytes once and hands each item straight to `T`'s
//! visitor. Each serde call is answered the way `apache_avro::from_value` answers it for the
//! `Value` the library would have built (which call accepts which Avro type, how a union meets an
//! `Option` or a Rust enum, the human-readable flag), so a type decodes to the same thing on both
//! paths; the tests compare the two.
//!
//! The writer schema is compiled once per schema (cached in [`super::avro::AvroSchema`]) into a
//! flat table of nodes, named references resolved to indices, logical types reduced to the
//! primitive serde sees.
//!
//! Not covered; the caller takes the `apache-avro` path for these:
//! - the logical types `decimal`, `big-decimal`, `uuid` and `duration`: their `Value` forms carry
//!   conversions (a decimal's byte form, a parsed and reformatted UUID) not worth duplicating;
//! - arrays whose items take no bytes (`null`, records without fields): the block count would be
//!   the only bound on the work, and no real schema has them;
//! - a record read as a Rust enum (`apache-avro`'s `{"type": ..., ...}` form), found at run time
//!   and reported as [`FastError::Unsupported`].
//!
//! [`check_datum`] walks a datum without decoding it (the logical types above as the bytes they
//! take): [`super::avro::decode`] runs it before the `apache-avro` path, which is then as strict
//! as this one about the two points below.
//!
//! Where this path is stricter than `apache-avro` 0.21, on purpose: a datum that ends early is an
//! error (the library reads a missing boolean, string or union index as `null`, so a cut-off
//! optional field came out as `None`), and records nest at most [`MAX_DEPTH`] deep (the library
//! recurses without a bound, so a deep datum of a recursive schema overflows the stack). Map
//! entries reach the visitor in the order written, duplicates included (the library keeps the
//! last of duplicate keys in a `HashMap`; a Rust map does the same, a struct flattened from a
//! map reports a duplicate field).

use std::collections::HashMap;
use std::fmt;

use apache_avro::Schema;
use apache_avro::schema::{Name, Namespace, ResolvedSchema};
use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};

/// How deep records may nest in one datum. A schema without recursion is bounded by its own
/// depth; a recursive one (a tree, a linked list) is bounded only by the payload, and every level
/// costs stack here and in `T`'s own `Deserialize`. serde_json stops at the same depth.
pub const MAX_DEPTH: usize = 128;

/// Why the direct decoder gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastError {
    /// The datum is corrupt, or does not fit `T`: final, like an error of the `Value` path.
    Invalid(String),
    /// A shape this decoder does not handle; the caller decodes through `apache-avro` instead.
    Unsupported(&'static str),
}

impl fmt::Display for FastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(reason) => f.write_str(reason),
            Self::Unsupported(what) => write!(f, "not handled by the direct decoder: {what}"),
        }
    }
}

impl std::error::Error for FastError {}

impl de::Error for FastError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Self::Invalid(msg.to_string())
    }
}

type Result<T, E = FastError> = std::result::Result<T, E>;

fn invalid(reason: String) -> FastError {
    FastError::Invalid(reason)
}

/// A record field: its name and its node.
#[derive(Debug)]
struct Field {
    name: Box<str>,
    node: usize,
}

/// One schema node. Logical types appear as their primitive: `date` and `time-millis` decode to
/// `Value::Date`/`TimeMillis(i32)`, which `from_value` treats exactly like `Int`; the timestamp
/// and `time-micros` types like `Long`.
#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array(usize),
    Map(usize),
    Union(Box<[usize]>),
    Record(Box<[Field]>),
    Enum(Box<[Box<str>]>),
    Fixed(usize),
}

impl Node {
    /// The Avro type, for error messages.
    fn kind(&self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Boolean => "boolean",
            Self::Int => "int",
            Self::Long => "long",
            Self::Float => "float",
            Self::Double => "double",
            Self::Bytes => "bytes",
            Self::String => "string",
            Self::Array(_) => "an array",
            Self::Map(_) => "a map",
            Self::Union(_) => "a union",
            Self::Record(_) => "a record",
            Self::Enum(_) => "an enum",
            Self::Fixed(_) => "a fixed",
        }
    }
}

/// A writer schema compiled for the direct decoder.
pub struct Plan {
    nodes: Vec<Node>,
    root: usize,
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plan({} nodes)", self.nodes.len())
    }
}

impl Plan {
    /// Compiles a schema, or says why the direct decoder cannot read it.
    pub fn compile(schema: &Schema) -> Result<Self, String> {
        Self::compile_as(schema, false)
    }

    /// Compiles a schema for [`check_datum`] only: the logical types the direct decoder leaves
    /// out appear as the bytes they take (decimal as its bytes or fixed, big-decimal and uuid
    /// as bytes, duration as a fixed of 12).
    pub fn compile_shape(schema: &Schema) -> Result<Self, String> {
        Self::compile_as(schema, true)
    }

    fn compile_as(schema: &Schema, shape_only: bool) -> Result<Self, String> {
        let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
        let mut compiler = Compiler {
            names: resolved.get_names(),
            compiled: HashMap::new(),
            nodes: Vec::new(),
            shape_only,
        };
        let root = compiler.compile(schema, &None)?;
        let plan = Self {
            nodes: compiler.nodes,
            root,
        };
        for node in &plan.nodes {
            if let Node::Array(item) = node {
                let mut visiting = vec![false; plan.nodes.len()];
                if plan.min_size(*item, &mut visiting) == 0 {
                    return Err("an array of items that take no bytes".to_owned());
                }
            }
        }
        Ok(plan)
    }

    /// The fewest bytes a value of `node` takes. A record met again while its fields are being
    /// counted is a cycle through the record alone (no union or array in between), which no
    /// finite datum has: it counts as one byte, it only has to end the recursion.
    fn min_size(&self, node: usize, visiting: &mut [bool]) -> usize {
        match &self.nodes[node] {
            Node::Null => 0,
            Node::Float => 4,
            Node::Double => 8,
            Node::Fixed(size) => *size,
            Node::Record(fields) => {
                if visiting[node] {
                    return 1;
                }
                visiting[node] = true;
                let size = fields.iter().fold(0usize, |sum, f| {
                    sum.saturating_add(self.min_size(f.node, visiting))
                });
                visiting[node] = false;
                size
            }
            // A varint, a length, a block count, a union index or an enum index: a byte at least.
            _ => 1,
        }
    }
}

struct Compiler<'s, 'n> {
    /// Every named type of the schema, by full name (from `apache-avro`'s own resolution).
    names: &'n HashMap<Name, &'s Schema>,
    /// Named types already compiled, so a reference (and a recursive one) reuses the node.
    compiled: HashMap<Name, usize>,
    nodes: Vec<Node>,
    /// Compiling for [`check_datum`]: logical types become the bytes they take.
    shape_only: bool,
}

impl Compiler<'_, '_> {
    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// Compiles `schema`, met inside `enclosing` (the namespace of the nearest record, as the
    /// library's decoder tracks it to qualify relative names).
    fn compile(&mut self, schema: &Schema, enclosing: &Namespace) -> Result<usize, String> {
        let node = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int | Schema::Date | Schema::TimeMillis => Node::Int,
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            Schema::String => Node::String,
            Schema::Decimal(decimal) if self.shape_only => {
                return self.compile(&decimal.inner, enclosing);
            }
            Schema::BigDecimal | Schema::Uuid if self.shape_only => Node::Bytes,
            Schema::Duration if self.shape_only => Node::Fixed(12),
            Schema::Decimal(_) => return Err("the logical type decimal".to_owned()),
            Schema::BigDecimal => return Err("the logical type big-decimal".to_owned()),
            Schema::Uuid => return Err("the logical type uuid".to_owned()),
            Schema::Duration => return Err("the logical type duration".to_owned()),
            Schema::Array(array) => {
                let items = self.compile(&array.items, enclosing)?;
                Node::Array(items)
            }
            Schema::Map(map) => {
                let values = self.compile(&map.types, enclosing)?;
                Node::Map(values)
            }
            Schema::Union(union) => {
                let variants = union
                    .variants()
                    .iter()
                    .map(|variant| self.compile(variant, enclosing))
                    .collect::<Result<Box<[usize]>, String>>()?;
                Node::Union(variants)
            }
            Schema::Record(record) => {
                let name = record.name.fully_qualified_name(enclosing);
                // Registered before the fields, so a field referring back to this record (a
                // recursive schema) finds it.
                let id = self.push(Node::Null);
                self.compiled.insert(name.clone(), id);
                let mut fields = Vec::with_capacity(record.fields.len());
                for field in &record.fields {
                    fields.push(Field {
                        name: field.name.as_str().into(),
                        node: self.compile(&field.schema, &name.namespace)?,
                    });
                }
                self.nodes[id] = Node::Record(fields.into_boxed_slice());
                return Ok(id);
            }
            Schema::Enum(e) => {
                let id = self.push(Node::Enum(
                    e.symbols.iter().map(|s| s.as_str().into()).collect(),
                ));
                self.compiled
                    .insert(e.name.fully_qualified_name(enclosing), id);
                return Ok(id);
            }
            Schema::Fixed(fixed) => {
                let id = self.push(Node::Fixed(fixed.size));
                self.compiled
                    .insert(fixed.name.fully_qualified_name(enclosing), id);
                return Ok(id);
            }
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(enclosing);
                if let Some(&id) = self.compiled.get(&name) {
                    return Ok(id);
                }
                let target = *self
                    .names
                    .get(&name)
                    .ok_or_else(|| format!("the reference {name} resolves to nothing"))?;
                return self.compile(target, &name.namespace);
            }
        };
        Ok(self.push(node))
    }
}

/// Walks one datum by the plan's schema without building anything: what the `Value` path
/// runs first, so a datum it would read wrongly (cut short: the library reads a missing
/// boolean, string or union index as `null`) or too deep for the stack is refused with the
/// reason. Records nest at most `max_depth` deep (at most [`MAX_DEPTH`]). Returns the number of
/// bytes left after the datum.
pub fn check_datum(
    plan: &Plan,
    datum: &[u8],
    max_depth: usize,
) -> std::result::Result<usize, String> {
    let mut input = Input::new(datum);
    input.max_depth = max_depth.min(MAX_DEPTH);
    skip(plan, plan.root, &mut input).map_err(|e| e.to_string())?;
    Ok(input.rest.len())
}

/// Decodes one datum into `T`; returns it with the number of bytes left after it (the caller
/// reports leftovers, as the `Value` path does).
pub fn from_datum<T: DeserializeOwned>(plan: &Plan, datum: &[u8]) -> Result<(T, usize)> {
    let mut input = Input::new(datum);
    let value = T::deserialize(Datum {
        plan,
        node: plan.root,
        input: &mut input,
    })?;
    Ok((value, input.rest.len()))
}

/// The bytes still to read, and the limits.
struct Input<'de> {
    rest: &'de [u8],
    depth: usize,
    /// How deep records may nest ([`MAX_DEPTH`] unless a caller wants less).
    max_depth: usize,
    /// The largest string, bytes or block count the library accepts.
    max_len: usize,
    human_readable: bool,
}

impl<'de> Input<'de> {
    /// The datum, with the library's settings read the way its own decoder reads them (the
    /// first call fixes each value, to the library's default when nobody set it).
    fn new(datum: &'de [u8]) -> Self {
        Self {
            rest: datum,
            depth: 0,
            max_depth: MAX_DEPTH,
            max_len: apache_avro::util::max_allocation_bytes(
                apache_avro::util::DEFAULT_MAX_ALLOCATION_BYTES,
            ),
            human_readable: apache_avro::util::set_serde_human_readable(
                apache_avro::util::DEFAULT_SERDE_HUMAN_READABLE,
            ),
        }
    }

    fn ended(&self, what: &str, wanted: usize) -> FastError {
        invalid(format!(
            "the datum ends inside {what}: {wanted} bytes wanted, {} left",
            self.rest.len()
        ))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'de [u8]> {
        if n > self.rest.len() {
            return Err(self.ended(what, n));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// A variable-length integer: 7 bits a byte, low first, at most 10 bytes (as the library).
    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for (i, &byte) in self.rest.iter().enumerate() {
            if i > 9 {
                return Err(invalid(
                    "a variable-length integer runs past 10 bytes".to_owned(),
                ));
            }
            value |= u64::from(byte & 0x7F) << (i * 7);
            if byte & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Ok(value);
            }
        }
        Err(invalid(format!(
            "the datum ends inside a variable-length integer ({} bytes left)",
            self.rest.len()
        )))
    }

    /// A zig-zag encoded long.
    fn long(&mut self) -> Result<i64> {
        let z = self.varint()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn int(&mut self) -> Result<i32> {
        let n = self.long()?;
        i32::try_from(n).map_err(|_| invalid(format!("an int is out of range: {n}")))
    }

    fn boolean(&mut self) -> Result<bool> {
        match self.take(1, "a boolean")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(invalid(format!("a boolean byte is {other}, not 0 or 1"))),
        }
    }

    fn float(&mut self) -> Result<f32> {
        let mut le = [0u8; 4];
        le.copy_from_slice(self.take(4, "a float")?);
        Ok(f32::from_le_bytes(le))
    }

    fn double(&mut self) -> Result<f64> {
        let mut le = [0u8; 8];
        le.copy_from_slice(self.take(8, "a double")?);
        Ok(f64::from_le_bytes(le))
    }

    /// A length-prefixed byte string (`bytes` or `string`), checked against what is left before
    /// anything is done with the length.
    fn bytes(&mut self, what: &str) -> Result<&'de [u8]> {
        let len = self.long()?;
        let len = usize::try_from(len)
            .map_err(|_| invalid(format!("{what} has a negative length: {len}")))?;
        if len > self.max_len {
            return Err(invalid(format!(
                "{what} of {len} bytes is over the limit of {} bytes",
                self.max_len
            )));
        }
        self.take(len, what)
    }

    fn string(&mut self, what: &str) -> Result<&'de str> {
        let bytes = self.bytes(what)?;
        std::str::from_utf8(bytes).map_err(|e| invalid(format!("{what} is not UTF-8: {e}")))
    }

    /// The count of the next block of an array or map; 0 ends it. A negative count is followed
    /// by the block's size in bytes, which (like the library) we read and do not need.
    fn block_count(&mut self, what: &str) -> Result<usize> {
        let raw = self.long()?;
        if raw == 0 {
            return Ok(0);
        }
        let count = if raw < 0 {
            let _size = self.long()?;
            raw.checked_neg()
                .ok_or_else(|| invalid(format!("{what} block count {raw} overflows")))?
        } else {
            raw
        };
        let count = usize::try_from(count)
            .map_err(|_| invalid(format!("{what} block count {count} is too large")))?;
        // Every item takes a byte at least (arrays of zero-byte items are not compiled), so a
        // count above the bytes left is corrupt; checking it bounds the work up front.
        if count > self.max_len || count > self.rest.len() {
            return Err(invalid(format!(
                "the datum ends inside {what}: a block of {count} items, {} bytes left",
                self.rest.len()
            )));
        }
        Ok(count)
    }

    fn enter_record(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(invalid(format!(
                "records nest deeper than {} levels",
                self.max_depth
            )));
        }
        Ok(())
    }

    fn leave_record(&mut self) {
        self.depth -= 1;
    }
}

/// The union variant the datum selects: its index and its node.
fn union_variant(input: &mut Input<'_>, variants: &[usize]) -> Result<(usize, usize)> {
    let index = input.long()?;
    usize::try_from(index)
        .ok()
        .and_then(|i| Some((i, *variants.get(i)?)))
        .ok_or_else(|| {
            invalid(format!(
                "union index {index} is out of range: the union has {} variants",
                variants.len()
            ))
        })
}

/// The enum symbol the datum selects.
fn enum_symbol<'a>(input: &mut Input<'_>, symbols: &'a [Box<str>]) -> Result<&'a str> {
    let index = input.int()?;
    usize::try_from(index)
        .ok()
        .and_then(|i| symbols.get(i))
        .map(|s| &**s)
        .ok_or_else(|| {
            invalid(format!(
                "enum index {index} is out of range: the enum has {} symbols",
                symbols.len()
            ))
        })
}

/// Reads past one value of `node`, checking it as decoding it would (UTF-8, indices, booleans),
/// so that what `T` ignores fails where the `Value` path fails.
fn skip(plan: &Plan, node: usize, input: &mut Input<'_>) -> Result<()> {
    match &plan.nodes[node] {
        Node::Null => {}
        Node::Boolean => {
            input.boolean()?;
        }
        Node::Int => {
            input.int()?;
        }
        Node::Long => {
            input.long()?;
        }
        Node::Float => {
            input.take(4, "a float")?;
        }
        Node::Double => {
            input.take(8, "a double")?;
        }
        Node::Bytes => {
            input.bytes("a bytes value")?;
        }
        Node::String => {
            input.string("a string")?;
        }
        Node::Fixed(size) => {
            input.take(*size, "a fixed")?;
        }
        Node::Enum(symbols) => {
            enum_symbol(input, symbols)?;
        }
        Node::Union(variants) => {
            let (_, variant) = union_variant(input, variants)?;
            skip(plan, variant, input)?;
        }
        Node::Record(fields) => {
            input.enter_record()?;
            for field in fields.iter() {
                skip(plan, field.node, input)?;
            }
            input.leave_record();
        }
        Node::Array(item) => loop {
            let count = input.block_count("an array")?;
            if count == 0 {
                break;
            }
            for _ in 0..count {
                skip(plan, *item, input)?;
            }
        },
        Node::Map(value) => loop {
            let count = input.block_count("a map")?;
            if count == 0 {
                break;
            }
            for _ in 0..count {
                input.string("a map key")?;
                skip(plan, *value, input)?;
            }
        },
    }
    Ok(())
}

/// One value of the datum, of schema node `node`.
struct Datum<'a, 'de> {
    plan: &'a Plan,
    node: usize,
    input: &'a mut Input<'de>,
}

impl<'a, 'de> Datum<'a, 'de> {
    fn node(&self) -> &'a Node {
        &self.plan.nodes[self.node]
    }

    /// The same input, at another node (a union's variant).
    fn at(self, node: usize) -> Self {
        Self { node, ..self }
    }

    fn mismatch(&self, wanted: &str) -> FastError {
        invalid(format!(
            "expected {wanted}, the writer schema has {} here",
            self.node().kind()
        ))
    }

    fn visit_record<V: Visitor<'de>>(self, fields: &'a [Field], visitor: V) -> Result<V::Value> {
        self.input.enter_record()?;
        let mut access = RecordAccess {
            plan: self.plan,
            input: self.input,
            fields,
            next: 0,
            pending: None,
        };
        let value = visitor.visit_map(&mut access)?;
        access.finish()?;
        access.input.leave_record();
        Ok(value)
    }

    fn visit_array<V: Visitor<'de>>(self, item: usize, visitor: V) -> Result<V::Value> {
        let mut access = ArrayAccess {
            plan: self.plan,
            input: self.input,
            item,
            left: 0,
            done: false,
        };
        let value = visitor.visit_seq(&mut access)?;
        access.finish()?;
        Ok(value)
    }

    fn visit_avro_map<V: Visitor<'de>>(self, values: usize, visitor: V) -> Result<V::Value> {
        let mut access = EntryAccess {
            plan: self.plan,
            input: self.input,
            values,
            left: 0,
            done: false,
            pending: false,
        };
        let value = visitor.visit_map(&mut access)?;
        access.finish()?;
        Ok(value)
    }

    /// Bytes or fixed as UTF-8 (`from_value` reads either as a string when asked for one).
    fn utf8(&mut self, what: &str) -> Result<&'de str> {
        let bytes = match self.node() {
            Node::Bytes => self.input.bytes("a bytes value")?,
            Node::Fixed(size) => self.input.take(*size, "a fixed")?,
            _ => return Err(self.mismatch(what)),
        };
        std::str::from_utf8(bytes).map_err(|e| invalid(format!("{what}: {e}")))
    }
}

impl<'de> de::Deserializer<'de> for Datum<'_, 'de> {
    type Error = FastError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::Null => visitor.visit_unit(),
            Node::Boolean => visitor.visit_bool(self.input.boolean()?),
            Node::Int => visitor.visit_i32(self.input.int()?),
            Node::Long => visitor.visit_i64(self.input.long()?),
            Node::Float => visitor.visit_f32(self.input.float()?),
            Node::Double => visitor.visit_f64(self.input.double()?),
            Node::Bytes => visitor.visit_bytes(self.input.bytes("a bytes value")?),
            Node::Fixed(size) => visitor.visit_bytes(self.input.take(*size, "a fixed")?),
            Node::String => visitor.visit_borrowed_str(self.input.string("a string")?),
            Node::Enum(symbols) => visitor.visit_str(enum_symbol(self.input, symbols)?),
            Node::Array(item) => self.visit_array(*item, visitor),
            Node::Map(values) => self.visit_avro_map(*values, visitor),
            Node::Record(fields) => self.visit_record(fields, visitor),
            // A union is its variant's value (unions do not nest in Avro).
            Node::Union(variants) => {
                let (_, variant) = union_variant(self.input, variants)?;
                self.at(variant).deserialize_any(visitor)
            }
        }
    }

    // Not i128/u128: `from_value` leaves them to serde's default, an error, and so do we.
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 ignored_any
    }

    fn deserialize_char<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value> {
        Err(invalid("Avro has no char type".to_owned()))
    }

    fn deserialize_str<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        // Unlike `deserialize_string`, `from_value` takes no enum and no union here.
        match self.node() {
            Node::String => visitor.visit_borrowed_str(self.input.string("a string")?),
            _ => visitor.visit_borrowed_str(self.utf8("a string, bytes or fixed")?),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::String => visitor.visit_borrowed_str(self.input.string("a string")?),
            Node::Enum(symbols) => visitor.visit_str(enum_symbol(self.input, symbols)?),
            Node::Union(variants) => {
                let (_, variant) = union_variant(self.input, variants)?;
                let mut inner = self.at(variant);
                match inner.node() {
                    Node::String => visitor.visit_borrowed_str(inner.input.string("a string")?),
                    _ => visitor.visit_borrowed_str(inner.utf8("a string, bytes or fixed")?),
                }
            }
            _ => visitor.visit_borrowed_str(self.utf8("a string, bytes, fixed, enum or union")?),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::String => visitor.visit_bytes(self.input.string("a string")?.as_bytes()),
            Node::Bytes => visitor.visit_bytes(self.input.bytes("a bytes value")?),
            Node::Fixed(size) => visitor.visit_bytes(self.input.take(*size, "a fixed")?),
            _ => Err(self.mismatch("a string, bytes or fixed")),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::String => {
                visitor.visit_byte_buf(self.input.string("a string")?.as_bytes().to_vec())
            }
            Node::Bytes => visitor.visit_byte_buf(self.input.bytes("a bytes value")?.to_vec()),
            Node::Fixed(size) => {
                visitor.visit_byte_buf(self.input.take(*size, "a fixed")?.to_vec())
            }
            _ => Err(self.mismatch("a string, bytes or fixed")),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        // Any union reads as an option: its null variant is `None`, any other `Some`. Anything
        // else is an error, as in `from_value` (an `Option` field needs a union in the schema).
        match self.node() {
            Node::Union(variants) => {
                let (_, variant) = union_variant(self.input, variants)?;
                let inner = self.at(variant);
                if matches!(inner.node(), Node::Null) {
                    visitor.visit_none()
                } else {
                    visitor.visit_some(inner)
                }
            }
            _ => Err(self.mismatch("a union")),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::Null => visitor.visit_unit(),
            Node::Union(variants) => {
                let (_, variant) = union_variant(self.input, variants)?;
                let inner = self.at(variant);
                match inner.node() {
                    Node::Null => visitor.visit_unit(),
                    _ => Err(inner.mismatch("null")),
                }
            }
            _ => Err(self.mismatch("null or a union")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::Array(item) => self.visit_array(*item, visitor),
            Node::Union(variants) => {
                let (_, variant) = union_variant(self.input, variants)?;
                let inner = self.at(variant);
                match inner.node() {
                    Node::Array(item) => inner.visit_array(*item, visitor),
                    // `from_value` reads a null variant as an empty sequence.
                    Node::Null => visitor.visit_seq(Empty),
                    _ => Err(inner.mismatch("an array or null")),
                }
            }
            _ => Err(self.mismatch("an array or a union")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.node() {
            Node::Map(values) => self.visit_avro_map(*values, visitor),
            Node::Record(fields) => self.visit_record(fields, visitor),
            _ => Err(self.mismatch("a record or a map")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.node() {
            Node::Record(fields) => self.visit_record(fields, visitor),
            Node::Union(variants) => {
                let (_, variant) = union_variant(self.input, variants)?;
                let inner = self.at(variant);
                match inner.node() {
                    Node::Record(fields) => inner.visit_record(fields, visitor),
                    // `from_value` reads a null variant as a record without fields.
                    Node::Null => visitor.visit_map(Empty),
                    _ => Err(inner.mismatch("a record or null")),
                }
            }
            _ => Err(self.mismatch("a record or a union")),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.node() {
            // A unit variant by name.
            Node::String => visitor.visit_enum(UnitVariant(self.input.string("a string")?)),
            Node::Enum(symbols) => {
                visitor.visit_enum(UnitVariant(enum_symbol(self.input, symbols)?))
            }
            // A union selects the Rust variant at the same position.
            Node::Union(avro_variants) => {
                let (index, variant) = union_variant(self.input, avro_variants)?;
                let Some(&name) = variants.get(index) else {
                    return Err(invalid(format!(
                        "union index {index} has no Rust variant: the enum has {} variants",
                        variants.len()
                    )));
                };
                visitor.visit_enum(UnionVariant {
                    name,
                    datum: self.at(variant),
                })
            }
            Node::Record(_) => Err(FastError::Unsupported("a record read as a Rust enum")),
            _ => Err(self.mismatch("a string, an enum or a union")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn is_human_readable(&self) -> bool {
        self.input.human_readable
    }
}

/// The fields of a record, in the writer's order, as a serde map keyed by field name.
struct RecordAccess<'a, 'de> {
    plan: &'a Plan,
    input: &'a mut Input<'de>,
    fields: &'a [Field],
    next: usize,
    /// The node of the value whose key was handed out and which was not read yet.
    pending: Option<usize>,
}

impl RecordAccess<'_, '_> {
    /// Reads past whatever the visitor did not read (a visitor may stop early), so the next
    /// value starts at the right byte.
    fn finish(&mut self) -> Result<()> {
        if let Some(node) = self.pending.take() {
            skip(self.plan, node, self.input)?;
        }
        while let Some(field) = self.fields.get(self.next) {
            self.next += 1;
            skip(self.plan, field.node, self.input)?;
        }
        Ok(())
    }
}

impl<'de> de::MapAccess<'de> for RecordAccess<'_, 'de> {
    type Error = FastError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if let Some(node) = self.pending.take() {
            skip(self.plan, node, self.input)?;
        }
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        self.pending = Some(field.node);
        seed.deserialize(Text(&field.name)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let node = self
            .pending
            .take()
            .ok_or_else(|| invalid("a record value was asked for before its key".to_owned()))?;
        seed.deserialize(Datum {
            plan: self.plan,
            node,
            input: self.input,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len() - self.next)
    }
}

/// The items of an array, block by block.
struct ArrayAccess<'a, 'de> {
    plan: &'a Plan,
    input: &'a mut Input<'de>,
    item: usize,
    /// Items left in the current block.
    left: usize,
    /// The terminating empty block was read.
    done: bool,
}

impl ArrayAccess<'_, '_> {
    /// Whether another item follows (reading the next block's count when this one is used up).
    fn has_next(&mut self) -> Result<bool> {
        while self.left == 0 {
            if self.done {
                return Ok(false);
            }
            self.left = self.input.block_count("an array")?;
            self.done = self.left == 0;
        }
        Ok(true)
    }

    fn finish(&mut self) -> Result<()> {
        while self.has_next()? {
            self.left -= 1;
            skip(self.plan, self.item, self.input)?;
        }
        Ok(())
    }
}

impl<'de> de::SeqAccess<'de> for ArrayAccess<'_, 'de> {
    type Error = FastError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if !self.has_next()? {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(Datum {
            plan: self.plan,
            node: self.item,
            input: self.input,
        })
        .map(Some)
    }
}

/// The entries of a map, block by block, in the order written.
struct EntryAccess<'a, 'de> {
    plan: &'a Plan,
    input: &'a mut Input<'de>,
    values: usize,
    left: usize,
    done: bool,
    /// A key was handed out and its value not read yet.
    pending: bool,
}

impl EntryAccess<'_, '_> {
    fn has_next(&mut self) -> Result<bool> {
        while self.left == 0 {
            if self.done {
                return Ok(false);
            }
            self.left = self.input.block_count("a map")?;
            self.done = self.left == 0;
        }
        Ok(true)
    }

    fn finish(&mut self) -> Result<()> {
        if std::mem::take(&mut self.pending) {
            skip(self.plan, self.values, self.input)?;
        }
        while self.has_next()? {
            self.left -= 1;
            self.input.string("a map key")?;
            skip(self.plan, self.values, self.input)?;
        }
        Ok(())
    }
}

impl<'de> de::MapAccess<'de> for EntryAccess<'_, 'de> {
    type Error = FastError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if std::mem::take(&mut self.pending) {
            skip(self.plan, self.values, self.input)?;
        }
        if !self.has_next()? {
            return Ok(None);
        }
        self.left -= 1;
        let key = self.input.string("a map key")?;
        self.pending = true;
        seed.deserialize(Text(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        if !std::mem::take(&mut self.pending) {
            return Err(invalid(
                "a map value was asked for before its key".to_owned(),
            ));
        }
        seed.deserialize(Datum {
            plan: self.plan,
            node: self.values,
            input: self.input,
        })
    }
}

/// No items: what `from_value` makes of a null read as a sequence or a struct.
struct Empty;

impl<'de> de::SeqAccess<'de> for Empty {
    type Error = FastError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, _seed: T) -> Result<Option<T::Value>> {
        Ok(None)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(0)
    }
}

impl<'de> de::MapAccess<'de> for Empty {
    type Error = FastError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, _seed: K) -> Result<Option<K::Value>> {
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, _seed: V) -> Result<V::Value> {
        Err(invalid("a value was asked for in an empty map".to_owned()))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(0)
    }
}

/// A field name, map key or variant name: a string whatever serde asks for (as `from_value`'s
/// own string deserializer answers).
struct Text<'s>(&'s str);

impl<'de> de::Deserializer<'de> for Text<'_> {
    type Error = FastError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_str(self.0)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

/// A Rust enum read from a string or an Avro enum symbol: a unit variant by name.
struct UnitVariant<'s>(&'s str);

impl<'de> de::EnumAccess<'de> for UnitVariant<'_> {
    type Error = FastError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        Ok((seed.deserialize(Text(self.0))?, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariant<'_> {
    type Error = FastError;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value> {
        Err(invalid(format!(
            "variant {:?} is a symbol, it carries no value",
            self.0
        )))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value> {
        Err(invalid(format!(
            "variant {:?} is a symbol, it carries no tuple",
            self.0
        )))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value> {
        Err(invalid(format!(
            "variant {:?} is a symbol, it carries no fields",
            self.0
        )))
    }
}

/// A Rust enum read from a union: the Rust variant at the union index, its value the union's.
struct UnionVariant<'a, 'de> {
    name: &'static str,
    datum: Datum<'a, 'de>,
}

impl<'a, 'de> de::EnumAccess<'de> for UnionVariant<'a, 'de> {
    type Error = FastError;
    type Variant = Datum<'a, 'de>;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self::Variant)> {
        Ok((seed.deserialize(Text(self.name))?, self.datum))
    }
}

impl<'de> de::VariantAccess<'de> for Datum<'_, 'de> {
    type Error = FastError;

    fn unit_variant(self) -> Result<()> {
        match self.node() {
            Node::Null => Ok(()),
            _ => Err(self.mismatch("null for a unit variant")),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

#[cfg(test)]
#[path = "avro_de_tests.rs"]
mod tests;
