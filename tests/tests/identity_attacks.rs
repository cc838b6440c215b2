//! The identity attacks of SECURITY.md (section 5), with real traffic
//! against the running agent. Frames no socket would send come from
//! `hostwall-send` inside the attacker's namespace: an endpoint `a`, or `x`,
//! a container on the bridge that the policy does not declare. The victim
//! is endpoint `b`, read as a user would read it: its sockets, its
//! neighbour table, its routes. Every attack is first tried with no agent,
//! to show that it works when nothing filters, then with the agent, whose
//! counters must show the drop under its reason.
//!
//! 1. Packets to every station (broadcast, multicast) and to an address of
//!    b the policy does not list are judged by b's ingress, IPv4 and IPv6.
//! 2. a's frames carry a's MAC: a frame with c's MAC as its source is
//!    dropped, and the bridge does not learn c's MAC on a's port.
//! 3. a cannot advertise the host's (the router's) link-local address.
//! 4. x cannot use the host's address, nor inject into a's tracked flow
//!    with a's address, IPv4 and IPv6.
//! 5. x's router advertisements do not reach b.
//! 6. A VLAN-tagged frame from a does not leave a's interface.
//! 7. A VXLAN packet x sends to the host, decapsulated into the bridge,
//!    meets the same path rules: its inner packet cannot claim a's or the
//!    host's address.
//! 8. An allowed packet whose IPv6 extension headers reach past the first
//!    256 bytes, in paged socket-buffer data, is judged whole and passes.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{bins, udp_bind};
use hostwall_tests::bins::locate_sender;
use hostwall_tests::frames::{self, Frame};
use hostwall_tests::netns::run;
use hostwall_tests::{Agent, Container, DropReason, Host, Netns, Subnet};

const DEADLINE: Duration = Duration::from_secs(3);
/// How long a datagram that should be dropped is waited for.
const DROPPED: Duration = Duration::from_millis(700);
const PORT: u16 = 5353;
/// A port a may send to but b does not accept.
const DENIED_PORT: u16 = 5354;

struct Lab {
    containers: Vec<Container>,
    host: Host,
}

impl Lab {
    /// Endpoints a (.11), b (.21), c (.31) and the undeclared x (.99).
    fn new() -> Lab {
        let host = Host::builder(&bins())
            .bridge(Subnet::new([10, 94, 0], "fd00:94::"))
            .build()
            .expect("building the host namespace");
        let containers = [("a", 11), ("b", 21), ("c", 31), ("x", 99)]
            .iter()
            .map(|(name, n)| {
                host.add_container(name, &format!("hw-{name}"), *n)
                    .unwrap_or_else(|e| panic!("adding container {name}: {e:#}"))
            })
            .collect();
        Lab { containers, host }
    }

    fn c(&self, name: &str) -> &Container {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .expect("a container of the lab")
    }

    /// a may send UDP 5353 and 5354 anywhere; b accepts UDP 5353 from a
    /// and the host, nothing else, and may send it to c; c accepts UDP 5353
    /// from b; x is no endpoint.
    fn policy(&self) -> String {
        let ep = |name: &str, group: &str| {
            let c = self.c(name);
            format!(
                "  - {{name: {name}, interface: {}, addresses: [\"{}\", \"{}\"], groups: [{group}]}}\n",
                c.iface, c.v4, c.v6
            )
        };
        format!(
            r#"
version: 1
groups:
  a:
    egress:
      - {{proto: udp, ports: "{PORT}-{DENIED_PORT}", to: [{{cidr: 0.0.0.0/0}}, {{cidr: "::/0"}}]}}
  b:
    ingress:
      - {{proto: udp, ports: {PORT}, from: [{{group: a}}, host]}}
    egress:
      - {{proto: udp, ports: {PORT}, to: [{{group: c}}]}}
  c:
    ingress:
      - {{proto: udp, ports: {PORT}, from: [{{group: b}}]}}
endpoints:
{}{}{}"#,
            ep("a", "a"),
            ep("b", "b"),
            ep("c", "c")
        )
    }

    fn start_agent(&self) -> Agent {
        Agent::start(&self.host, &self.policy()).expect("starting the agent")
    }
}

fn sender() -> &'static Path {
    static SENDER: OnceLock<PathBuf> = OnceLock::new();
    SENDER.get_or_init(|| {
        locate_sender(Some(Path::new(env!("CARGO_BIN_EXE_hostwall-send")))).expect("locating hostwall-send")
    })
}

/// Runs `hostwall-send ARGS` in `ns` (from its eth0).
fn send(ns: &Netns, args: &[&str]) {
    let mut cmd = ns.command(sender().to_str().expect("a UTF-8 path"));
    cmd.args(args);
    run(&mut cmd).unwrap_or_else(|e| panic!("hostwall-send {args:?} in {}: {e:#}", ns.name()));
}

/// `f` with the checksums of the IP packet at `ip_at` filled in, so that
/// the receiving stack takes it.
fn with_checksums(mut f: Frame, ip_at: usize) -> Frame {
    frames::fill_checksums(&mut f.0[ip_at..]);
    f
}

fn send_frame(ns: &Netns, frame: &Frame) {
    let hex: String = frame.0.iter().map(|b| format!("{b:02x}")).collect();
    send(ns, &["--hex", &hex]);
}

fn mac_of(ns: &Netns, iface: &str) -> String {
    ns.exec(&["cat", &format!("/sys/class/net/{iface}/address")])
        .unwrap_or_else(|e| panic!("reading the MAC address of {iface}: {e:#}"))
        .trim()
        .to_string()
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut out = [0; 6];
    for (o, part) in out.iter_mut().zip(mac.split(':')) {
        *o = u8::from_str_radix(part, 16).expect("a MAC address");
    }
    out
}

fn family(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "ipv4" } else { "ipv6" }
}

/// The datagrams with `payload` that `socket` receives within `within`.
fn received(socket: &UdpSocket, payload: &str, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut n = 0;
    let mut buf = [0u8; 9000];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return n;
        }
        socket.set_read_timeout(Some(left)).expect("a read timeout");
        match socket.recv(&mut buf) {
            Ok(len) if &buf[..len] == payload.as_bytes() => n += 1,
            Ok(_) => {}
            Err(_) => return n,
        }
    }
}

/// One datagram with `payload` arrives at `socket`, or none does.
fn arrives(socket: &UdpSocket, payload: &str, expected: bool) -> bool {
    let n = received(socket, payload, if expected { DEADLINE } else { DROPPED });
    n > 0
}

// ---------------------------------------------------------------------------
// 1. Destinations

#[test]
fn packets_to_every_station_or_an_unlisted_address_are_judged_by_the_receivers_ingress() {
    let lab = Lab::new();
    let (a, b) = (lab.c("a"), lab.c("b"));
    let unlisted: IpAddr = "10.94.0.121".parse().unwrap();
    b.add_address(unlisted)
        .expect("adding an address the policy does not list");
    let b_mac = mac_of(b.ns(), "eth0");
    let sock = udp_bind(b.ns(), DENIED_PORT);
    // (destination, destination MAC)
    let cases: Vec<(IpAddr, String)> = vec![
        ("10.94.0.255".parse().unwrap(), "ff:ff:ff:ff:ff:ff".into()),
        ("255.255.255.255".parse().unwrap(), "ff:ff:ff:ff:ff:ff".into()),
        ("ff02::1".parse().unwrap(), "33:33:00:00:00:01".into()),
        (unlisted, b_mac.clone()),
    ];
    let try_all = |agent: Option<&Agent>| {
        for (i, (dst, mac)) in cases.iter().enumerate() {
            let payload = format!("to-{i}-{}", agent.is_some());
            let src = a.addr_like(*dst);
            let before = agent.map(|a| a.stats().expect("stats"));
            send(
                a.ns(),
                &[
                    "--dst-mac",
                    mac,
                    family(*dst),
                    "udp",
                    &src.to_string(),
                    &dst.to_string(),
                    "40000",
                    &DENIED_PORT.to_string(),
                    &payload,
                ],
            );
            match (agent, before) {
                (None, _) => assert!(
                    arrives(&sock, &payload, true),
                    "control: {dst} reaches b without the agent"
                ),
                (Some(agent), Some(before)) => {
                    assert!(!arrives(&sock, &payload, false), "{dst} reached b past its ingress");
                    agent.assert_dropped_since(&before, DropReason::IngressDenied, 1);
                }
                _ => unreachable!(),
            }
        }
    };
    try_all(None);
    let agent = lab.start_agent();
    try_all(Some(&agent));
    // With the agent, to b's listed address: b's ingress decides, denying
    // the same port and allowing the one it lists.
    let before = agent.stats().expect("stats");
    let (a4, b4) = (a.v4.to_string(), b.v4.to_string());
    send(
        a.ns(),
        &["--dst-mac", &b_mac, "ipv4", "udp", &a4, &b4, "40001", "5354", "listed"],
    );
    assert!(
        !arrives(&sock, "listed", false),
        "a's datagram to b's listed address, denied port"
    );
    agent.assert_dropped_since(&before, DropReason::IngressDenied, 1);
    let allowed = udp_bind(b.ns(), PORT);
    send(
        a.ns(),
        &["--dst-mac", &b_mac, "ipv4", "udp", &a4, &b4, "40001", "5353", "allowed"],
    );
    assert!(
        arrives(&allowed, "allowed", true),
        "a's datagram to b's listed address, allowed port"
    );
}

// ---------------------------------------------------------------------------
// 2. L2

#[test]
fn an_endpoint_cannot_send_with_another_endpoints_mac() {
    let lab = Lab::new();
    let (a, b, c) = (lab.c("a"), lab.c("b"), lab.c("c"));
    let (b_mac, c_mac) = (mac_of(b.ns(), "eth0"), mac_of(c.ns(), "eth0"));
    let b_sock = udp_bind(b.ns(), PORT);
    let c_sock = udp_bind(c.ns(), PORT);
    let attempt = |payload: &str| {
        // a sends to b as c, so that the bridge learns c's MAC on a's port.
        send(
            a.ns(),
            &[
                "--src-mac",
                &c_mac,
                "--dst-mac",
                &b_mac,
                "ipv4",
                "udp",
                &a.v4.to_string(),
                &b.v4.to_string(),
                "40000",
                "5353",
                payload,
            ],
        );
    };
    let b_to_c = |payload: &str| {
        let s = common::in_netns(b.ns(), || {
            let s = UdpSocket::bind(SocketAddr::new(b.v4.into(), 0))?;
            s.send_to(payload.as_bytes(), SocketAddr::new(c.v4.into(), PORT))?;
            Ok(s)
        });
        s.expect("b sends to c");
    };
    let learned_on_a = || {
        let fdb = lab
            .host
            .ns()
            .exec(&["bridge", "fdb", "show", "br", "br0"])
            .unwrap_or_default();
        fdb.lines()
            .any(|l| l.starts_with(&c_mac) && l.contains(&format!("dev {} ", a.iface)))
    };
    // Control: without the agent the frame arrives, and the bridge learns
    // c's MAC on a's port (where c's traffic then goes).
    b_to_c("warm");
    assert!(arrives(&c_sock, "warm", true), "b reaches c");
    attempt("spoofed-mac");
    assert!(learned_on_a(), "control: the bridge learns c's MAC on a's port");
    assert!(arrives(&b_sock, "spoofed-mac", true), "control: the frame reaches b");
    run(lab.host.ns().command("bridge").args(["fdb", "flush", "dev", &a.iface])).ok();

    let agent = lab.start_agent();
    let before = agent.stats().expect("stats");
    attempt("spoofed-mac-2");
    assert!(!learned_on_a(), "the bridge learned c's MAC on a's port");
    assert!(
        !arrives(&b_sock, "spoofed-mac-2", false),
        "a frame with c's MAC left a's interface"
    );
    agent.assert_dropped_since(&before, DropReason::MacSpoofed, 1);
    b_to_c("still-c");
    assert!(arrives(&c_sock, "still-c", true), "c's traffic still reaches c");
}

// ---------------------------------------------------------------------------
// 3. Neighbour discovery

fn link_local_of(ns: &Netns, iface: &str) -> String {
    let out = ns
        .exec(&["ip", "-6", "-o", "addr", "show", "dev", iface, "scope", "link"])
        .expect("ip addr");
    out.split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .expect("a link-local address")
        .to_string()
}

/// b's neighbour entry for `addr` on eth0: its link-layer address.
fn neighbour_of(ns: &Netns, addr: &str) -> Option<String> {
    let out = ns.exec(&["ip", "-6", "neigh", "show", addr, "dev", "eth0"]).ok()?;
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_string)
}

#[test]
fn an_endpoint_cannot_advertise_the_routers_link_local_address() {
    let lab = Lab::new();
    let (a, b) = (lab.c("a"), lab.c("b"));
    let router_ll = link_local_of(lab.host.ns(), "br0");
    let a_mac = mac_of(a.ns(), "eth0");
    let a_ll = link_local_of(a.ns(), "eth0");
    let advert = || {
        let mut option = vec![2, 1];
        option.extend_from_slice(&mac_bytes(&a_mac));
        let mut na = frames::nd_with(&a_ll, "ff02::1", 136, &router_ll, 255, &option);
        // Unsolicited, override: what a host sends when its address moves.
        na.0[14 + 40 + 4] = 0x20;
        let na = frames::with_src_mac(frames::with_dst_mac(na, [0x33, 0x33, 0, 0, 0, 1]), mac_bytes(&a_mac));
        send_frame(a.ns(), &with_checksums(na, 14));
    };
    // The host's neighbour solicitation for b gives b an entry for the
    // router (whatever becomes of the ping).
    let b_ll = link_local_of(b.ns(), "eth0");
    let learn = || {
        lab.host.ns().ip("-6 neigh flush dev br0").ok();
        let _ = lab
            .host
            .ns()
            .exec(&["ping", "-6", "-c", "1", "-W", "1", &format!("{b_ll}%br0")]);
    };
    // Control: without the agent, b's entry for the router becomes a's MAC.
    learn();
    advert();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        neighbour_of(b.ns(), &router_ll).as_deref(),
        Some(a_mac.as_str()),
        "control: the hijack works"
    );
    b.ns().ip("-6 neigh flush dev eth0").ok();

    let agent = lab.start_agent();
    learn();
    let router_mac = neighbour_of(b.ns(), &router_ll).expect("b knows the router");
    let before = agent.stats().expect("stats");
    advert();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        neighbour_of(b.ns(), &router_ll),
        Some(router_mac),
        "b's route to the router was hijacked"
    );
    agent.assert_dropped_since(&before, DropReason::NdSpoofed, 1);
}

// ---------------------------------------------------------------------------
// 4. and 5. Undeclared ports

#[test]
fn an_undeclared_port_carries_only_its_own_address() {
    let lab = Lab::new();
    let (a, b, x) = (lab.c("a"), lab.c("b"), lab.c("x"));
    let b_mac = mac_of(b.ns(), "eth0");
    let sock = udp_bind(b.ns(), PORT);
    let host = lab.host.addrs();
    let try_all = |agent: Option<&Agent>| {
        for (v, host_addr) in host.iter().enumerate() {
            let dst = b.addrs()[v];
            // As the host, which b's rule admits.
            let payload = format!("as-host-{v}-{}", agent.is_some());
            let before = agent.map(|a| a.stats().expect("stats"));
            send(
                x.ns(),
                &[
                    "--dst-mac",
                    &b_mac,
                    family(dst),
                    "udp",
                    &host_addr.to_string(),
                    &dst.to_string(),
                    "40002",
                    "5353",
                    &payload,
                ],
            );
            if let (Some(agent), Some(before)) = (agent, &before) {
                assert!(!arrives(&sock, &payload, false), "x passed as the host");
                agent.assert_dropped_since(before, DropReason::HostAddressSpoofed, 1);
            } else {
                assert!(arrives(&sock, &payload, true), "control: x passes as the host");
            }
            // Into a's flow a:40003 -> b:5353, as a.
            let a_addr = a.addrs()[v];
            let genuine = format!("genuine-{v}-{}", agent.is_some());
            send(
                a.ns(),
                &[
                    "--dst-mac",
                    &b_mac,
                    family(dst),
                    "udp",
                    &a_addr.to_string(),
                    &dst.to_string(),
                    "40003",
                    "5353",
                    &genuine,
                ],
            );
            assert!(arrives(&sock, &genuine, true), "a's own datagram reaches b");
            let injected = format!("injected-{v}-{}", agent.is_some());
            let before = agent.map(|a| a.stats().expect("stats"));
            send(
                x.ns(),
                &[
                    "--dst-mac",
                    &b_mac,
                    family(dst),
                    "udp",
                    &a_addr.to_string(),
                    &dst.to_string(),
                    "40003",
                    "5353",
                    &injected,
                ],
            );
            if let (Some(agent), Some(before)) = (agent, &before) {
                assert!(!arrives(&sock, &injected, false), "x injected into a's tracked flow");
                agent.assert_dropped_since(before, DropReason::LocalAddressWrongPath, 1);
            } else {
                assert!(arrives(&sock, &injected, true), "control: x injects as a");
            }
        }
    };
    try_all(None);
    let agent = lab.start_agent();
    try_all(Some(&agent));
}

#[test]
fn router_advertisements_from_an_undeclared_port_do_not_reach_endpoints() {
    let lab = Lab::new();
    let (b, x) = (lab.c("b"), lab.c("x"));
    b.ns().sysctl(&["net.ipv6.conf.eth0.accept_ra=2"]).ok();
    let x_mac = mac_of(x.ns(), "eth0");
    let x_ll = link_local_of(x.ns(), "eth0");
    let advert = || {
        // Hop limit 64, managed flags clear, router lifetime 1800 s,
        // reachable and retransmit timers unspecified, x's MAC.
        let mut body = vec![0; 8];
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&mac_bytes(&x_mac));
        let ra = frames::ipv6_icmp_frame(
            &x_ll,
            "ff02::1",
            255,
            false,
            &frames::icmp(134, 0, [64, 0, 0x07, 0x08], body),
        );
        let ra = frames::with_src_mac(frames::with_dst_mac(ra, [0x33, 0x33, 0, 0, 0, 1]), mac_bytes(&x_mac));
        send_frame(x.ns(), &with_checksums(ra, 14));
    };
    let default_via_x = || {
        let out = b
            .ns()
            .exec(&["ip", "-6", "route", "show", "default"])
            .unwrap_or_default();
        out.contains(&x_ll)
    };
    b.ns().ip("-6 route del default").ok();
    advert();
    let deadline = Instant::now() + DEADLINE;
    while !default_via_x() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        default_via_x(),
        "control: x's advertisement gives b a default route via x"
    );
    b.ns().ip(&format!("-6 route del default via {x_ll} dev eth0")).ok();

    let agent = lab.start_agent();
    let before = agent.stats().expect("stats");
    advert();
    std::thread::sleep(DROPPED);
    assert!(!default_via_x(), "x's advertisement reached b");
    agent.assert_dropped_since(&before, DropReason::RouterMessageWrongPath, 1);
}

// ---------------------------------------------------------------------------
// 6. VLAN tags

/// Whether a frame holding `needle` arrives at `ns`'s eth0 within
/// `within` (an AF_PACKET socket opened before `send` runs).
fn captured(ns: &Netns, needle: &str, within: Duration, send: impl FnOnce()) -> bool {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fd = common::in_netns(ns, || {
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, (libc::ETH_P_ALL as u16).to_be() as i32) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
    .expect("a packet socket in the victim's namespace");
    let socket = socket2::Socket::from(fd);
    send();
    let deadline = Instant::now() + within;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("a timeout");
        let Ok(n) = socket.recv(&mut buf) else { return false };
        let bytes: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            return true;
        }
    }
    false
}

#[test]
fn a_vlan_tagged_frame_does_not_leave_an_endpoints_interface() {
    let lab = Lab::new();
    let (a, b) = (lab.c("a"), lab.c("b"));
    let b_mac = mac_bytes(&mac_of(b.ns(), "eth0"));
    let a_mac = mac_bytes(&mac_of(a.ns(), "eth0"));
    // An allowed datagram a -> b, in VLAN 5.
    let tagged = |payload: &str| {
        let inner = frames::frame(
            &a.v4.to_string(),
            &b.v4.to_string(),
            frames::L4::Proto(frames::UDP, {
                let mut u = Vec::new();
                u.extend_from_slice(&40000u16.to_be_bytes());
                u.extend_from_slice(&PORT.to_be_bytes());
                u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u.extend_from_slice(payload.as_bytes());
                u
            }),
        );
        let f = frames::with_src_mac(frames::with_dst_mac(frames::vlan(inner), b_mac), a_mac);
        with_checksums(f, 18)
    };
    let frame = tagged("tagged-frame");
    assert!(
        captured(b.ns(), "tagged-frame", DEADLINE, || send_frame(a.ns(), &frame)),
        "control: the tagged frame reaches b"
    );
    let agent = lab.start_agent();
    let before = agent.stats().expect("stats");
    let frame = tagged("tagged-again");
    assert!(
        !captured(b.ns(), "tagged-again", DROPPED, || send_frame(a.ns(), &frame)),
        "a tagged frame left a's interface"
    );
    agent.assert_dropped_since(&before, DropReason::UnsupportedEthertype, 1);
}

// ---------------------------------------------------------------------------
// 7. Tunnels

/// A UDP datagram's bytes: header (checksum 0 until `with_checksums`), payload.
fn udp_bytes(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

#[test]
fn decapsulated_packets_meet_the_path_rules() {
    let lab = Lab::new();
    let (a, b, x) = (lab.c("a"), lab.c("b"), lab.c("x"));
    let host_v4 = lab.host.addrs()[0];
    // The host ends VXLAN 5 on its bridge address, into the bridge.
    lab.host
        .ns()
        .ip(&format!(
            "link add vx5 type vxlan id 5 dstport 4789 local {host_v4} nolearning"
        ))
        .expect("a VXLAN device");
    lab.host
        .ns()
        .ip("link set vx5 master br0 up")
        .expect("the VXLAN device on the bridge");
    let br_mac = mac_bytes(&mac_of(lab.host.ns(), "br0"));
    let (b_mac, x_mac) = (mac_bytes(&mac_of(b.ns(), "eth0")), mac_bytes(&mac_of(x.ns(), "eth0")));
    let sock = udp_bind(b.ns(), PORT);
    let wrapped = |inner_src: IpAddr, payload: &str| {
        let inner = frames::frame(
            &inner_src.to_string(),
            &b.v4.to_string(),
            frames::L4::Proto(frames::UDP, udp_bytes(40000, PORT, payload.as_bytes())),
        );
        let inner = with_checksums(
            frames::with_dst_mac(frames::with_src_mac(inner, [0x02, 0xee, 0, 0, 0, 1]), b_mac),
            14,
        );
        let mut vxlan = vec![0x08, 0, 0, 0, 0, 0, 5, 0];
        vxlan.extend_from_slice(&inner.0);
        let outer = frames::frame(
            &x.v4.to_string(),
            &host_v4.to_string(),
            frames::L4::Proto(frames::UDP, udp_bytes(40000, 4789, &vxlan)),
        );
        with_checksums(frames::with_src_mac(frames::with_dst_mac(outer, br_mac), x_mac), 14)
    };
    let cases = [
        (IpAddr::from(a.v4), DropReason::LocalAddressWrongPath),
        (host_v4, DropReason::HostAddressSpoofed),
    ];
    for (i, (src, _)) in cases.iter().enumerate() {
        let payload = format!("tunnelled-{i}");
        send_frame(x.ns(), &wrapped(*src, &payload));
        assert!(
            arrives(&sock, &payload, true),
            "control: x's tunnelled packet as {src} reaches b"
        );
    }
    let agent = lab.start_agent();
    for (i, (src, reason)) in cases.iter().enumerate() {
        let payload = format!("tunnelled-again-{i}");
        let before = agent.stats().expect("stats");
        send_frame(x.ns(), &wrapped(*src, &payload));
        assert!(
            !arrives(&sock, &payload, false),
            "x's tunnelled packet as {src} reached b"
        );
        agent.assert_dropped_since(&before, *reason, 1);
    }
}

// ---------------------------------------------------------------------------
// 8. Pulls

#[test]
fn a_long_extension_chain_in_paged_data_is_judged_whole() {
    let lab = Lab::new();
    let (a, b) = (lab.c("a"), lab.c("b"));
    let (a_mac, b_mac) = (mac_bytes(&mac_of(a.ns(), "eth0")), mac_bytes(&mac_of(b.ns(), "eth0")));
    let sock = udp_bind(b.ns(), PORT);
    // A frame longer than a page: the kernel keeps only what the virtio-net
    // header asks for in the linear part (shorter ones it copies whole).
    for c in [a, b] {
        c.ns()
            .ip("link set eth0 mtu 9000")
            .expect("a jumbo MTU in the container");
        lab.host
            .ns()
            .ip(&format!("link set {} mtu 9000", c.iface))
            .expect("a jumbo MTU on the host side");
    }
    let long = |tag: &str| format!("{tag}-{}", "x".repeat(4400));
    // One destination options header of 320 bytes (two options of a type
    // to skip, RFC 4727's experimental 0x1e), then UDP a -> b:5353.
    let frame = |payload: &str| {
        let mut opts = vec![frames::UDP, 39, 0x1e, 156];
        opts.extend(std::iter::repeat_n(0xab, 156));
        opts.extend_from_slice(&[0x1e, 158]);
        opts.extend(std::iter::repeat_n(0xcd, 158));
        assert_eq!(opts.len(), 320);
        let mut body = opts;
        body.extend_from_slice(&udp_bytes(40000, PORT, payload.as_bytes()));
        let f = frames::frame(&a.v6.to_string(), &b.v6.to_string(), frames::L4::Proto(60, body));
        let mut f = frames::with_src_mac(frames::with_dst_mac(f, b_mac), a_mac);
        frames::fill_checksums_at(&mut f.0[14..], 40 + 320, frames::UDP);
        f
    };
    let send_paged = |f: &Frame| {
        let hex: String = f.0.iter().map(|b| format!("{b:02x}")).collect();
        // Only the Ethernet header in the linear part.
        send(a.ns(), &["--linear", "14", "--hex", &hex]);
    };
    send_paged(&frame(&long("paged")));
    assert!(arrives(&sock, &long("paged"), true), "control: the packet reaches b");
    let agent = lab.start_agent();
    let before = agent.stats().expect("stats");
    send_paged(&frame(&long("paged-again")));
    assert!(
        arrives(&sock, &long("paged-again"), true),
        "the allowed packet did not reach b"
    );
    let since = agent.stats().expect("stats").since(&before);
    assert_eq!(
        since.dropped(DropReason::Malformed),
        0,
        "judged on a truncated view: {since}"
    );
}
