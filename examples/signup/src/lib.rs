//! The signup story, told by three services that never call each other:
//!
//! ```text
//!  POST /v1/users ─► user-service ──v1.user.signup──► user.commands ─► Registration aggregate
//!                        ▲    (send_and_wait: the reply)                  │ (exactly-once tx)
//!                        │                                                ▼
//!  GET /v1/users/{id} ◄──┴── users view (projection) ◄──────────── user.events: v1.user.signedup
//!                                                                   │                │
//!                 email-service: welcome-email reactor ◄────────────┘                │
//!                   mail sink (a file per email, inbox) + v1.email.sent ─► email.events
//!                                                                                    │
//!  GET /v1/metrics/signups ◄── metrics-service: signup_metrics view ◄────────────────┘
//! ```
//!
//! [`contract`] holds what the services share: the messages and the topics. Each service
//! module holds what only that service knows.

pub mod asyncapi;
pub mod contract;
pub mod email;
pub mod metrics;
pub mod user;

use std::time::Duration;

/// Logs to stderr; `RUST_LOG` picks the level (default `info` for the examples).
pub fn init_tracing() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info,rdkafka=warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The instance ordinal from `--ordinal` or `CHOREO_ORDINAL` (default 0).
pub fn ordinal_from_env() -> u32 {
    std::env::var("CHOREO_ORDINAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Runs a projection's live view in the background; its end (error or not) stops the
/// service, so an instance never serves a view that stopped moving.
pub fn spawn_projection<P: choreo::Projection>(
    projection: P,
    kafka: &choreo::KafkaConfig,
    pool: &sqlx::PgPool,
    shutdown: &choreo::Shutdown,
) -> tokio::task::JoinHandle<choreo::Result<()>> {
    let (kafka, pool, shutdown) = (kafka.clone(), pool.clone(), shutdown.clone());
    tokio::spawn(async move {
        let result = choreo::ProjectionRunner::new(std::sync::Arc::new(projection))
            .run(&kafka, &pool, shutdown.clone())
            .await;
        shutdown.trigger();
        result.map(|_| ())
    })
}

/// How long an HTTP handler waits for a reply or a view.
pub const WAIT: Duration = Duration::from_secs(10);
