//! `choreo dlq`: list, show and redrive the dead letters of a consumer group.
//!
//! Redrive feeds dead letters back to that group only, through `{group}.redrive`. It never
//! writes into a log of record: the origin topic may have other readers, and its one writer
//! is its owner.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context as _, bail};
use choreo::kafka::DeadLetter;
use choreo::kafka::{Record, RecordHeaders};
use choreo::message::headers;
use choreo::{Metadata, TopicAdmin, TopicSpec};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureRecord;

use crate::connect::Services;
use crate::reader::{LogReader, Start};
use crate::show;

/// The header that tells a redriven record from a first delivery: `{topic}/{partition}/{offset}`
/// of the record in its log of record.
pub const REDRIVE_OF: &str = "choreo_redrive_of";
/// The header naming the dead letter a redriven copy was made from,
/// `{dlq topic}/{partition}/{offset}`: how a second redrive of the same letter is noticed.
pub const REDRIVEN_FROM: &str = "choreo_redriven_from";
/// Longest error text in `dlq list`; `dlq show` prints all of it.
const LIST_ERROR_CHARS: usize = 100;

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter: its offset, when, the origin topic/partition/offset, the
    /// message type, the subject and the error
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Everything about one dead letter: origin, error, original headers and payload
    Show {
        #[command(flatten)]
        target: Target,
        /// The dead letter's offset in `{GROUP}.dlq`, as `dlq list` shows it
        offset: i64,
    },
    /// Copy dead letters to `{GROUP}.redrive`, which only that group reads, with their
    /// original key, payload and headers plus `choreo_redrive_of`
    #[command(group = clap::ArgGroup::new("which").required(true).args(["offsets", "all"]))]
    Redrive {
        #[command(flatten)]
        target: Target,
        /// A dead letter's offset in `{GROUP}.dlq` (repeat for several)
        #[arg(long = "offset", value_name = "OFFSET")]
        offsets: Vec<i64>,
        /// Every dead letter of the group
        #[arg(long)]
        all: bool,
        /// Redrive letters that were redriven before (each redrive of one letter makes its
        /// consumers handle it once more)
        #[arg(long)]
        again: bool,
    },
}

/// Which dead-letter topic to read.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The consumer group (its name already includes any namespace)
    group: String,
    /// The partition of `{GROUP}.dlq` (choreo creates it with one)
    #[arg(long, default_value_t = 0, value_name = "P")]
    partition: i32,
}

impl Target {
    /// `{group}.dlq`, named by the same declaration the writer uses.
    fn topic(&self) -> anyhow::Result<String> {
        Ok(TopicSpec::dead_letters(&self.group, 1)?.name)
    }

    /// Every record of the chosen partition, from the log start to the end offset taken now.
    fn read_all(&self, services: &Services) -> anyhow::Result<Vec<Record>> {
        let topic = self.topic()?;
        let mut reader = LogReader::open(
            services,
            &topic,
            Some(&[self.partition]),
            Start::Beginning,
            false,
        )?;
        let mut records = Vec::new();
        while let Some(record) = reader.next_record()? {
            records.push(record);
        }
        Ok(records)
    }
}

pub async fn run(services: &Services, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { target } => list(services, &target),
        DlqCommand::Show { target, offset } => show_one(services, &target, offset),
        DlqCommand::Redrive {
            target,
            offsets,
            all,
            again,
        } => redrive(services, &target, &offsets, all, again).await,
    }
}

fn list(services: &Services, target: &Target) -> anyhow::Result<()> {
    let records = target.read_all(services)?;
    if records.is_empty() {
        println!("no dead letters in {}", target.topic()?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|record| match DeadLetter::from_record(record) {
            Some(letter) => vec![
                record.offset().to_string(),
                letter.time.clone(),
                origin(&letter),
                original_type(&letter),
                show::text(letter.key.as_deref()),
                first_line(&letter.error, LIST_ERROR_CHARS),
            ],
            None => vec![
                record.offset().to_string(),
                show::timestamp(record.timestamp()),
                "?".into(),
                "?".into(),
                show::text(record.key()),
                "not a dead letter (no choreo_dlq_topic header)".into(),
            ],
        })
        .collect();
    show::table(
        &mut std::io::stdout().lock(),
        &["OFFSET", "TIME", "ORIGIN", "TYPE", "SUBJECT", "ERROR"],
        &rows,
    )?;
    Ok(())
}

fn show_one(services: &Services, target: &Target, offset: i64) -> anyhow::Result<()> {
    let topic = target.topic()?;
    let mut reader = LogReader::open(
        services,
        &topic,
        Some(&[target.partition]),
        Start::At(offset),
        false,
    )?;
    let range = reader.watermarks()[&target.partition];
    let record = match reader.next_record()? {
        Some(record) if record.offset() == offset => record,
        // Out of range, deleted by retention, or a transaction marker: not a record.
        _ => bail!(
            "{topic}[{}] has no record at offset {offset} (its records are at offsets {}..{})",
            target.partition,
            range.low,
            range.high
        ),
    };
    let title = format!("{topic}[{}]@{offset}", target.partition);
    let mut out = std::io::stdout().lock();
    let Some(letter) = DeadLetter::from_record(&record) else {
        writeln!(
            out,
            "not a dead letter (no choreo_dlq_topic header); the raw record:"
        )?;
        crate::tail::print_record(&mut out, &record)?;
        return Ok(());
    };
    let envelope = match Metadata::from_record(&record) {
        Ok(_) => "a valid choreo message".to_owned(),
        Err(e) => format!("not a valid choreo message: {e}"),
    };
    let original_headers = letter
        .headers
        .iter()
        .map(|(key, value)| format!("{}={}", show::name(key), show::text(value.as_deref())))
        .collect::<Vec<_>>()
        .join("\n");
    let mut fields = vec![
        ("group", letter.group.clone()),
        ("origin", origin(&letter)),
        ("dead since", letter.time.clone()),
        ("error", letter.error.clone()),
        ("type", original_type(&letter)),
        ("subject", show::text(letter.key.as_deref())),
        ("envelope", envelope),
        ("headers", original_headers),
    ];
    if !letter.cut.is_empty() {
        // A letter cut to fit: what the original payload was.
        let cut = letter
            .cut
            .iter()
            .map(|(name, value)| format!("{name}={value}"));
        fields.push(("cut", cut.collect::<Vec<_>>().join("\n")));
    }
    fields.push(("payload", show::payload(letter.payload.as_deref())));
    show::block(&mut out, &title, &fields)?;
    Ok(())
}

async fn redrive(
    services: &Services,
    target: &Target,
    offsets: &[i64],
    all: bool,
    again: bool,
) -> anyhow::Result<()> {
    let records = target.read_all(services)?;
    let mut letters = select(&records, offsets, all)?;
    if letters.is_empty() {
        println!("no dead letters to redrive in {}", target.topic()?);
        return Ok(());
    }

    let spec = TopicSpec::redrive(&target.group, 1)?;
    TopicAdmin::new(&services.kafka)?
        .ensure(std::slice::from_ref(&spec))
        .await?;

    let dlq = target.topic()?;
    let from = |dlq_offset: i64| format!("{dlq}/{}/{dlq_offset}", target.partition);
    // A letter redriven before would be handled once more: only with --again.
    if !again {
        let earlier = redriven_before(services, &spec.name)?;
        let mut repeated = Vec::new();
        letters.retain(|(dlq_offset, _)| match earlier.get(&from(*dlq_offset)) {
            Some(copy) => {
                repeated.push(format!("{dlq_offset} (to {copy})"));
                false
            }
            None => true,
        });
        if !repeated.is_empty() {
            let which = repeated.join(", ");
            if !all {
                bail!(
                    "already redriven: dead letter {which}; its consumers would handle it once more \
                     (pass --again to redrive it anyway)"
                );
            }
            eprintln!(
                "skipping dead letters already redriven: {which} (pass --again to redrive them anyway)"
            );
        }
        if letters.is_empty() {
            println!("nothing left to redrive in {dlq}");
            return Ok(());
        }
    }

    let producer = services.producer()?;
    // One at a time, each acknowledged before the next: when one fails, everything printed
    // above it has been redriven and nothing after it has.
    for (dlq_offset, letter) in letters {
        let headers = redrive_headers(&letter, &from(dlq_offset));
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&spec.name).headers(headers);
        if let Some(key) = letter.key.as_deref() {
            out = out.key(key);
        }
        if let Some(payload) = letter.payload.as_deref() {
            out = out.payload(payload);
        }
        let delivery = producer
            .send(out, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("redriving {dlq}[{}]@{dlq_offset}", target.partition))?;
        println!(
            "redriven {dlq}[{}]@{dlq_offset} ({}, {}, subject {}) to {}[{}]@{}",
            target.partition,
            origin(&letter),
            original_type(&letter),
            show::text(letter.key.as_deref()),
            spec.name,
            delivery.partition,
            delivery.offset
        );
    }
    Ok(())
}

/// The dead letters to redrive, with their offsets. Every offset asked for must be a dead
/// letter, checked before anything is sent.
fn select(
    records: &[Record],
    offsets: &[i64],
    all: bool,
) -> anyhow::Result<Vec<(i64, DeadLetter)>> {
    if all {
        let mut letters = Vec::new();
        for record in records {
            match DeadLetter::from_record(record) {
                Some(letter) => letters.push((record.offset(), letter)),
                None => eprintln!(
                    "warning: skipping offset {}: not a dead letter (no choreo_dlq_topic header)",
                    record.offset()
                ),
            }
        }
        return Ok(letters);
    }
    offsets
        .iter()
        .map(|&offset| {
            let record = records
                .iter()
                .find(|r| r.offset() == offset)
                .with_context(|| {
                    let range = match (records.first(), records.last()) {
                        (Some(first), Some(last)) => {
                            format!(
                                "its records are at offsets {}..={}",
                                first.offset(),
                                last.offset()
                            )
                        }
                        _ => "it is empty".to_owned(),
                    };
                    format!("no dead letter at offset {offset} ({range})")
                })?;
            let letter = DeadLetter::from_record(record).with_context(|| {
                format!("offset {offset} is not a dead letter (no choreo_dlq_topic header)")
            })?;
            Ok((offset, letter))
        })
        .collect()
}

/// The original headers (`DeadLetter` already dropped the `choreo_dlq_*` ones) plus
/// `choreo_redrive_of`. A letter that failed again after a redrive already names the record
/// in the log of record: that name is kept, rather than pointing at the redrive topic.
fn redrive_headers(letter: &DeadLetter, redriven_from: &str) -> OwnedHeaders {
    let mut kept: Vec<(&[u8], Option<&[u8]>)> = Vec::with_capacity(letter.headers.len() + 2);
    let mut redrive_of = None;
    for (key, value) in &letter.headers {
        if key == REDRIVE_OF.as_bytes() {
            redrive_of = value.clone();
            continue;
        }
        if key == REDRIVEN_FROM.as_bytes() {
            continue;
        }
        // Names byte for byte, as the original record had them.
        kept.push((key, value.as_deref()));
    }
    let redrive_of = redrive_of.unwrap_or_else(|| {
        format!("{}/{}/{}", letter.topic, letter.partition, letter.offset).into_bytes()
    });
    kept.push((REDRIVE_OF.as_bytes(), Some(&redrive_of)));
    kept.push((REDRIVEN_FROM.as_bytes(), Some(redriven_from.as_bytes())));
    RecordHeaders::from_pairs(kept).to_owned_headers()
}

/// The letters already copied to `redrive_topic`: `{dlq}/{partition}/{offset}` of each, with
/// where its copy went.
fn redriven_before(
    services: &Services,
    redrive_topic: &str,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut reader = LogReader::open(services, redrive_topic, None, Start::Beginning, false)?;
    let mut earlier = std::collections::HashMap::new();
    while let Some(record) = reader.next_record()? {
        let from = record
            .headers()
            .and_then(|h| h.last(REDRIVEN_FROM))
            .flatten()
            .and_then(|v| std::str::from_utf8(v).ok());
        if let Some(from) = from {
            earlier.insert(
                from.to_owned(),
                format!(
                    "{}[{}]@{}",
                    record.topic(),
                    record.partition(),
                    record.offset()
                ),
            );
        }
    }
    Ok(earlier)
}

/// `topic[partition]@offset` of the record that failed.
fn origin(letter: &DeadLetter) -> String {
    format!("{}[{}]@{}", letter.topic, letter.partition, letter.offset)
}

/// `ce_type` from the kept headers.
fn original_type(letter: &DeadLetter) -> String {
    letter
        .headers
        .iter()
        .find(|(key, _)| key == headers::TYPE.as_bytes())
        .and_then(|(_, value)| value.as_deref())
        .map_or_else(
            || "?".to_owned(),
            |v| String::from_utf8_lossy(v).into_owned(),
        )
}

/// The first line of `text`, cut at `max` characters.
fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max || line.len() < text.trim_end().len() {
        let cut: String = line.chars().take(max).collect();
        format!("{cut}…")
    } else {
        line.to_owned()
    }
}
