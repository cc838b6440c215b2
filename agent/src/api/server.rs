//! Accepting API connections over hyper: permissions, credentials, size
//! and time limits. Requests are handed to the agent's task one at a time.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::http;
use super::{Caller, ErrorKind, Reply, error, handlers};
use crate::daemon::ApiCall;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// After the response: how long and how much unread input is drained
/// before the connection closes.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Binds the socket: mode 0600 (0660 and group-owned with an admin group).
pub fn bind(path: &Path, admin_group: Option<u32>) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    let mode = match admin_group {
        Some(gid) => {
            std::os::unix::fs::chown(path, Some(0), Some(gid))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Who may call and how large a request may be.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub admin_group: Option<u32>,
    /// `--max-request-bytes`: head and body together.
    pub max_request: usize,
}

/// Serves `listener`; `config` is the control file (`POST /v1/reload`
/// reads it).
pub async fn serve(listener: UnixListener, agent: mpsc::Sender<ApiCall>, limits: Limits, config: PathBuf) {
    let config = Arc::new(config);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, agent.clone(), limits, config.clone()));
            }
            Err(e) => {
                warn!(error = %e, "accepting an API connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Root, or a member of the admin group (primary or supplementary).
fn authorized(caller: &Caller, admin_group: Option<u32>) -> bool {
    if caller.uid == 0 {
        return true;
    }
    let Some(gid) = admin_group else { return false };
    if caller.gid == gid {
        return true;
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", caller.pid)).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|groups| groups.split_whitespace().any(|g| g.parse() == Ok(gid)))
}

/// Serves one connection: one request (no keep-alive), read and answered
/// by hyper. The socket is duplicated first so that, whatever hyper does
/// with its half, a request whose head does not arrive in time still gets
/// its 408, and what the client still sends is drained before the socket
/// closes.
async fn connection(stream: UnixStream, agent: mpsc::Sender<ApiCall>, limits: Limits, config: Arc<PathBuf>) {
    let Ok(cred) = stream.peer_cred() else {
        return;
    };
    let caller = Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().unwrap_or(0),
    };
    let Ok((stream, mut spare)) = duplicate(stream) else {
        return;
    };
    let arrived = Arc::new(AtomicBool::new(false));
    let service = {
        let arrived = arrived.clone();
        service_fn(move |req| {
            arrived.store(true, Ordering::Relaxed);
            let (agent, config) = (agent.clone(), config.clone());
            async move {
                let reply = match handle(req, caller, agent, limits, config).await {
                    Ok(r) | Err(r) => super::with_version(r),
                };
                Ok::<_, std::convert::Infallible>(response(reply))
            }
        })
    };
    let conn = http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(http::MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service);
    let head_timeout = async {
        tokio::time::sleep(READ_TIMEOUT).await;
        if arrived.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                debug!(error = %e, "an API connection ended with an error");
            }
        }
        _ = head_timeout => {
            let reply = super::with_version(error(ErrorKind::Timeout, "the request did not arrive within 5 s"));
            let _ = spare.write_all(&raw_response(&reply)).await;
        }
    }
    let _ = spare.shutdown().await;
    // A Unix socket closed with unread input resets the peer, whose read
    // then fails with ECONNRESET instead of returning the response just
    // sent (refused, oversized and malformed requests are answered before
    // they are read to the end). Drain what the client still sends, within
    // limits.
    let drain = async {
        let mut sink = [0u8; 16384];
        let mut left = 2 * limits.max_request;
        while left > 0 {
            match spare.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
}

/// Two handles on one socket.
fn duplicate(stream: UnixStream) -> std::io::Result<(UnixStream, UnixStream)> {
    let std = stream.into_std()?;
    let spare = std.try_clone()?;
    Ok((UnixStream::from_std(std)?, UnixStream::from_std(spare)?))
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec_pretty(&reply.1).expect("json values serialize");
    text.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = StatusCode::from_u16(reply.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A whole response written on the socket itself, for a request hyper
/// never handed over (its head did not arrive in time).
fn raw_response(reply: &Reply) -> Vec<u8> {
    let mut text = serde_json::to_string_pretty(&reply.1).expect("json values serialize");
    text.push('\n');
    let status = StatusCode::from_u16(reply.0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        text.len()
    )
    .into_bytes();
    out.extend_from_slice(text.as_bytes());
    out
}

async fn handle(
    req: hyper::Request<Incoming>,
    caller: Caller,
    agent: mpsc::Sender<ApiCall>,
    limits: Limits,
    config: Arc<PathBuf>,
) -> Result<Reply, Reply> {
    if !authorized(&caller, limits.admin_group) {
        warn!(
            uid = caller.uid,
            pid = caller.pid,
            "refused an API client that is neither root nor in the admin group"
        );
        return Err(error(
            ErrorKind::Forbidden,
            "only root and the admin group may use the hostwall API",
        ));
    }
    let too_large = || {
        error(
            ErrorKind::TooLarge,
            format!(
                "request larger than {} bytes (the agent's --max-request-bytes)",
                limits.max_request
            ),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request as u64) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    let body = tokio::time::timeout(READ_TIMEOUT, Limited::new(body, limits.max_request).collect())
        .await
        .map_err(|_| error(ErrorKind::Timeout, "the request did not arrive within 5 s"))?
        .map_err(|e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                too_large()
            } else {
                error(ErrorKind::BadRequest, format!("reading the request's body: {e}"))
            }
        })?
        .to_bytes();
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let request = http::Request::new(parts.method.as_str(), target, body.to_vec())
        .map_err(|e| error(ErrorKind::BadRequest, e))?;
    debug!(method = %request.method, path = %request.path, uid = caller.uid, "API request");
    // Parsing happens here, off the agent's task.
    let (request, prepared) = tokio::task::spawn_blocking(move || {
        let prepared = handlers::prepare(&request, &config);
        (request, prepared)
    })
    .await
    .map_err(|e| error(ErrorKind::Internal, format!("reading the request's body failed: {e}")))?;
    let (tx, rx) = oneshot::channel();
    agent
        .send(ApiCall {
            request,
            caller,
            prepared,
            reply: tx,
        })
        .await
        .map_err(|_| error(ErrorKind::Internal, "the agent is shutting down"))?;
    rx.await
        .map_err(|_| error(ErrorKind::Internal, "the agent dropped the request"))
}
