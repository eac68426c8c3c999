//! Compares two JSON Schemas of one message version, field by field.
//!
//! A `v{N}` message is read both ways while a change rolls out: new code reads the old
//! payloads in the log (rebuilds, restores) and consumers not yet upgraded read the new ones.
//! So a change must keep both readers working: removing a field, changing its type (narrowed
//! or widened), adding a required field, or adding or removing an enum value or a variant
//! breaks; adding an optional field does not.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// How deep `$ref`s and nesting are followed (recursive types stop here).
const MAX_DEPTH: usize = 64;

/// A difference found: the field path (empty for the payload itself), the reason, and whether
/// it breaks readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `a.b`, `items[]`, `map{}`; empty for the payload itself.
    pub field: String,
    /// What changed and why it matters.
    pub reason: String,
    /// True if it breaks a reader; false for an addition.
    pub breaking: bool,
}

/// A schema with the document it belongs to (for `$ref`s).
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    /// The schema.
    pub schema: &'a Value,
    /// The whole AsyncAPI document.
    pub document: &'a Value,
}

impl<'a> Side<'a> {
    /// Follows `$ref`s within the document (`#/...` JSON pointers), a few levels at most.
    fn resolved(self) -> Side<'a> {
        let mut schema = self.schema;
        for _ in 0..8 {
            let Some(pointer) = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix('#'))
            else {
                break;
            };
            match self.document.pointer(pointer) {
                Some(target) => schema = target,
                None => break,
            }
        }
        Side {
            schema,
            document: self.document,
        }
    }

    fn get(self, key: &str) -> Option<Side<'a>> {
        self.schema.get(key).map(|schema| Side {
            schema,
            document: self.document,
        })
    }

    fn properties(self) -> Option<&'a Map<String, Value>> {
        self.schema.get("properties").and_then(Value::as_object)
    }

    fn required(self) -> Vec<&'a str> {
        self.schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The JSON types the schema allows; `None` for any.
    fn types(self) -> Option<Vec<&'a str>> {
        match self.schema.get("type") {
            Some(Value::String(t)) => Some(vec![t.as_str()]),
            Some(Value::Array(ts)) => Some(ts.iter().filter_map(Value::as_str).collect()),
            _ => None,
        }
    }
}

/// The differences found so far, and the pairs of `$ref`s already compared (recursive
/// types are compared once).
#[derive(Default)]
struct Found {
    list: Vec<Difference>,
    seen: BTreeSet<(String, String)>,
}

/// Every difference between `old` and `new`.
pub fn compare(old: Side<'_>, new: Side<'_>) -> Vec<Difference> {
    let mut found = Found::default();
    walk(old, new, "", 0, &mut found);
    found.list
}

fn push(out: &mut Found, field: &str, breaking: bool, reason: String) {
    out.list.push(Difference {
        field: field.to_owned(),
        reason,
        breaking,
    });
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

fn walk(old: Side<'_>, new: Side<'_>, path: &str, depth: usize, out: &mut Found) {
    if depth > MAX_DEPTH {
        return;
    }
    let refs = (reference(old), reference(new));
    if let (Some(a), Some(b)) = refs
        && !out.seen.insert((a.to_owned(), b.to_owned()))
    {
        return;
    }
    let (old, new) = (old.resolved(), new.resolved());
    if types(old, new, path, out) {
        // The type says it all; its format and bounds changed with it.
        return;
    }
    for key in [
        "format",
        "const",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
    ] {
        let (a, b) = (old.schema.get(key), new.schema.get(key));
        if a != b {
            push(
                out,
                path,
                true,
                format!("{key} changed from {} to {}", shown(a), shown(b)),
            );
        }
    }
    enums(old, new, path, out);
    for key in ["anyOf", "oneOf", "allOf"] {
        alternatives(old, new, key, path, depth, out);
    }
    object(old, new, path, depth, out);
    if let (Some(a), Some(b)) = (old.get("items"), new.get("items")) {
        walk(a, b, &format!("{path}[]"), depth + 1, out);
    }
    if let (Some(a), Some(b)) = (
        old.get("additionalProperties"),
        new.get("additionalProperties"),
    ) && (a.schema.is_object() || b.schema.is_object())
    {
        walk(a, b, &format!("{path}{{}}"), depth + 1, out);
    }
}

fn reference<'a>(side: Side<'a>) -> Option<&'a str> {
    side.schema.get("$ref").and_then(Value::as_str)
}

fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "none".to_owned(), Value::to_string)
}

/// Does a value of JSON type `t` fit one of `allowed`? (`integer` fits `number`.)
fn fits(t: &str, allowed: &[&str]) -> bool {
    allowed.contains(&t) || (t == "integer" && allowed.contains(&"number"))
}

/// Reports a changed type; true if it did.
fn types(old: Side<'_>, new: Side<'_>, path: &str, out: &mut Found) -> bool {
    let (a, b) = (old.types(), new.types());
    if a == b {
        return false;
    }
    let name = |t: &Option<Vec<&str>>| t.as_ref().map_or("any".to_owned(), |t| t.join(" or "));
    let narrowed = match (&a, &b) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(a), Some(b)) => a.iter().any(|t| !fits(t, b)),
    };
    let widened = match (&a, &b) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(a), Some(b)) => b.iter().any(|t| !fits(t, a)),
    };
    let why = match (narrowed, widened) {
        (true, false) => "narrowed: old payloads in the log may not fit",
        (false, true) => "widened: consumers not yet upgraded may receive values they cannot read",
        (true, true) => {
            "old payloads may not fit and consumers not yet upgraded may not read new ones"
        }
        (false, false) => return false,
    };
    push(
        out,
        path,
        true,
        format!("type changed from {} to {} ({why})", name(&a), name(&b)),
    );
    true
}

fn enums(old: Side<'_>, new: Side<'_>, path: &str, out: &mut Found) {
    let values = |side: Side<'_>| side.schema.get("enum").and_then(Value::as_array).cloned();
    let (Some(a), Some(b)) = (values(old), values(new)) else {
        if values(old).is_some() != values(new).is_some() {
            push(
                out,
                path,
                true,
                "enum constraint added or removed".to_owned(),
            );
        }
        return;
    };
    for gone in a.iter().filter(|v| !b.contains(v)) {
        push(
            out,
            path,
            true,
            format!("enum value {gone} removed: old payloads in the log may carry it"),
        );
    }
    for added in b.iter().filter(|v| !a.contains(v)) {
        push(
            out,
            path,
            true,
            format!("enum value {added} added: consumers not yet upgraded cannot read it"),
        );
    }
}

fn alternatives(
    old: Side<'_>,
    new: Side<'_>,
    key: &str,
    path: &str,
    depth: usize,
    out: &mut Found,
) {
    let (a, b) = (
        old.schema.get(key).and_then(Value::as_array),
        new.schema.get(key).and_then(Value::as_array),
    );
    match (a, b) {
        (None, None) => {}
        (Some(a), Some(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let (x, y) = (
                    Side {
                        schema: x,
                        document: old.document,
                    },
                    Side {
                        schema: y,
                        document: new.document,
                    },
                );
                walk(x, y, &format!("{path}<{key} {i}>"), depth + 1, out);
            }
        }
        (a, b) => push(
            out,
            path,
            true,
            format!(
                "{key} changed from {} to {} alternatives (a variant added or removed): readers on one side cannot read the other's",
                a.map_or(0, Vec::len),
                b.map_or(0, Vec::len)
            ),
        ),
    }
}

fn object(old: Side<'_>, new: Side<'_>, path: &str, depth: usize, out: &mut Found) {
    let empty = Map::new();
    let (a, b) = (
        old.properties().unwrap_or(&empty),
        new.properties().unwrap_or(&empty),
    );
    let (old_required, new_required) = (old.required(), new.required());
    let closed = old.schema.get("additionalProperties") == Some(&Value::Bool(false));
    for (name, schema) in a {
        let field = join(path, name);
        let Some(other) = b.get(name) else {
            push(
                out,
                &field,
                true,
                "removed (or renamed): consumers not yet upgraded expect it, and the name cannot be reused".to_owned(),
            );
            continue;
        };
        if new_required.contains(&name.as_str()) && !old_required.contains(&name.as_str()) {
            push(
                out,
                &field,
                true,
                "made required: old payloads in the log may lack it".to_owned(),
            );
        }
        let (x, y) = (
            Side {
                schema,
                document: old.document,
            },
            Side {
                schema: other,
                document: new.document,
            },
        );
        walk(x, y, &field, depth + 1, out);
    }
    for name in b.keys().filter(|n| !a.contains_key(*n)) {
        let field = join(path, name);
        if new_required.contains(&name.as_str()) {
            push(
                out,
                &field,
                true,
                "required field added without a default: old payloads in the log lack it"
                    .to_owned(),
            );
        } else if closed {
            push(
                out,
                &field,
                true,
                "added to an object that refuses unknown fields: consumers not yet upgraded refuse it".to_owned(),
            );
        } else {
            push(out, &field, false, "optional field added".to_owned());
        }
    }
}
