//! `hostwall-load`: the traffic generator of `cargo xtask bench`, run
//! inside the benchmark's namespaces with `ip netns exec`.
//!
//! ```text
//! hostwall-load serve PORT [--threads N] [--size BYTES]
//! hostwall-load check ADDR:PORT [--timeout MS]
//! hostwall-load rr    ADDR:PORT --secs S [--size BYTES]
//! hostwall-load crr   ADDR:PORT --secs S [--threads N] [--size BYTES]
//! hostwall-load flood ADDR:PORT --secs S [--size BYTES]
//! ```
//!
//! `serve` answers every request of `--size` bytes with as many bytes, on
//! one TCP port (IPv4 and IPv6); it prints `ready` once it listens.
//! `check` makes one connection and one request: exit 0 when answered, 1
//! when nothing came back in time (dropped), 3 when refused, 2 otherwise.
//! `rr` sends requests one after the other on one connection
//! (request/response rate, netperf's TCP_RR); `crr` opens a connection per
//! request and closes it (TCP_CRR); `flood` sends UDP datagrams as fast as
//! one thread can. The three measuring commands print one JSON object.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

struct Args {
    positional: Vec<String>,
    secs: f64,
    threads: usize,
    size: usize,
    timeout: Duration,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        positional: Vec::new(),
        secs: 5.0,
        threads: 2,
        size: 1,
        timeout: Duration::from_millis(1000),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--secs" => out.secs = value(a)?.parse().map_err(|_| "bad --secs")?,
            "--threads" => out.threads = value(a)?.parse().map_err(|_| "bad --threads")?,
            "--size" => out.size = value(a)?.parse().map_err(|_| "bad --size")?,
            "--timeout" => out.timeout = Duration::from_millis(value(a)?.parse().map_err(|_| "bad --timeout")?),
            _ => out.positional.push(a.clone()),
        }
    }
    if out.size == 0 || out.threads == 0 {
        return Err("--size and --threads must be at least 1".into());
    }
    Ok(out)
}

fn main() -> ExitCode {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = all.split_first() else {
        eprintln!("usage: hostwall-load serve|check|rr|crr|flood ...");
        return ExitCode::from(2);
    };
    let args = match parse(rest) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hostwall-load: {e}");
            return ExitCode::from(2);
        }
    };
    let target = || -> Result<SocketAddr, String> {
        args.positional
            .first()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| "expected ADDR:PORT ([ADDR]:PORT for IPv6)".to_string())
    };
    let result = match cmd.as_str() {
        "serve" => args
            .positional
            .first()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| "serve needs a port".to_string())
            .and_then(|port| serve(port, &args).map_err(|e| e.to_string())),
        "check" => return check(target(), &args),
        "rr" => target().and_then(|t| rr(t, &args).map_err(|e| e.to_string())),
        "crr" => target().and_then(|t| crr(t, &args).map_err(|e| e.to_string())),
        "flood" => target().and_then(|t| flood(t, &args).map_err(|e| e.to_string())),
        other => Err(format!("unknown command {other}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostwall-load {cmd}: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(port: u16, args: &Args) -> io::Result<()> {
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port).into())?;
    socket.listen(1024)?;
    let listener: TcpListener = socket.into();
    let listener = Arc::new(listener);
    // A fixed pool of acceptors: one thread per connection would make
    // thread creation the cost that connection-rate tests measure.
    let threads = args.threads.max(4);
    for _ in 0..threads {
        let listener = listener.clone();
        let size = args.size;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; size];
            loop {
                if let Ok((conn, _)) = listener.accept() {
                    let _ = answer(conn, &mut buf);
                }
            }
        });
    }
    println!("ready");
    io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}

/// Answers requests until the client closes.
fn answer(mut conn: TcpStream, buf: &mut [u8]) -> io::Result<()> {
    conn.set_nodelay(true)?;
    loop {
        if !read_full(&mut conn, buf)? {
            return Ok(());
        }
        conn.write_all(buf)?;
    }
}

/// Reads exactly `buf.len()` bytes; `false` on a clean end of stream.
fn read_full(conn: &mut TcpStream, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match conn.read(&mut buf[got..])? {
            0 if got == 0 => return Ok(false),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    Ok(true)
}

fn check(target: Result<SocketAddr, String>, args: &Args) -> ExitCode {
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            eprintln!("hostwall-load check: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = (|| -> io::Result<()> {
        let deadline = Instant::now() + args.timeout;
        let mut conn = TcpStream::connect_timeout(&target, args.timeout)?;
        conn.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))?;
        let mut buf = vec![7u8; args.size];
        conn.write_all(&buf)?;
        if !read_full(&mut conn, &mut buf)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    })();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostwall-load check {target}: {e}");
            ExitCode::from(match e.kind() {
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => 1,
                io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => 3,
                _ => 2,
            })
        }
    }
}

fn rr(target: SocketAddr, args: &Args) -> io::Result<()> {
    let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = vec![1u8; args.size];
    let mut latencies_ns: Vec<u64> = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.secs);
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        conn.write_all(&buf)?;
        if !read_full(&mut conn, &mut buf)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        latencies_ns.push(t.elapsed().as_nanos() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    latencies_ns.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies_ns.is_empty() {
            return 0.0;
        }
        let i = ((latencies_ns.len() - 1) as f64 * p).round() as usize;
        latencies_ns[i] as f64 / 1000.0
    };
    println!(
        "{{\"transactions\": {}, \"secs\": {secs:.3}, \"rate\": {:.1}, \"p50_us\": {:.1}, \"p99_us\": {:.1}}}",
        latencies_ns.len(),
        latencies_ns.len() as f64 / secs,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

fn crr(target: SocketAddr, args: &Args) -> io::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..args.threads)
        .map(|_| {
            let (done, errors, stop) = (done.clone(), errors.clone(), stop.clone());
            let size = args.size;
            std::thread::spawn(move || {
                let mut buf = vec![1u8; size];
                while !stop.load(Ordering::Relaxed) {
                    let one = (|| -> io::Result<()> {
                        let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
                        conn.set_nodelay(true)?;
                        conn.set_read_timeout(Some(Duration::from_secs(1)))?;
                        conn.write_all(&buf)?;
                        if !read_full(&mut conn, &mut buf)? {
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        Ok(())
                    })();
                    match one {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.secs));
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    for w in workers {
        let _ = w.join();
    }
    println!(
        "{{\"connections\": {n}, \"errors\": {}, \"secs\": {secs:.3}, \"rate\": {:.1}}}",
        errors.load(Ordering::Relaxed),
        n as f64 / secs
    );
    Ok(())
}

fn flood(target: SocketAddr, args: &Args) -> io::Result<()> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("valid address"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("valid address"),
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(target)?;
    let payload = vec![0x55u8; args.size];
    let (mut sent, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.secs);
    // The clock is read once per batch: a datagram costs about as much.
    while Instant::now() < end {
        for _ in 0..256 {
            match socket.send(&payload) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"sent\": {sent}, \"errors\": {errors}, \"secs\": {secs:.3}, \"rate\": {:.1}}}",
        sent as f64 / secs
    );
    Ok(())
}
