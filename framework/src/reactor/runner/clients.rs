//! The reactor's Kafka clients: a static group member that reads committed records only, and
//! a transactional producer.

use std::sync::Arc;

use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::FutureProducer;

use super::rebalance::ReactorContext;
use super::{Shared, StartFrom};
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka::client;
use crate::reactor::Reactor;

/// The consumer: group = the reactor's group, static member `member`, offsets committed only
/// in transactions.
pub(super) fn consumer<R: Reactor>(
    kafka: &KafkaConfig,
    shared: &Arc<Shared<R>>,
    member: &str,
) -> Result<BaseConsumer<ReactorContext<R>>> {
    let reset = match shared.start {
        StartFrom::Beginning => "earliest",
        StartFrom::End => "latest",
    };
    client::member(
        kafka,
        &shared.group,
        &[("group.instance.id", member), ("auto.offset.reset", reset)],
    )
    .create_with_context(ReactorContext {
        shared: Arc::clone(shared),
    })
    .map_err(|e| Error::ClientCreate {
        client: "consumer",
        source: e,
    })
}

/// The transactional producer; `identity` is its `transactional.id`.
pub(super) fn producer(kafka: &KafkaConfig, identity: &str) -> Result<FutureProducer> {
    client::transactional(
        kafka,
        identity,
        &[
            ("linger.ms", "5"),
            // Outputs keyed like every choreo client's: the Java clients' partitioner.
            ("partitioner", "murmur2_random"),
        ],
    )
    .create()
    .map_err(|e| Error::ClientCreate {
        client: "producer",
        source: e,
    })
}

/// Eight hex digits that change when the subscribed topics do (FNV-1a over the sorted names).
pub(super) fn subscription_tag(topics: &[String]) -> String {
    let mut sorted: Vec<&str> = topics.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sorted.join(",").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", hash as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_subscription_tag_follows_the_set_of_topics_not_their_order() {
        let tag = subscription_tag(&names(&["user.events", "welcome.redrive"]));
        assert_eq!(tag.len(), 8);
        assert!(tag.chars().all(|c| c.is_ascii_hexdigit()), "{tag}");
        assert_eq!(
            tag,
            subscription_tag(&names(&["welcome.redrive", "user.events"]))
        );
        assert_ne!(
            tag,
            subscription_tag(&names(&["user.events", "order.events", "welcome.redrive"]))
        );
        assert_ne!(tag, subscription_tag(&names(&["user.events"])));
    }

    #[test]
    fn the_subscription_tag_is_fnv1a_of_the_sorted_names() {
        // FNV-1a 64 of the empty string is its offset basis; the tag keeps the low 32 bits.
        assert_eq!(subscription_tag(&[]), "84222325");
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(subscription_tag(&names(&["a"])), "8601ec8c");
    }
}
