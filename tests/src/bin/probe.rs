//! `hostwall-probe`: real TCP and UDP traffic for the tests and the demo,
//! run inside a namespace with `ip netns exec`.
//!
//! ```text
//! hostwall-probe serve SPEC...      SPEC = tcp:PORT | udp:PORT
//! hostwall-probe connect tcp|udp ADDR:PORT [--timeout MS] [--source IP] [--sport PORT] [--size BYTES]
//! ```
//!
//! `serve` listens on every address of the namespace, IPv4 and IPv6, and
//! echoes each line it gets. It prints `ready` once every socket is bound,
//! then `recv PROTO PORT PEER` for each message, so that the harness can
//! tell what arrived even when no reply can get back (spoofed sources).
//!
//! `connect` sends one line (padded to `--size` bytes: UDP datagrams larger
//! than the MTU leave as IP fragments) and waits for its echo. Exit codes: 0 echoed,
//! 1 timed out, 3 refused or unreachable (the packet reached a host, but no
//! server), 2 anything else (bad usage, bind failure, wrong echo).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, Socket, Type};

const EXIT_TIMEOUT: u8 = 1;
const EXIT_OTHER: u8 = 2;
const EXIT_REFUSED: u8 = 3;
/// The largest message echoed (a UDP payload is at most 65507 bytes).
const MAX_MESSAGE: u64 = 60_000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("connect") => connect(&args[1..]),
        _ => Err(usage("expected `serve` or `connect`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, message }) => {
            eprintln!("hostwall-probe: {message}");
            ExitCode::from(code)
        }
    }
}

struct Failure {
    code: u8,
    message: String,
}

fn usage(message: &str) -> Failure {
    Failure {
        code: EXIT_OTHER,
        message: format!(
            "{message}\nusage: hostwall-probe serve tcp:PORT|udp:PORT...\n       hostwall-probe connect tcp|udp ADDR:PORT [--timeout MS] [--source IP] [--sport PORT] [--size BYTES]"
        ),
    }
}

fn other(context: &str, e: io::Error) -> Failure {
    Failure {
        code: EXIT_OTHER,
        message: format!("{context}: {e}"),
    }
}

/// Sorts a network error into the exit codes the harness tells apart.
fn classify(context: &str, e: io::Error) -> Failure {
    let code = match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => EXIT_TIMEOUT,
        io::ErrorKind::ConnectionRefused
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::HostUnreachable
        | io::ErrorKind::NetworkUnreachable => EXIT_REFUSED,
        _ => EXIT_OTHER,
    };
    Failure {
        code,
        message: format!("{context}: {e}"),
    }
}

// ---------------------------------------------------------------------------
// serve

fn serve(specs: &[String]) -> Result<(), Failure> {
    if specs.is_empty() {
        return Err(usage("serve needs at least one tcp:PORT or udp:PORT"));
    }
    for spec in specs {
        let (proto, port) = spec
            .split_once(':')
            .ok_or_else(|| usage(&format!("bad spec {spec:?}")))?;
        let port: u16 = port.parse().map_err(|_| usage(&format!("bad port in {spec:?}")))?;
        match proto {
            "tcp" => {
                let listener = bind_any(Type::STREAM, Protocol::TCP, port).map_err(|e| other(spec, e))?;
                listener.listen(128).map_err(|e| other(spec, e))?;
                let listener: TcpListener = listener.into();
                std::thread::spawn(move || serve_tcp(listener, port));
            }
            "udp" => {
                let socket: UdpSocket = bind_any(Type::DGRAM, Protocol::UDP, port)
                    .map_err(|e| other(spec, e))?
                    .into();
                std::thread::spawn(move || serve_udp(socket, port));
            }
            _ => return Err(usage(&format!("bad protocol in {spec:?}"))),
        }
    }
    say("ready");
    loop {
        std::thread::park();
    }
}

/// A dual-stack socket on `[::]:port`. SO_REUSEADDR lets a UDP client bind
/// the same port (to send from a server's port) while the server runs.
fn bind_any(ty: Type, proto: Protocol, port: u16) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV6, ty, Some(proto))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
    Ok(socket)
}

fn say(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The peer as the harness writes addresses: IPv4 peers of a dual-stack
/// socket appear as IPv4, not as v4-mapped IPv6.
fn canonical(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

fn serve_tcp(listener: TcpListener, port: u16) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let _ = echo_tcp(conn, port);
        });
    }
}

fn echo_tcp(conn: TcpStream, port: u16) -> io::Result<()> {
    let peer = canonical(conn.peer_addr()?);
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(&conn).take(MAX_MESSAGE).read_line(&mut line)?;
    say(&format!("recv tcp {port} {peer}"));
    (&conn).write_all(line.as_bytes())
}

fn serve_udp(socket: UdpSocket, port: u16) {
    let mut buf = vec![0u8; MAX_MESSAGE as usize];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        say(&format!("recv udp {port} {}", canonical(peer)));
        let _ = socket.send_to(&buf[..n], peer);
    }
}

// ---------------------------------------------------------------------------
// connect

struct ConnectArgs {
    tcp: bool,
    dst: SocketAddr,
    timeout: Duration,
    source: Option<IpAddr>,
    sport: Option<u16>,
    size: usize,
}

fn parse_connect(args: &[String]) -> Result<ConnectArgs, Failure> {
    let tcp = match args.first().map(String::as_str) {
        Some("tcp") => true,
        Some("udp") => false,
        _ => return Err(usage("connect needs tcp or udp")),
    };
    let dst: SocketAddr = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| usage("connect needs ADDR:PORT ([ADDR]:PORT for IPv6)"))?;
    let mut out = ConnectArgs {
        tcp,
        dst,
        timeout: Duration::from_millis(1000),
        source: None,
        sport: None,
        size: 0,
    };
    let mut rest = args[2..].iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| usage(&format!("{flag} needs a value")))?;
        let bad = || usage(&format!("bad value {value:?} for {flag}"));
        match flag.as_str() {
            "--timeout" => out.timeout = Duration::from_millis(value.parse().map_err(|_| bad())?),
            "--source" => out.source = Some(value.parse().map_err(|_| bad())?),
            "--sport" => out.sport = Some(value.parse().map_err(|_| bad())?),
            "--size" => out.size = value.parse().map_err(|_| bad())?,
            _ => return Err(usage(&format!("unknown option {flag}"))),
        }
    }
    Ok(out)
}

fn connect(args: &[String]) -> Result<(), Failure> {
    let args = parse_connect(args)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    if args.size > MAX_MESSAGE as usize {
        return Err(usage(&format!("--size is at most {MAX_MESSAGE}")));
    }
    let mut payload = format!("hostwall-probe {} {nanos} ", std::process::id());
    while payload.len() + 1 < args.size {
        payload.push('x');
    }
    payload.push('\n');
    let deadline = Instant::now() + args.timeout;
    let (ty, proto) = if args.tcp {
        (Type::STREAM, Protocol::TCP)
    } else {
        (Type::DGRAM, Protocol::UDP)
    };
    let socket = Socket::new(Domain::for_address(args.dst), ty, Some(proto)).map_err(|e| other("socket", e))?;
    if args.source.is_some() || args.sport.is_some() {
        let ip = args.source.unwrap_or(match args.dst {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        });
        let local = SocketAddr::new(ip, args.sport.unwrap_or(0));
        socket.set_reuse_address(true).map_err(|e| other("SO_REUSEADDR", e))?;
        socket
            .bind(&local.into())
            .map_err(|e| other(&format!("binding {local}"), e))?;
    }
    let what = format!("{} {}", if args.tcp { "tcp" } else { "udp" }, args.dst);
    let reply = if args.tcp {
        socket
            .connect_timeout(&args.dst.into(), args.timeout)
            .map_err(|e| classify(&what, e))?;
        let stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(remaining(deadline)))
            .map_err(|e| other("timeout", e))?;
        (&stream)
            .write_all(payload.as_bytes())
            .map_err(|e| classify(&what, e))?;
        let mut line = String::new();
        BufReader::new(&stream)
            .take(MAX_MESSAGE)
            .read_line(&mut line)
            .map_err(|e| classify(&what, e))?;
        line
    } else {
        // A connected UDP socket reports ICMP port unreachable as
        // ECONNREFUSED: "no server" stays distinct from "dropped".
        socket.connect(&args.dst.into()).map_err(|e| other(&what, e))?;
        let udp: UdpSocket = socket.into();
        udp.send(payload.as_bytes()).map_err(|e| classify(&what, e))?;
        udp.set_read_timeout(Some(remaining(deadline)))
            .map_err(|e| other("timeout", e))?;
        let mut buf = vec![0u8; MAX_MESSAGE as usize];
        let n = udp.recv(&mut buf).map_err(|e| classify(&what, e))?;
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    if reply != payload {
        return Err(Failure {
            code: EXIT_OTHER,
            message: format!("{what}: wrong echo {reply:?}"),
        });
    }
    Ok(())
}

fn remaining(deadline: Instant) -> Duration {
    // A zero read timeout means "block forever"; keep at least 1 ms.
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}
