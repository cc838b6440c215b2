//! `hostwall-probe`: real TCP and UDP traffic for the tests and the demo,
//! run inside a namespace with `ip netns exec`.
//!
//! ```text
//! hostwall-probe serve SPEC...      SPEC = tcp:PORT | udp:PORT | tcpecho:PORT | udpseq:PORT
//! hostwall-probe connect tcp|udp ADDR:PORT [--timeout MS] [--source IP] [--sport PORT] [--size BYTES]
//! hostwall-probe udp-seq ADDR:PORT [--rate PPS] [--new-flows 0|1]
//! hostwall-probe tcp-stream ADDR:PORT [--chunk BYTES] [--interval MS]
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
//!
//! Streams, for watching a flow across policy updates and agent restarts:
//! `tcpecho` echoes every byte of a TCP connection (printing `accept tcpecho
//! PORT PEER`); `udpseq` prints `seq PORT N PEER` for every sequence-numbered
//! datagram. `udp-seq` sends datagrams numbered from 0 at a steady rate until
//! its stdin closes, then prints `sent N errors E`. `tcp-stream` connects
//! (printing `connected LOCAL`), writes a counted byte pattern in chunks,
//! checks every echoed byte against it and prints `progress sent=S echoed=E`
//! every 100 ms; when its stdin closes it stops writing, waits for the rest
//! of the echo and prints `done sent=S echoed=E` (exit 0). Any connection
//! error or wrong byte prints `error ...` and exits 1 at once.

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
        Some("udp-seq") => udp_seq(&args[1..]),
        Some("tcp-stream") => tcp_stream(&args[1..]),
        _ => Err(usage("expected `serve`, `connect`, `udp-seq` or `tcp-stream`")),
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
            "{message}\nusage: hostwall-probe serve tcp:PORT|udp:PORT|tcpecho:PORT|udpseq:PORT...\n       hostwall-probe connect tcp|udp ADDR:PORT [--timeout MS] [--source IP] [--sport PORT] [--size BYTES]\n       hostwall-probe udp-seq ADDR:PORT [--rate PPS] [--new-flows 0|1]\n       hostwall-probe tcp-stream ADDR:PORT [--chunk BYTES] [--interval MS]"
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
            "tcpecho" => {
                let listener = bind_any(Type::STREAM, Protocol::TCP, port).map_err(|e| other(spec, e))?;
                listener.listen(128).map_err(|e| other(spec, e))?;
                let listener: TcpListener = listener.into();
                std::thread::spawn(move || serve_tcp_echo(listener, port));
            }
            "udpseq" => {
                let socket = bind_any(Type::DGRAM, Protocol::UDP, port).map_err(|e| other(spec, e))?;
                // A receiver starved of CPU for a while must not lose
                // datagrams in its own socket buffer: a lost number has to
                // mean a dropped packet.
                force_recv_buffer(&socket, 8 << 20).map_err(|e| other(spec, e))?;
                let socket: UdpSocket = socket.into();
                std::thread::spawn(move || serve_udp_seq(socket, port));
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

fn force_recv_buffer(socket: &Socket, bytes: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SO_RCVBUFFORCE (root) is not capped by net.core.rmem_max.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn serve_tcp_echo(listener: TcpListener, port: u16) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            if let Ok(peer) = conn.peer_addr() {
                say(&format!("accept tcpecho {port} {}", canonical(peer)));
            }
            let mut buf = vec![0u8; 65536];
            loop {
                match (&conn).read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if (&conn).write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

/// The payload of datagram `n` of `udp-seq`.
fn seq_payload(n: u64) -> String {
    format!("hwseq {n}\n")
}

fn serve_udp_seq(socket: UdpSocket, port: u16) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        let seq = text
            .strip_prefix("hwseq ")
            .and_then(|t| t.trim().parse::<u64>().ok())
            .map_or_else(|| "?".to_string(), |n| n.to_string());
        say(&format!("seq {port} {seq} {}", canonical(peer)));
    }
}

// ---------------------------------------------------------------------------
// streams

/// Returns a flag that turns true once stdin reaches end of file (or
/// fails): how the harness says "stop".
fn stdin_closed() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let set = flag.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        while matches!(io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        set.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    flag
}

fn stream_dst(args: &[String], what: &str) -> Result<SocketAddr, Failure> {
    args.first()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| usage(&format!("{what} needs ADDR:PORT ([ADDR]:PORT for IPv6)")))
}

/// `--flag value` pairs after the address, as numbers.
fn numeric_flags(args: &[String], known: &[&str]) -> Result<Vec<(String, u64)>, Failure> {
    let mut out = Vec::new();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        if !known.contains(&flag.as_str()) {
            return Err(usage(&format!("unknown option {flag}")));
        }
        let value = rest.next().ok_or_else(|| usage(&format!("{flag} needs a value")))?;
        let n = value
            .parse()
            .map_err(|_| usage(&format!("bad value {value:?} for {flag}")))?;
        out.push((flag.clone(), n));
    }
    Ok(out)
}

fn udp_seq(args: &[String]) -> Result<(), Failure> {
    let dst = stream_dst(args, "udp-seq")?;
    let mut rate = 50u64;
    let mut new_flows = false;
    for (flag, n) in numeric_flags(&args[1..], &["--rate", "--new-flows"])? {
        match flag.as_str() {
            "--rate" => rate = n.max(1),
            _ => new_flows = n != 0,
        }
    }
    let stop = stdin_closed();
    let bind: SocketAddr = match dst {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    // Unconnected: an ICMP error must not turn later sends into errors.
    let socket = UdpSocket::bind(bind).map_err(|e| other("binding", e))?;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        // A steady schedule: a late wake-up sends what is due, in order.
        let due = start + interval * (sent + errors) as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
            continue;
        }
        // With --new-flows 1 each datagram leaves from a port of its own:
        // a new flow each.
        let fresh;
        let from = if new_flows {
            fresh = UdpSocket::bind(bind).map_err(|e| other("binding", e))?;
            &fresh
        } else {
            &socket
        };
        match from.send_to(seq_payload(sent).as_bytes(), dst) {
            Ok(_) => sent += 1,
            Err(_) => errors += 1,
        }
    }
    say(&format!("sent {sent} errors {errors}"));
    Ok(())
}

/// Byte `offset` of the stream `tcp-stream` writes.
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

fn fail_now(message: String) -> ! {
    say(&format!("error {message}"));
    std::process::exit(1);
}

fn tcp_stream(args: &[String]) -> Result<(), Failure> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let dst = stream_dst(args, "tcp-stream")?;
    let (mut chunk, mut interval_ms) = (1024u64, 10u64);
    for (flag, n) in numeric_flags(&args[1..], &["--chunk", "--interval"])? {
        match flag.as_str() {
            "--chunk" => chunk = n.clamp(1, 1 << 20),
            _ => interval_ms = n,
        }
    }
    let stop = stdin_closed();
    let stream = TcpStream::connect_timeout(&dst, Duration::from_secs(10)).map_err(|e| classify("connecting", e))?;
    let local = stream.local_addr().map_err(|e| other("local address", e))?;
    say(&format!("connected {local}"));
    let sent = Arc::new(AtomicU64::new(0));
    let echoed = Arc::new(AtomicU64::new(0));

    let reader = stream.try_clone().map_err(|e| other("cloning the socket", e))?;
    let got = echoed.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut offset = 0u64;
        loop {
            match (&reader).read(&mut buf) {
                Ok(0) => fail_now(format!("the connection was closed after {offset} echoed bytes")),
                Ok(n) => {
                    for (i, b) in buf[..n].iter().enumerate() {
                        if *b != pattern(offset + i as u64) {
                            fail_now(format!("echoed byte {} is wrong", offset + i as u64));
                        }
                    }
                    offset += n as u64;
                    got.store(offset, Ordering::SeqCst);
                }
                Err(e) => fail_now(format!("reading after {offset} echoed bytes: {e}")),
            }
        }
    });

    let writer = stream;
    let put = sent.clone();
    let writing = stop.clone();
    std::thread::spawn(move || {
        let mut offset = 0u64;
        let mut buf = vec![0u8; chunk as usize];
        while !writing.load(Ordering::SeqCst) {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = pattern(offset + i as u64);
            }
            if let Err(e) = (&writer).write_all(&buf) {
                fail_now(format!("writing after {offset} bytes: {e}"));
            }
            offset += chunk;
            put.store(offset, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(interval_ms));
        }
    });

    let report = || {
        format!(
            "sent={} echoed={}",
            sent.load(Ordering::SeqCst),
            echoed.load(Ordering::SeqCst)
        )
    };
    while !stop.load(Ordering::SeqCst) {
        say(&format!("progress {}", report()));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The writer finishes the chunk it is on; then the echo has to catch
    // up with what was written.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = (u64::MAX, u64::MAX);
    loop {
        let now = (sent.load(Ordering::SeqCst), echoed.load(Ordering::SeqCst));
        if now.0 == now.1 && now == last {
            say(&format!("done {}", report()));
            return Ok(());
        }
        if Instant::now() > deadline {
            fail_now(format!("the echo stopped short: {}", report()));
        }
        last = now;
        std::thread::sleep(Duration::from_millis(100));
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
