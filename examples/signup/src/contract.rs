//! What the services agree on: the messages (past-tense events, present-tense commands) and
//! the topics. In a real organisation this is the shared schema package.

use choreo::kafka::{TopicAdmin, TopicSpec, TopicState};
use choreo::{Command, Event, KafkaConfig};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Partitions of `user.commands` and `user.events` (declared once, checked at start).
pub const USER_PARTITIONS: i32 = 6;
/// Partitions of `email.events`.
pub const EMAIL_PARTITIONS: i32 = 6;
/// Partitions of `user-service.replies`: one per user-service instance (ordinal % this).
pub const REPLY_PARTITIONS: i32 = 4;

/// Someone asks to sign up. Keyed by the email address: the aggregate that reserves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SignUp {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
}

impl Command for SignUp {
    const NAME: &'static str = "v1.user.signup";
    fn subject(&self) -> String {
        self.email.clone()
    }
}

/// A user signed up: the fact everyone else reacts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SignedUp {
    pub user_id: Uuid,
    pub email: String,
    pub name: String,
}

impl Event for SignedUp {
    const NAME: &'static str = "v1.user.signedup";
    fn subject(&self) -> String {
        self.email.clone()
    }
}

/// The welcome email went out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EmailSent {
    pub to: String,
    pub user_id: Uuid,
    pub template: String,
    /// The mail sink's message id.
    pub message_id: Uuid,
}

impl Event for EmailSent {
    const NAME: &'static str = "v1.email.sent";
    fn subject(&self) -> String {
        self.to.clone()
    }
}

/// The topics user-service creates (`user-service setup`) and declares in its AsyncAPI
/// document.
pub fn user_service_topics(replication: i32) -> choreo::Result<Vec<TopicSpec>> {
    Ok(vec![
        TopicSpec::commands("user", USER_PARTITIONS, replication)?,
        TopicSpec::events("user", USER_PARTITIONS, replication)?,
        TopicSpec::replies("user-service", REPLY_PARTITIONS, replication)?,
        TopicSpec::dead_letters(groups::USER_SERVICE, replication)?,
        TopicSpec::dead_letters(groups::USERS_VIEW, replication)?,
    ])
}

/// The topics email-service creates.
pub fn email_service_topics(replication: i32) -> choreo::Result<Vec<TopicSpec>> {
    Ok(vec![
        TopicSpec::events("email", EMAIL_PARTITIONS, replication)?,
        TopicSpec::dead_letters(groups::WELCOME_EMAIL, replication)?,
        TopicSpec::redrive(groups::WELCOME_EMAIL, replication)?,
    ])
}

/// Consumer groups, as named in topics and dead letters.
pub mod groups {
    pub const USER_SERVICE: &str = "user-service";
    pub const WELCOME_EMAIL: &str = "welcome-email";
    pub const USERS_VIEW: &str = "users.v1";
    pub const METRICS_VIEW: &str = "signup_metrics.v1";
    pub const LOAD: &str = "signup-load";
}

/// Creates (or checks) the topics a service owns; prints one line per topic.
pub async fn ensure_topics(config: &KafkaConfig, specs: Vec<TopicSpec>) -> anyhow::Result<()> {
    // Base names: the admin puts the namespace in front.
    let admin = TopicAdmin::new(config)?;
    let states = admin.ensure(&specs).await?;
    for (spec, state) in specs.iter().zip(states) {
        let state = match state {
            TopicState::Created => "created",
            TopicState::AlreadyMatching => "exists",
        };
        println!(
            "topic {:<40} {} partition(s)  {state}",
            admin.full_name(&spec.name),
            spec.partitions
        );
    }
    Ok(())
}

/// The replication factor for new topics: `CHOREO_REPLICATION` or 1 (the dev broker).
pub fn replication() -> i32 {
    std::env::var("CHOREO_REPLICATION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}
