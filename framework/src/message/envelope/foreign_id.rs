//! Ids for events from other producers whose `ce_id` is not a UUID.

use uuid::Uuid;

/// Namespace of the UUIDv5 ids choreo gives events whose `ce_id` is not a UUID.
pub const FOREIGN_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5c0e_7d1a_8f3b_4e62_9a41_c4f0_e2b7_d813);

/// The [`Metadata::id`](super::Metadata::id) of an event with this `source` and `ce_id`: the id itself when it is
/// a UUID, otherwise a UUIDv5 of the source and the id (CloudEvents makes the pair unique, so
/// two sources may both send id `1`).
pub fn event_id(source: &str, ce_id: &str) -> Uuid {
    Uuid::parse_str(ce_id).unwrap_or_else(|_| {
        let mut name = Vec::with_capacity(source.len() + 1 + ce_id.len());
        name.extend_from_slice(source.as_bytes());
        name.push(0);
        name.extend_from_slice(ce_id.as_bytes());
        Uuid::new_v5(&FOREIGN_ID_NAMESPACE, &name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_is_its_own_id_and_other_text_a_uuid_v5_of_source_and_id() {
        let uuid = "0190a0b0-0000-7000-8000-000000000001";
        assert_eq!(event_id("urn:shop", uuid).to_string(), uuid);
        let id = event_id("urn:shop", "A-1");
        assert_eq!(id, Uuid::new_v5(&FOREIGN_ID_NAMESPACE, b"urn:shop\0A-1"));
        assert_eq!(id.get_version_num(), 5);
        assert_eq!(id, event_id("urn:shop", "A-1"), "stable");
        assert_ne!(id, event_id("urn:stock", "A-1"), "the source is part of it");
        assert_ne!(id, event_id("urn:shop", "A-2"));
    }
}
