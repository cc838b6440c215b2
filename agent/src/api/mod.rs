//! The control API: HTTP/1.1 with JSON bodies over a Unix socket.

pub mod http;
