//! Record headers as bytes, straight from librdkafka: the only unsafe code in choreo.
//!
//! rdkafka's `Headers::get`, `try_get` and `iter` turn every header *name* into a `&str` with
//! `to_str().unwrap()`: one record from another client whose header name is not UTF-8 panics
//! the thread that reads it, and it is read again after every restart (a poison pill). The
//! Kafka protocol allows any bytes there, so choreo reads names and values through
//! librdkafka's C API instead and decides what they mean itself (the envelope dead-letters a
//! record whose header name is not UTF-8, naming the header).
//!
//! Writing is the mirror image: a dead letter keeps the original headers byte for byte, but
//! `OwnedHeaders::insert` takes the name as `&str`, so [`push`] adds a name given as bytes.
//!
//! librdkafka keeps a header name NUL-terminated, so a name with a NUL byte in it reads back
//! cut at that byte (the rest of the record is unaffected).
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_void};

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedHeaders, OwnedHeaders};

use crate::message::RawHeader;

/// The headers of a list in order, names and values as bytes; a value is `None` when null.
pub(crate) fn iter(headers: &BorrowedHeaders) -> impl Iterator<Item = RawHeader<'_>> {
    // SAFETY: a `&BorrowedHeaders` is, by rdkafka's construction, a cast of a valid
    // `rd_kafka_headers_t` pointer that lives as long as the reference (it borrows the
    // message or the `OwnedHeaders` that owns the list).
    let list = (headers as *const BorrowedHeaders).cast::<rdsys::rd_kafka_headers_t>();
    // SAFETY: `list` is valid (above); the count only reads it.
    let count = unsafe { rdsys::rd_kafka_header_cnt(list) };
    (0..count).filter_map(move |idx| {
        let mut name: *const c_char = std::ptr::null();
        let mut value: *const c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: `list` is valid while `headers` is borrowed, and `idx < count`; the
        // out-pointers point at locals.
        let err =
            unsafe { rdsys::rd_kafka_header_get_all(list, idx, &mut name, &mut value, &mut size) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: librdkafka stores every name NUL-terminated and keeps it as long as the
        // list, which `headers` borrows for the iterator's lifetime; `to_bytes` never
        // interprets the bytes.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = if value.is_null() {
            None
        } else if size == 0 {
            Some(&[][..])
        } else {
            // SAFETY: a non-null value points at `size` bytes owned by the list (above).
            Some(unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) })
        };
        Some(RawHeader { name, value })
    })
}

/// Appends a header whose name is given as bytes (any bytes, as they came off the wire).
pub(crate) fn push(headers: OwnedHeaders, name: &[u8], value: Option<&[u8]>) -> OwnedHeaders {
    // The list is owned by `headers`, which we hold by value: nothing else can see it while
    // it grows. `as_borrowed` is a cast of the native pointer to a zero-sized type, so writing
    // through it touches no memory a Rust reference covers.
    let list = (headers.as_borrowed() as *const BorrowedHeaders)
        .cast_mut()
        .cast::<rdsys::rd_kafka_headers_t>();
    let (value_ptr, value_len) = match value {
        Some(v) => (v.as_ptr().cast::<c_void>(), v.len()),
        None => (std::ptr::null(), 0),
    };
    let (Ok(name_len), Ok(value_len)) = (isize::try_from(name.len()), isize::try_from(value_len))
    else {
        return headers;
    };
    // SAFETY: `list` is a valid, writable header list (above); librdkafka copies `name_len`
    // bytes of the name and `value_len` bytes of the value, both valid for those lengths.
    let err = unsafe {
        rdsys::rd_kafka_header_add(
            list,
            name.as_ptr().cast::<c_char>(),
            name_len,
            value_ptr,
            value_len,
        )
    };
    // librdkafka refuses only a read-only list; `OwnedHeaders` never is one.
    debug_assert_eq!(err, rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(headers: &OwnedHeaders) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        iter(headers.as_borrowed())
            .map(|h| (h.name.to_vec(), h.value.map(<[u8]>::to_vec)))
            .collect()
    }

    #[test]
    fn names_that_are_not_utf8_round_trip_without_a_panic() {
        let headers = push(OwnedHeaders::new(), b"\xff\xfe", Some(b"x"));
        let headers = push(headers, b"ce_id", None);
        let headers = push(headers, b"", Some(b""));
        assert_eq!(
            read(&headers),
            vec![
                (b"\xff\xfe".to_vec(), Some(b"x".to_vec())),
                (b"ce_id".to_vec(), None),
                (Vec::new(), Some(Vec::new())),
            ]
        );
    }
}
