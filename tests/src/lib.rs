//! Test hosts for hostwall, built from network namespaces, used by the
//! integration tests (`tests/tests/`) and by `cargo xtask demo`.
//!
//! - [`Host`]: a host namespace with a bridge; [`Host::add_container`]
//!   adds a [`Container`] (its own namespace, a veth pair whose host side is
//!   the endpoint interface); [`Host::add_remote`] adds the other host
//!   behind an uplink.
//! - [`Agent`]: `hostwall agent` running in the host namespace, with its own
//!   config file and bpffs; [`Agent::stats`] reads its counters.
//! - [`Node::serve`] starts echo servers, [`Check`]s describe expected
//!   reachability, [`assert_checks`] runs them in parallel with real
//!   traffic (`hostwall-probe` for TCP and UDP, `ping` for ICMP).
//! - [`TcpStreamer`] and [`UdpSeqSender`] keep a flow going while the
//!   agent changes, against servers from [`Node::serve_specs`].
//! - [`testrun::Fixture`]: the eBPF programs loaded unpinned, built
//!   [`frames`] run through them with BPF_PROG_TEST_RUN.
//!
//! Everything is torn down on drop, panics included; programs that also
//! want it on Ctrl-C call [`cleanup::cleanup_on_interrupt`]. All of it needs
//! root.

pub mod agent;
pub mod bins;
pub mod cleanup;
pub mod frames;
pub mod netns;
pub mod probe;
pub mod stream;
pub mod testrun;
pub mod topology;

pub use agent::{Agent, AgentOptions, Launch, Stats};
pub use bins::Binaries;
pub use hostwall_common::{DropReason, PassReason};
pub use netns::Netns;
pub use probe::{
    Check, Expect, Node, Outcome, Probe, ProbeOptions, Report, Server, assert_checks, run_checks, run_checks_with,
};
pub use stream::{Progress, TcpStreamer, UdpSeqSender, seq_gaps};
pub use topology::{Container, Host, Remote, Subnet};

/// The agent's library, for reading control files the way the agent does.
pub use hostwall;
