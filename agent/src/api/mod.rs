//! The control API: HTTP/1.1 with JSON bodies over a Unix socket, one
//! request per connection. See the README for the routes.

pub mod client;
pub mod handlers;
pub mod http;
pub mod server;
pub mod types;

use serde_json::{Value, json};

/// Who sent a request (from `SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

/// A status code and a JSON body.
pub type Reply = (u16, Value);

pub fn error(status: u16, message: impl std::fmt::Display) -> Reply {
    (status, json!({ "error": message.to_string() }))
}
