//! The control API's request decoder on any bytes: it never panics, never
//! accepts more than its limit, and a decoded request does not change when
//! more bytes follow it (the next request's, or garbage).
#![no_main]

use hostwall::api::http::{MAX_REQUEST, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Some(req)) => {
            assert!(req.body.len() <= MAX_REQUEST);
            assert!(req.path.starts_with('/'), "{:?}", req.path);
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n");
            assert_eq!(decode(&longer), Ok(Some(req)));
        }
        Ok(None) => assert!(data.len() <= MAX_REQUEST),
        Err(_) => {}
    }
});
