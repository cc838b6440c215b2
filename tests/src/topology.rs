//! Test hosts made of network namespaces:
//!
//! ```text
//!   remote ns                host ns                        container ns
//!  ┌──────────┐  uplink   ┌───────────────────┐  veth     ┌────────────┐
//!  │ eth0  .2 ├───────────┤ uplink0 .1        │           │            │
//!  └──────────┘           │      br0 .1 ──────┼─ IFACE ───┤ eth0  .N   │
//!                         └───────────────────┘  (endpoint └────────────┘
//!                                                 interface)
//! ```
//!
//! The host namespace is where the agent runs; it routes between the
//! bridge and the uplink. Every address lives only inside these
//! namespaces, and nothing is connected to the machine's own network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};

use crate::bins::Binaries;
use crate::netns::Netns;
use crate::probe::Node;

/// Name of the bridge in the host namespace.
pub const BRIDGE: &str = "br0";
/// Name of the host side of the uplink veth pair.
pub const UPLINK: &str = "uplink0";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test of this or any running process uses:
/// `PREFIX-PID-N`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Addresses of one subnet: `V4.N/24` and `V6N/64` (e.g. `10.77.0.N` and
/// `fd00:77::N`; N's decimal digits are reused as hex, so .11 ↔ ::11).
#[derive(Clone, Debug)]
pub struct Subnet {
    pub v4: [u8; 3],
    pub v6: String,
}

impl Subnet {
    pub fn new(v4: [u8; 3], v6: &str) -> Subnet {
        Subnet { v4, v6: v6.to_string() }
    }

    pub fn v4(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.v4[0], self.v4[1], self.v4[2], n)
    }

    pub fn v6(&self, n: u8) -> Ipv6Addr {
        format!("{}{n}", self.v6)
            .parse()
            .expect("the subnet's IPv6 prefix ends in ::")
    }

    /// `.n` in IPv4 (`family` 0) or IPv6 (`family` 1).
    pub fn addr(&self, n: u8, family: usize) -> IpAddr {
        if family == 0 {
            self.v4(n).into()
        } else {
            self.v6(n).into()
        }
    }

    pub fn v4_cidr(&self) -> String {
        format!("{}.{}.{}.0/24", self.v4[0], self.v4[1], self.v4[2])
    }

    pub fn v6_cidr(&self) -> String {
        format!("{}/64", self.v6)
    }
}

pub struct HostBuilder {
    bins: Binaries,
    prefix: String,
    bridge: Subnet,
    uplink: Subnet,
}

impl HostBuilder {
    /// Namespace names start with `prefix` (default `hwt`).
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// The bridge subnet (default 10.77.0.0/24, fd00:77::/64).
    pub fn bridge(mut self, subnet: Subnet) -> Self {
        self.bridge = subnet;
        self
    }

    /// The uplink subnet (default 198.51.100.0/24, 2001:db8:77::/64,
    /// documentation ranges).
    pub fn uplink(mut self, subnet: Subnet) -> Self {
        self.uplink = subnet;
        self
    }

    pub fn build(self) -> anyhow::Result<Host> {
        if unsafe { libc::geteuid() } != 0 {
            bail!("hostwall's integration tests create network namespaces and load eBPF programs: run them as root");
        }
        static SWEEP: std::sync::Once = std::sync::Once::new();
        SWEEP.call_once(|| crate::cleanup::sweep_stale(&self.prefix));
        let base = unique_name(&self.prefix);
        let ns = Netns::create(&format!("{base}-host"))?;
        // DAD off so that IPv6 works at once; rp_filter off so that only
        // hostwall decides about spoofed sources arriving on the uplink.
        ns.sysctl(&[
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ])?;
        // Without snooping the bridge floods multicast, so neighbour
        // discovery works without an MLD querier.
        ns.ip(&format!("link add {BRIDGE} type bridge mcast_snooping 0"))?;
        ns.ip(&format!("link set {BRIDGE} up"))?;
        ns.ip(&format!("addr add {}/24 dev {BRIDGE}", self.bridge.v4(1)))?;
        ns.ip(&format!("addr add {}/64 dev {BRIDGE} nodad", self.bridge.v6(1)))?;
        Ok(Host {
            ns,
            base,
            bins: self.bins,
            bridge: self.bridge,
            uplink: self.uplink,
        })
    }
}

/// The host namespace, with its bridge. Deleted on drop.
pub struct Host {
    ns: Netns,
    base: String,
    bins: Binaries,
    bridge: Subnet,
    uplink: Subnet,
}

impl Host {
    pub fn builder(bins: &Binaries) -> HostBuilder {
        HostBuilder {
            bins: bins.clone(),
            prefix: "hwt".into(),
            bridge: Subnet::new([10, 77, 0], "fd00:77::"),
            uplink: Subnet::new([198, 51, 100], "2001:db8:77::"),
        }
    }

    pub fn bins(&self) -> &Binaries {
        &self.bins
    }

    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// The bridge subnet; `subnet().v4(1)` is the host's own address.
    pub fn subnet(&self) -> &Subnet {
        &self.bridge
    }

    /// The host's IPv4 and IPv6 address on the bridge.
    pub fn addrs(&self) -> [IpAddr; 2] {
        [self.bridge.v4(1).into(), self.bridge.v6(1).into()]
    }

    pub fn uplink_subnet(&self) -> &Subnet {
        &self.uplink
    }

    /// A container at `.n` of the bridge subnet, whose host-side interface
    /// (the endpoint interface) is `iface`.
    pub fn add_container(&self, name: &str, iface: &str, n: u8) -> anyhow::Result<Container> {
        self.add_container_with(name, iface, self.bridge.v4(n), self.bridge.v6(n))
    }

    /// A container with the given addresses, which must be in the bridge
    /// subnet.
    pub fn add_container_with(&self, name: &str, iface: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> anyhow::Result<Container> {
        let container = self.add_container_unplugged(name, iface, v4, v6)?;
        self.plug(&container)?;
        Ok(container)
    }

    /// A container whose host-side interface exists but is down and not on
    /// the bridge yet (as a container runtime leaves it while it sets the
    /// container up); [`Host::plug`] connects it.
    pub fn add_container_unplugged(
        &self,
        name: &str,
        iface: &str,
        v4: Ipv4Addr,
        v6: Ipv6Addr,
    ) -> anyhow::Result<Container> {
        if iface.len() > 15 {
            bail!("interface name {iface:?} is longer than 15 characters");
        }
        let ns = Netns::create(&format!("{}-{name}", self.base))?;
        ns.sysctl(&["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])?;
        // The MAC follows from the IPv4 address (as Docker does it), so a
        // restarted container keeps it and its peers' neighbour caches stay
        // right.
        let [a, b, c, d] = v4.octets();
        let mac = format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}");
        self.ns.ip(&format!(
            "link add {iface} type veth peer name eth0 address {mac} netns {}",
            ns.name()
        ))?;
        ns.sysctl(&["net.ipv6.conf.eth0.accept_dad=0"])?;
        ns.ip("link set eth0 up")?;
        ns.ip(&format!("addr add {v4}/24 dev eth0"))?;
        ns.ip(&format!("addr add {v6}/64 dev eth0 nodad"))?;
        ns.ip(&format!("route add default via {}", self.bridge.v4(1)))?;
        ns.ip(&format!("-6 route add default via {}", self.bridge.v6(1)))?;
        Ok(Container {
            ns,
            host_ns: self.ns.name().to_string(),
            name: name.into(),
            iface: iface.into(),
            v4,
            v6,
            bins: self.bins.clone(),
        })
    }

    /// Puts a container's host-side interface on the bridge and brings it
    /// up.
    pub fn plug(&self, container: &Container) -> anyhow::Result<()> {
        let iface = &container.iface;
        self.ns
            .ip(&format!("link set {iface} master {BRIDGE} up"))
            .with_context(|| format!("attaching {iface} to the bridge"))
    }

    /// The "other host": a namespace behind the uplink (`uplink0` in the
    /// host namespace), at `.2` of the uplink subnet, routed to the bridge
    /// subnet through the host.
    pub fn add_remote(&self) -> anyhow::Result<Remote> {
        let ns = Netns::create(&format!("{}-remote", self.base))?;
        ns.sysctl(&["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"])?;
        self.ns.ip(&format!(
            "link add {UPLINK} type veth peer name eth0 netns {}",
            ns.name()
        ))?;
        self.ns.sysctl(&[&format!("net.ipv4.conf.{UPLINK}.rp_filter=0")])?;
        self.ns.ip(&format!("link set {UPLINK} up"))?;
        self.ns.ip(&format!("addr add {}/24 dev {UPLINK}", self.uplink.v4(1)))?;
        self.ns
            .ip(&format!("addr add {}/64 dev {UPLINK} nodad", self.uplink.v6(1)))?;
        ns.sysctl(&["net.ipv6.conf.eth0.accept_dad=0"])?;
        ns.ip("link set eth0 up")?;
        let (v4, v6) = (self.uplink.v4(2), self.uplink.v6(2));
        ns.ip(&format!("addr add {v4}/24 dev eth0"))?;
        ns.ip(&format!("addr add {v6}/64 dev eth0 nodad"))?;
        ns.ip(&format!("route add default via {}", self.uplink.v4(1)))?;
        ns.ip(&format!("-6 route add default via {}", self.uplink.v6(1)))?;
        Ok(Remote {
            ns,
            v4,
            v6,
            bins: self.bins.clone(),
        })
    }

    /// An IP counter of the host namespace from /proc/net/snmp or snmp6,
    /// e.g. `("Ip", "ForwDatagrams")` or `("Ip6", "OutForwDatagrams")`.
    /// Packets the uplink's XDP filter drops never reach these.
    pub fn snmp(&self, table: &str, field: &str) -> anyhow::Result<u64> {
        if table == "Ip6" {
            let text = self.ns.exec(&["cat", "/proc/net/snmp6"])?;
            let key = format!("Ip6{field}");
            return text
                .lines()
                .find_map(|l| {
                    l.split_once(char::is_whitespace)
                        .filter(|(k, _)| *k == key)
                        .map(|(_, v)| v.trim())
                })
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("no {key} in /proc/net/snmp6"));
        }
        let text = self.ns.exec(&["cat", "/proc/net/snmp"])?;
        let prefix = format!("{table}:");
        let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
        let (names, values) = (rows.next(), rows.next());
        let (Some(names), Some(values)) = (names, values) else {
            bail!("no {table} table in /proc/net/snmp")
        };
        names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == field)
            .and_then(|(_, v)| v.parse().ok())
            .with_context(|| format!("no {table}:{field} in /proc/net/snmp"))
    }
}

impl Node for Host {
    fn netns(&self) -> &str {
        self.ns.name()
    }
    fn label(&self) -> &str {
        "host"
    }
    fn probe_bin(&self) -> &std::path::Path {
        &self.bins.probe
    }
}

/// A container: its own namespace with `eth0`, the peer of the endpoint
/// interface in the host namespace. Deleted on drop.
pub struct Container {
    ns: Netns,
    host_ns: String,
    pub name: String,
    /// The host-side interface: what the control file calls `interface`.
    pub iface: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    bins: Binaries,
}

impl Container {
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Its IPv4 and its IPv6 address.
    pub fn addrs(&self) -> [IpAddr; 2] {
        [self.v4.into(), self.v6.into()]
    }

    /// The container's address of the same family as `other`.
    pub fn addr_like(&self, other: IpAddr) -> IpAddr {
        match other {
            IpAddr::V4(_) => self.v4.into(),
            IpAddr::V6(_) => self.v6.into(),
        }
    }

    /// Adds an address to eth0 that the control file does not list.
    pub fn add_address(&self, addr: IpAddr) -> anyhow::Result<()> {
        add_host_address(&self.ns, addr)
    }
}

impl Drop for Container {
    /// Deleting a namespace frees its interfaces asynchronously; the veth
    /// pair is deleted first, so that a container of the same name and
    /// interface can be created right away (a restart).
    fn drop(&mut self) {
        let _ =
            crate::netns::run(std::process::Command::new("ip").args(["-n", &self.host_ns, "link", "del", &self.iface]));
    }
}

impl Node for Container {
    fn netns(&self) -> &str {
        self.ns.name()
    }
    fn label(&self) -> &str {
        &self.name
    }
    fn probe_bin(&self) -> &std::path::Path {
        &self.bins.probe
    }
}

/// The other host, behind the uplink. Deleted on drop.
pub struct Remote {
    ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    bins: Binaries,
}

impl Remote {
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Its own IPv4 and IPv6 address on the uplink.
    pub fn addrs(&self) -> [IpAddr; 2] {
        [self.v4.into(), self.v6.into()]
    }

    /// Adds `addr` (/32 or /128) to eth0, so that the remote can send with
    /// it as source: how the tests forge addresses that are not its own.
    pub fn add_address(&self, addr: IpAddr) -> anyhow::Result<()> {
        add_host_address(&self.ns, addr)
    }
}

impl Node for Remote {
    fn netns(&self) -> &str {
        self.ns.name()
    }
    fn label(&self) -> &str {
        "remote"
    }
    fn probe_bin(&self) -> &std::path::Path {
        &self.bins.probe
    }
}

/// Adds `addr` to eth0 as an extra address that is used only when a
/// socket binds to it: IPv4 picks the source from the subnet route, and the
/// IPv6 address is deprecated (preferred_lft 0) so that source selection
/// keeps the original one.
fn add_host_address(ns: &Netns, addr: IpAddr) -> anyhow::Result<()> {
    match addr {
        IpAddr::V4(a) => ns.ip(&format!("addr add {a}/32 dev eth0")),
        IpAddr::V6(a) => ns.ip(&format!("addr add {a}/128 dev eth0 nodad preferred_lft 0")),
    }
}
