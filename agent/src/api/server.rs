//! Accepting API connections: permissions, credentials, size and time
//! limits. Requests are handed to the agent's task one at a time.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::http::{self, DecodeError};
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

async fn connection(mut stream: UnixStream, agent: mpsc::Sender<ApiCall>, limits: Limits, config: Arc<PathBuf>) {
    let reply = match handle(&mut stream, agent, limits, config).await {
        Ok(r) => r,
        Err(r) => r,
    };
    let reply = super::with_version(reply);
    let _ = stream.write_all(&http::response(reply.0, &reply.1)).await;
    let _ = stream.shutdown().await;
    // A Unix socket closed with unread input resets the peer, whose read
    // then fails with ECONNRESET instead of returning the response just
    // sent (refused, oversized and malformed requests are answered before
    // they are read to the end). Drain what the client still sends, within
    // limits.
    let drain = async {
        let mut sink = [0u8; 16384];
        let mut left = 2 * limits.max_request;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
}

async fn handle(
    stream: &mut UnixStream,
    agent: mpsc::Sender<ApiCall>,
    limits: Limits,
    config: Arc<PathBuf>,
) -> Result<Reply, Reply> {
    let cred = stream
        .peer_cred()
        .map_err(|e| error(ErrorKind::Internal, format!("reading peer credentials: {e}")))?;
    let caller = Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().unwrap_or(0),
    };
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
    let request = tokio::time::timeout(READ_TIMEOUT, read_request(stream, limits.max_request))
        .await
        .map_err(|_| error(ErrorKind::Timeout, "the request did not arrive within 5 s"))??;
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

/// Reads one request of at most `limit` bytes: the head until it says how
/// long the request is, then exactly that, decoded once.
async fn read_request(stream: &mut UnixStream, limit: usize) -> Result<http::Request, Reply> {
    let refuse = |e: DecodeError| match e {
        DecodeError::TooLarge { .. } | DecodeError::HeadTooLarge { .. } => error(ErrorKind::TooLarge, e),
        DecodeError::Malformed { .. } => error(ErrorKind::BadRequest, e),
    };
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 1 << 16];
    let mut len = None;
    loop {
        if len.is_none() {
            len = http::request_len(&buf, limit).map_err(refuse)?;
            if let Some(n) = len {
                buf.reserve(n.saturating_sub(buf.len()));
            }
        }
        if let Some(n) = len
            && buf.len() >= n
        {
            return http::decode_within(&buf[..n], limit)
                .map_err(refuse)?
                .ok_or_else(|| error(ErrorKind::BadRequest, "the request is shorter than its content-length"));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| error(ErrorKind::BadRequest, format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(error(
                ErrorKind::BadRequest,
                "the connection closed before the request was complete",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
