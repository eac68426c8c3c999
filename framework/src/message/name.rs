//! Message names: `v{major}.{entity}.{verb}`.
//!
//! # The rule
//!
//! - `major` is a positive integer without leading zeros (`v1`, `v2`, `v10`).
//! - `entity` is lowercase ASCII letters, digits and `-`, starting with a letter. It names the
//!   topics: `v1.user.signedup` lives in `user.events`, `v1.user.signup` in `user.commands`.
//! - `verb` is lowercase ASCII letters. A trailing particle (`up`, `in`, `out`, `off`, `on`,
//!   `over`, `down`, `back`, `away`) may follow the verb: `signedup`, `loggedin`, `checkout`.
//! - **Events are past tense**: the verb (with or without its particle) ends in `ed` (but not
//!   a present-tense `-eed` verb such as `need` or `proceed`), or is a listed irregular past
//!   form (`sent`, `paid`, `made`, `withdrawn`, ... see [`IRREGULAR_PAST`]).
//! - **Commands are present tense**: neither the verb nor the verb without its particle is a
//!   past form by the rule above.
//! - Escape hatch: a verb the rule misjudges (`v1.file.read`, an ambiguous form) is declared
//!   with [`Tense::Unchecked`] (for an [`Event`](crate::Event), `const TENSE: Tense =
//!   Tense::Unchecked;`). The shape is still checked.
//!
//! The checks are `const fn`s, so [`crate::event_name!`]-style constants fail at compile time;
//! the same checks run again when a type is registered.

use std::fmt;

/// Irregular past forms accepted as event verbs. Ambiguous forms (`read`, `set`, `put`, `cut`,
/// `reset`, `quit`...) are deliberately absent: declare those with [`Tense::Unchecked`].
pub const IRREGULAR_PAST: &[&str] = &[
    "sent",
    "paid",
    "made",
    "built",
    "sold",
    "bought",
    "won",
    "lost",
    "held",
    "kept",
    "left",
    "met",
    "spent",
    "began",
    "begun",
    "chose",
    "chosen",
    "done",
    "drawn",
    "drew",
    "given",
    "gave",
    "taken",
    "took",
    "written",
    "wrote",
    "broken",
    "broke",
    "frozen",
    "froze",
    "stolen",
    "found",
    "told",
    "brought",
    "caught",
    "taught",
    "thought",
    "sought",
    "fought",
    "lent",
    "bent",
    "dealt",
    "felt",
    "meant",
    "slept",
    "swept",
    "hid",
    "hidden",
    "grew",
    "grown",
    "threw",
    "thrown",
    "flew",
    "flown",
    "knew",
    "known",
    "rose",
    "risen",
    "spoke",
    "spoken",
    "got",
    "gotten",
    "forgot",
    "forgotten",
    "sat",
    "stood",
    "understood",
    "led",
    "fed",
    "fled",
    "struck",
    "hung",
    "stuck",
    "swung",
    "spun",
    "shot",
    "lit",
    "withdrew",
    "withdrawn",
    "became",
    "come",
    "came",
    "went",
    "gone",
    "ran",
    "saw",
    "seen",
    "said",
    "ate",
    "eaten",
    "fell",
    "fallen",
    "forbade",
    "forbidden",
    "forgave",
    "forgiven",
    "overdrawn",
    "overtaken",
    "undone",
    "woke",
    "woken",
    "wore",
    "worn",
    "tore",
    "torn",
    "bore",
    "borne",
    "swore",
    "sworn",
    "shook",
    "shaken",
    "sank",
    "sunk",
    "rang",
    "rung",
    "sang",
    "sung",
    "drank",
    "drunk",
    "began",
    "dug",
    "slid",
    "sped",
    "bound",
    "wound",
    "ground",
    "heard",
    "laid",
    "rebuilt",
    "resent",
    "repaid",
    "remade",
    "resold",
    "mislaid",
    "overpaid",
    "underpaid",
    "upheld",
    "withheld",
];

/// Present-tense verbs that happen to end in `ed`.
const PRESENT_ENDING_IN_ED: &[&str] = &[
    "need", "feed", "seed", "embed", "shed", "bleed", "breed", "proceed", "succeed", "exceed",
    "speed", "heed", "weed", "shred", "wed", "bed", "red", "redeem", "bred",
];

const PARTICLES: &[&str] = &[
    "up", "in", "out", "off", "on", "over", "down", "back", "away",
];

/// Whether a name's verb is checked for tense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tense {
    /// Checked: past for events, present for commands.
    Checked,
    /// Not checked: the escape hatch for verbs the rule misjudges. The shape is still checked.
    Unchecked,
}

/// What a message name is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A fact that happened: past tense, lives in `{entity}.events`.
    Event,
    /// A request to do something: present tense, lives in `{entity}.commands`.
    Command,
}

/// A name that breaks the rules, with the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid message name {name:?}: {rule}")]
pub struct NameError {
    /// The offending name.
    pub name: String,
    /// The rule it breaks.
    pub rule: &'static str,
}

/// A validated `v{major}.{entity}.{verb}` name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageName {
    full: String,
    major: u32,
    entity_end: usize,
}

impl MessageName {
    /// Parses and checks a name for the given kind.
    pub fn parse(name: &str, kind: Kind, tense: Tense) -> Result<Self, NameError> {
        check(name, kind, tense).map_err(|rule| NameError {
            name: name.to_owned(),
            rule,
        })?;
        let first_dot = name.find('.').unwrap_or(0);
        let second_dot = first_dot + 1 + name[first_dot + 1..].find('.').unwrap_or(0);
        Ok(Self {
            full: name.to_owned(),
            major: name[1..first_dot].parse().unwrap_or(0),
            entity_end: second_dot,
        })
    }

    /// The whole name, e.g. `v1.user.signedup`.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The major version (`1` in `v1.user.signedup`).
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The entity (`user` in `v1.user.signedup`).
    pub fn entity(&self) -> &str {
        let start = self.full.find('.').map_or(0, |i| i + 1);
        &self.full[start..self.entity_end]
    }

    /// The verb (`signedup` in `v1.user.signedup`).
    pub fn verb(&self) -> &str {
        &self.full[self.entity_end + 1..]
    }
}

impl fmt::Display for MessageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Checks a name at compile time or run time; `Err` holds the rule that is broken.
pub const fn check(name: &str, kind: Kind, tense: Tense) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    let len = bytes.len();
    if len == 0 || bytes[0] != b'v' {
        return Err(
            "a name is v{major}.{entity}.{verb} and starts with 'v', e.g. v1.user.signedup",
        );
    }
    // major
    let mut i = 1;
    if i >= len || !bytes[i].is_ascii_digit() || bytes[i] == b'0' {
        return Err("the major version is a positive integer without leading zeros, e.g. v1");
    }
    while i < len && bytes[i].is_ascii_digit() {
        i += 1;
    }
    if i - 1 > 9 {
        return Err("the major version has at most 9 digits");
    }
    if i >= len || bytes[i] != b'.' {
        return Err("a name is v{major}.{entity}.{verb}: '.' must follow the major version");
    }
    i += 1;
    // entity
    let entity_start = i;
    if i >= len || !bytes[i].is_ascii_lowercase() {
        return Err("the entity starts with a lowercase letter (a-z)");
    }
    while i < len && bytes[i] != b'.' {
        let b = bytes[i];
        if !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err("the entity holds only lowercase letters, digits and '-'");
        }
        i += 1;
    }
    if i - entity_start > 200 {
        return Err("the entity is at most 200 characters (it is part of topic names)");
    }
    if i >= len {
        return Err("a name is v{major}.{entity}.{verb}: the verb is missing");
    }
    i += 1;
    // verb
    let verb_start = i;
    if i >= len {
        return Err("the verb is missing");
    }
    while i < len {
        if !bytes[i].is_ascii_lowercase() {
            return Err("the verb holds only lowercase letters a-z (no dots, digits or '_')");
        }
        i += 1;
    }
    if matches!(tense, Tense::Unchecked) {
        return Ok(());
    }
    let verb = split_at(bytes, verb_start);
    let past = is_past(verb) || {
        let stem = strip_particle(verb);
        stem.len() != verb.len() && is_past(stem)
    };
    match kind {
        Kind::Event if !past => Err(
            "an event verb is past tense: it ends in 'ed' or is a listed irregular past form \
             (sent, paid, ...), optionally followed by a particle (signedup); declare odd verbs \
             with Tense::Unchecked",
        ),
        Kind::Command if past => Err(
            "a command verb is present tense (signup, pay), not a past form; declare odd verbs \
             with Tense::Unchecked",
        ),
        _ => Ok(()),
    }
}

/// `bytes[start..]` in a const fn.
const fn split_at(bytes: &[u8], start: usize) -> &[u8] {
    let (_, tail) = bytes.split_at(start);
    tail
}

const fn strip_particle(verb: &[u8]) -> &[u8] {
    let mut p = 0;
    while p < PARTICLES.len() {
        let particle = PARTICLES[p].as_bytes();
        if verb.len() > particle.len() + 1 && ends_with(verb, particle) {
            let (stem, _) = verb.split_at(verb.len() - particle.len());
            return stem;
        }
        p += 1;
    }
    verb
}

const fn is_past(verb: &[u8]) -> bool {
    if contains(IRREGULAR_PAST, verb) {
        return true;
    }
    ends_with(verb, b"ed") && verb.len() > 2 && !contains(PRESENT_ENDING_IN_ED, verb)
}

const fn contains(list: &[&str], word: &[u8]) -> bool {
    let mut i = 0;
    while i < list.len() {
        if eq(list[i].as_bytes(), word) {
            return true;
        }
        i += 1;
    }
    false
}

const fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn ends_with(word: &[u8], suffix: &[u8]) -> bool {
    if word.len() < suffix.len() {
        return false;
    }
    let offset = word.len() - suffix.len();
    let mut i = 0;
    while i < suffix.len() {
        if word[offset + i] != suffix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Checks a Kafka topic name we are asked to create or read: 1..=249 characters of
/// `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn check_topic_name(topic: &str) -> Result<(), NameError> {
    let rule = if topic.is_empty() || topic.len() > 249 {
        Some("a topic name has 1 to 249 characters")
    } else if topic == "." || topic == ".." {
        Some("a topic name cannot be '.' or '..'")
    } else if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("a topic name holds only ASCII letters, digits, '.', '_' and '-'")
    } else {
        None
    };
    match rule {
        Some(rule) => Err(NameError {
            name: topic.to_owned(),
            rule,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str) -> Result<MessageName, NameError> {
        MessageName::parse(name, Kind::Event, Tense::Checked)
    }
    fn command(name: &str) -> Result<MessageName, NameError> {
        MessageName::parse(name, Kind::Command, Tense::Checked)
    }

    #[test]
    fn accepts_good_names() {
        for name in [
            "v1.user.signedup",
            "v2.user.signedup",
            "v1.email.sent",
            "v1.account.withdrawn",
            "v1.order.paid",
            "v10.order.shipped",
            "v1.user.loggedin",
            "v1.cart.checkedout",
            "v1.user-profile.updated",
            "v1.user.agreed",
            "v1.payment.refunded",
        ] {
            let parsed = event(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parsed.as_str(), name);
        }
        for name in [
            "v1.user.signup",
            "v1.account.withdraw",
            "v1.order.pay",
            "v1.cart.checkout",
            "v1.user.login",
            "v1.order.proceed",
            "v1.user.setup",
            "v1.account.open",
        ] {
            command(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn parts() {
        let name = event("v12.user-profile.signedup").expect("valid");
        assert_eq!(
            (name.major(), name.entity(), name.verb()),
            (12, "user-profile", "signedup")
        );
    }

    #[test]
    fn rejects_bad_names_with_the_rule() {
        let cases = [
            ("user.signedup", "starts with 'v'"),
            ("v0.user.signedup", "positive integer"),
            ("v01.user.signedup", "positive integer"),
            ("v1.User.signedup", "lowercase letter"),
            ("v1.user", "verb is missing"),
            ("v1.user.signed_up", "only lowercase letters"),
            ("v1.user.signedup.extra", "only lowercase letters"),
            ("v1.user.sign", "past tense"),
            ("v1.user.signup", "past tense"),
            ("v1.order.proceed", "past tense"),
        ];
        for (name, rule) in cases {
            let err = event(name).expect_err(name);
            assert!(err.to_string().contains(rule), "{name}: {err}");
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
        for name in [
            "v1.user.signedup",
            "v1.email.sent",
            "v1.cart.checkedout",
            "v1.order.paid",
        ] {
            let err = command(name).expect_err(name);
            assert!(err.to_string().contains("present tense"), "{name}: {err}");
        }
    }

    #[test]
    fn escape_hatch_still_checks_shape() {
        assert!(MessageName::parse("v1.file.read", Kind::Event, Tense::Unchecked).is_ok());
        assert!(event("v1.file.read").is_err());
        assert!(MessageName::parse("v1.file.Read", Kind::Event, Tense::Unchecked).is_err());
    }

    #[test]
    fn const_check_works_at_compile_time() {
        const OK: Result<(), &str> = check("v1.user.signedup", Kind::Event, Tense::Checked);
        const BAD: Result<(), &str> = check("v1.user.signup", Kind::Event, Tense::Checked);
        assert!(OK.is_ok());
        assert!(BAD.is_err());
    }

    #[test]
    fn topic_names() {
        assert!(check_topic_name("user.events").is_ok());
        assert!(check_topic_name("bad topic").is_err());
        assert!(check_topic_name("..").is_err());
        assert!(check_topic_name(&"x".repeat(250)).is_err());
    }
}
