//! Reacting to one event: open its envelope, decode it, run the reactor; or write its dead
//! letter.

use std::panic::AssertUnwindSafe;

use chrono::Utc;
use futures::FutureExt;

use super::Shared;
use crate::event::EventSet;
use crate::kafka::consumer::panic_message;
use crate::kafka::transaction::TxRecord;
use crate::kafka::{Keep, Record, dead_letter_parts};
use crate::message::{Metadata, Origin, Received};
use crate::reactor::{Outputs, ReactError, Reactor};

/// What became of one event.
pub(super) enum Reaction {
    /// Reacted to: its outputs.
    Done(Vec<TxRecord>),
    /// A type the reactor does not declare.
    Skipped,
    DeadLetter(String),
    Retry(String),
}

/// Opens, decodes and reacts to one event, panics caught.
pub(super) fn react_one<R: Reactor>(shared: &Shared<R>, record: &Record) -> Reaction {
    let (meta, data) = match Metadata::open(record) {
        Ok(opened) => (opened.meta, opened.payload),
        Err(e) => return Reaction::DeadLetter(format!("envelope: {e}")),
    };
    let mut decoded = R::Events::decode(&meta, data.as_deref());
    if matches!(&decoded, Err(e) if e.halts()) {
        // An unknown writer schema is usually a newer writer, never garbage: read the store
        // again; still unknown, the event waits (retried, like a halt that heals once the
        // schema is there), it is never dead-lettered.
        if let Err(e) = shared
            .handle
            .block_on(shared.schemas.refresh_if_older(std::time::Instant::now()))
        {
            return Reaction::Retry(format!("refreshing the schema store: {e}"));
        }
        decoded = R::Events::decode(&meta, data.as_deref());
    }
    let payload = match decoded {
        Ok(Some(payload)) => payload,
        Ok(None) => return Reaction::Skipped,
        Err(e) if e.halts() => {
            return Reaction::Retry(format!(
                "{}[{}]@{}: {e}",
                record.topic(),
                record.partition(),
                record.offset()
            ));
        }
        Err(e) => return Reaction::DeadLetter(format!("payload: {e}")),
    };
    let received = Received {
        origin: Origin {
            topic: record.topic().to_owned(),
            partition: record.partition(),
            offset: record.offset(),
        },
        meta,
        payload,
    };
    let mut out = Outputs::new(R::NAME, &shared.source, &received.meta, &shared.config);
    let reaction = shared
        .handle
        .block_on(AssertUnwindSafe(shared.reactor.react(&received, &mut out)).catch_unwind());
    match reaction {
        Ok(Ok(())) => Reaction::Done(out.into_records()),
        Ok(Err(ReactError::Transient(e))) => Reaction::Retry(format!("{e:#}")),
        Ok(Err(ReactError::Poison(e))) => Reaction::DeadLetter(format!("rejected: {e:#}")),
        Err(panic) => Reaction::DeadLetter(format!("panicked: {}", panic_message(&*panic))),
    }
}

/// The dead letter of `record`, for the group's dead-letter topic.
pub(super) fn dead_letter<R: Reactor>(
    shared: &Shared<R>,
    record: &Record,
    reason: &str,
    keep: Keep,
) -> TxRecord {
    let (headers, key, payload) =
        dead_letter_parts(record, keep, reason, Utc::now(), &shared.group);
    TxRecord {
        topic: shared.dlq_topic.clone(),
        partition: None,
        key,
        payload,
        headers,
    }
}
