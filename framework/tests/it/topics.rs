//! Topic declarations: created as declared, verified, never silently changed.

use choreo::Error;
use choreo::kafka::{TopicAdmin, TopicSpec, TopicState};

use crate::common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_creates_then_verifies_and_refuses_a_different_partition_count_or_retention() {
    let config = common::kafka("topics");
    let admin = TopicAdmin::new(&config).expect("admin");
    let mut events = TopicSpec::events("order", 4, 1).expect("spec");
    events.name = config.topic_name(&events.name);
    assert_eq!(
        admin
            .ensure(std::slice::from_ref(&events))
            .await
            .expect("create"),
        vec![TopicState::Created]
    );
    let described = admin
        .describe(&events.name)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(described.partitions, 4);
    assert_eq!(
        described.configs.get("retention.ms").map(String::as_str),
        Some("-1")
    );
    assert_eq!(
        described.configs.get("cleanup.policy").map(String::as_str),
        Some("delete")
    );
    assert_eq!(
        admin
            .ensure(std::slice::from_ref(&events))
            .await
            .expect("verify"),
        vec![TopicState::AlreadyMatching]
    );

    let more_partitions = TopicSpec {
        partitions: 8,
        ..events.clone()
    };
    let err = admin
        .ensure(&[more_partitions])
        .await
        .expect_err("partition count differs");
    assert!(matches!(err, Error::TopicMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("4 partitions") && err.to_string().contains("declares 8"),
        "{err}"
    );
    let after = admin
        .describe(&events.name)
        .await
        .expect("describe")
        .expect("exists");
    assert_eq!(after.partitions, 4, "never changed");

    let finite = events.clone().config("retention.ms", "86400000");
    let err = admin
        .ensure(&[finite])
        .await
        .expect_err("retention differs");
    assert!(matches!(err, Error::TopicMismatch { .. }), "{err}");
    assert!(err.to_string().contains("retention.ms is -1"), "{err}");
    assert!(admin.list().await.expect("list").contains(&events.name));
}

#[test]
fn topic_declarations_reject_bad_names_and_counts() {
    let err = TopicSpec::new("has space", 1, 1).expect_err("rejected");
    assert!(matches!(err, Error::Name(_)), "{err}");
    assert!(err.to_string().contains("ASCII letters"), "{err}");
    let err = TopicSpec::new("ok.name", 0, 1).expect_err("rejected");
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("partition count"), "{err}");
    assert!(TopicSpec::events("bad/entity", 1, 1).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_puts_declared_names_in_the_namespace_once() {
    let config = common::kafka("topics-namespace");
    let namespace = config.topic_namespace().expect("tests run in a namespace");
    let admin = TopicAdmin::new(&config).expect("admin");
    let base = TopicSpec::events("invoice", 2, 1).expect("spec");
    assert_eq!(base.name, "invoice.events");
    assert_eq!(
        admin
            .ensure(std::slice::from_ref(&base))
            .await
            .expect("create"),
        vec![TopicState::Created]
    );
    let full = format!("{namespace}.invoice.events");
    assert_eq!(admin.full_name(&base.name), full);
    assert!(
        admin.describe(&full).await.expect("describe").is_some(),
        "created in the namespace"
    );
    assert!(
        admin
            .describe("invoice.events")
            .await
            .expect("describe")
            .is_none(),
        "nothing outside it"
    );
    // A name that already carries the namespace is the same topic, not a second prefix.
    let named = TopicSpec {
        name: full.clone(),
        ..base
    };
    assert_eq!(
        admin.ensure(&[named]).await.expect("verify"),
        vec![TopicState::AlreadyMatching]
    );
    assert_eq!(admin.full_name(&full), full);
}
