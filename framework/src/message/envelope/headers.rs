/// The CloudEvents version (`ce_specversion`).
pub const SPEC_VERSION: &str = "ce_specversion";
/// The message id (`ce_id`).
pub const ID: &str = "ce_id";
/// The message name, such as `v1.user.signedup` (`ce_type`).
pub const TYPE: &str = "ce_type";
/// The emitting service (`ce_source`).
pub const SOURCE: &str = "ce_source";
/// When it happened, RFC 3339 (`ce_time`).
pub const TIME: &str = "ce_time";
/// The entity it is about (`ce_subject`).
pub const SUBJECT: &str = "ce_subject";
/// The conversation it belongs to (`ce_correlationid`).
pub const CORRELATION_ID: &str = "ce_correlationid";
/// The message that caused it (`ce_causationid`).
pub const CAUSATION_ID: &str = "ce_causationid";
/// The aggregate version of an event (`ce_sequence`).
pub const SEQUENCE: &str = "ce_sequence";
/// The payload's media type (`content-type`, no `ce_` prefix in this binding).
pub const CONTENT_TYPE: &str = "content-type";
/// W3C trace context (`traceparent`).
pub const TRACEPARENT: &str = "traceparent";
/// Prefix of the CloudEvents attribute headers.
pub const CE_PREFIX: &str = "ce_";
