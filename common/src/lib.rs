//! Types shared by the eBPF programs and the agent: map keys and values,
//! verdicts and drop reasons. Everything here is `#[repr(C)]`, `Copy`, has
//! no hidden padding, and has its size checked at compile time, because the
//! kernel and userspace read the same bytes.
#![no_std]

pub mod conntrack;
pub mod maps;
pub mod reason;

pub use conntrack::*;
pub use maps::*;
pub use reason::*;
