//! One test per rule of the contract check, on documents built from Rust types.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Report, check, next_version};
use crate::asyncapi::AsyncApi;
use crate::kafka::TopicSpec;

/// Declares an event type `$ty` named `v1.thing.happened` with the given fields.
macro_rules! event {
    ($ty:ident { $($body:tt)* }) => {
        #[derive(Serialize, Deserialize, schemars::JsonSchema)]
        #[allow(dead_code)]
        struct $ty { $($body)* }
        impl crate::Event for $ty {
            const NAME: &'static str = "v1.thing.happened";
            fn subject(&self) -> String { String::new() }
        }
    };
}

fn document<E: crate::Event + schemars::JsonSchema>() -> Value {
    AsyncApi::new("svc", "1")
        .event::<E>()
        .sends::<E>("svc")
        .build()
        .expect("document")
}

fn compare<A, B>() -> Report
where
    A: crate::Event + schemars::JsonSchema,
    B: crate::Event + schemars::JsonSchema,
{
    check(&document::<A>(), &document::<B>()).expect("check")
}

/// The single problem's field and reason, or a panic showing the report.
fn one_problem(report: &Report) -> (String, String) {
    assert_eq!(report.problems.len(), 1, "{report:#?}");
    let p = &report.problems[0];
    assert_eq!(p.subject, "v1.thing.happened");
    assert_eq!(p.publish_instead.as_deref(), Some("v2.thing.happened"));
    assert!(
        p.to_string()
            .contains("publish the change as v2.thing.happened instead")
    );
    (p.field.clone().unwrap_or_default(), p.reason.clone())
}

event!(Base {
    id: String,
    count: u32
});
event!(Same {
    id: String,
    count: u32
});
event!(NoCount { id: String });
event!(Renamed {
    id: String,
    total: u32
});
event!(CountIsString {
    id: String,
    count: String
});
event!(CountIsU64 {
    id: String,
    count: u64
});
event!(CountIsOptional { id: String, count: Option<u32> });
event!(WithRequiredNote {
    id: String,
    count: u32,
    note: String
});
event!(WithDefaultedNote {
    id: String,
    count: u32,
    #[serde(default)]
    note: String
});
event!(WithOptionalNote { id: String, count: u32, #[serde(default)] note: Option<String> });
event!(Float { value: f64 });
event!(Integer { value: i64 });

#[test]
fn identical_documents_pass_without_notes() {
    let report = compare::<Base, Same>();
    assert!(report.passed() && report.notes.is_empty(), "{report:#?}");
}

#[test]
fn a_removed_field_breaks() {
    let (field, reason) = one_problem(&compare::<Base, NoCount>());
    assert_eq!(field, "count");
    assert!(reason.contains("removed"), "{reason}");
}

#[test]
fn a_renamed_field_breaks_as_removed_and_a_required_field_added() {
    let report = compare::<Base, Renamed>();
    let lines: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].contains("field count: removed"), "{lines:#?}");
    assert!(
        lines[1].contains("field total: required field added"),
        "{lines:#?}"
    );
}

#[test]
fn a_changed_type_breaks() {
    let (field, reason) = one_problem(&compare::<Base, CountIsString>());
    assert_eq!(field, "count");
    assert!(
        reason.contains("type changed from integer to string"),
        "{reason}"
    );
}

#[test]
fn a_narrowed_type_breaks_and_says_old_payloads_may_not_fit() {
    let (field, reason) = one_problem(&compare::<Float, Integer>());
    assert_eq!(field, "value");
    assert!(reason.contains("narrowed"), "{reason}");
}

#[test]
fn a_widened_type_breaks_consumers_not_yet_upgraded() {
    let (_, reason) = one_problem(&compare::<Integer, Float>());
    assert!(reason.contains("widened"), "{reason}");
    // u32 -> u64: the same JSON type, a wider range.
    let (field, reason) = one_problem(&compare::<Base, CountIsU64>());
    assert_eq!(field, "count");
    assert!(reason.contains("format changed"), "{reason}");
}

#[test]
fn making_a_field_optional_breaks_readers_that_require_it() {
    let report = compare::<Base, CountIsOptional>();
    assert!(!report.passed());
    assert!(
        report
            .problems
            .iter()
            .all(|p| p.field.as_deref() == Some("count")),
        "{report:#?}"
    );
    assert!(report.problems[0].reason.contains("widened"), "{report:#?}");
}

#[test]
fn a_required_field_added_without_a_default_breaks() {
    let (field, reason) = one_problem(&compare::<Base, WithRequiredNote>());
    assert_eq!(field, "note");
    assert!(
        reason.contains("required field added without a default"),
        "{reason}"
    );
}

#[test]
fn a_field_added_with_a_default_or_optional_passes_with_a_note() {
    for report in [
        compare::<Base, WithDefaultedNote>(),
        compare::<Base, WithOptionalNote>(),
    ] {
        assert!(report.passed(), "{report:#?}");
        assert_eq!(
            report.notes,
            ["v1.thing.happened: field note: optional field added"]
        );
    }
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
enum Plan {
    Free,
    Pro,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
enum PlanWithTeam {
    Free,
    Pro,
    Team,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
enum PlanFreeOnly {
    Free,
}

event!(WithPlan { plan: Plan });
event!(WithPlanTeam { plan: PlanWithTeam });
event!(WithPlanFree { plan: PlanFreeOnly });

#[test]
fn an_enum_value_removed_or_added_breaks() {
    let (field, reason) = one_problem(&compare::<WithPlan, WithPlanFree>());
    assert_eq!(field, "plan");
    assert!(reason.contains("enum value \"pro\" removed"), "{reason}");
    let (field, reason) = one_problem(&compare::<WithPlan, WithPlanTeam>());
    assert_eq!(field, "plan");
    assert!(reason.contains("enum value \"team\" added"), "{reason}");
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
enum Shape {
    Circle { r: f64 },
    Square { side: f64 },
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
enum ShapeWithTriangle {
    Circle { r: f64 },
    Square { side: f64 },
    Triangle { base: f64 },
}

event!(WithShape { shape: Shape });
event!(WithShapeTriangle {
    shape: ShapeWithTriangle
});

#[test]
fn a_variant_added_breaks() {
    let (field, reason) = one_problem(&compare::<WithShape, WithShapeTriangle>());
    assert_eq!(field, "shape");
    assert!(
        reason.contains("oneOf changed from 2 to 3 alternatives"),
        "{reason}"
    );
}

#[test]
fn a_changed_pattern_or_const_breaks() {
    let old = document::<Base>();
    let mut new = old.clone();
    let id = "/components/messages/v1_thing_happened/payload/properties/id";
    new.pointer_mut(id).expect("id")["pattern"] = "^[a-z]+$".into();
    let (field, reason) = one_problem(&check(&old, &new).expect("check"));
    assert_eq!(field, "id");
    assert_eq!(reason, "pattern changed from none to \"^[a-z]+$\"");
    let mut new = old.clone();
    new.pointer_mut(id).expect("id")["const"] = "x".into();
    let (_, reason) = one_problem(&check(&old, &new).expect("check"));
    assert!(reason.starts_with("const changed"), "{reason}");
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
struct Address {
    city: String,
    zip: String,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
struct AddressNoZip {
    city: String,
}

event!(Nested { address: Address, tags: Vec<Address> });
event!(NestedNoZip { address: AddressNoZip, tags: Vec<AddressNoZip> });

#[test]
fn nested_fields_are_named_by_their_path() {
    let report = compare::<Nested, NestedNoZip>();
    let fields: Vec<_> = report.problems.iter().map(|p| p.field.clone()).collect();
    assert_eq!(
        fields,
        [
            Some("address.zip".to_owned()),
            Some("tags[].zip".to_owned())
        ],
        "{report:#?}"
    );
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct Closed {
    id: String,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
struct ClosedWithNote {
    id: String,
    #[serde(default)]
    note: Option<String>,
}

impl crate::Event for Closed {
    const NAME: &'static str = "v1.thing.happened";
    fn subject(&self) -> String {
        String::new()
    }
}

impl crate::Event for ClosedWithNote {
    const NAME: &'static str = "v1.thing.happened";
    fn subject(&self) -> String {
        String::new()
    }
}

#[test]
fn an_optional_field_added_to_a_closed_object_breaks() {
    let (field, reason) = one_problem(&compare::<Closed, ClosedWithNote>());
    assert_eq!(field, "note");
    assert!(reason.contains("refuses unknown fields"), "{reason}");
}

event!(Other { id: String });

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[allow(dead_code)]
struct SecondVersion {
    id: String,
}

impl crate::Event for SecondVersion {
    const NAME: &'static str = "v2.thing.happened";
    fn subject(&self) -> String {
        String::new()
    }
}

#[test]
fn a_new_message_or_version_passes_and_a_dropped_one_is_noted() {
    let old = document::<Base>();
    let new = AsyncApi::new("svc", "1")
        .event::<Base>()
        .event::<SecondVersion>()
        .sends::<Base>("svc")
        .sends::<SecondVersion>("svc")
        .build()
        .expect("document");
    let report = check(&old, &new).expect("check");
    assert!(report.passed(), "{report:#?}");
    assert_eq!(report.notes, ["v2.thing.happened: new message"]);
    let report = check(&new, &old).expect("check");
    assert!(report.passed(), "{report:#?}");
    assert!(report.notes[0].contains("v2.thing.happened: no longer in the document"));
}

const AVRO_V1: &str = r#"{"type":"record","name":"Thing","fields":[
    {"name":"id","type":"string"}]}"#;
const AVRO_DEFAULTED: &str = r#"{"type":"record","name":"Thing","fields":[
    {"name":"id","type":"string"},{"name":"plan","type":"string","default":"free"}]}"#;
const AVRO_REQUIRED: &str = r#"{"type":"record","name":"Thing","fields":[
    {"name":"id","type":"string"},{"name":"age","type":"int"}]}"#;

macro_rules! avro_event {
    ($ty:ident, $schema:expr) => {
        #[derive(Serialize, Deserialize)]
        struct $ty {}
        impl crate::Event for $ty {
            const NAME: &'static str = "v1.thing.happened";
            const AVRO_SCHEMA: Option<&'static str> = Some($schema);
            fn subject(&self) -> String {
                String::new()
            }
        }
    };
}

avro_event!(AvroV1, AVRO_V1);
avro_event!(AvroDefaulted, AVRO_DEFAULTED);
avro_event!(AvroRequired, AVRO_REQUIRED);

fn avro_document<E: crate::Event>() -> Value {
    AsyncApi::new("svc", "1")
        .avro_event::<E>()
        .sends::<E>("svc")
        .build()
        .expect("document")
}

#[test]
fn avro_payloads_follow_avro_resolution_rules() {
    let report = check(
        &avro_document::<AvroV1>(),
        &avro_document::<AvroDefaulted>(),
    )
    .expect("check");
    assert!(report.passed(), "{report:#?}");
    let report =
        check(&avro_document::<AvroV1>(), &avro_document::<AvroRequired>()).expect("check");
    let (field, reason) = one_problem(&report);
    assert_eq!(field, "age");
    assert!(reason.contains("cannot read old payloads"), "{reason}");
}

#[test]
fn switching_between_json_and_avro_breaks() {
    let report = check(&document::<Other>(), &avro_document::<AvroV1>()).expect("check");
    let (_, reason) = one_problem(&report);
    assert!(reason.contains("from JSON to Avro"), "{reason}");
}

#[test]
fn a_changed_partition_count_breaks() {
    let with = |partitions| {
        AsyncApi::new("svc", "1")
            .event::<Base>()
            .topic(TopicSpec::events("thing", partitions, 1).expect("spec"))
            .sends::<Base>("svc")
            .build()
            .expect("document")
    };
    let report = check(&with(3), &with(6)).expect("check");
    assert_eq!(report.problems.len(), 1, "{report:#?}");
    assert_eq!(
        report.problems[0].to_string(),
        "topic thing.events: partition count changed from 3 to 6: keys would move to other partitions (an entity's order is lost); create a new topic instead"
    );
}

#[test]
fn documents_that_are_not_asyncapi_are_an_error() {
    let err = check(
        &serde_json::json!({"openapi": "3.1.0"}),
        &document::<Base>(),
    )
    .expect_err("not asyncapi");
    assert!(err.contains("not an AsyncAPI document"), "{err}");
}

#[test]
fn next_versions() {
    assert_eq!(
        next_version("v1.user.signedup").as_deref(),
        Some("v2.user.signedup")
    );
    assert_eq!(next_version("v9.a.b").as_deref(), Some("v10.a.b"));
    assert_eq!(next_version("user.signedup"), None);
}
