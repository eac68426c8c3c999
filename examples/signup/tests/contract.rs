//! The services' asynchronous APIs as contracts (no Kafka needed):
//!
//! - each service's AsyncAPI document, freshly built from its declarations, keeps the
//!   committed one in `contracts/` (no breaking change to any `v{N}` message) and equals it
//!   (an additive change is committed too, so a later removal is still caught);
//! - every document passes the official AsyncAPI parser (`@asyncapi/parser`, installed by
//!   `scripts/asyncapi-setup`; required when `CHOREO_CONTRACT_REQUIRED=1`, as in
//!   `scripts/test`);
//! - `<service> asyncapi` prints the same document.
//!
//! After an intended additive change: `CHOREO_CONTRACT_UPDATE=1 cargo test -p signup --test
//! contract` rewrites the committed documents, and refuses to when the change breaks one.

use std::path::{Path, PathBuf};
use std::process::Command;

use choreo::asyncapi::{AsyncApi, check};
use serde_json::Value;
use signup::asyncapi::{SERVICES, document};

/// The replication the committed documents were written with (the dev broker's).
const REPLICATION: i32 = 1;

fn committed_path(service: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contracts")
        .join(format!("{service}.asyncapi.json"))
}

fn pretty(document: &Value) -> String {
    let mut text = serde_json::to_string_pretty(document).expect("a document serializes");
    text.push('\n');
    text
}

/// What is wrong with the committed contract of `service` at `path`, if anything; with
/// `update`, a missing or stale (but compatible) one is rewritten instead.
fn contract_problems(service: &str, path: &Path, update: bool) -> Vec<String> {
    let fresh = document(service, REPLICATION).expect("the document builds");
    let rerun = "CHOREO_CONTRACT_UPDATE=1 cargo test -p signup --test contract";
    let write = || std::fs::write(path, pretty(&fresh)).expect("write the contract");
    let old: Value = match std::fs::read_to_string(path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(old) => old,
            Err(e) => return vec![format!("{}: not JSON: {e}", path.display())],
        },
        Err(_) if update => {
            write();
            return Vec::new();
        }
        Err(e) => {
            return vec![format!(
                "{service}: no committed contract at {} ({e}); write it with {rerun}",
                path.display()
            )];
        }
    };
    let report = check(&old, &fresh).expect("both are AsyncAPI documents");
    if !report.passed() {
        return report
            .problems
            .iter()
            .map(|p| format!("{service}: {p}"))
            .collect();
    }
    if old == fresh {
        return Vec::new();
    }
    if update {
        write();
        return Vec::new();
    }
    let mut lines = vec![format!(
        "{service}: the committed contract {} is stale (compatible changes: commit them with {rerun})",
        path.display()
    )];
    lines.extend(report.notes.iter().map(|n| format!("  {n}")));
    lines
}

#[test]
fn every_service_keeps_its_committed_contract() {
    let update = std::env::var("CHOREO_CONTRACT_UPDATE").is_ok_and(|v| v == "1");
    let problems: Vec<String> = SERVICES
        .iter()
        .flat_map(|service| contract_problems(service, &committed_path(service), update))
        .collect();
    assert!(
        problems.is_empty(),
        "the asynchronous API changed:\n{}",
        problems.join("\n")
    );
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("choreo-asyncapi-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn a_broken_or_stale_contract_is_reported_and_only_a_compatible_one_is_rewritten() {
    let dir = temp_dir();
    let fresh = document("user-service", REPLICATION).expect("builds");
    let path = dir.join("user-service.asyncapi.json");

    // Published with a field the code no longer has: breaking, and never rewritten.
    let mut published = fresh.clone();
    published["components"]["messages"]["v1_user_signedup"]["payload"]["properties"]["plan"] =
        serde_json::json!({"type": "string"});
    std::fs::write(&path, pretty(&published)).expect("write");
    for update in [false, true] {
        let problems = contract_problems("user-service", &path, update);
        assert_eq!(
            problems,
            [
                "user-service: v1.user.signedup: field plan: removed (or renamed): consumers not yet upgraded expect it, and the name cannot be reused; publish the change as v2.user.signedup instead"
            ]
        );
    }
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        pretty(&published)
    );

    // Published before a message was added: compatible but stale; the update rewrites it.
    let mut published = fresh.clone();
    let messages = published["components"]["messages"]
        .as_object_mut()
        .expect("messages");
    messages.remove("v1_command_answered");
    std::fs::write(&path, pretty(&published)).expect("write");
    let problems = contract_problems("user-service", &path, false);
    assert!(problems[0].contains("is stale"), "{problems:#?}");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("v1.command.answered: new message")),
        "{problems:#?}"
    );
    assert!(contract_problems("user-service", &path, true).is_empty());
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        pretty(&fresh)
    );
    assert!(contract_problems("user-service", &path, false).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The validator program (`node validate.mjs FILE...`), or `None` where it is not installed
/// and not required.
fn validator() -> Option<PathBuf> {
    let required = std::env::var("CHOREO_CONTRACT_REQUIRED").is_ok_and(|v| v == "1");
    let found = std::env::var_os("CHOREO_ASYNCAPI_VALIDATOR")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    let node = Command::new("node").arg("--version").output();
    match (found, node) {
        (Some(path), Ok(out)) if out.status.success() => Some(path),
        _ if required => panic!(
            "CHOREO_CONTRACT_REQUIRED=1 but the AsyncAPI validator is missing: run eval \"$(scripts/asyncapi-setup)\" (needs node and npm)"
        ),
        _ => {
            eprintln!(
                "skipped: no AsyncAPI validator (eval \"$(scripts/asyncapi-setup)\" installs it)"
            );
            None
        }
    }
}

fn validate(validator: &Path, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("node")
        .arg(validator)
        .args(files)
        .output()
        .expect("node runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An Avro event, so the parser's Avro path is exercised too (the example's events are JSON).
#[derive(serde::Serialize, serde::Deserialize)]
struct PlanChosen {}

impl choreo::Event for PlanChosen {
    const NAME: &'static str = "v1.plan.chosen";
    const AVRO_SCHEMA: Option<&'static str> = Some(
        r#"{"type":"record","name":"PlanChosen","namespace":"signup","fields":[
            {"name":"user_id","type":"string"},
            {"name":"plan","type":{"type":"enum","name":"Plan","symbols":["free","pro"]}},
            {"name":"seats","type":"int","default":1}]}"#,
    );
    fn subject(&self) -> String {
        String::new()
    }
}

#[test]
fn every_document_passes_the_official_asyncapi_parser() {
    let Some(validator) = validator() else {
        return;
    };
    let dir = temp_dir();
    let mut files = Vec::new();
    for service in SERVICES {
        let path = dir.join(format!("{service}.json"));
        std::fs::write(
            &path,
            pretty(&document(service, REPLICATION).expect("builds")),
        )
        .expect("write");
        files.push(path);
    }
    let avro = AsyncApi::new("plan-service", "1.0.0")
        .avro_event::<PlanChosen>()
        .sends::<PlanChosen>("plan-service")
        .build()
        .expect("builds");
    let avro_path = dir.join("plan-service.json");
    std::fs::write(&avro_path, pretty(&avro)).expect("write");
    files.push(avro_path);

    let (ok, text) = validate(&validator, &files);
    assert!(ok, "the AsyncAPI parser refused a document:\n{text}");
    for file in &files {
        let line = format!("{}: valid AsyncAPI 3.0.0", file.display());
        assert!(text.contains(&line), "{line} missing in:\n{text}");
    }

    // The validator is no rubber stamp: a document with a wrong operation action fails.
    let mut broken = document("user-service", REPLICATION).expect("builds");
    let operations = broken["operations"].as_object_mut().expect("operations");
    let first = operations.values_mut().next().expect("an operation");
    first["action"] = "publish".into();
    let broken_path = dir.join("broken.json");
    std::fs::write(&broken_path, pretty(&broken)).expect("write");
    let (ok, text) = validate(&validator, &[broken_path]);
    assert!(!ok && text.contains("action"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_service_binaries_print_their_documents() {
    for (service, binary) in [
        ("user-service", env!("CARGO_BIN_EXE_user-service")),
        ("email-service", env!("CARGO_BIN_EXE_email-service")),
        ("metrics-service", env!("CARGO_BIN_EXE_metrics-service")),
    ] {
        let out = Command::new(binary)
            .arg("asyncapi")
            .env("CHOREO_REPLICATION", REPLICATION.to_string())
            .output()
            .expect("the binary runs");
        assert!(out.status.success(), "{service} asyncapi: {out:?}");
        let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
        assert_eq!(
            printed,
            document(service, REPLICATION).expect("builds"),
            "{service}"
        );
    }
}
