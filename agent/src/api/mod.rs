//! The control API: HTTP/1.1 with JSON bodies over a Unix socket, one
//! request per connection. See the README for the routes.

pub mod client;
pub mod handlers;
pub mod http;
pub mod replies;
pub mod routes;
pub mod server;
pub mod types;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who sent a request (from `SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// A status code and a JSON body.
pub type Reply = (u16, Value);

/// Why the agent refused or failed a request: the `kind` of every error
/// body, each with one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Not a request the API can read: framing, JSON syntax, an unknown or
    /// repeated query key.
    BadRequest,
    /// Neither root nor a member of the agent's `--admin-group`.
    Forbidden,
    /// No such path, rule, endpoint or group.
    NotFound,
    /// The path exists; the method does not.
    MethodNotAllowed,
    /// The request did not arrive in time.
    Timeout,
    /// Valid, but the agent cannot apply it as things are: it does not fit
    /// the maps, the control file changed since it was read, the rule is
    /// there already, there is nothing to roll back to.
    Conflict,
    /// Larger than `--max-request-bytes` or nested deeper than allowed.
    TooLarge,
    /// Well-formed but invalid: a field, a policy, a name.
    Invalid,
    /// The agent failed (the message says how); nothing was changed.
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::BadRequest,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::Timeout,
        ErrorKind::Conflict,
        ErrorKind::TooLarge,
        ErrorKind::Invalid,
        ErrorKind::Internal,
    ];

    /// The HTTP status of an error of this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Timeout => 408,
            ErrorKind::Conflict => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::Invalid => 422,
            ErrorKind::Internal => 500,
        }
    }

    /// The kind an HTTP status stands for (a reply without a `kind`).
    pub fn of_status(status: u16) -> ErrorKind {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.status() == status)
            .unwrap_or(match status {
                400..500 => ErrorKind::BadRequest,
                _ => ErrorKind::Internal,
            })
    }
}

/// The body of every error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub error: String,
    pub kind: ErrorKind,
    pub version: String,
}

/// The agent's version, carried by every reply (`version`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn error(kind: ErrorKind, message: impl std::fmt::Display) -> Reply {
    let body = ErrorBody {
        error: message.to_string(),
        kind,
        version: VERSION.to_string(),
    };
    (
        kind.status(),
        serde_json::to_value(body).expect("error bodies serialize"),
    )
}

/// Every reply carries the agent's version.
pub fn with_version(mut reply: Reply) -> Reply {
    if let Value::Object(map) = &mut reply.1 {
        map.entry("version")
            .or_insert_with(|| Value::String(VERSION.to_string()));
    }
    reply
}
