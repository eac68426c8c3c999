//! Payload schemas: JSON Schema (draft 7, the base of AsyncAPI's own schema format) derived
//! with `schemars` for JSON messages, the declared Avro schema for Avro ones.

use serde_json::{Map, Value, json};

/// The media type of an Avro schema in an AsyncAPI multi-format schema object.
pub const AVRO_SCHEMA_FORMAT: &str = "application/vnd.apache.avro+json;version=1.9.0";

/// Where nested definitions go in a document: `components.schemas`.
const DEFINITIONS: &str = "/components/schemas";

/// A message's payload schema as its type declares it.
#[derive(Debug, Clone, PartialEq)]
pub enum PayloadSchema {
    /// JSON Schema (draft 7) of a JSON payload; nested types that are not inlined (recursive
    /// ones) are `$ref`s to `#/components/schemas/{name}`, listed in `definitions`.
    Json {
        /// The payload's schema.
        schema: Value,
        /// The named schemas it refers to.
        definitions: Map<String, Value>,
    },
    /// The Avro schema of an Avro payload (single-object encoding on the wire).
    Avro(Value),
}

impl PayloadSchema {
    /// The JSON Schema of `T` as a reader sees it (fields with a serde default are optional),
    /// nested types inlined where they can be.
    pub fn json<T: schemars::JsonSchema>() -> Self {
        let generator = schemars::generate::SchemaSettings::draft07()
            .with(|settings| {
                settings.definitions_path = DEFINITIONS.into();
                settings.meta_schema = None;
                settings.inline_subschemas = true;
            })
            .for_deserialize()
            .into_generator();
        let mut schema = generator.into_root_schema_for::<T>().to_value();
        let definitions = schema
            .as_object_mut()
            .and_then(|root| root.remove("components"))
            .and_then(|mut components| components.get_mut("schemas").map(Value::take))
            .and_then(|schemas| match schemas {
                Value::Object(map) => Some(map),
                _ => None,
            })
            .unwrap_or_default();
        Self::Json {
            schema,
            definitions,
        }
    }

    /// The declared Avro schema text, parsed; an error says why it is not JSON.
    pub fn avro(text: &str) -> Result<Self, String> {
        serde_json::from_str(text)
            .map(Self::Avro)
            .map_err(|e| format!("the Avro schema is not JSON: {e}"))
    }

    /// The `payload` of an AsyncAPI message: a schema in AsyncAPI's default format (a
    /// superset of JSON Schema draft 7), or a multi-format schema object for Avro.
    pub fn payload(&self) -> Value {
        match self {
            Self::Json { schema, .. } => schema.clone(),
            Self::Avro(schema) => json!({
                "schemaFormat": AVRO_SCHEMA_FORMAT,
                "schema": schema,
            }),
        }
    }

    /// The content type a payload of this schema is written with.
    pub fn content_type(&self) -> &'static str {
        match self {
            Self::Json { .. } => crate::message::JSON,
            Self::Avro(_) => crate::message::AVRO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(schemars::JsonSchema, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[derive(schemars::JsonSchema, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        #[serde(default)]
        note: Option<String>,
        inner: Inner,
        tree: Vec<Tree>,
    }

    #[derive(schemars::JsonSchema, serde::Deserialize)]
    #[allow(dead_code)]
    struct Tree {
        children: Vec<Tree>,
    }

    #[test]
    fn json_schemas_inline_what_they_can_and_refer_to_components_for_the_rest() {
        let PayloadSchema::Json {
            schema,
            definitions,
        } = PayloadSchema::json::<Outer>()
        else {
            panic!("json")
        };
        assert_eq!(schema["type"], "object");
        assert!(schema.get("$schema").is_none());
        assert!(schema.get("components").is_none());
        let required: Vec<&str> = schema["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(required, ["name", "inner", "tree"]);
        assert_eq!(
            schema["properties"]["inner"]["properties"]["n"]["type"],
            "integer"
        );
        assert_eq!(
            schema["properties"]["tree"]["items"]["properties"]["children"]["items"]["$ref"],
            "#/components/schemas/Tree"
        );
        assert!(definitions.contains_key("Tree"), "{definitions:?}");
    }

    #[test]
    fn avro_schemas_are_multi_format_payloads() {
        let schema =
            PayloadSchema::avro(r#"{"type":"record","name":"A","fields":[]}"#).expect("json");
        assert_eq!(schema.payload()["schemaFormat"], AVRO_SCHEMA_FORMAT);
        assert_eq!(schema.content_type(), crate::message::AVRO);
        assert!(PayloadSchema::avro("{").is_err());
    }
}
