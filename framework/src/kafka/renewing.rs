//! A producer that is replaced after a fatal error: shared by the publisher and the
//! dead-letter writer (the transactional clients replace theirs their own way, fencing
//! included).
//!
//! A fatal error of an idempotent producer (librdkafka raises one when it can no longer keep
//! its no-duplicates, no-reordering promise, e.g. after an out-of-order sequence number)
//! leaves that producer unusable: every later send fails. librdkafka purges what was still
//! queued (those sends fail with `PurgeQueue`) and keeps waiting for the acknowledgements of
//! what was in flight. The producer is then replaced, once per fatal producer: the old one's
//! in-flight records resolve first (flush), so nothing it still writes can land after a
//! record of the new one; then a new producer is built from the same settings. Every send
//! that failed is reported to its caller as an error (retriable once the replacement is in
//! place, so a retry keeps its id); none is resent behind the caller's back, since that could
//! put it after records the caller sent later.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::message::ToBytes;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::errors::publish_kind;
use crate::error::PublishErrorKind;
use crate::error::{Error, Result};
use crate::failpoint;

/// How long a replacement waits for the fatal producer's in-flight records to resolve: the
/// longest a produce request can stay unanswered by default (`request.timeout.ms`).
const FATAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

/// An idempotent producer, replaced after a fatal error.
pub(crate) struct RenewingProducer {
    /// The producer in use. Sends take a clone of the `Arc` and never hold the lock across an
    /// await; only a replacement writes it.
    current: RwLock<Arc<FutureProducer>>,
    /// Held while a replacement runs, so concurrent sends that all saw the same fatal
    /// producer replace it once.
    replacing: Mutex<()>,
    /// Sends that failed on a fatal producer queue here (asynchronously) before one of them
    /// starts the blocking replacement: the others find it done instead of each parking a
    /// blocking thread on `replacing` for the whole flush.
    gate: tokio::sync::Mutex<()>,
    /// The settings every producer is built from.
    client: ClientConfig,
    /// Producers replaced after a fatal error.
    replacements: AtomicU64,
    /// Names this producer in logs.
    what: &'static str,
    /// The drills' failpoint `{what}.fatal` (made once: a send must not allocate for it).
    fatal_point: String,
}

impl RenewingProducer {
    pub(crate) fn new(client: ClientConfig, what: &'static str) -> Result<Self> {
        let producer: FutureProducer = client.create().map_err(|e| Error::ClientCreate {
            client: "producer",
            source: e,
        })?;
        Ok(Self {
            current: RwLock::new(Arc::new(producer)),
            replacing: Mutex::new(()),
            gate: tokio::sync::Mutex::new(()),
            client,
            replacements: AtomicU64::new(0),
            what,
            fatal_point: format!("{what}.fatal"),
        })
    }

    pub(crate) fn current(&self) -> Arc<FutureProducer> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Producers replaced after a fatal error so far.
    pub(crate) fn replacements(&self) -> u64 {
        self.replacements.load(Ordering::Relaxed)
    }

    /// Sends one record with the producer in place and resolves to (partition, offset). A
    /// send that fails because its producer has a fatal error replaces that producer (once,
    /// whichever of the failed sends gets there first) before it reports the error.
    pub(crate) async fn send<P: ToBytes + ?Sized>(
        self: &Arc<Self>,
        record: FutureRecord<'_, [u8], P>,
        queue_timeout: Duration,
    ) -> std::result::Result<(i32, i64), (PublishErrorKind, String)> {
        let producer = self.current();
        // Drills: this send fails as if the producer had just raised a fatal error, without
        // writing the record.
        let reason = if failpoint::inject(&self.fatal_point) {
            format!("injected fatal error (failpoint {})", self.fatal_point)
        } else {
            match producer.send(record, queue_timeout).await {
                Ok(delivery) => return Ok((delivery.partition, delivery.offset)),
                Err((e, _)) => match producer.client().fatal_error() {
                    Some((code, fatal)) => format!("{e} (fatal: {code:?}: {fatal})"),
                    None => return Err((publish_kind(&e), e.to_string())),
                },
            }
        };
        let replaced = {
            let _gate = self.gate.lock().await;
            if Arc::ptr_eq(&self.current(), &producer) {
                let this = Arc::clone(self);
                let why = reason.clone();
                // Not cancelled with the send: a caller that gives up (a timeout) leaves the
                // replacement to finish.
                tokio::task::spawn_blocking(move || this.replace_after_fatal(&producer, &why))
                    .await
                    .unwrap_or(false)
            } else {
                true
            }
        };
        if replaced {
            Err((
                PublishErrorKind::Retriable,
                format!("{reason}; the producer was replaced, send again"),
            ))
        } else {
            Err((
                PublishErrorKind::Fatal,
                format!("{reason}; replacing the producer failed"),
            ))
        }
    }

    /// Replaces `failed` after its fatal error `reason`, unless another send already did.
    /// Blocking (a flush, then a new client): run off the async threads. Returns whether a
    /// producer other than `failed` is in place afterwards.
    pub(crate) fn replace_after_fatal(&self, failed: &Arc<FutureProducer>, reason: &str) -> bool {
        let _one_at_a_time = self
            .replacing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !Arc::ptr_eq(&self.current(), failed) {
            return true;
        }
        tracing::error!(producer = self.what, %reason, "producer hit a fatal error; replacing it");
        // In-flight records still get their acknowledgement (librdkafka purges only what was
        // queued): let them resolve first, so the new producer's records come after them.
        if let Err(e) = failed.flush(FATAL_FLUSH_TIMEOUT) {
            tracing::warn!(error = %e, "the fatal producer's in-flight records did not resolve in time");
        }
        match self.client.create::<FutureProducer>() {
            Ok(fresh) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
                self.replacements.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                // Sends keep failing as fatal; the next one that does tries again.
                tracing::error!(error = %e, "cannot create a producer to replace the fatal one");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::KafkaConfig;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sends_that_saw_one_fatal_producer_replace_it_once() {
        // Nothing listens on port 1: creating and flushing an idle producer needs no broker.
        let client =
            KafkaConfig::new("127.0.0.1:1").client_config(crate::kafka::client::PRODUCER_DEFAULTS);
        let producer = Arc::new(RenewingProducer::new(client, "unit").expect("build"));
        let fatal = producer.current();
        let attempts: Vec<_> = (0..4)
            .map(|_| {
                let (producer, fatal) = (Arc::clone(&producer), Arc::clone(&fatal));
                tokio::task::spawn_blocking(move || producer.replace_after_fatal(&fatal, "test"))
            })
            .collect();
        for attempt in attempts {
            assert!(
                attempt.await.expect("join"),
                "a usable producer is in place"
            );
        }
        assert_eq!(producer.replacements(), 1);
        assert!(!Arc::ptr_eq(&producer.current(), &fatal));
        // A fatal error of the new producer replaces it again.
        let second = producer.current();
        assert!(producer.replace_after_fatal(&second, "test"));
        assert_eq!(producer.replacements(), 2);
    }
}
