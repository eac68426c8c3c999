//! `choreo tail`: prints a topic's records decoded as choreo messages, without joining a
//! consumer group or committing anything, so it never disturbs the consumers of the topic.

use std::io::Write;

use choreo::Metadata;
use choreo::kafka::Record;
use choreo::message::headers;

use crate::connect::Services;
use crate::reader::{LogReader, Start};
use crate::show;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The full topic name, as `choreo topics list` shows it (e.g. `user.events`)
    topic: String,
    /// Start at the oldest record instead of the end of each partition
    #[arg(long)]
    from_beginning: bool,
    /// Keep waiting for new records (stop with ctrl-c); without it, stop at the end offsets
    /// taken at start
    #[arg(long, short)]
    follow: bool,
    /// Only records of this message type (`ce_type`, e.g. `v1.user.signedup`)
    #[arg(long = "type", value_name = "TYPE")]
    message_type: Option<String>,
    /// Only records about this subject (`ce_subject`, the record key)
    #[arg(long)]
    subject: Option<String>,
    /// Stop after printing this many records
    #[arg(long, short = 'n', value_name = "N")]
    limit: Option<usize>,
}

pub async fn run(services: &Services, args: TailArgs) -> anyhow::Result<()> {
    let start = if args.from_beginning {
        Start::Beginning
    } else {
        Start::End
    };
    let mut reader = LogReader::open(services, &args.topic, None, start, args.follow)?;
    let mut out = std::io::stdout().lock();
    let mut printed = 0;
    while args.limit.is_none_or(|limit| printed < limit) {
        let Some(record) = reader.next_record()? else {
            break;
        };
        if !args.matches(&record) {
            continue;
        }
        print_record(&mut out, &record)?;
        out.flush()?;
        printed += 1;
    }
    if printed == 0 && !args.follow {
        eprintln!(
            "no matching records in {}{}",
            args.topic,
            if args.from_beginning {
                ""
            } else {
                " (only new ones are shown without --from-beginning)"
            }
        );
    }
    Ok(())
}

impl TailArgs {
    /// Filters on the raw headers and key, so a record that fails to decode is still shown
    /// when it claims the type or subject asked for.
    fn matches(&self, record: &Record) -> bool {
        let type_ok = self.message_type.as_ref().is_none_or(|wanted| {
            show::header_value(record.headers(), headers::TYPE).as_deref() == Some(wanted)
        });
        let subject_ok = self.subject.as_ref().is_none_or(|wanted| {
            show::header_value(record.headers(), headers::SUBJECT).as_deref() == Some(wanted)
                || record.key() == Some(wanted.as_bytes())
        });
        type_ok && subject_ok
    }
}

/// One record: its envelope and payload, or the reason it is not a valid choreo message.
pub fn print_record(out: &mut dyn Write, record: &Record) -> std::io::Result<()> {
    let position = format!(
        "{}[{}]@{}",
        record.topic(),
        record.partition(),
        record.offset()
    );
    match Metadata::open(record) {
        Ok(opened) => {
            let meta = &opened.meta;
            let mut fields = vec![
                ("time", show::time(meta.time)),
                ("type", meta.message_type.clone()),
                ("subject", meta.subject.clone()),
                ("id", meta.cloudevents_id()),
                ("source", meta.source.clone()),
                ("correlation", meta.correlation_id.to_string()),
                ("causation", meta.causation_id.to_string()),
            ];
            if let Some(sequence) = meta.sequence {
                fields.push(("sequence", sequence.to_string()));
            }
            if meta.content_type != choreo::codec::JSON {
                fields.push(("content-type", meta.content_type.clone()));
            }
            if let Some(trace) = &meta.traceparent {
                fields.push(("traceparent", trace.clone()));
            }
            for (name, value) in &meta.extensions {
                fields.push(("extension", format!("{name}={value}")));
            }
            // Headers outside the envelope, such as `choreo_redrive_of` on a redriven record.
            for header in record.headers().into_iter().flat_map(|h| h.iter()) {
                if !is_envelope_header(header.name) {
                    let value = show::text(header.value);
                    fields.push(("header", format!("{}={value}", show::name(header.name))));
                }
            }
            fields.push(("payload", show::payload(opened.payload())));
            show::block(out, &position, &fields)
        }
        Err(error) => show::block(
            out,
            &format!("{position}  (not a valid choreo message)"),
            &[
                ("decode error", error.to_string()),
                ("kafka time", show::timestamp(record.timestamp())),
                ("key", show::text(record.key())),
                ("headers", show::headers(record.headers())),
                ("payload", show::payload(record.payload())),
            ],
        ),
    }
}

/// Headers that `Metadata` already shows.
fn is_envelope_header(key: &[u8]) -> bool {
    key.starts_with(headers::CE_PREFIX.as_bytes())
        || key == headers::CONTENT_TYPE.as_bytes()
        || key == headers::TRACEPARENT.as_bytes()
}
