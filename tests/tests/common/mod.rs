//! The fixture most integration tests share: a host with five containers
//! and the control file they are judged by.
#![allow(dead_code)] // each test binary uses a different part of it

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;

use socket2::{Domain, Protocol, Socket, Type};

use hostwall_tests::{Binaries, Container, Host, Netns, Node, Server};

pub fn bins() -> Binaries {
    Binaries::locate(Some(Path::new(env!("CARGO_BIN_EXE_hostwall-probe")))).expect("locating the binaries under test")
}

/// Every container serves these, so that a probe that fails was dropped,
/// not refused for want of a server.
pub const TCP_PORTS: &[u16] = &[80, 5432, 6000, 8080, 9090];
pub const UDP_PORTS: &[u16] = &[53, 8053, 40000];
/// What the host namespace serves.
pub const HOST_TCP: &[u16] = &[80];
pub const HOST_UDP: &[u16] = &[53];

/// Allow-only rules of a small three-tier application, plus an intruder
/// whose group grants nothing useful and an endpoint with no group:
///
/// - web: accepts tcp/80 from the bridge subnet (and so from the host) and
///   ping from the host; may open tcp/8080, udp/8053, ping and tcp and
///   udp 9999 to api.
/// - api: accepts tcp/8080, tcp/9090, udp/8053, ping and tcp and udp 9999
///   from web; may open tcp/5432 to db, tcp/6000 to anything on the bridge,
///   udp/53 to the host. (9090 has no egress rule at web; 6000 no ingress
///   rule anywhere; nothing listens on 9999.)
/// - db: accepts tcp/5432 from api.
/// - intruder: in group quarantine, which only lets the host ping it.
/// - lonely: no group at all.
pub const SHOP_POLICY: &str = r#"
version: 1
groups:
  web:
    ingress:
      - {proto: tcp, ports: 80, from: [{cidr: 10.77.0.0/24}, {cidr: "fd00:77::/64"}]}
      - {proto: icmp, icmp: {type: 8}, from: [host]}
      - {proto: icmpv6, icmp: {type: 128}, from: [host]}
    egress:
      - {proto: tcp, ports: 8080, to: [{group: api}]}
      - {proto: udp, ports: 8053, to: [{group: api}]}
      - {proto: icmp, icmp: {type: 8}, to: [{group: api}]}
      - {proto: icmpv6, icmp: {type: 128}, to: [{group: api}]}
      - {proto: udp, ports: 9999, to: [{group: api}]}
      - {proto: tcp, ports: 9999, to: [{group: api}]}
  api:
    ingress:
      - {proto: tcp, ports: 8080, from: [{group: web}]}
      - {proto: tcp, ports: 9090, from: [{group: web}]}
      - {proto: udp, ports: 8053, from: [{group: web}]}
      - {proto: icmp, icmp: {type: 8}, from: [{group: web}]}
      - {proto: icmpv6, icmp: {type: 128}, from: [{group: web}]}
      - {proto: udp, ports: 9999, from: [{group: web}]}
      - {proto: tcp, ports: 9999, from: [{group: web}]}
    egress:
      - {proto: tcp, ports: 5432, to: [{group: db}]}
      - {proto: tcp, ports: 6000, to: [{cidr: 10.77.0.0/24}, {cidr: "fd00:77::/64"}]}
      - {proto: udp, ports: 53, to: [host]}
  db:
    ingress:
      - {proto: tcp, ports: 5432, from: [{group: api}]}
  quarantine:
    ingress:
      - {proto: icmp, icmp: {type: 8}, from: [host]}
      - {proto: icmpv6, icmp: {type: 128}, from: [host]}
endpoints:
  - {name: web, interface: hw-web, addresses: ["10.77.0.11", "fd00:77::11"], groups: [web]}
  - {name: api, interface: hw-api, addresses: ["10.77.0.12", "fd00:77::12"], groups: [api]}
  - {name: db, interface: hw-db, addresses: ["10.77.0.13", "fd00:77::13"], groups: [db]}
  - {name: intruder, interface: hw-intruder, addresses: ["10.77.0.14", "fd00:77::14"], groups: [quarantine]}
  - {name: lonely, interface: hw-lonely, addresses: ["10.77.0.15", "fd00:77::15"], groups: []}
  - {name: db-elsewhere, node: other-node, interface: hw-db2, addresses: ["10.88.0.13"], groups: [db]}
"#;

/// The containers of [`SHOP_POLICY`], each serving [`TCP_PORTS`] and
/// [`UDP_PORTS`], and the host serving [`HOST_TCP`] and [`HOST_UDP`]. No
/// agent yet: tests probe without it first.
pub struct Shop {
    // Fields drop in order: servers first, namespaces last.
    pub servers: Vec<Server>,
    pub host_server: Server,
    pub web: Container,
    pub api: Container,
    pub db: Container,
    pub intruder: Container,
    pub lonely: Container,
    pub host: Host,
}

pub fn shop() -> Shop {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let add = |name: &str, n: u8| {
        host.add_container(name, &format!("hw-{name}"), n)
            .unwrap_or_else(|e| panic!("adding container {name}: {e:#}"))
    };
    let (web, api, db, intruder, lonely) = (
        add("web", 11),
        add("api", 12),
        add("db", 13),
        add("intruder", 14),
        add("lonely", 15),
    );
    let servers = [&web, &api, &db, &intruder, &lonely]
        .iter()
        .map(|c| {
            c.serve(TCP_PORTS, UDP_PORTS)
                .unwrap_or_else(|e| panic!("echo servers in {}: {e:#}", c.name))
        })
        .collect();
    let host_server = host
        .serve(HOST_TCP, HOST_UDP)
        .expect("echo servers in the host namespace");
    Shop {
        servers,
        host_server,
        web,
        api,
        db,
        intruder,
        lonely,
        host,
    }
}

impl Shop {
    pub fn containers(&self) -> [&Container; 5] {
        [&self.web, &self.api, &self.db, &self.intruder, &self.lonely]
    }

    pub fn server(&self, c: &Container) -> &Server {
        let i = self
            .containers()
            .iter()
            .position(|x| x.name == c.name)
            .expect("a container of the shop");
        &self.servers[i]
    }
}

/// The addresses of every node of the shop in one IP family.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub web: IpAddr,
    pub api: IpAddr,
    pub db: IpAddr,
    pub intruder: IpAddr,
    pub lonely: IpAddr,
    /// The host's address on the bridge.
    pub host: IpAddr,
}

impl Shop {
    /// IPv4 addresses, then IPv6 addresses.
    pub fn families(&self) -> [Addrs; 2] {
        [0, 1].map(|i| Addrs {
            web: self.web.addrs()[i],
            api: self.api.addrs()[i],
            db: self.db.addrs()[i],
            intruder: self.intruder.addrs()[i],
            lonely: self.lonely.addrs()[i],
            host: self.host.addrs()[i],
        })
    }
}

pub mod daemon;

/// Runs `f` on a thread that has entered `ns`: sockets it makes belong to
/// that namespace for good.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let path = Path::new("/run/netns").join(ns.name());
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path)?;
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .expect("a thread inside a test namespace panicked")
    })
}

/// A UDP socket on `[::]:port` (IPv4 too).
pub fn udp_bind(ns: &Netns, port: u16) -> UdpSocket {
    in_netns(ns, || {
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(false)?;
        s.bind(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port).into())?;
        Ok(s.into())
    })
    .unwrap_or_else(|e| panic!("binding udp/{port} in {}: {e}", ns.name()))
}
