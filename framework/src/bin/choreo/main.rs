//! The generic `choreo` CLI: everything an operator needs that takes no user code — topics,
//! tailing a topic, projection lag, dead letters, the Avro schema store and the contract check
//! between two AsyncAPI documents. Commands that need a service's code
//! (`projections rebuild`) live in that service's own binary.
//!
//! Run with: `cargo run -p choreo --bin choreo -- --help`

mod connect;
mod contract;
mod dlq;
mod projections;
mod reader;
mod schemas;
mod show;
mod tail;
mod topics;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::connect::Services;

/// Operate a choreo installation: topics, tail, projection status, dead letters.
///
/// Settings come from flags or the environment: TLS and SASL (PLAIN, SCRAM) with the
/// `--kafka-security-protocol`, `--kafka-sasl-*` and `--kafka-ssl-*` flags, raw librdkafka
/// properties with `CHOREO_KAFKA_PROPERTIES` or a properties file. Start local services with
/// `scripts/dev-services up`.
#[derive(Debug, Parser)]
#[command(name = "choreo", version)]
struct Cli {
    #[command(flatten)]
    kafka: choreo::args::KafkaArgs,

    #[command(flatten)]
    postgres: choreo::args::PostgresArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List, describe and create topics.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// Print the records of a topic, decoded as choreo messages.
    Tail(tail::TailArgs),
    /// Projection checkpoints and their lag behind the log.
    #[command(subcommand)]
    Projections(projections::ProjectionsCommand),
    /// Inspect dead letters and feed them back to their consumer group.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// The Avro schema store: check a new schema for compatibility, list what is stored.
    #[command(subcommand)]
    Schemas(schemas::SchemasCommand),
    /// Service contracts: compare two versions of an AsyncAPI document (no Kafka needed).
    #[command(subcommand)]
    Contract(contract::ContractCommand),
}

fn main() -> ExitCode {
    // Logs go to stderr so stdout stays the command's output; quiet unless RUST_LOG asks.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();

    let cli = Cli::parse();
    if let Command::Contract(command) = &cli.command {
        return contract::run(command);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `choreo tail | head` closes the pipe early: that is the reader's choice, not a failure.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let services = Services::new(&cli.kafka, &cli.postgres)?;
    // A small runtime: the CLI does one thing at a time, and the builds run on 2-core machines.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Topics(command) => topics::run(&services, command).await,
            Command::Tail(args) => tail::run(&services, args).await,
            Command::Projections(command) => projections::run(&services, command).await,
            Command::Dlq(command) => dlq::run(&services, command).await,
            Command::Schemas(command) => schemas::run(&services, command).await,
            Command::Contract(command) => {
                anyhow::bail!("handled before connecting: {command:?}")
            }
        }
    })
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
