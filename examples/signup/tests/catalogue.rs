//! The HTML catalogue of the signup stack's messages: the three AsyncAPI documents rendered by
//! the official AsyncAPI React component (`framework/tests/asyncapi/catalogue.mjs`), opened in
//! headless Chromium, whose DOM must hold every service's rendered operations and messages.
//! Tools from `scripts/asyncapi-setup`; required when `CHOREO_CONTRACT_REQUIRED=1`.

use std::path::PathBuf;
use std::process::Command;

use signup::asyncapi::{SERVICES, document};

/// `(node catalogue.mjs, chromium)`, or `None` where they are missing and not required.
fn tools() -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var("CHOREO_CONTRACT_REQUIRED").is_ok_and(|v| v == "1");
    let path = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_file())
    };
    match (path("CHOREO_ASYNCAPI_CATALOGUE"), path("CHOREO_CHROMIUM")) {
        (Some(catalogue), Some(chromium)) => Some((catalogue, chromium)),
        _ if required => panic!(
            "CHOREO_CONTRACT_REQUIRED=1 but the catalogue tools are missing: run eval \"$(scripts/asyncapi-setup)\" (node, npm, chromium)"
        ),
        _ => {
            eprintln!(
                "skipped: no catalogue tools (eval \"$(scripts/asyncapi-setup)\" installs them)"
            );
            None
        }
    }
}

#[test]
fn the_catalogue_renders_every_service_in_headless_chromium() {
    let Some((catalogue, chromium)) = tools() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("choreo-catalogue-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut files = Vec::new();
    for service in SERVICES {
        let path = dir.join(format!("{service}.json"));
        let text = serde_json::to_vec_pretty(&document(service, 1).expect("builds")).expect("json");
        std::fs::write(&path, text).expect("write");
        files.push(path);
    }
    let site = dir.join("site");
    let out = Command::new("node")
        .arg(&catalogue)
        .arg(&site)
        .arg("The signup stack: messages")
        .args(&files)
        .output()
        .expect("node runs");
    assert!(out.status.success(), "catalogue.mjs failed: {out:?}");

    // Chromium runs the page's scripts (the component parses and renders each document)
    // until the page is idle, within 30 s of virtual time, then prints the DOM.
    let out = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=30000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", site.join("index.html").display()))
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {out:?}");
    let dom = String::from_utf8_lossy(&out.stdout);
    // One rendered component per service, none showing a parse error.
    assert_eq!(dom.matches("class=\"aui-root\"").count(), 3, "{dom}");
    assert!(
        !dom.contains("There are errors in your Asyncapi document"),
        "the component refused a document: {dom}"
    );
    for id in [
        // user-service: the processor replies, the bus requests, the users view reads.
        "operation-reply-user-service_receive_user_commands",
        "operation-request-user-service_send_user_commands",
        "operation-receive-users_v1_receive_user_events",
        "message-v1_user_signup-payload",
        "message-v1_command_answered-payload",
        // email-service: the reactor reads signups and announces the email.
        "operation-receive-welcome-email_receive_user_events",
        "operation-send-welcome-email_send_email_events",
        "message-v1_email_sent-payload",
        // metrics-service.
        "operation-receive-signup_metrics_v1_receive_user_events",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "{id} not rendered");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
