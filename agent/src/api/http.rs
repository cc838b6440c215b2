//! What a request is once hyper has read it, for the handlers: its
//! method, percent-decoded path and query, and body; and the limits the
//! server reads requests within.

use std::fmt::Write as _;

/// Largest request accepted by default, headers and body together
/// (`--max-request-bytes`): enough for `hostwall apply` of a policy of
/// 50,000 rules.
pub const DEFAULT_MAX_REQUEST: usize = 64 << 20;
/// Largest request head (request line and headers), whatever the limit.
pub const MAX_HEAD: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string, percent-decoded.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// A request for `target` (path and query, percent-encoded as sent).
    pub fn new(method: &str, target: &str, body: Vec<u8>) -> Result<Request, &'static str> {
        let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
        let path = percent_decode(raw_path).ok_or("bad percent-encoding in the path")?;
        if !path.starts_with('/') {
            return Err("the request target must be a path");
        }
        let mut query = Vec::new();
        for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k).ok_or("bad percent-encoding in the query")?;
            let v = percent_decode(v).ok_or("bad percent-encoding in the query")?;
            query.push((k, v));
        }
        Ok(Request {
            method: method.to_string(),
            path,
            query,
            body,
        })
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// `%XX` decoded and `+` read as a space; `None` for a bad escape or a
/// result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The CLI's encoding of a path segment or query value: `decode` gives
/// back exactly `s`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_decoded() {
        let req = Request::new(
            "POST",
            "/v1/conntrack?proto=tcp&addr=10.0.0.1%2F8&flag",
            b"body".to_vec(),
        )
        .unwrap();
        assert_eq!(req.path, "/v1/conntrack");
        assert_eq!(req.query("addr"), Some("10.0.0.1/8"));
        assert_eq!(req.query("proto"), Some("tcp"));
        assert_eq!(req.query("flag"), Some(""));
        assert_eq!(req.body, b"body");
        assert_eq!(
            Request::new("GET", "/v1/endpoints/web%201", vec![]).unwrap().path,
            "/v1/endpoints/web 1"
        );
    }

    #[test]
    fn bad_targets_are_refused() {
        for target in ["/%zz", "/%ff", "/x?a=%", "x", "/x?%C3%28=1"] {
            assert!(Request::new("GET", target, vec![]).is_err(), "{target}");
        }
    }

    #[test]
    fn what_is_encoded_decodes_to_itself() {
        for s in ["web 1", "a/b:c", "100%", "ü+&=?#", ""] {
            assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        }
    }
}
