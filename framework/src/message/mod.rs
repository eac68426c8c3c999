//! Messages: names, the [`Event`] and [`Command`] traits, and the CloudEvents envelope.

mod envelope;
mod name;

pub use envelope::{
    Causation, Envelope, EnvelopeError, Metadata, Origin, Received, SPEC_VERSION, headers,
};
pub use name::{IRREGULAR_PAST, Kind, MessageName, NameError, Tense, check, check_topic_name};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Panics (at compile time when used in a const) with the rule a name breaks.
#[doc(hidden)]
pub const fn assert_name(name: &str, kind: Kind, tense: Tense) {
    if let Err(rule) = check(name, kind, tense) {
        panic!("{}", rule);
    }
}

/// A fact that happened, named in the past tense: `v1.user.signedup`.
///
/// ```
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct UserSignedUp { user_id: String, email: String }
///
/// impl choreo::Event for UserSignedUp {
///     const NAME: &'static str = "v1.user.signedup";
///     fn subject(&self) -> String { self.email.clone() }
/// }
/// ```
///
/// The name is checked when the type is first used by choreo: a bad name fails the build.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// `v{major}.{entity}.{verb}`, verb in the past tense.
    const NAME: &'static str;
    /// [`Tense::Unchecked`] is the escape hatch for verbs the tense rule misjudges.
    const TENSE: Tense = Tense::Checked;
    /// Evaluated at compile time wherever choreo uses the type; do not override.
    #[doc(hidden)]
    const VALID: () = assert_name(Self::NAME, Kind::Event, Self::TENSE);

    /// The entity this event is about: the Kafka key and `ce_subject`.
    fn subject(&self) -> String;

    /// The checked name.
    fn name() -> MessageName {
        let () = Self::VALID;
        MessageName::parse(Self::NAME, Kind::Event, Self::TENSE)
            .unwrap_or_else(|e| unreachable!("checked at compile time: {e}"))
    }

    /// The events topic: `{entity}.events`.
    fn topic() -> String {
        format!("{}.events", Self::name().entity())
    }
}

/// A request to do something, named in the present tense: `v1.user.signup`.
pub trait Command: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// `v{major}.{entity}.{verb}`, verb in the present tense.
    const NAME: &'static str;
    /// [`Tense::Unchecked`] is the escape hatch for verbs the tense rule misjudges.
    const TENSE: Tense = Tense::Checked;
    /// Evaluated at compile time wherever choreo uses the type; do not override.
    #[doc(hidden)]
    const VALID: () = assert_name(Self::NAME, Kind::Command, Self::TENSE);

    /// The aggregate this command is for: the Kafka key and `ce_subject`.
    fn subject(&self) -> String;

    /// The checked name.
    fn name() -> MessageName {
        let () = Self::VALID;
        MessageName::parse(Self::NAME, Kind::Command, Self::TENSE)
            .unwrap_or_else(|e| unreachable!("checked at compile time: {e}"))
    }

    /// The commands topic: `{entity}.commands`.
    fn topic() -> String {
        format!("{}.commands", Self::name().entity())
    }
}
