//! Topic names, derived the same way everywhere: from an entity (`{entity}.events`,
//! `{entity}.commands`), a service (`{service}.replies`) or a consumer group (`{group}.dlq`,
//! `{group}.redrive`). These are base names: the namespace of a `KafkaConfig`
//! (`KafkaConfig::topic_name`) goes in front of each, and `TopicAdmin::ensure` puts it there.
//! A group id already carries the namespace, so a name derived from it does too.

/// The log of an entity's events: `{entity}.events`.
pub fn events(entity: &str) -> String {
    format!("{entity}.events")
}

/// The commands to an entity: `{entity}.commands`.
pub fn commands(entity: &str) -> String {
    format!("{entity}.commands")
}

/// The replies to a service's commands: `{service}.replies`.
pub fn replies(service: &str) -> String {
    format!("{service}.replies")
}

/// A consumer group's dead letters: `{group}.dlq`.
pub fn dead_letters(group: &str) -> String {
    format!("{group}.dlq")
}

/// Dead letters fed back to one group (`choreo dlq redrive`): `{group}.redrive`.
pub fn redrive(group: &str) -> String {
    format!("{group}.redrive")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_their_source() {
        assert_eq!(events("user"), "user.events");
        assert_eq!(commands("user"), "user.commands");
        assert_eq!(replies("user-service"), "user-service.replies");
        assert_eq!(dead_letters("staging.welcome"), "staging.welcome.dlq");
        assert_eq!(redrive("staging.welcome"), "staging.welcome.redrive");
    }
}
