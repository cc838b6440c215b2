//! The control API's request decoder on any bytes: it never panics, never
//! accepts more than its limit, and a decoded request does not change when
//! more bytes follow it (the next request's, or garbage).
#![no_main]

use hostwall::api::http::{MAX_HEAD, decode_within};
use libfuzzer_sys::fuzz_target;

/// Small enough that inputs reach it.
const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    match decode_within(data, LIMIT) {
        Ok(Some(req)) => {
            assert!(req.body.len() <= LIMIT);
            assert!(req.path.starts_with('/'), "{:?}", req.path);
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n");
            assert_eq!(decode_within(&longer, LIMIT), Ok(Some(req)));
        }
        // Waiting for more: a head not yet complete (at most MAX_HEAD
        // bytes), or a body within the limit.
        Ok(None) => assert!(data.len() <= MAX_HEAD.max(LIMIT)),
        Err(_) => {}
    }
});
