//! Inputs set aside: their outputs were refused by the broker for their content, so when the
//! batch runs again they are dead-lettered instead of reacted to.

use std::collections::HashMap;

use crate::kafka::Record;

/// Where an input is: topic, partition, offset.
pub(super) type Position = (String, i32, i64);

/// Inputs whose outputs the broker refused for their content (too large, invalid): how many
/// times, and the last reason. Such an input is dead-lettered instead of reacted to when the
/// batch runs again, its dead letter cut further at each refusal.
pub(super) type SetAside = HashMap<Position, (u32, String)>;

/// Refusals of one input's records before its partition waits with back-off: its outputs,
/// its dead letter whole, cut, and minimal.
const MAX_REFUSALS: u32 = 3;

pub(super) fn position(record: &Record) -> Position {
    (
        record.topic().to_owned(),
        record.partition(),
        record.offset(),
    )
}

/// Counts one more refusal of the records of the input at `at`. Past [`MAX_REFUSALS`], the
/// reason its partition must wait: even the minimal dead letter was refused.
pub(super) fn note_refusal(
    set_aside: &mut SetAside,
    at: &Position,
    reason: &str,
) -> Option<String> {
    let entry = set_aside.entry(at.clone()).or_insert((0, String::new()));
    entry.0 += 1;
    reason.clone_into(&mut entry.1);
    (entry.0 > MAX_REFUSALS).then(|| {
        // Even the minimal dead letter was refused: the dead-letter topic cannot
        // take it (its max.message.bytes, or compaction). This partition waits and
        // tries again with back-off (status: retrying, with the reason); the
        // others go on.
        format!(
            "even the minimal dead letter was refused ({reason}): check the \
             dead-letter topic's max.message.bytes and cleanup.policy"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::Keep;

    #[test]
    fn each_refusal_is_counted_with_its_last_reason_until_the_partition_must_wait() {
        let mut set_aside = SetAside::new();
        let at: Position = ("user.events".into(), 2, 41);
        assert_eq!(note_refusal(&mut set_aside, &at, "too large"), None);
        assert_eq!(set_aside[&at], (1, "too large".to_owned()));
        assert_eq!(note_refusal(&mut set_aside, &at, "still too large"), None);
        assert_eq!(note_refusal(&mut set_aside, &at, "invalid"), None);
        assert_eq!(set_aside[&at], (3, "invalid".to_owned()));
        let why = note_refusal(&mut set_aside, &at, "record too large").expect("waits");
        assert!(
            why.starts_with("even the minimal dead letter was refused (record too large)"),
            "{why}"
        );
        // Another input is counted on its own.
        let other: Position = ("user.events".into(), 2, 42);
        assert_eq!(note_refusal(&mut set_aside, &other, "too large"), None);
        assert_eq!(set_aside[&other].0, 1);
    }

    #[test]
    fn each_refusal_of_a_dead_letter_cuts_the_next_one_further() {
        // The first refusal was of the outputs; then the dead letter whole, cut, minimal.
        let keeps: Vec<Keep> = (1..=MAX_REFUSALS)
            .map(|refusals| Keep::after(refusals.saturating_sub(1)))
            .collect();
        assert_eq!(keeps, vec![Keep::All, Keep::CutPayload, Keep::Minimal]);
    }
}
