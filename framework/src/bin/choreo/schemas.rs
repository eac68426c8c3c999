//! `choreo schemas`: the Avro schema store (the compacted topic `choreo.schemas`).
//!
//! `check` tests a new schema against every stored version of its message type in both
//! directions before anyone deploys a writer with it; `list` shows what is stored.

use anyhow::Context as _;
use choreo::kafka::SchemaStore;

use crate::connect::Services;

#[derive(Debug, clap::Subcommand)]
pub enum SchemasCommand {
    /// Check a new Avro schema against every stored version of the message type, both ways:
    /// old data read by the new schema (backward) and new data read by the old schemas
    /// (forward). Exits non-zero and names the field and the reason when one fails
    Check {
        /// The message type, e.g. v2.user.signedup
        #[arg(value_name = "TYPE")]
        message_type: String,
        /// The schema file (.avsc, JSON); `-` reads standard input
        #[arg(value_name = "FILE")]
        file: String,
    },
    /// List the stored schemas: type, fingerprint and the schema's record name
    List {
        /// Also print each schema's text
        #[arg(long)]
        verbose: bool,
    },
}

pub async fn run(services: &Services, command: SchemasCommand) -> anyhow::Result<()> {
    services.check_kafka()?;
    let store = SchemaStore::new(&services.kafka);
    match command {
        SchemasCommand::Check { message_type, file } => {
            let text = if file == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
            };
            let new = choreo::codec::avro::AvroSchema::parse(&text)
                .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
            let stored = store
                .list()
                .await?
                .into_iter()
                .filter(|s| s.message_type == message_type)
                .count();
            let problems = store.check(&message_type, &text).await?;
            if problems.is_empty() {
                println!(
                    "compatible: {message_type} {:016x} against {stored} stored version(s) in {}",
                    new.fingerprint,
                    store.topic()
                );
                return Ok(());
            }
            for problem in &problems {
                println!("incompatible: {problem}");
            }
            anyhow::bail!(
                "{message_type} {:016x}: {} incompatibilit{} with the {stored} stored version(s)",
                new.fingerprint,
                problems.len(),
                if problems.len() == 1 { "y" } else { "ies" }
            )
        }
        SchemasCommand::List { verbose } => {
            let stored = store.list().await?;
            if stored.is_empty() {
                println!("no schemas in {}", store.topic());
            }
            for s in stored {
                let name = match &s.schema.schema {
                    apache_avro::Schema::Record(r) => r.name.fullname(None),
                    other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)),
                };
                println!("{}  {:016x}  {name}", s.message_type, s.fingerprint());
                if verbose {
                    println!("{}", s.schema.text);
                }
            }
            Ok(())
        }
    }
}
