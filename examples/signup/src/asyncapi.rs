//! The AsyncAPI 3.0 documents of the three services, built from the declarations they run
//! with (`<service> asyncapi` prints them). `contracts/*.asyncapi.json` holds the published
//! ones; `tests/contract.rs` checks every change against them and validates them with the
//! official AsyncAPI parser.

use choreo::asyncapi::AsyncApi;
use choreo::kafka::TopicSpec;
use serde_json::Value;

use crate::contract::{
    self, EmailSent, SignUp, SignedUp, USER_PARTITIONS, email_service_topics, groups,
    user_service_topics,
};
use crate::email::WelcomeEmail;
use crate::metrics::SignupMetrics;
use crate::user::{Registration, UsersView};

/// The services with a document, as their binaries are named.
pub const SERVICES: [&str; 3] = ["user-service", "email-service", "metrics-service"];

/// The document version: the crate's.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `user.events` as its owner declares it (for the readers' documents).
fn user_events(replication: i32) -> anyhow::Result<TopicSpec> {
    Ok(TopicSpec::events("user", USER_PARTITIONS, replication)?)
}

/// user-service: the `Registration` processor, the command bus of the HTTP API, the users
/// view.
pub fn user_service(replication: i32) -> anyhow::Result<Value> {
    Ok(AsyncApi::new("user-service", VERSION)
        .description(
            "Signs users up: `POST /v1/users` sends `v1.user.signup` with a command bus and waits for the reply; the Registration aggregate (one account per email address) decides it and writes `v1.user.signedup`; the users view reads it back.",
        )
        .command::<SignUp>()
        .event::<SignedUp>()
        .topics(user_service_topics(replication)?)
        .processor::<Registration>(groups::USER_SERVICE, "user")
        .command_bus::<SignUp>(groups::USER_SERVICE)
        .projection::<UsersView>()
        .build()?)
}

/// email-service: the welcome-email reactor and what it announces.
pub fn email_service(replication: i32) -> anyhow::Result<Value> {
    Ok(AsyncApi::new("email-service", VERSION)
        .description(
            "Welcomes every new user: the welcome-email reactor reads `v1.user.signedup`, sends the email (once, through an inbox) and announces `v1.email.sent`.",
        )
        .event::<SignedUp>()
        .event::<EmailSent>()
        .topic(user_events(replication)?)
        .topics(email_service_topics(replication)?)
        .reactor::<WelcomeEmail>()
        .sends::<EmailSent>(groups::WELCOME_EMAIL)
        .build()?)
}

/// metrics-service: the signup metrics view.
pub fn metrics_service(replication: i32) -> anyhow::Result<Value> {
    Ok(AsyncApi::new("metrics-service", VERSION)
        .description("Counts signups per day and per email domain: the signup_metrics view reads `v1.user.signedup`.")
        .event::<SignedUp>()
        .topic(user_events(replication)?)
        .projection::<SignupMetrics>()
        .build()?)
}

/// The document of `service` (one of [`SERVICES`]) with topics of `replication` replicas.
pub fn document(service: &str, replication: i32) -> anyhow::Result<Value> {
    match service {
        "user-service" => user_service(replication),
        "email-service" => email_service(replication),
        "metrics-service" => metrics_service(replication),
        other => anyhow::bail!("no AsyncAPI document for {other}"),
    }
}

/// Prints the document of `service` as the services' `asyncapi` subcommand does: pretty JSON,
/// topics with the replication `setup` uses.
pub fn print(service: &str) -> anyhow::Result<()> {
    let document = document(service, contract::replication())?;
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(())
}
