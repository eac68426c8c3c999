//! The metrics service: the signup_metrics view (signups per day and per email domain) and
//! `GET /v1/metrics/signups`.
//!
//! ```text
//! metrics-service setup
//! metrics-service run --listen 127.0.0.1:8081
//! metrics-service show                                  # print the view
//! metrics-service projections rebuild signup_metrics    # replay the log into a fresh copy
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use choreo::args::{KafkaArgs, PostgresArgs};
use choreo::kafka::TopicSpec;
use choreo::service::{ProjectionAdmin, ProjectionCommand};
use choreo::{KafkaConfig, PostgresConfig, Shutdown};
use clap::{Parser, Subcommand};
use sqlx::PgPool;

use signup::contract::{self, groups};
use signup::metrics::{self, SignupMetrics};

#[derive(Parser)]
#[command(about = "The metrics service of the signup example: signups per day and per domain")]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    postgres: PostgresArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create (or check) the topics this service owns.
    Setup,
    /// Print this service's AsyncAPI 3.0 document (JSON): the topics it writes and reads, its
    /// messages and their payload schemas. Needs no Kafka.
    Asyncapi,
    /// Run an instance until SIGTERM / ctrl-c.
    Run {
        /// Where the HTTP API listens.
        #[arg(long, env = "METRICS_SERVICE_LISTEN", default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
    },
    /// Print the view.
    Show,
    /// Admin commands for this service's projections.
    #[command(subcommand)]
    Projections(ProjectionCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    signup::init_tracing();
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::Asyncapi) {
        return signup::asyncapi::print("metrics-service");
    }
    let kafka = cli.kafka.config()?;
    let postgres = cli.postgres.config();
    match cli.command {
        Cmd::Asyncapi => signup::asyncapi::print("metrics-service"),
        Cmd::Setup => {
            let rf = contract::replication();
            contract::ensure_topics(
                &kafka,
                vec![TopicSpec::dead_letters(groups::METRICS_VIEW, rf)?],
            )
            .await
        }
        Cmd::Run { listen } => run(&kafka, &postgres, listen).await,
        Cmd::Show => {
            let pool = choreo::postgres::connect(&postgres).await?;
            let view = metrics::read(&pool).await?;
            println!("signups: {}", view.total);
            for (day, n) in &view.per_day {
                println!("  day    {day:<24} {n:>6}");
            }
            for (domain, n) in &view.per_domain {
                println!("  domain {domain:<24} {n:>6}");
            }
            Ok(())
        }
        Cmd::Projections(command) => {
            let pool = choreo::postgres::connect_and_migrate(&postgres).await?;
            ProjectionAdmin::new()
                .register(Arc::new(SignupMetrics))
                .run(command, &kafka, &pool)
                .await?;
            Ok(())
        }
    }
}

async fn run(
    kafka: &KafkaConfig,
    postgres: &PostgresConfig,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals();
    let pool = choreo::postgres::connect_and_migrate(postgres).await?;
    let router = Router::new()
        .route("/v1/metrics/signups", get(signups))
        .with_state(pool.clone());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("metrics-service listening on http://{listen}");
    let projecting = signup::spawn_projection(SignupMetrics, kafka, &pool, &shutdown);
    let serve_shutdown = shutdown.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { serve_shutdown.wait().await })
        .await?;
    shutdown.trigger();
    projecting.await??;
    Ok(())
}

async fn signups(State(pool): State<PgPool>) -> Response {
    match metrics::read(&pool).await {
        Ok(view) => (StatusCode::OK, axum::Json(view)).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}
