//! Rendering records for people: labelled fields, payloads as pretty JSON when they are JSON,
//! escaped or hex previews when they are not.

use std::io::Write;

use choreo::kafka::RecordHeaders;
use chrono::{DateTime, SecondsFormat, Utc};

/// Longest text preview of a payload that is not JSON.
const TEXT_PREVIEW_CHARS: usize = 2000;
/// Longest hex preview of a binary payload.
const HEX_PREVIEW_BYTES: usize = 64;
/// Width of the label column.
const LABEL_WIDTH: usize = 13;

/// Writes `title`, then one `label value` line per field; a multi-line value continues under
/// the value column.
pub fn block(out: &mut dyn Write, title: &str, fields: &[(&str, String)]) -> std::io::Result<()> {
    writeln!(out, "── {title}")?;
    for (label, value) in fields {
        let mut lines = value.lines();
        let first = lines.next().unwrap_or_default();
        writeln!(out, "  {label:<LABEL_WIDTH$}{first}")?;
        for line in lines {
            writeln!(out, "  {:<LABEL_WIDTH$}{line}", "")?;
        }
    }
    Ok(())
}

/// Pretty JSON if it parses, else an escaped text preview, else a hex preview.
pub fn payload(bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes else {
        return "<none>".to_owned();
    };
    if bytes.is_empty() {
        return "<empty>".to_owned();
    }
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Ok(pretty) = serde_json::to_string_pretty(&json)
    {
        return pretty;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let preview: String = text.chars().take(TEXT_PREVIEW_CHARS).collect();
            let cut = if preview.len() < text.len() {
                "…"
            } else {
                ""
            };
            format!("{preview:?}{cut} ({} bytes, not JSON)", bytes.len())
        }
        Err(_) => {
            let hex: Vec<String> = bytes
                .iter()
                .take(HEX_PREVIEW_BYTES)
                .map(|b| format!("{b:02x}"))
                .collect();
            let cut = if bytes.len() > HEX_PREVIEW_BYTES {
                " …"
            } else {
                ""
            };
            format!("hex {}{cut} ({} bytes)", hex.join(" "), bytes.len())
        }
    }
}

/// A key or header value: as text when it is UTF-8 (control characters escaped), else hex.
pub fn text(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "<none>".to_owned(),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text.escape_debug().to_string(),
            Err(_) => format!(
                "hex {}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        },
    }
}

/// `key=value` per header, one per line.
pub fn headers(headers: Option<&RecordHeaders>) -> String {
    let Some(headers) = headers else {
        return "<none>".to_owned();
    };
    let lines: Vec<String> = headers
        .iter()
        .map(|h| format!("{}={}", name(h.name), text(h.value)))
        .collect();
    if lines.is_empty() {
        "<none>".to_owned()
    } else {
        lines.join("\n")
    }
}

/// The value of header `name`, as text.
pub fn header_value(headers: Option<&RecordHeaders>, name: &str) -> Option<String> {
    headers?
        .last(name)
        .flatten()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A header name: as is when it is UTF-8, else escaped (`\xff`), so it is never mistaken
/// for another.
pub fn name(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.escape_debug().to_string(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// The broker's timestamp of a record (milliseconds since the epoch).
pub fn timestamp(millis: Option<i64>) -> String {
    let Some(millis) = millis else {
        return "<none>".to_owned();
    };
    DateTime::<Utc>::from_timestamp_millis(millis).map_or_else(
        || "<invalid>".to_owned(),
        |t| t.to_rfc3339_opts(SecondsFormat::Millis, true),
    )
}

/// A time as choreo writes it (RFC 3339, microseconds).
pub fn time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A table with left-aligned columns sized to their widest cell.
pub fn table(out: &mut dyn Write, header: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    writeln!(out, "{}", line(header.to_vec()))?;
    for row in rows {
        writeln!(out, "{}", line(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_shown_as_json_text_or_hex() {
        assert_eq!(payload(Some(br#"{"a":1}"#)), "{\n  \"a\": 1\n}");
        assert_eq!(
            payload(Some(b"{\"a\": 1")),
            "\"{\\\"a\\\": 1\" (7 bytes, not JSON)"
        );
        assert_eq!(payload(Some(&[0xff, 0x00])), "hex ff 00 (2 bytes)");
        assert_eq!(payload(None), "<none>");
        assert_eq!(text(Some(b"a\nb")), "a\\nb");
    }
}
