//! The message traits: [`Event`] and [`Command`], the sets a consumer reads
//! ([`EventSet`], [`CommandSet`], the `event_set!` / `command_set!` macros), and upcasting old
//! versions ([`Upcasters`]). Built on the names and envelope of [`crate::message`] and the
//! encodings of [`crate::codec`].

mod payload;
pub mod upcast;

pub use payload::{content_type_of, decode_event, encode_event};
pub use upcast::Upcasters;

use crate::message::topics;
use crate::message::{EnvelopeError, Kind, MessageName, Metadata, Tense, check};

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

    /// The Avro schema (JSON text) this type is written with; `None` (the default) writes
    /// JSON. With a schema, payloads use Avro single-object encoding and
    /// `content-type: application/avro`, and the schema is registered in the schema store
    /// before the first write. Readers of either kind read both: the content type decides.
    const AVRO_SCHEMA: Option<&'static str> = None;

    /// The entity this event is about: the Kafka key and `ce_subject`.
    fn subject(&self) -> String;

    /// Older versions this type is upcast from (see [`upcast`]). Readers of this
    /// type receive records of those versions as this type.
    fn upcasters() -> Upcasters<Self> {
        Upcasters::new()
    }

    /// The checked name.
    fn name() -> MessageName {
        let () = Self::VALID;
        MessageName::parse(Self::NAME, Kind::Event, Self::TENSE)
            .unwrap_or_else(|e| unreachable!("checked at compile time: {e}"))
    }

    /// The events topic: `{entity}.events`.
    fn topic() -> String {
        topics::events(Self::name().entity())
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
        topics::commands(Self::name().entity())
    }
}

/// A set of event types read together (by a projection, say): a single [`Event`] type, or an
/// enum declared with [`crate::event_set!`].
pub trait EventSet: Sized + Send + Sync + 'static {
    /// The names of the types in the set.
    fn names() -> Vec<MessageName>;

    /// Decodes a record of one of the set's types; `Ok(None)` for a type outside the set.
    fn decode(meta: &Metadata, payload: Option<&[u8]>) -> Result<Option<Self>, EnvelopeError>;

    /// The message name of this value (`v1.user.signedup`).
    fn message_type(&self) -> &'static str;

    /// The entity this value is about (the Kafka key).
    fn subject_of(&self) -> String;

    /// The payload of this value, in its type's codec (see [`EventSet::content_type`]).
    fn encode(&self) -> Result<Vec<u8>, EnvelopeError>;

    /// The content type [`EventSet::encode`] writes for this value.
    fn content_type(&self) -> &'static str {
        crate::message::JSON
    }

    /// Older message names the set's types are upcast from (their records are read too).
    fn upcast_names() -> Vec<&'static str> {
        Vec::new()
    }

    /// `(name, schema)` of every type in the set written as Avro, to register before writing.
    fn avro_schemas() -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }

    /// The topics the set's types live in (`{entity}.events`, deduplicated), including those
    /// of the older versions they are upcast from.
    fn topics() -> Vec<String> {
        let mut topics: Vec<String> = Self::names()
            .iter()
            .map(|n| topics::events(n.entity()))
            .chain(Self::upcast_names().into_iter().filter_map(|n| {
                // Names of Event types, checked at compile time: `v1.{entity}.{verb}`.
                n.split('.').nth(1).map(topics::events)
            }))
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }
}

impl<E: Event> EventSet for E {
    fn names() -> Vec<MessageName> {
        vec![E::name()]
    }

    fn decode(meta: &Metadata, payload: Option<&[u8]>) -> Result<Option<Self>, EnvelopeError> {
        if meta.message_type == E::NAME {
            decode_event::<E>(meta, payload).map(Some)
        } else {
            // Another type: perhaps an older version of this one.
            E::upcasters().decode(meta, payload).transpose()
        }
    }

    fn message_type(&self) -> &'static str {
        let () = E::VALID;
        E::NAME
    }

    fn subject_of(&self) -> String {
        self.subject()
    }

    fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        encode_event(self).map(|(_, payload)| payload)
    }

    fn content_type(&self) -> &'static str {
        content_type_of::<E>()
    }

    fn upcast_names() -> Vec<&'static str> {
        E::upcasters().names().collect()
    }

    fn avro_schemas() -> Vec<(&'static str, &'static str)> {
        E::AVRO_SCHEMA.map(|s| (E::NAME, s)).into_iter().collect()
    }
}

/// A set of command types an aggregate handles: a single [`Command`] type, or an enum
/// declared with [`crate::command_set!`].
pub trait CommandSet: Sized + Send + Sync + 'static {
    /// The names of the types in the set.
    fn names() -> Vec<MessageName>;

    /// Decodes a record of one of the set's types; `Ok(None)` for a type outside the set.
    fn decode(meta: &Metadata, payload: Option<&[u8]>) -> Result<Option<Self>, EnvelopeError>;

    /// The message name of this value (`v1.user.signup`).
    fn message_type(&self) -> &'static str;

    /// The aggregate this command is for (the Kafka key).
    fn subject_of(&self) -> String;

    /// The JSON payload of this value.
    fn encode(&self) -> Result<Vec<u8>, EnvelopeError>;
}

impl<C: Command> CommandSet for C {
    fn names() -> Vec<MessageName> {
        vec![C::name()]
    }

    fn decode(meta: &Metadata, payload: Option<&[u8]>) -> Result<Option<Self>, EnvelopeError> {
        if meta.message_type == C::NAME {
            crate::codec::decode(meta, payload).map(Some)
        } else {
            Ok(None)
        }
    }

    fn message_type(&self) -> &'static str {
        let () = C::VALID;
        C::NAME
    }

    fn subject_of(&self) -> String {
        self.subject()
    }

    fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        crate::codec::encode_json(C::NAME, self)
    }
}

/// Declares an enum of command types that implements [`CommandSet`] (see [`crate::event_set!`]).
#[macro_export]
macro_rules! command_set {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident($ty:ty)),+ $(,)? }) => {
        $(#[$meta])*
        $vis enum $name {
            $($variant($ty)),+
        }

        impl $crate::event::CommandSet for $name {
            fn names() -> ::std::vec::Vec<$crate::message::MessageName> {
                ::std::vec![$(<$ty as $crate::Command>::name()),+]
            }

            fn decode(
                meta: &$crate::Metadata,
                payload: ::std::option::Option<&[u8]>,
            ) -> ::std::result::Result<::std::option::Option<Self>, $crate::message::EnvelopeError> {
                $(
                    if meta.message_type == <$ty as $crate::Command>::NAME {
                        return $crate::codec::decode::<$ty>(meta, payload).map(|c| ::std::option::Option::Some($name::$variant(c)));
                    }
                )+
                ::std::result::Result::Ok(::std::option::Option::None)
            }

            fn message_type(&self) -> &'static str {
                match self { $($name::$variant(_) => <$ty as $crate::Command>::NAME),+ }
            }

            fn subject_of(&self) -> ::std::string::String {
                match self { $($name::$variant(c) => <$ty as $crate::Command>::subject(c)),+ }
            }

            fn encode(&self) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::message::EnvelopeError> {
                match self { $($name::$variant(c) => $crate::codec::encode_json(<$ty as $crate::Command>::NAME, c)),+ }
            }
        }
    };
}

/// Declares an enum of event types that implements [`EventSet`]:
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize)] struct UserSignedUp { email: String }
/// # impl choreo::Event for UserSignedUp { const NAME: &'static str = "v1.user.signedup";
/// #     fn subject(&self) -> String { self.email.clone() } }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct EmailSent { email: String }
/// # impl choreo::Event for EmailSent { const NAME: &'static str = "v1.email.sent";
/// #     fn subject(&self) -> String { self.email.clone() } }
/// choreo::event_set! {
///     pub enum SignupEvents {
///         SignedUp(UserSignedUp),
///         Emailed(EmailSent),
///     }
/// }
/// ```
#[macro_export]
macro_rules! event_set {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident($ty:ty)),+ $(,)? }) => {
        $(#[$meta])*
        $vis enum $name {
            $($variant($ty)),+
        }

        impl $crate::event::EventSet for $name {
            fn names() -> ::std::vec::Vec<$crate::message::MessageName> {
                ::std::vec![$(<$ty as $crate::Event>::name()),+]
            }

            fn decode(
                meta: &$crate::Metadata,
                payload: ::std::option::Option<&[u8]>,
            ) -> ::std::result::Result<::std::option::Option<Self>, $crate::message::EnvelopeError> {
                $(
                    if meta.message_type == <$ty as $crate::Event>::NAME {
                        return $crate::event::decode_event::<$ty>(meta, payload).map(|e| ::std::option::Option::Some($name::$variant(e)));
                    }
                )+
                // Not a declared type: perhaps an older version of one (exact names win).
                $(
                    if let ::std::option::Option::Some(result) = <$ty as $crate::Event>::upcasters().decode(meta, payload) {
                        return result.map(|e| ::std::option::Option::Some($name::$variant(e)));
                    }
                )+
                ::std::result::Result::Ok(::std::option::Option::None)
            }

            fn message_type(&self) -> &'static str {
                match self { $($name::$variant(_) => <$ty as $crate::Event>::NAME),+ }
            }

            fn subject_of(&self) -> ::std::string::String {
                match self { $($name::$variant(e) => <$ty as $crate::Event>::subject(e)),+ }
            }

            fn encode(&self) -> ::std::result::Result<::std::vec::Vec<u8>, $crate::message::EnvelopeError> {
                match self { $($name::$variant(e) => $crate::event::encode_event(e).map(|(_, payload)| payload)),+ }
            }

            fn content_type(&self) -> &'static str {
                match self { $($name::$variant(_) => $crate::event::content_type_of::<$ty>()),+ }
            }

            fn upcast_names() -> ::std::vec::Vec<&'static str> {
                let mut names = ::std::vec::Vec::new();
                $( names.extend(<$ty as $crate::Event>::upcasters().names()); )+
                names
            }

            fn avro_schemas() -> ::std::vec::Vec<(&'static str, &'static str)> {
                let mut schemas = ::std::vec::Vec::new();
                $(
                    if let ::std::option::Option::Some(schema) = <$ty as $crate::Event>::AVRO_SCHEMA {
                        schemas.push((<$ty as $crate::Event>::NAME, schema));
                    }
                )+
                schemas
            }
        }
    };
}
