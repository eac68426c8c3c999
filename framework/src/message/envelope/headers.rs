pub const SPEC_VERSION: &str = "ce_specversion";
pub const ID: &str = "ce_id";
pub const TYPE: &str = "ce_type";
pub const SOURCE: &str = "ce_source";
pub const TIME: &str = "ce_time";
pub const SUBJECT: &str = "ce_subject";
pub const CORRELATION_ID: &str = "ce_correlationid";
pub const CAUSATION_ID: &str = "ce_causationid";
pub const SEQUENCE: &str = "ce_sequence";
pub const CONTENT_TYPE: &str = "content-type";
pub const TRACEPARENT: &str = "traceparent";
/// Prefix of the CloudEvents attribute headers.
pub const CE_PREFIX: &str = "ce_";
