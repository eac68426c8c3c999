//! `choreo topics`: list, describe and create topics. Creation goes through `TopicAdmin`, so
//! an existing topic is verified against the declaration and never changed.

use std::io::Write;

use anyhow::{Context as _, bail};
use choreo::kafka::TopicState;
use choreo::{TopicAdmin, TopicSpec};
use rdkafka::consumer::Consumer;

use crate::connect::Services;
use crate::reader::REQUEST_TIMEOUT;
use crate::show;

#[derive(Debug, clap::Subcommand)]
pub enum TopicsCommand {
    /// Every topic (internal `__*` topics excluded) with its partition count and replication
    List,
    /// Partitions (leader, replicas, in-sync replicas, offsets), replication and configs of a
    /// topic
    Describe {
        /// The full topic name, as `topics list` shows it
        name: String,
    },
    /// Create a topic with choreo's settings for its kind, or verify an existing one
    Create(CreateArgs),
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// events, commands: the entity (`user` makes `user.events`); replies: the service;
    /// dlq: the consumer group (`billing` makes `billing.dlq`); other: the full topic name.
    /// The namespace prefixes the names derived for events, commands and replies.
    name: String,
    /// Number of partitions; a dead-letter topic always has 1. Choose with care: choreo
    /// never repartitions a topic, since keys would move to other partitions
    #[arg(long, short, value_name = "N")]
    partitions: Option<i32>,
    /// Replication factor (3 in production, 1 on the single dev broker)
    #[arg(long, short, default_value_t = 1, value_name = "R")]
    replication: i32,
    /// What the topic is for; it decides retention and naming
    #[arg(long, short, value_enum, default_value_t = Kind::Other)]
    kind: Kind,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    /// `{entity}.events`: a log of record, kept forever
    Events,
    /// `{entity}.commands`: requests, kept 7 days
    Commands,
    /// `{service}.replies`: answers to commands, kept 1 day
    Replies,
    /// `{group}.dlq`: dead letters, kept forever, 1 partition
    Dlq,
    /// any name, broker defaults
    Other,
}

pub async fn run(services: &Services, command: TopicsCommand) -> anyhow::Result<()> {
    match command {
        TopicsCommand::List => list(services),
        TopicsCommand::Describe { name } => describe(services, &name).await,
        TopicsCommand::Create(args) => create(services, args).await,
    }
}

fn list(services: &Services) -> anyhow::Result<()> {
    let consumer = services.reader()?;
    // One metadata request answers for every topic; TopicAdmin::list gives names only.
    let metadata = consumer
        .fetch_metadata(None, REQUEST_TIMEOUT)
        .context("reading the cluster metadata")?;
    let mut rows: Vec<Vec<String>> = metadata
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__"))
        .map(|t| {
            let replication = t
                .partitions()
                .iter()
                .map(|p| p.replicas().len())
                .max()
                .unwrap_or(0);
            vec![
                t.name().to_owned(),
                t.partitions().len().to_string(),
                replication.to_string(),
            ]
        })
        .collect();
    rows.sort();
    show::table(
        &mut std::io::stdout().lock(),
        &["TOPIC", "PARTITIONS", "REPLICATION"],
        &rows,
    )?;
    Ok(())
}

async fn describe(services: &Services, name: &str) -> anyhow::Result<()> {
    let admin = TopicAdmin::new(&services.kafka)?;
    let Some(topic) = admin.describe(name).await? else {
        bail!("topic {name} does not exist (see `choreo topics list`)");
    };
    let partitions = partition_rows(services, name)?;
    let mut out = std::io::stdout().lock();
    show::block(
        &mut out,
        &topic.name,
        &[
            ("partitions", topic.partitions.to_string()),
            ("replication", topic.replication.to_string()),
        ],
    )?;
    writeln!(out)?;
    show::table(
        &mut out,
        &["PARTITION", "LEADER", "REPLICAS", "ISR", "START", "END"],
        &partitions,
    )?;
    let configs: Vec<Vec<String>> = topic
        .configs
        .iter()
        .map(|(key, value)| vec![key.clone(), value.clone()])
        .collect();
    writeln!(out)?;
    show::table(&mut out, &["CONFIG", "VALUE"], &configs)?;
    Ok(())
}

/// Leader, replicas, in-sync replicas and offsets (END is the last stable offset) per
/// partition.
fn partition_rows(services: &Services, name: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let consumer = services.reader()?;
    let metadata = consumer
        .fetch_metadata(Some(name), REQUEST_TIMEOUT)
        .with_context(|| format!("reading the metadata of topic {name}"))?;
    let ids = |ids: &[i32]| ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
    let mut rows = Vec::new();
    for topic in metadata.topics().iter().filter(|t| t.name() == name) {
        for p in topic.partitions() {
            let (start, end) = consumer
                .fetch_watermarks(name, p.id(), REQUEST_TIMEOUT)
                .map_or_else(
                    |_| ("?".into(), "?".into()),
                    |(l, h)| (l.to_string(), h.to_string()),
                );
            rows.push(vec![
                p.id().to_string(),
                p.leader().to_string(),
                ids(p.replicas()),
                ids(p.isr()),
                start,
                end,
            ]);
        }
    }
    Ok(rows)
}

async fn create(services: &Services, args: CreateArgs) -> anyhow::Result<()> {
    let spec = spec(services, &args)?;
    let admin = TopicAdmin::new(&services.kafka)?;
    let state = admin.ensure(std::slice::from_ref(&spec)).await?;
    let configs: Vec<String> = spec
        .configs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let what = match state.first() {
        Some(TopicState::Created) => "created",
        _ => "already exists and matches:",
    };
    println!(
        "topic {} {what} {} partition(s), replication {}{}{}",
        spec.name,
        spec.partitions,
        spec.replication,
        if configs.is_empty() { "" } else { ", " },
        configs.join(", ")
    );
    Ok(())
}

/// The declaration for `args`, named as the framework names it.
fn spec(services: &Services, args: &CreateArgs) -> anyhow::Result<TopicSpec> {
    let partitions = || {
        args.partitions.with_context(|| {
            format!(
                "--partitions is required for a topic of kind {}",
                format!("{:?}", args.kind).to_lowercase()
            )
        })
    };
    // Namespaced like the topics the library derives from message names.
    let namespaced = |spec: TopicSpec| TopicSpec {
        name: services.kafka.topic_name(&spec.name),
        ..spec
    };
    let spec = match args.kind {
        Kind::Events => namespaced(TopicSpec::events(
            &args.name,
            partitions()?,
            args.replication,
        )?),
        Kind::Commands => namespaced(TopicSpec::commands(
            &args.name,
            partitions()?,
            args.replication,
        )?),
        Kind::Replies => namespaced(TopicSpec::replies(
            &args.name,
            partitions()?,
            args.replication,
        )?),
        Kind::Dlq => {
            if args.partitions.is_some_and(|p| p != 1) {
                bail!("a dead-letter topic has exactly 1 partition; leave out --partitions");
            }
            // The group name already carries any namespace.
            TopicSpec::dead_letters(&args.name, args.replication)?
        }
        Kind::Other => TopicSpec::new(&args.name, partitions()?, args.replication)?,
    };
    Ok(spec)
}
