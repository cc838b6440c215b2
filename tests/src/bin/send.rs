//! `hostwall-send`: hand-made Ethernet frames, sent from inside a test
//! namespace (`ip netns exec`) through an AF_PACKET socket, for what no
//! ordinary socket sends: a bare ACK of no connection, an ICMP error about
//! someone else's flow, a flood from many source ports.
//!
//! ```text
//! hostwall-send [--iface IFACE] [--linear N] [--src-mac MAC] --dst-mac MAC [--count N] FAMILY PACKET
//! hostwall-send [--iface IFACE] [--linear N] --hex FRAME...
//!
//! FAMILY = ipv4 | ipv6
//! PACKET = tcp SRC DST SPORT DPORT FLAGS [PAYLOAD]
//!        | udp SRC DST SPORT DPORT [PAYLOAD]
//!        | icmp-error TYPE CODE SRC DST PACKET     (the packet the error quotes, whole)
//! SPORT, DPORT = PORT | LO-HI                      (frame i uses LO + i, wrapping)
//! FLAGS = some of F S R P A U (S, A, SA, FA, ...) | -
//! ```
//!
//! The quoted packet of `icmp-error` is of the same family; it may be given
//! as one quoted argument. IFACE defaults to `eth0`, the source MAC to
//! IFACE's own, N to the size of the largest port range (1 without one).
//! The IPv4 header, TCP, UDP, ICMP and ICMPv6 checksums are computed, so
//! the receiving stack takes the frames as it would take real ones.
//! `--hex` sends each FRAME (hex digits, `:` allowed) as it is.
//! `--linear N` sends through a virtio-net header whose `hdr_len` is N:
//! the kernel then puts only the first N bytes of each frame in the
//! socket buffer's linear part and the rest in pages, as a NIC or a
//! virtual machine may hand a packet over.
//!
//! Prints `sent N`. Exit codes: 0 sent, 1 the socket failed, 2 bad usage.

use std::net::IpAddr;
use std::process::ExitCode;
use std::time::Duration;

use hostwall_tests::frames::{self, L4, TCP, UDP, fill_checksums};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match parse(&args) {
        Ok(cmd) => cmd,
        Err(e) => {
            eprintln!(
                "hostwall-send: {e}\nusage: hostwall-send [--iface IFACE] [--src-mac MAC] --dst-mac MAC [--count N] \
                 ipv4|ipv6 tcp|udp|icmp-error ...\n       hostwall-send [--iface IFACE] --hex FRAME..."
            );
            return ExitCode::from(2);
        }
    };
    match cmd
        .frames()
        .and_then(|frames| send_all(&cmd.iface, cmd.linear, &frames).map(|()| frames.len()))
    {
        Ok(n) => {
            println!("sent {n}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hostwall-send: {e}");
            ExitCode::from(1)
        }
    }
}

/// What the command line asks for.
struct Command {
    iface: String,
    /// Bytes of each frame in the skb's linear part (`--linear`).
    linear: Option<u16>,
    what: What,
}

enum What {
    /// `--hex`: frames as they are.
    Frames(Vec<Vec<u8>>),
    /// `count` frames of one described packet.
    Packet {
        src_mac: Option<[u8; 6]>,
        dst_mac: [u8; 6],
        count: usize,
        v6: bool,
        desc: Desc,
    },
}

fn parse(args: &[String]) -> Result<Command, String> {
    let mut iface = "eth0".to_string();
    let (mut src_mac, mut dst_mac, mut count, mut hex) = (None, None, None, false);
    let mut linear = None;
    let mut rest = args;
    while let [flag, tail @ ..] = rest
        && flag.starts_with("--")
    {
        if flag == "--hex" {
            hex = true;
            rest = tail;
            break;
        }
        let [value, tail @ ..] = tail else {
            return Err(format!("{flag} needs a value"));
        };
        match flag.as_str() {
            "--iface" => iface = value.clone(),
            "--linear" => linear = Some(value.parse::<u16>().map_err(|_| format!("bad --linear {value:?}"))?),
            "--src-mac" => src_mac = Some(mac(value)?),
            "--dst-mac" => dst_mac = Some(mac(value)?),
            "--count" => count = Some(value.parse::<usize>().map_err(|_| format!("bad --count {value:?}"))?),
            _ => return Err(format!("unknown option {flag}")),
        }
        rest = tail;
    }
    if hex {
        let frames = rest.iter().map(|f| hex_bytes(f)).collect::<Result<Vec<_>, _>>()?;
        if frames.is_empty() {
            return Err("--hex needs at least one frame".into());
        }
        return Ok(Command {
            iface,
            linear,
            what: What::Frames(frames),
        });
    }
    let dst_mac = dst_mac.ok_or("--dst-mac is required")?;
    let (family, rest) = rest.split_first().ok_or("expected ipv4 or ipv6")?;
    let v6 = match family.as_str() {
        "ipv4" => false,
        "ipv6" => true,
        other => return Err(format!("expected ipv4 or ipv6, not {other:?}")),
    };
    let desc = describe(v6, rest)?;
    Ok(Command {
        iface,
        linear,
        what: What::Packet {
            src_mac,
            dst_mac,
            count: count.unwrap_or_else(|| desc.range_len()),
            v6,
            desc,
        },
    })
}

impl Command {
    fn frames(&self) -> Result<Vec<Vec<u8>>, String> {
        let (src_mac, dst_mac, count, v6, desc) = match &self.what {
            What::Frames(frames) => return Ok(frames.clone()),
            What::Packet {
                src_mac,
                dst_mac,
                count,
                v6,
                desc,
            } => (src_mac, dst_mac, *count, *v6, desc),
        };
        let src_mac = match src_mac {
            Some(m) => *m,
            None => own_mac(&self.iface)?,
        };
        let ethertype: u16 = if v6 { 0x86dd } else { 0x0800 };
        Ok((0..count)
            .map(|i| {
                let mut f = Vec::new();
                f.extend_from_slice(dst_mac);
                f.extend_from_slice(&src_mac);
                f.extend_from_slice(&ethertype.to_be_bytes());
                f.extend_from_slice(&desc.packet(i));
                f
            })
            .collect())
    }
}

/// A port, or a range whose ports frame after frame take in turn.
#[derive(Clone, Copy, Debug)]
struct Ports {
    lo: u16,
    hi: u16,
}

impl Ports {
    fn parse(s: &str) -> Result<Ports, String> {
        let bad = || format!("bad port {s:?}");
        let (lo, hi) = match s.split_once('-') {
            Some((lo, hi)) => (lo.parse().map_err(|_| bad())?, hi.parse().map_err(|_| bad())?),
            None => {
                let p = s.parse().map_err(|_| bad())?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(bad());
        }
        Ok(Ports { lo, hi })
    }

    fn len(&self) -> usize {
        (self.hi - self.lo) as usize + 1
    }

    fn nth(&self, i: usize) -> u16 {
        self.lo + (i % self.len()) as u16
    }
}

/// One packet, as the command line describes it.
#[derive(Debug)]
enum Desc {
    Tcp {
        src: IpAddr,
        dst: IpAddr,
        sport: Ports,
        dport: Ports,
        flags: u8,
        payload: Vec<u8>,
    },
    Udp {
        src: IpAddr,
        dst: IpAddr,
        sport: Ports,
        dport: Ports,
        payload: Vec<u8>,
    },
    IcmpError {
        ty: u8,
        code: u8,
        src: IpAddr,
        dst: IpAddr,
        quoted: Box<Desc>,
    },
}

fn describe(v6: bool, args: &[String]) -> Result<Desc, String> {
    let addr = |s: &String| -> Result<IpAddr, String> {
        let a: IpAddr = s.parse().map_err(|_| format!("bad address {s:?}"))?;
        if a.is_ipv6() != v6 {
            return Err(format!("{a} is not an {} address", if v6 { "IPv6" } else { "IPv4" }));
        }
        Ok(a)
    };
    let payload = |rest: &[String]| rest.join(" ").into_bytes();
    match args {
        [kind, src, dst, sport, dport, flags, rest @ ..] if kind == "tcp" => Ok(Desc::Tcp {
            src: addr(src)?,
            dst: addr(dst)?,
            sport: Ports::parse(sport)?,
            dport: Ports::parse(dport)?,
            flags: tcp_flags(flags)?,
            payload: payload(rest),
        }),
        [kind, src, dst, sport, dport, rest @ ..] if kind == "udp" => Ok(Desc::Udp {
            src: addr(src)?,
            dst: addr(dst)?,
            sport: Ports::parse(sport)?,
            dport: Ports::parse(dport)?,
            payload: payload(rest),
        }),
        [kind, ty, code, src, dst, quoted @ ..] if kind == "icmp-error" => {
            let number = |s: &String| s.parse::<u8>().map_err(|_| format!("bad ICMP type or code {s:?}"));
            // The quoted packet may come as one argument: split it.
            let quoted: Vec<String> = match quoted {
                [one] => one.split_whitespace().map(str::to_string).collect(),
                many => many.to_vec(),
            };
            if quoted.first().is_some_and(|k| k == "icmp-error") {
                return Err("an ICMP error quotes a tcp or udp packet".into());
            }
            Ok(Desc::IcmpError {
                ty: number(ty)?,
                code: number(code)?,
                src: addr(src)?,
                dst: addr(dst)?,
                quoted: Box::new(describe(v6, &quoted)?),
            })
        }
        _ => Err(format!("cannot read the packet {:?}", args.join(" "))),
    }
}

impl Desc {
    /// Frames a flood sends by default: one per port of the largest range.
    fn range_len(&self) -> usize {
        match self {
            Desc::Tcp { sport, dport, .. } | Desc::Udp { sport, dport, .. } => sport.len().max(dport.len()),
            Desc::IcmpError { quoted, .. } => quoted.range_len(),
        }
    }

    /// The IP packet of frame `i`, checksums filled in.
    fn packet(&self, i: usize) -> Vec<u8> {
        let (src, dst, l4) = match self {
            Desc::Tcp {
                src,
                dst,
                sport,
                dport,
                flags,
                payload,
            } => {
                let mut l4 = frames::tcp(sport.nth(i), dport.nth(i), *flags).bytes();
                l4.extend_from_slice(payload);
                (src, dst, L4::Proto(TCP, l4))
            }
            Desc::Udp {
                src,
                dst,
                sport,
                dport,
                payload,
            } => {
                let mut l4 = frames::udp_with_length(sport.nth(i), dport.nth(i), 8 + payload.len() as u16).bytes();
                l4.extend_from_slice(payload);
                (src, dst, L4::Proto(UDP, l4))
            }
            Desc::IcmpError {
                ty,
                code,
                src,
                dst,
                quoted,
            } => (src, dst, frames::icmp(*ty, *code, [0; 4], quoted.packet(i))),
        };
        let mut packet = frames::ip_packet_of(*src, *dst, &l4);
        fill_checksums(&mut packet);
        packet
    }
}

fn tcp_flags(s: &str) -> Result<u8, String> {
    if s == "-" {
        return Ok(0);
    }
    s.chars().try_fold(0u8, |acc, c| {
        let bit = match c {
            'F' => frames::FIN,
            'S' => frames::SYN,
            'R' => frames::RST,
            'P' => 0x08,
            'A' => frames::ACK,
            'U' => 0x20,
            _ => return Err(format!("bad TCP flag {c:?} in {s:?} (F S R P A U, or -)")),
        };
        Ok(acc | bit)
    })
}

fn mac(s: &str) -> Result<[u8; 6], String> {
    let bytes = hex_bytes(s)?;
    bytes.try_into().map_err(|_| format!("bad MAC address {s:?}"))
}

fn hex_bytes(s: &str) -> Result<Vec<u8>, String> {
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in {s:?}"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|_| format!("bad hex in {s:?}")))
        .collect()
}

/// The interface's own MAC address (`ip netns exec` mounts the namespace's
/// /sys).
fn own_mac(iface: &str) -> Result<[u8; 6], String> {
    let path = format!("/sys/class/net/{iface}/address");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
    mac(text.trim())
}

/// Sends every frame out of `iface` as it is.
fn send_all(iface: &str, linear: Option<u16>, frames: &[Vec<u8>]) -> Result<(), String> {
    let name = std::ffi::CString::new(iface).map_err(|_| format!("bad interface name {iface:?}"))?;
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(format!("no interface {iface}: {}", std::io::Error::last_os_error()));
    }
    // Protocol 0: the socket sends only, it receives nothing.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("AF_PACKET socket: {}", std::io::Error::last_os_error()));
    }
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size,
    // csum_start, csum_offset (no offload asked for).
    let vnet = linear.map(|n| {
        let mut h = [0u8; 10];
        h[2..4].copy_from_slice(&n.to_ne_bytes());
        h
    });
    if vnet.is_some() {
        let on: libc::c_int = 1;
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(format!("PACKET_VNET_HDR: {}", std::io::Error::last_os_error()));
        }
    }
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    for frame in frames {
        let frame: Vec<u8> = match vnet {
            Some(h) => h.iter().chain(frame).copied().collect(),
            None => frame.clone(),
        };
        // A full transmit queue says ENOBUFS: wait for it to drain, so that
        // every frame of a flood leaves.
        let mut tries = 0;
        loop {
            let rc = unsafe {
                libc::sendto(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc >= 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            tries += 1;
            if e.raw_os_error() != Some(libc::ENOBUFS) || tries > 1000 {
                return Err(format!("sending on {iface}: {e}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}
