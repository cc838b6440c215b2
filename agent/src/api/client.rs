//! The CLI's side of the control API.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::ErrorKind;
use super::http::{parse_response, percent_encode};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("permission denied on {path}: the hostwall API is for root and the agent's --admin-group")]
    Forbidden {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the agent at {path} (is `hostwall agent` running?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent")]
    Io(#[from] std::io::Error),
    #[error("the agent sent a response that is not HTTP/JSON")]
    BadResponse,
    #[error("{message}")]
    Refused {
        status: u16,
        kind: ErrorKind,
        message: String,
    },
}

/// Sends one request; returns the JSON body of a 2xx response.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    query: &[(&str, String)],
    body: Option<&[u8]>,
) -> Result<Value, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut target = path.to_string();
    let q: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    if !q.is_empty() {
        target.push('?');
        target.push_str(&q.join("&"));
    }
    let body = body.unwrap_or_default();
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: hostwall\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    let (status, body) = parse_response(&buf).ok_or(ClientError::BadResponse)?;
    let value: Value = serde_json::from_slice(body).map_err(|_| ClientError::BadResponse)?;
    if !(200..300).contains(&status) {
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("request failed")
            .to_string();
        let kind = value
            .get("kind")
            .and_then(|k| serde_json::from_value(k.clone()).ok())
            .unwrap_or(ErrorKind::of_status(status));
        return Err(ClientError::Refused { status, kind, message });
    }
    Ok(value)
}
