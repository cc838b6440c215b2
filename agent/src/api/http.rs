//! HTTP/1.1 framing for the control API: just enough to serve one JSON
//! request per connection over a Unix socket (`curl --unix-socket` works).
//! The decoder never panics on any input; limits are checked before any
//! allocation grows with the input.

use std::fmt::Write as _;

/// Largest request accepted by default, headers and body together
/// (`--max-request-bytes`): enough for `hostwall apply` of a policy of
/// 50,000 rules.
pub const DEFAULT_MAX_REQUEST: usize = 64 << 20;
/// Largest request head (request line and headers), whatever the limit.
pub const MAX_HEAD: usize = 1 << 20;
const MAX_HEADERS: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string, percent-decoded.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("request larger than {limit} bytes (the agent's --max-request-bytes)")]
    TooLarge { limit: usize },
    #[error("request head (request line and headers) larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("malformed request: {what}")]
    Malformed { what: &'static str },
}

/// Decodes one request from `buf` within the default limit.
pub fn decode(buf: &[u8]) -> Result<Option<Request>, DecodeError> {
    decode_within(buf, DEFAULT_MAX_REQUEST)
}

/// The length of the request that starts `buf` (head and body), once its
/// head is complete; `Ok(None)`: more bytes are needed. A reader calls this
/// until it knows how much to read, then decodes once.
pub fn request_len(buf: &[u8], limit: usize) -> Result<Option<usize>, DecodeError> {
    let Some(head_end) = find(&buf[..buf.len().min(MAX_HEAD + 4)], b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(DecodeError::HeadTooLarge { limit: MAX_HEAD });
        }
        return Ok(None);
    };
    let head = parse_head(&buf[..head_end])?;
    let body_start = head_end + 4;
    if head.content_length > limit.saturating_sub(body_start) {
        return Err(DecodeError::TooLarge { limit });
    }
    Ok(Some(body_start + head.content_length))
}

/// Decodes one request from `buf`, at most `limit` bytes long. `Ok(None)`:
/// more bytes are needed.
pub fn decode_within(buf: &[u8], limit: usize) -> Result<Option<Request>, DecodeError> {
    let Some(len) = request_len(buf, limit)? else {
        return Ok(None);
    };
    if buf.len() < len {
        return Ok(None);
    }
    let head_end = find(buf, b"\r\n\r\n").expect("request_len found the head");
    let Head {
        method,
        target,
        content_length,
    } = parse_head(&buf[..head_end])?;
    let body_start = head_end + 4;
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let path = percent_decode(raw_path).ok_or(malformed("bad percent-encoding in path"))?;
    let mut query = Vec::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k).ok_or(malformed("bad percent-encoding in query"))?;
        let v = percent_decode(v).ok_or(malformed("bad percent-encoding in query"))?;
        query.push((k, v));
    }
    Ok(Some(Request {
        method: method.to_string(),
        path,
        query,
        body: buf[body_start..body_start + content_length].to_vec(),
    }))
}

/// What the request line and headers say.
struct Head<'a> {
    method: &'a str,
    target: &'a str,
    content_length: usize,
}

fn parse_head(head: &[u8]) -> Result<Head<'_>, DecodeError> {
    let head = std::str::from_utf8(head).map_err(|_| malformed("header is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().ok_or(malformed("empty request"))?;
    let mut parts = request_line.split(' ');
    let method = parts.next().filter(|m| !m.is_empty()).ok_or(malformed("no method"))?;
    let target = parts.next().ok_or(malformed("no request target"))?;
    let version = parts.next().ok_or(malformed("no HTTP version"))?;
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return Err(malformed("bad request line"));
    }
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(malformed("bad method"));
    }
    if !target.starts_with('/') {
        return Err(malformed("request target must be a path"));
    }
    let mut content_length = 0usize;
    for (n, line) in lines.enumerate() {
        if n >= MAX_HEADERS {
            return Err(malformed("too many headers"));
        }
        let (name, value) = line.split_once(':').ok_or(malformed("header without ':'"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().map_err(|_| malformed("bad content-length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(malformed("transfer-encoding is not supported; send content-length"));
        }
    }
    Ok(Head {
        method,
        target,
        content_length,
    })
}

fn malformed(what: &'static str) -> DecodeError {
    DecodeError::Malformed { what }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn percent_decode(s: &str) -> Option<String> {
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

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        _ => "Internal Server Error",
    }
}

/// A complete response with a JSON body; the connection closes after it.
pub fn response(status: u16, body: &serde_json::Value) -> Vec<u8> {
    let mut text = serde_json::to_string_pretty(body).expect("json values serialize");
    text.push('\n');
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        text.len()
    )
    .into_bytes();
    out.extend_from_slice(text.as_bytes());
    out
}

/// Splits a response into status and body (for the CLI client).
pub fn parse_response(buf: &[u8]) -> Option<(u16, &[u8])> {
    let head_end = find(buf, b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, &buf[head_end + 4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_request_with_body_and_query() {
        let raw =
            b"POST /v1/conntrack?proto=tcp&addr=10.0.0.1%2F8 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody";
        let req = decode(raw).unwrap().unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/v1/conntrack");
        assert_eq!(req.query("addr"), Some("10.0.0.1/8"));
        assert_eq!(req.body, b"body");
    }

    #[test]
    fn waits_for_the_whole_body() {
        assert_eq!(decode(b"GET /v1/status HTTP/1.1\r\n").unwrap(), None);
        assert_eq!(
            decode(b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc").unwrap(),
            None
        );
    }

    #[test]
    fn refuses_what_it_does_not_speak() {
        for raw in [
            &b"GET\r\n\r\n"[..],
            b"get /x HTTP/1.1\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"GET /x SPDY\r\n\r\n",
            b"GET /x HTTP/1.1\r\nbroken\r\n\r\n",
            b"GET /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /%zz HTTP/1.1\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(decode(raw), Err(DecodeError::Malformed { .. })),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn caps_the_size() {
        let head = "POST /x HTTP/1.1\r\nContent-Length: 1000\r\n\r\n";
        assert_eq!(
            decode_within(head.as_bytes(), 1000),
            Err(DecodeError::TooLarge { limit: 1000 })
        );
        assert_eq!(request_len(head.as_bytes(), 2000), Ok(Some(head.len() + 1000)));
        assert_eq!(decode_within(head.as_bytes(), 2000), Ok(None));
        let declared = format!("POST /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n", DEFAULT_MAX_REQUEST);
        assert_eq!(
            decode(declared.as_bytes()),
            Err(DecodeError::TooLarge {
                limit: DEFAULT_MAX_REQUEST
            })
        );
        let endless = vec![b'a'; MAX_HEAD + 1];
        assert_eq!(decode(&endless), Err(DecodeError::HeadTooLarge { limit: MAX_HEAD }));
    }

    #[test]
    fn responses_round_trip() {
        let r = response(404, &serde_json::json!({"error": "no such rule"}));
        let (status, body) = parse_response(&r).unwrap();
        assert_eq!(status, 404);
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["error"], "no such rule");
    }
}
