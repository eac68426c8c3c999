//! The user service: `POST /v1/users` signs a user up through the `Registration` aggregate
//! (one account per email address) and `GET /v1/users/{id}` answers from the users view.
//!
//! ```text
//! user-service setup                       # its topics (idempotent)
//! user-service run --ordinal 0 --listen 127.0.0.1:8080
//! user-service projections rebuild users   # admin commands for its views
//! ```
//!
//! One process runs three parts: the command processor of `user.commands` (a consumer group
//! shared with the other instances), the users projection, and the HTTP server, which sends
//! commands with a `CommandBus` and waits for their replies.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use choreo::aggregate::{CommandBus, CommandProcessor, Outcome, ProcessorStatus, SendOptions};
use choreo::args::{KafkaArgs, PostgresArgs};
use choreo::projection::{live_schema, projection_id, wait_for};
use choreo::service::{ProjectionAdmin, ProjectionCommand};
use choreo::{KafkaConfig, PostgresConfig, Shutdown};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use signup::contract::{self, REPLY_PARTITIONS, SignUp, USER_PARTITIONS};
use signup::user::{Registration, UsersView, validate};

const SERVICE: &str = "user-service";

#[derive(Parser)]
#[command(about = "The user service of the signup example: POST /v1/users, GET /v1/users/{id}")]
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
        /// This instance's stable number: its transactional id and reply partition.
        #[arg(long, env = "CHOREO_ORDINAL", default_value_t = 0)]
        ordinal: u32,
        /// Where the HTTP API listens.
        #[arg(long, env = "USER_SERVICE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Admin commands for this service's projections.
    #[command(subcommand)]
    Projections(ProjectionCommand),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    signup::init_tracing();
    let cli = Cli::parse();
    if matches!(cli.command, Cmd::Asyncapi) {
        return signup::asyncapi::print(SERVICE);
    }
    let kafka = cli.kafka.config()?;
    let postgres = cli.postgres.config();
    match cli.command {
        Cmd::Asyncapi => signup::asyncapi::print(SERVICE),
        Cmd::Setup => setup(&kafka).await,
        Cmd::Run { ordinal, listen } => run(&kafka, &postgres, ordinal, listen).await,
        Cmd::Projections(command) => {
            let pool = choreo::postgres::connect_and_migrate(&postgres).await?;
            ProjectionAdmin::new()
                .register(Arc::new(UsersView))
                .run(command, &kafka, &pool)
                .await?;
            Ok(())
        }
    }
}

async fn setup(kafka: &KafkaConfig) -> anyhow::Result<()> {
    let rf = contract::replication();
    contract::ensure_topics(kafka, contract::user_service_topics(rf)?).await
}

#[derive(Clone)]
struct App {
    bus: CommandBus,
    pool: PgPool,
    kafka: KafkaConfig,
    processor: ProcessorStatus,
}

async fn run(
    kafka: &KafkaConfig,
    postgres: &PostgresConfig,
    ordinal: u32,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals();
    let pool = choreo::postgres::connect_and_migrate(postgres).await?;
    let processor =
        CommandProcessor::<Registration>::new(SERVICE, "user", ordinal, USER_PARTITIONS);
    let processor_status = processor.status();
    let bus = CommandBus::new(kafka, SERVICE, ordinal as i32 % REPLY_PARTITIONS).await?;
    let app = App {
        bus,
        pool: pool.clone(),
        kafka: kafka.clone(),
        processor: processor_status,
    };
    let router = Router::new()
        .route("/v1/users", post(create_user))
        .route("/v1/users/{id}", get(get_user))
        .route("/health", get(health))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, ordinal, "user-service listening");
    println!("user-service[{ordinal}] listening on http://{listen}");

    let processing = tokio::spawn({
        let (kafka, shutdown) = (kafka.clone(), shutdown.clone());
        async move {
            let result = processor.run(&kafka, shutdown.clone()).await;
            shutdown.trigger();
            result
        }
    });
    let projecting = signup::spawn_projection(UsersView, kafka, &pool, &shutdown);
    let serve_shutdown = shutdown.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { serve_shutdown.wait().await })
        .await?;
    shutdown.trigger();
    processing.await??;
    projecting.await??;
    Ok(())
}

#[derive(Deserialize)]
struct SignupRequest {
    email: String,
    name: String,
}

#[derive(Serialize)]
struct UserCreated {
    user_id: Uuid,
    email: String,
    name: String,
    /// Pass it to `GET /v1/users/{id}?after=...` to read your own write.
    after: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

async fn create_user(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let request: SignupRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(r#"the body must be JSON {{"email": "...", "name": "..."}}: {e}"#),
            );
        }
    };
    let (email, name) = match validate(&request.email, &request.name) {
        Ok(valid) => valid,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let key = match headers.get("idempotency-key").map(HeaderValue::to_str) {
        None => None,
        Some(Ok(key)) if !key.is_empty() && key.len() <= 200 => Some(key.to_owned()),
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 200 visible ASCII characters",
            );
        }
    };
    // With a key, the command id and the user id are derived from it (and the address): a
    // retry is the same command, which the processor answers with its first outcome.
    let (command_id, user_id) = match &key {
        Some(key) => {
            let seed = format!("{key}\n{email}");
            (
                Uuid::new_v5(
                    &Uuid::NAMESPACE_OID,
                    format!("signup-command\n{seed}").as_bytes(),
                ),
                Uuid::new_v5(
                    &Uuid::NAMESPACE_OID,
                    format!("signup-user\n{seed}").as_bytes(),
                ),
            )
        }
        None => (Uuid::now_v7(), Uuid::now_v7()),
    };
    let command = SignUp {
        user_id,
        email: email.clone(),
        name: name.clone(),
    };
    let options = SendOptions {
        id: Some(command_id),
        deadline: Some(chrono::Utc::now() + signup::WAIT),
        ..SendOptions::default()
    };
    let reply = match app.bus.send_and_wait(&command, options, signup::WAIT).await {
        Ok(reply) => reply,
        Err(choreo::Error::Timeout { .. }) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no answer in time; retry with the same Idempotency-Key",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "send_and_wait failed");
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    match &reply.outcome {
        Outcome::Accepted { events } => {
            let after: Vec<String> = events
                .iter()
                .map(|e| format!("{}:{}", e.partition, e.offset))
                .collect();
            let after = after.join(",");
            let location = format!("/v1/users/{user_id}?after={after}");
            let mut response = (
                StatusCode::CREATED,
                axum::Json(UserCreated {
                    user_id,
                    email,
                    name,
                    after,
                }),
            )
                .into_response();
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
        }
        Outcome::Rejected { rejection } if rejection.code == "email_taken" => {
            error(StatusCode::CONFLICT, rejection.message.clone())
        }
        // Not decided in time (the partition was moving): nothing happened, retry.
        Outcome::Rejected { rejection } if rejection.code == "expired" => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not decided in time; retry with the same Idempotency-Key",
        ),
        Outcome::Rejected { rejection } => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{}: {}", rejection.code, rejection.message),
        ),
    }
}

#[derive(Deserialize)]
struct After {
    after: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
struct User {
    user_id: Uuid,
    email: String,
    name: String,
    signed_up_at: chrono::DateTime<chrono::Utc>,
}

async fn get_user(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(query): Query<After>,
) -> Response {
    let Ok(user_id) = id.parse::<Uuid>() else {
        return error(StatusCode::BAD_REQUEST, format!("{id:?} is not a user id"));
    };
    if let Some(after) = query.after.filter(|a| !a.is_empty()) {
        let topic = app.kafka.topic_name("user.events");
        let mut offsets = Vec::new();
        for item in after.split(',') {
            let parsed = item
                .split_once(':')
                .and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)));
            match parsed {
                Some((partition, offset)) => offsets.push((topic.clone(), partition, offset)),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("after={after:?}: expected partition:offset[,...]"),
                    );
                }
            }
        }
        match wait_for(
            &app.pool,
            &projection_id::<UsersView>(),
            &offsets,
            signup::WAIT,
        )
        .await
        {
            Ok(()) => {}
            Err(choreo::Error::Timeout { .. }) => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the users view has not caught up with that write yet; try again",
                );
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    let sql = format!(
        "SELECT user_id, email, name, signed_up_at FROM {}.users WHERE user_id = $1",
        live_schema::<UsersView>()
    );
    match sqlx::query_as::<_, User>(&sql)
        .bind(user_id)
        .fetch_optional(&app.pool)
        .await
    {
        Ok(Some(user)) => (StatusCode::OK, axum::Json(user)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no user {user_id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn health(State(app): State<App>) -> Response {
    let ready = app.processor.is_ready();
    let body = json!({
        "ready": ready,
        "command_partitions": app.processor.ready_partitions(),
        "restoring": app.processor.restoring_partitions(),
        "halted": app.processor.halted(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}
