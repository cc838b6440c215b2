//! The control API's request-target decoder (hyper reads the framing) on
//! any bytes: it never panics, a decoded path is a path, and what the CLI
//! encodes decodes to itself.
#![no_main]

use hostwall::api::http::{Request, percent_decode, percent_encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = Request::new("GET", target, Vec::new()) {
        assert!(req.path.starts_with('/'), "{:?}", req.path);
        for (k, v) in &req.query {
            assert_eq!(percent_decode(&percent_encode(k)).as_deref(), Some(k.as_str()));
            assert_eq!(percent_decode(&percent_encode(v)).as_deref(), Some(v.as_str()));
        }
    }
    assert_eq!(percent_decode(&percent_encode(target)).as_deref(), Some(target));
});
