//! The direct decoder against `apache-avro`'s own path (`from_avro_datum`, then `from_value`):
//! the same datum, the same target type, the same outcome.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Debug;

use apache_avro::Schema;
use apache_avro::types::Value;
use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer};

use super::{FastError, MAX_DEPTH, Plan, from_datum};
use crate::codec::avro::AvroSchema;

/// Parses like production (which also fixes the library's allocation limit) and compiles.
fn parse(text: &str) -> (Schema, Plan) {
    let parsed = AvroSchema::parse(text).expect("schema parses");
    let plan = Plan::compile(&parsed.schema).expect("the direct decoder takes this schema");
    (parsed.schema, plan)
}

fn fast<T: DeserializeOwned>(plan: &Plan, datum: &[u8]) -> Result<T, FastError> {
    match from_datum::<T>(plan, datum)? {
        (value, 0) => Ok(value),
        (_, left) => Err(FastError::Invalid(format!("{left} bytes left"))),
    }
}

fn slow<T: DeserializeOwned>(schema: &Schema, datum: &[u8]) -> Result<T, String> {
    let mut rest = datum;
    let value = apache_avro::from_avro_datum(schema, &mut rest, None).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes left", rest.len()));
    }
    apache_avro::from_value(&value).map_err(|e| e.to_string())
}

/// Both paths on one datum: they must both succeed with equal values or both fail.
fn same<T: DeserializeOwned + PartialEq + Debug>(
    schema: &Schema,
    plan: &Plan,
    datum: &[u8],
) -> Result<T, String> {
    let (f, s) = (fast::<T>(plan, datum), slow::<T>(schema, datum));
    match (&f, &s) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "datum {datum:02x?}"),
        (Err(_), Err(_)) => {}
        _ => panic!("the paths disagree on {datum:02x?}: direct {f:?}, apache-avro {s:?}"),
    }
    s
}

fn datum(schema: &Schema, value: Value) -> Vec<u8> {
    apache_avro::to_avro_datum(schema, value).expect("the value fits the schema")
}

/// Bytes through `deserialize_byte_buf` (`Vec<u8>` would ask for a sequence).
#[derive(Debug, PartialEq)]
struct Blob(Vec<u8>);

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BlobVisitor;
        impl Visitor<'_> for BlobVisitor {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(v))
            }
        }
        d.deserialize_byte_buf(BlobVisitor)
    }
}

const EVERYTHING: &str = r#"{"type":"record","name":"Everything","namespace":"test.de","fields":[
    {"name":"nothing","type":"null"},
    {"name":"flag","type":"boolean"},
    {"name":"small","type":"int"},
    {"name":"big","type":"long"},
    {"name":"ratio","type":"float"},
    {"name":"precise","type":"double"},
    {"name":"blob","type":"bytes"},
    {"name":"name","type":"string"},
    {"name":"tags","type":{"type":"array","items":"string"}},
    {"name":"counts","type":{"type":"map","values":"long"}},
    {"name":"color","type":{"type":"enum","name":"Color","symbols":["RED","GREEN","BLUE"]}},
    {"name":"digest","type":{"type":"fixed","name":"Digest","size":4}},
    {"name":"maybe","type":["null","string"]},
    {"name":"maybe_num","type":["null","long"]},
    {"name":"inner","type":{"type":"record","name":"Inner","fields":[
        {"name":"label","type":"string"},{"name":"score","type":"int"}]}},
    {"name":"inners","type":{"type":"array","items":"Inner"}},
    {"name":"maybe_inner","type":["null","Inner"]},
    {"name":"day","type":{"type":"int","logicalType":"date"}},
    {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"micros","type":{"type":"long","logicalType":"timestamp-micros"}}]}"#;

#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum Color {
    Red,
    Green,
    Blue,
}

#[derive(Debug, PartialEq, Deserialize)]
struct Inner {
    label: String,
    score: i32,
}

#[derive(Debug, PartialEq, Deserialize)]
struct Everything {
    nothing: (),
    flag: bool,
    small: i32,
    big: i64,
    ratio: f32,
    precise: f64,
    blob: Blob,
    name: String,
    tags: Vec<String>,
    counts: BTreeMap<String, i64>,
    color: Color,
    digest: Blob,
    maybe: Option<String>,
    maybe_num: Option<i64>,
    inner: Inner,
    inners: Vec<Inner>,
    maybe_inner: Option<Inner>,
    day: i32,
    at: i64,
    micros: i64,
}

/// The same schema read into other shapes `from_value` accepts: an enum as a string, a string
/// as bytes, an int into a wider integer, a record as a map, a union into a Rust enum...
#[derive(Debug, PartialEq, Deserialize)]
struct Loose {
    flag: serde_json::Value,
    small: i64,
    big: serde_json::Value,
    name: Blob,
    tags: VecDeque<serde_json::Value>,
    counts: BTreeMap<String, serde_json::Value>,
    color: String,
    digest: serde::de::IgnoredAny,
    maybe: Option<Blob>,
    maybe_num: MaybeNum,
    inner: BTreeMap<String, serde_json::Value>,
    inners: serde_json::Value,
    maybe_inner: serde_json::Value,
    day: u32,
}

/// A union read as a Rust enum: the variant at the union's index.
#[derive(Debug, PartialEq, Deserialize)]
enum MaybeNum {
    Nothing,
    Number(i64),
}

/// Only some fields: the others are skipped (and still checked).
#[derive(Debug, PartialEq, Deserialize)]
struct Few {
    name: String,
    micros: i64,
}

/// Fields of the wrong type: both paths must refuse.
#[derive(Debug, PartialEq, Deserialize)]
struct WrongString {
    small: String,
}

#[derive(Debug, PartialEq, Deserialize)]
struct WrongOption {
    name: Option<String>,
}

#[derive(Debug, PartialEq, Deserialize)]
struct WrongStruct {
    counts: Inner,
}

/// A small deterministic generator, so that the values vary without a dependency.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[(self.next() % from.len() as u64) as usize]
    }

    fn text(&mut self) -> String {
        let n = self.next() % 6;
        (0..n)
            .map(|_| self.pick(&["a", "Zz", "é", "日本", "", "🦀", " ", "\"q\""]))
            .collect()
    }
}

fn inner_value(g: &mut Lcg) -> Value {
    Value::Record(vec![
        ("label".into(), Value::String(g.text())),
        (
            "score".into(),
            Value::Int(g.pick(&[0, 1, -1, i32::MAX, i32::MIN, 63, -64, 64])),
        ),
    ])
}

fn everything_value(g: &mut Lcg) -> Value {
    let longs = [0, 1, -1, i64::MAX, i64::MIN, 1 << 40, -(1 << 35), 300];
    let tags = (0..g.next() % 4).map(|_| Value::String(g.text())).collect();
    let counts = (0..g.next() % 4)
        .map(|i| (format!("{}{i}", g.text()), Value::Long(g.pick(&longs))))
        .collect::<HashMap<_, _>>();
    let maybe = if g.next().is_multiple_of(2) {
        Value::Union(0, Box::new(Value::Null))
    } else {
        Value::Union(1, Box::new(Value::String(g.text())))
    };
    let maybe_num = if g.next().is_multiple_of(2) {
        Value::Union(0, Box::new(Value::Null))
    } else {
        Value::Union(1, Box::new(Value::Long(g.pick(&longs))))
    };
    let maybe_inner = if g.next().is_multiple_of(2) {
        Value::Union(0, Box::new(Value::Null))
    } else {
        Value::Union(1, Box::new(inner_value(g)))
    };
    let color = g.next() % 3;
    let symbol = ["RED", "GREEN", "BLUE"][color as usize];
    Value::Record(vec![
        ("nothing".into(), Value::Null),
        ("flag".into(), Value::Boolean(g.next().is_multiple_of(2))),
        (
            "small".into(),
            Value::Int(g.pick(&[0, -1, i32::MAX, i32::MIN, 5])),
        ),
        ("big".into(), Value::Long(g.pick(&longs))),
        (
            "ratio".into(),
            Value::Float(g.pick(&[0.0, -0.0, 1.5, f32::MAX, f32::INFINITY, -3.25e-7])),
        ),
        (
            "precise".into(),
            Value::Double(g.pick(&[0.0, 2.5e300, f64::NEG_INFINITY, -1.0, f64::MIN_POSITIVE])),
        ),
        (
            "blob".into(),
            Value::Bytes((0..g.next() % 5).map(|i| (i * 97) as u8).collect()),
        ),
        ("name".into(), Value::String(g.text())),
        ("tags".into(), Value::Array(tags)),
        ("counts".into(), Value::Map(counts)),
        ("color".into(), Value::Enum(color as u32, symbol.into())),
        ("digest".into(), Value::Fixed(4, b"ab\xffd".to_vec())),
        ("maybe".into(), maybe),
        ("maybe_num".into(), maybe_num),
        ("inner".into(), inner_value(g)),
        (
            "inners".into(),
            Value::Array((0..g.next() % 3).map(|_| inner_value(g)).collect()),
        ),
        ("maybe_inner".into(), maybe_inner),
        ("day".into(), Value::Date(g.pick(&[0, 19_000, -5]))),
        ("at".into(), Value::TimestampMillis(g.pick(&longs))),
        ("micros".into(), Value::TimestampMicros(g.pick(&longs))),
    ])
}

fn everything_datums() -> Vec<Vec<u8>> {
    let (schema, _) = parse(EVERYTHING);
    let mut g = Lcg(7);
    (0..200)
        .map(|_| datum(&schema, everything_value(&mut g)))
        .collect()
}

#[test]
fn every_supported_type_decodes_as_apache_avro_decodes_it() {
    let (schema, plan) = parse(EVERYTHING);
    let (mut some_maybe, mut none_maybe) = (0, 0);
    for datum in everything_datums() {
        let typed: Everything = same(&schema, &plan, &datum).expect("decodes");
        if typed.maybe_inner.is_some() {
            some_maybe += 1;
        } else {
            none_maybe += 1;
        }
        // Other target types over the same bytes.
        let loose: Result<Loose, _> = same(&schema, &plan, &datum);
        if typed.day >= 0 {
            loose.expect("a day that fits u32 decodes loosely");
        } else {
            loose.expect_err("a negative day does not fit u32");
        }
        let few: Few = same(&schema, &plan, &datum).expect("decodes with fields skipped");
        assert_eq!(few.name, typed.name);
        same::<WrongString>(&schema, &plan, &datum).expect_err("an int is no string");
        same::<WrongOption>(&schema, &plan, &datum).expect_err("an option needs a union");
        same::<WrongStruct>(&schema, &plan, &datum).expect_err("a map is no struct");
        // The generic path (serde's `deserialize_any`): bytes have no JSON form, so
        // `serde_json::Value` refuses on both paths.
        same::<serde_json::Value>(&schema, &plan, &datum).expect_err("bytes are not JSON");
    }
    assert!(
        some_maybe > 10 && none_maybe > 10,
        "both union branches were exercised"
    );
}

/// Everything serde_json can represent, read generically (`deserialize_any` all the way down).
const GENERIC: &str = r#"{"type":"record","name":"Generic","fields":[
    {"name":"n","type":"null"},
    {"name":"b","type":"boolean"},
    {"name":"i","type":"int"},
    {"name":"l","type":"long"},
    {"name":"d","type":"double"},
    {"name":"s","type":"string"},
    {"name":"a","type":{"type":"array","items":{"type":"map","values":"int"}}},
    {"name":"e","type":{"type":"enum","name":"E","symbols":["X","Y"]}},
    {"name":"u","type":["null","string","long",{"type":"record","name":"R","fields":[
        {"name":"r","type":"E"}]}]}]}"#;

#[test]
fn generic_targets_see_the_same_tree() {
    let (schema, plan) = parse(GENERIC);
    let variants = [
        Value::Null,
        Value::String("text".into()),
        Value::Long(-9),
        Value::Record(vec![("r".into(), Value::Enum(1, "Y".into()))]),
    ];
    for (index, variant) in variants.into_iter().enumerate() {
        let value = Value::Record(vec![
            ("n".into(), Value::Null),
            ("b".into(), Value::Boolean(true)),
            ("i".into(), Value::Int(-3)),
            ("l".into(), Value::Long(1 << 50)),
            ("d".into(), Value::Double(0.25)),
            ("s".into(), Value::String("ß".into())),
            (
                "a".into(),
                Value::Array(vec![
                    Value::Map(HashMap::from([("k".into(), Value::Int(1))])),
                    Value::Map(HashMap::new()),
                ]),
            ),
            ("e".into(), Value::Enum(0, "X".into())),
            ("u".into(), Value::Union(index as u32, Box::new(variant))),
        ]);
        let bytes = datum(&schema, value);
        let json: serde_json::Value = same(&schema, &plan, &bytes).expect("decodes");
        assert_eq!(json["s"], "ß");
        assert_eq!(json["e"], "X");
        let as_map: BTreeMap<String, serde_json::Value> =
            same(&schema, &plan, &bytes).expect("a record reads as a map");
        assert_eq!(as_map.len(), 9);
        // The union into a Rust enum by position, and into an option.
        #[derive(Debug, PartialEq, Deserialize)]
        struct U {
            u: Union,
        }
        #[derive(Debug, PartialEq, Deserialize)]
        enum Union {
            Nothing,
            Text(String),
            Number(i64),
            Record { r: String },
        }
        #[derive(Debug, PartialEq, Deserialize)]
        struct O {
            u: Option<serde_json::Value>,
        }
        let u: U = same(&schema, &plan, &bytes).expect("union as enum");
        let o: O = same(&schema, &plan, &bytes).expect("union as option");
        assert_eq!(u.u == Union::Nothing, o.u.is_none());
    }
}

#[test]
fn blocks_with_negative_counts_and_several_blocks() {
    let (schema, plan) = parse(r#"{"type":"array","items":"long"}"#);
    // -2 items in 2 bytes (1, 2), then 1 item (3), then the end.
    let bytes = [3, 4, 2, 4, 2, 6, 0];
    let got: Vec<i64> = same(&schema, &plan, &bytes).expect("decodes");
    assert_eq!(got, [1, 2, 3]);
    // A visitor that stops early: the rest is read past, not left behind.
    let pair: [i64; 2] = same(&schema, &plan, &bytes).expect("decodes");
    assert_eq!(pair, [1, 2]);
    // The end marker missing, or an i64::MIN count (no positive twin).
    same::<Vec<i64>>(&schema, &plan, &bytes[..6]).expect_err("no end marker");
    let min_count = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0,
    ];
    same::<Vec<i64>>(&schema, &plan, &min_count).expect_err("i64::MIN block count");

    let (schema, plan) = parse(r#"{"type":"map","values":"string"}"#);
    // -1 entry ("k" -> "v") in 4 bytes, then 1 entry ("k2" -> ""), then the end.
    let bytes = [1, 8, 2, b'k', 2, b'v', 2, 4, b'k', b'2', 0, 0];
    let got: BTreeMap<String, String> = same(&schema, &plan, &bytes).expect("decodes");
    assert_eq!(
        got,
        BTreeMap::from([("k".into(), "v".into()), ("k2".into(), String::new())])
    );
    let got: HashMap<String, Blob> = same(&schema, &plan, &bytes).expect("values as bytes");
    assert_eq!(got["k"], Blob(b"v".to_vec()));
}

#[test]
fn huge_lengths_fail_before_allocating() {
    let (schema, plan) = parse(r#"{"type":"array","items":"string"}"#);
    // A block of 2^40 items, and a string of 2^40 bytes: errors, at once, on both checks.
    let count = [0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
    let err = fast::<Vec<String>>(&plan, &count).expect_err("huge count");
    assert!(err.to_string().contains("ends inside an array"), "{err}");
    let long_string = [2, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40, b'x', 0];
    let err = fast::<Vec<String>>(&plan, &long_string).expect_err("huge string");
    assert!(err.to_string().contains("over the limit"), "{err}");
    // Varints longer than 10 bytes and negative lengths.
    let endless = [0xff; 12];
    let err = fast::<Vec<String>>(&plan, &endless).expect_err("endless varint");
    assert!(err.to_string().contains("10 bytes"), "{err}");
    let negative = [2, 1, 0];
    let err = fast::<Vec<String>>(&plan, &negative).expect_err("negative length");
    assert!(err.to_string().contains("negative length"), "{err}");
    same::<Vec<String>>(&schema, &plan, &negative).expect_err("the library refuses too");
}

#[test]
fn integers_widen_and_narrow_as_with_from_value() {
    let (schema, plan) = parse(r#"{"type":"array","items":"long"}"#);
    let bytes = [6, 0, 0xfe, 0x03, 0x80, 0x04, 0];
    let wide: Vec<i64> = same(&schema, &plan, &bytes).expect("longs");
    assert_eq!(wide, [0, 255, 256]);
    let floats: Vec<f64> = same(&schema, &plan, &bytes).expect("longs read as floats");
    assert_eq!(floats, [0.0, 255.0, 256.0]);
    same::<Vec<u8>>(&schema, &plan, &bytes).expect_err("256 is no u8");
    same::<Vec<i128>>(&schema, &plan, &bytes).expect_err("neither path does i128");
    same::<Vec<char>>(&schema, &plan, &bytes).expect_err("Avro has no char");
    same::<Vec<bool>>(&schema, &plan, &bytes).expect_err("a long is no bool");
}

#[test]
fn bad_bytes_are_errors_on_both_paths() {
    let (schema, plan) = parse(EVERYTHING);
    let good = everything_datums().swap_remove(3);
    // A boolean that is neither 0 nor 1 (flag is the first byte: null takes none).
    let mut bad_bool = good.clone();
    bad_bool[0] = 2;
    same::<Everything>(&schema, &plan, &bad_bool).expect_err("boolean 2");
    // Trailing bytes.
    let mut long = good.clone();
    long.push(0);
    let err = fast::<Everything>(&plan, &long).expect_err("trailing byte");
    assert!(err.to_string().contains("1 bytes left"), "{err}");
    same::<Everything>(&schema, &plan, &long).expect_err("trailing byte");

    // Invalid UTF-8 in a field the target skips still fails, as on the `Value` path.
    let (schema, plan) = parse(
        r#"{"type":"record","name":"T","fields":[
            {"name":"keep","type":"long"},{"name":"skip","type":"string"}]}"#,
    );
    #[derive(Debug, PartialEq, Deserialize)]
    struct Keep {
        keep: i64,
    }
    let ok: Keep = same(&schema, &plan, &[2, 2, b'a']).expect("valid");
    assert_eq!(ok, Keep { keep: 1 });
    same::<Keep>(&schema, &plan, &[2, 2, 0xff]).expect_err("skipped field is not UTF-8");

    // Enum and union indices out of range, and an int that overflows.
    let (schema, plan) = parse(
        r#"{"type":"record","name":"T","fields":[
            {"name":"e","type":{"type":"enum","name":"E","symbols":["A"]}},
            {"name":"u","type":["null","int"]}]}"#,
    );
    let ok: serde_json::Value = same(&schema, &plan, &[0, 2, 4]).expect("valid");
    assert_eq!(ok, serde_json::json!({"e": "A", "u": 2}));
    same::<serde_json::Value>(&schema, &plan, &[2, 0]).expect_err("enum index 1");
    same::<serde_json::Value>(&schema, &plan, &[1, 0]).expect_err("enum index -1");
    same::<serde_json::Value>(&schema, &plan, &[0, 4]).expect_err("union index 2");
    let too_big = [0, 2, 0x80, 0x80, 0x80, 0x80, 0x10];
    same::<serde_json::Value>(&schema, &plan, &too_big).expect_err("int over 32 bits");
}

/// Every truncation and many one-byte corruptions of valid datums: the direct decoder never
/// panics, never accepts what `apache-avro` refuses, and agrees with it on what both accept.
/// Where only `apache-avro` accepts, the datum ended early: the library reads a missing
/// boolean, string or union index as null, which the direct decoder refuses on purpose.
#[test]
fn corrupt_and_truncated_datums() {
    let (schema, plan) = parse(EVERYTHING);
    let (mut checked, mut only_library) = (0, 0);
    let mut check = |bytes: &[u8]| {
        for generic in [false, true] {
            let outcome = if generic {
                compare::<BTreeMap<String, serde_json::Value>>(&schema, &plan, bytes)
            } else {
                compare::<Everything>(&schema, &plan, bytes)
            };
            checked += 1;
            if let Some(reason) = outcome {
                assert!(reason.contains("ends inside"), "{reason} on {bytes:02x?}");
                only_library += 1;
            }
        }
    };
    for good in everything_datums().iter().take(40) {
        for len in 0..good.len() {
            check(&good[..len]);
        }
        for at in 0..good.len() {
            for byte in [
                0x00,
                0x01,
                0x02,
                0x7f,
                0x80,
                0xff,
                good[at] ^ 0x01,
                good[at] ^ 0x40,
            ] {
                let mut bad = good.clone();
                bad[at] = byte;
                check(&bad);
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
    // This schema ends in longs, so the library's leniency about a datum cut off inside a
    // string, a boolean or a union index (see the test below) cannot make it accept one.
    assert_eq!(only_library, 0, "of {checked}");
}

/// Runs both; panics if the direct decoder accepts what the library refuses, or they accept
/// different values. Returns the direct decoder's error when only the library accepts.
fn compare<T: DeserializeOwned + PartialEq + Debug>(
    schema: &Schema,
    plan: &Plan,
    bytes: &[u8],
) -> Option<String> {
    match (fast::<T>(plan, bytes), slow::<T>(schema, bytes)) {
        (Ok(a), Ok(b)) => {
            // Compared through `Debug`: a corrupted float may be a NaN, unequal to itself.
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{bytes:02x?}");
            None
        }
        (Err(_), Err(_)) => None,
        (Ok(a), Err(e)) => panic!("only the direct decoder accepts {bytes:02x?}: {a:?}; {e}"),
        (Err(e), Ok(_)) => Some(e.to_string()),
    }
}

const LIST: &str = r#"{"type":"record","name":"Link","fields":[
    {"name":"value","type":"long"},
    {"name":"next","type":["null","Link"]}]}"#;

#[derive(Debug, PartialEq, Deserialize)]
struct Link {
    value: i64,
    next: Option<Box<Link>>,
}

fn list_datum(len: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..len {
        bytes.push((i as u8 % 60) * 2);
        bytes.push(if i + 1 == len { 0 } else { 2 });
    }
    bytes
}

#[test]
fn recursive_schemas_decode_and_depth_is_bounded() {
    let (schema, plan) = parse(LIST);
    let list: Link = same(&schema, &plan, &list_datum(5)).expect("decodes");
    assert_eq!(list.next.and_then(|n| n.next).map(|n| n.value), Some(2));
    // A deep datum is refused before it exhausts the stack (only the direct decoder is run:
    // the library would recurse 100k levels).
    let err = fast::<Link>(&plan, &list_datum(100_000)).expect_err("too deep");
    assert!(
        err.to_string()
            .contains(&format!("deeper than {MAX_DEPTH}")),
        "{err}"
    );
    let err = fast::<serde::de::IgnoredAny>(&plan, &list_datum(100_000)).expect_err("too deep");
    assert!(err.to_string().contains("deeper"), "{err}");
}

#[test]
fn shapes_left_to_apache_avro_are_refused_at_compile_time() {
    for text in [
        r#"{"type":"bytes","logicalType":"decimal","precision":4,"scale":2}"#,
        r#"{"type":"string","logicalType":"uuid"}"#,
        r#"{"type":"fixed","name":"D","size":12,"logicalType":"duration"}"#,
        r#"{"type":"array","items":"null"}"#,
        r#"{"type":"array","items":{"type":"record","name":"Empty","fields":[]}}"#,
        r#"{"type":"record","name":"T","fields":[
            {"name":"id","type":{"type":"string","logicalType":"uuid"}}]}"#,
    ] {
        let parsed = AvroSchema::parse(text).expect("schema parses");
        assert!(Plan::compile(&parsed.schema).is_err(), "{text}");
    }
}

#[test]
fn a_record_read_as_a_rust_enum_asks_for_the_library() {
    // `apache-avro`'s `{"type": variant, ...}` record form of a Rust enum.
    let (schema, plan) = parse(
        r#"{"type":"record","name":"T","fields":[{"name":"type","type":"string"},
            {"name":"value","type":"long"}]}"#,
    );
    #[derive(Debug, PartialEq, Deserialize)]
    enum Tagged {
        Count(i64),
    }
    let bytes = [10, b'C', b'o', b'u', b'n', b't', 14];
    assert_eq!(
        fast::<Tagged>(&plan, &bytes),
        Err(FastError::Unsupported("a record read as a Rust enum"))
    );
    assert_eq!(slow::<Tagged>(&schema, &bytes), Ok(Tagged::Count(7)));
}

/// The one place the paths differ on purpose: `apache-avro` 0.21 reads a datum that stops
/// inside a trailing optional string (or before its union index) as `None`; the direct decoder
/// says the datum ended early.
#[test]
fn a_cut_off_optional_field_is_an_error_not_none() {
    let (schema, plan) = parse(
        r#"{"type":"record","name":"T","fields":[{"name":"id","type":"long"},
            {"name":"note","type":["null","string"]}]}"#,
    );
    #[derive(Debug, PartialEq, Deserialize)]
    struct T {
        id: i64,
        note: Option<String>,
    }
    let whole = [2, 2, 6, b'a', b'b', b'c'];
    let t: T = same(&schema, &plan, &whole).expect("decodes");
    assert_eq!(t.note.as_deref(), Some("abc"));
    for cut in [&whole[..1], &whole[..4]] {
        assert_eq!(
            slow::<T>(&schema, cut),
            Ok(T { id: 1, note: None }),
            "the library's leniency changed: {cut:02x?}"
        );
        let err = fast::<T>(&plan, cut).expect_err("cut off");
        assert!(err.to_string().contains("ends inside"), "{err}");
    }
}
