//! Content types: which codec a payload is in, read from its `content-type` attribute.

/// The JSON content type.
pub const JSON: &str = "application/json";
/// The Avro content type (single-object encoding).
pub const AVRO: &str = "application/avro";

/// The codec a payload is in, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Json,
    Avro,
}

/// The media type of a content type, without its parameters (`application/json; charset=utf-8`
/// is `application/json`).
pub(crate) fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

pub(crate) fn format_of(content_type: &str) -> Option<Format> {
    let media_type = media_type(content_type);
    let lower = media_type.to_ascii_lowercase();
    // `application/vnd.acme.order+json` and `text/json`, as other producers send, are JSON.
    if lower == JSON || lower == "text/json" || (lower.ends_with("+json") && lower.contains('/')) {
        Some(Format::Json)
    } else if lower == AVRO {
        Some(Format::Avro)
    } else {
        None
    }
}

/// Whether a content type is JSON (`application/json`, `text/json`, `…+json`, with parameters).
pub(crate) fn is_json(content_type: &str) -> bool {
    format_of(content_type) == Some(Format::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types_other_producers_send_are_json() {
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "text/json",
            "application/vnd.acme.order+json",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in [
            "text/plain",
            "application/avro",
            "+json",
            "application/jsonx",
        ] {
            assert!(!is_json(other), "{other}");
        }
        assert_eq!(format_of("application/avro"), Some(Format::Avro));
    }
}
