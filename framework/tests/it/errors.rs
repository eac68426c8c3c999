//! Clear errors: unreachable services, bad names.

use std::time::Duration;

use choreo::message::{Kind, MessageName, Tense};
use choreo::{Error, KafkaConfig, PostgresConfig, Publisher};

#[test]
fn unreachable_kafka_is_a_clear_error_that_says_how_to_start_it() {
    let config = KafkaConfig::new("127.0.0.1:1").connect_timeout(Duration::from_secs(2));
    let err = Publisher::new(&config, "/x").expect_err("nothing listens on port 1");
    assert!(matches!(err, Error::KafkaUnreachable { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("127.0.0.1:1") && text.contains("scripts/dev-services up"),
        "{text}"
    );
}

#[tokio::test]
async fn unreachable_postgres_is_a_clear_error_that_says_how_to_start_it() {
    let config = PostgresConfig::new("postgres://choreo:secret-pw@127.0.0.1:1/choreo")
        .connect_timeout(Duration::from_secs(2));
    let err = choreo::postgres::connect(&config)
        .await
        .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(matches!(err, Error::PostgresUnreachable { .. }), "{text}");
    assert!(
        text.contains("127.0.0.1:1") && text.contains("scripts/dev-services up"),
        "{text}"
    );
    assert!(!text.contains("secret-pw"), "no secrets in errors: {text}");
}

#[tokio::test]
async fn the_test_services_are_up() {
    // Fails loudly (never skips) when the README's test command did not start them.
    let _ = crate::common::kafka("up");
    let _ = crate::common::postgres().await;
}

#[test]
fn bad_message_names_are_rejected_with_the_rule() {
    let err = MessageName::parse("v1.user.signup", Kind::Event, Tense::Checked)
        .expect_err("present tense event");
    assert!(err.to_string().contains("past tense"), "{err}");
    let err = MessageName::parse("v1.user.signedup", Kind::Command, Tense::Checked)
        .expect_err("past tense command");
    assert!(err.to_string().contains("present tense"), "{err}");
    let err =
        MessageName::parse("user.signedup", Kind::Event, Tense::Checked).expect_err("no version");
    assert!(err.to_string().contains("v{major}"), "{err}");
}
