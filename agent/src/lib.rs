//! hostwall's userspace: the policy model, its compiler, the datapath
//! loader and the agent.

pub mod api;
pub mod compile;
pub mod daemon;
pub mod datapath;
pub mod explain;
pub mod host;
pub mod memory;
pub mod policy;
pub mod reference;

/// The compiled eBPF object.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hostwall"));
