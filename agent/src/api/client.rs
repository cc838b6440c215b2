//! The CLI's side of the control API: one request per connection, over
//! hyper.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::ErrorKind;
use super::http::percent_encode;

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

/// How long the CLI waits for the agent's reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends one request; returns the JSON body of a 2xx response.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    query: &[(&str, String)],
    body: Option<&[u8]>,
) -> Result<Value, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut target = path.to_string();
    let q: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect();
    if !q.is_empty() {
        target.push('?');
        target.push_str(&q.join("&"));
    }
    let body = Bytes::copy_from_slice(body.unwrap_or_default());
    let (status, bytes) = runtime.block_on(async {
        tokio::time::timeout(REPLY_TIMEOUT, exchange(socket, method, &target, body))
            .await
            .map_err(|_| ClientError::Io(std::io::Error::from(std::io::ErrorKind::TimedOut)))?
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| ClientError::BadResponse)?;
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

/// One request over a new connection: the status and body of the reply.
async fn exchange(socket: &Path, method: &str, target: &str, body: Bytes) -> Result<(u16, Bytes), ClientError> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|source| {
        let path = socket.display().to_string();
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::Forbidden { path, source }
        } else {
            ClientError::Connect { path, source }
        }
    })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| ClientError::BadResponse)?;
    let conn = tokio::spawn(conn);
    let request = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header(HOST, "hostwall")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|_| ClientError::BadResponse)?;
    let response = sender.send_request(request).await.map_err(io_or_bad)?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.map_err(io_or_bad)?.to_bytes();
    drop(sender);
    let _ = conn.await;
    Ok((status, bytes))
}

/// A connection the agent closed or reset is an I/O failure; anything
/// else is a reply that is not HTTP.
fn io_or_bad(e: hyper::Error) -> ClientError {
    use std::error::Error as _;
    match e.source().and_then(|s| s.downcast_ref::<std::io::Error>()) {
        Some(io) => ClientError::Io(std::io::Error::new(io.kind(), io.to_string())),
        None if e.is_incomplete_message() || e.is_closed() => {
            ClientError::Io(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
        }
        None => ClientError::BadResponse,
    }
}
