//! The control API as a client meets it: who may connect, what happens to
//! requests that are not HTTP the agent speaks (it answers with an HTTP
//! error and keeps serving), `curl`, systemd readiness and the unit file.

mod common;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::bins;
use hostwall_tests::topology::unique_name;
use hostwall_tests::{Agent, AgentOptions, Check, Host, Probe, assert_checks};

const POLICY: &str = r#"
version: 1
groups:
  web:
    egress:
      - {proto: udp, ports: 8053, to: [{group: api}]}
  api:
    ingress:
      - {proto: udp, ports: 8053, from: [{group: web}]}
endpoints:
  - {name: web, interface: hw-web, addresses: ["10.77.0.11", "fd00:77::11"], groups: [web]}
  - {name: api, interface: hw-api, addresses: ["10.77.0.12", "fd00:77::12"], groups: [api]}
"#;

/// A group id no account on a test machine uses.
const ADMIN_GID: u32 = 48_611;

/// Runs `hostwall status` against `agent` as uid 65534 with `setpriv`
/// `creds` (e.g. `--clear-groups`); returns exit code and stderr.
fn status_as(agent: &Agent, creds: &[&str]) -> (Option<i32>, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534"])
        .args(creds)
        .arg(&bins().hostwall)
        .arg("--socket")
        .arg(agent.socket())
        .arg("status")
        .output()
        .expect("running setpriv");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Sends `request` on a new connection and reads the response to the end:
/// (status code, body). The agent answers every request, so the read has
/// only a backstop timeout.
fn raw(socket: &Path, request: &[u8]) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("connecting to the API socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    // The agent may answer (and close) before it has read everything.
    let _ = stream.write_all(request);
    read_response(&mut stream)
}

fn read_response(stream: &mut UnixStream) -> (u16, String) {
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn assert_serving(agent: &Agent, what: &str) {
    let status = agent
        .status()
        .unwrap_or_else(|e| panic!("{what}: the agent stopped serving: {e:#}"));
    assert_eq!(status["enforced"], true, "{what}: status {status}");
}

#[test]
fn api_access_is_root_or_admin_group_only() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let _web = host.add_container("web", "hw-web", 11).expect("adding web");
    let _api = host.add_container("api", "hw-api", 12).expect("adding api");
    let mut agent = Agent::start(&host, POLICY).expect("starting the agent");

    let meta = std::fs::metadata(agent.socket()).expect("the API socket exists");
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o600,
        "API socket mode {:o}",
        meta.permissions().mode()
    );
    assert_eq!(meta.uid(), 0, "the API socket belongs to root");

    let (code, stderr) = status_as(&agent, &["--regid=65534", "--clear-groups"]);
    assert!(
        code != Some(0) && stderr.contains("error") && stderr.contains("Permission denied"),
        "a non-root client must be refused; exit {code:?}, stderr: {stderr}"
    );
    // Past the file mode, the agent checks the caller itself.
    std::fs::set_permissions(agent.socket(), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (code, stderr) = status_as(&agent, &["--regid=65534", "--clear-groups"]);
    assert!(
        code != Some(0) && stderr.contains("only root and the admin group"),
        "the agent must refuse a non-root caller that reached its socket; exit {code:?}, stderr: {stderr}"
    );

    let status = agent.stop().expect("stopping the agent");
    assert!(status.success(), "the agent exited with {status}");
    let opts = AgentOptions {
        args: vec!["--admin-group".into(), ADMIN_GID.to_string()],
        ..Default::default()
    };
    agent.restart_with(&opts).expect("restarting with --admin-group");
    let meta = std::fs::metadata(agent.socket()).expect("the API socket exists");
    assert_eq!(
        (meta.permissions().mode() & 0o7777, meta.gid()),
        (0o660, ADMIN_GID),
        "with --admin-group the socket is group-owned and 0660"
    );
    let (member, primary) = (format!("--groups={ADMIN_GID}"), format!("--regid={ADMIN_GID}"));
    for creds in [["--regid=65534", member.as_str()], [primary.as_str(), "--clear-groups"]] {
        let (code, stderr) = status_as(&agent, &creds);
        assert_eq!(
            code,
            Some(0),
            "an admin group member ({creds:?}) must be accepted: {stderr}"
        );
    }
    let (code, stderr) = status_as(&agent, &["--regid=65534", "--clear-groups"]);
    assert!(
        code != Some(0) && stderr.contains("error"),
        "a client outside the admin group must be refused; exit {code:?}, stderr: {stderr}"
    );
}

#[test]
fn malformed_requests_get_http_errors_and_the_agent_keeps_serving() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let api = host.add_container("api", "hw-api", 12).expect("adding api");
    let _server = hostwall_tests::Node::serve(&api, &[], &[8053, 9053]).expect("echo servers in api");
    let agent = Agent::start(&host, POLICY).expect("starting the agent");
    let socket = agent.socket().to_path_buf();

    // A client that never finishes its request, one byte at a time, runs
    // alongside the others: it must time out without holding anyone up.
    let slow = {
        let socket = socket.clone();
        std::thread::spawn(move || {
            let mut stream = UnixStream::connect(&socket).expect("connecting to the API socket");
            stream
                .set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            let started = Instant::now();
            let mut buf = Vec::new();
            for byte in b"GET /v1/status HTTP/1.1\r\nHost: x".iter().cycle() {
                if stream.write_all(&[*byte]).is_err() {
                    break;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(_) => {}
                }
                if !buf.is_empty() || started.elapsed() > Duration::from_secs(60) {
                    break;
                }
            }
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            buf.extend_from_slice(&rest);
            (String::from_utf8_lossy(&buf).into_owned(), started.elapsed())
        })
    };

    // Requests that are not HTTP get hyper's own answer: a status, no body.
    let unreadable: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", b"\x16\x03\x01 hello\r\n\r\n".to_vec(), 400),
        ("no HTTP version", b"GET /v1/status\r\n\r\n".to_vec(), 400),
        (
            "a header without a colon",
            b"GET /v1/status HTTP/1.1\r\nbroken\r\n\r\n".to_vec(),
            400,
        ),
        ("headers over 1 MiB", vec![b'a'; (1 << 20) + 4096], 431),
    ];
    for (what, request, expected) in &unreadable {
        let (status, body) = raw(&socket, request);
        assert_eq!(status, *expected, "{what}: response body {body}");
        assert_serving(&agent, &format!("after {what}"));
    }
    // Requests the agent reads and refuses get a JSON error.
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "a declared body over --max-request-bytes",
            b"PUT /v1/policy HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n".to_vec(),
            413,
        ),
        (
            "a chunked body over --max-request-bytes",
            [
                &b"PUT /v1/policy HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                &[b"100000\r\n".to_vec(), vec![b'#'; 1 << 20], b"\r\n".to_vec()]
                    .concat()
                    .repeat(70),
            ]
            .concat(),
            413,
        ),
        (
            "a policy without a body (no content-length)",
            b"PUT /v1/policy HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            422,
        ),
        (
            "a body that is not JSON",
            b"POST /v1/rules HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            400,
        ),
        (
            "a path with a bad escape",
            b"GET /v1/%zz HTTP/1.1\r\n\r\n".to_vec(),
            400,
        ),
        ("an unknown path", b"GET /v2/nothing HTTP/1.1\r\n\r\n".to_vec(), 404),
        ("a wrong method", b"PATCH /v1/status HTTP/1.1\r\n\r\n".to_vec(), 405),
    ];
    for (what, request, expected) in &cases {
        let (status, body) = raw(&socket, request);
        assert_eq!(status, *expected, "{what}: response body {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: error body is not JSON ({e}): {body}"));
        assert!(v["error"].is_string(), "{what}: no error message: {body}");
        // One error kind per status, and the agent's version on every reply.
        let kind = match expected {
            400 => "bad_request",
            404 => "not_found",
            405 => "method_not_allowed",
            413 => "too_large",
            422 => "invalid",
            other => panic!("no kind listed for {other}"),
        };
        assert_eq!(v["kind"], kind, "{what}: {body}");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{what}: {body}");
        assert_serving(&agent, &format!("after {what}"));
    }

    // A body shorter than its content-length, then the client hangs up.
    let mut stream = UnixStream::connect(&socket).expect("connecting");
    stream
        .write_all(b"PUT /v1/policy HTTP/1.1\r\nContent-Length: 100\r\n\r\nversion: 1\n")
        .expect("writing");
    stream.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let (status, body) = read_response(&mut stream);
    assert_eq!(status, 400, "a truncated body: {body}");

    // The slow client is still dribbling; the API answers meanwhile.
    assert_serving(&agent, "while a slow client holds a connection");
    let (response, took) = slow.join().expect("the slow client thread");
    assert!(
        response.starts_with("HTTP/1.1 408"),
        "a client that never finishes its request must get 408 (after {took:?}): {response:?}"
    );
    assert_serving(&agent, "after the slow client");
    assert_checks(
        "enforcement after the bad requests",
        &[
            Check::allowed(&web, Probe::Udp(8053), api.v4).labelled("api"),
            Check::denied(&web, Probe::Udp(9053), api.v4).labelled("api"),
        ],
    );

    if which("curl").is_none() {
        eprintln!("curl is not installed: skipping the curl --unix-socket check");
        return;
    }
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--unix-socket"])
        .arg(&socket)
        .arg("http://localhost/v1/status")
        .output()
        .expect("running curl");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "curl --unix-socket got no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(v["enforced"], true, "curl: {v}");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
            "--unix-socket",
        ])
        .arg(&socket)
        .arg("http://localhost/v1/nothing")
        .output()
        .expect("running curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404", "curl on an unknown path");
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// A datagram socket standing in for systemd's notify socket; removed on
/// drop.
struct NotifySocket {
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let path = std::env::temp_dir().join(format!("{}.notify", unique_name("hwt-agent")));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        NotifySocket { path, socket }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn ready_is_notified_once_enforcing() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let api = host.add_container("api", "hw-api", 12).expect("adding api");
    let _server = hostwall_tests::Node::serve(&api, &[], &[8053, 9053]).expect("echo servers in api");
    let notify = NotifySocket::bind();
    let opts = AgentOptions {
        env: vec![("NOTIFY_SOCKET".into(), notify.path.display().to_string())],
        ..Default::default()
    };
    notify
        .socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    let agent = Agent::start_with(&host, POLICY, &opts).expect("starting the agent");
    let mut buf = [0u8; 4096];
    let n = notify
        .socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification from the agent: {e}; its log:\n{}", agent.log()));
    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        message.lines().any(|l| l == "READY=1"),
        "the notification has no READY=1 line: {message:?}"
    );
    // When READY=1 arrives, the policy is enforced.
    assert_serving(&agent, "at READY=1");
    assert_checks(
        "at READY=1",
        &[
            Check::allowed(&web, Probe::Udp(8053), api.v4).labelled("api"),
            Check::denied(&web, Probe::Udp(9053), api.v4).labelled("api"),
        ],
    );
}

#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("systemd-analyze is not installed: skipping the unit file check");
        return;
    };
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/hostwall.service");
    let text = std::fs::read_to_string(&unit).unwrap_or_else(|e| panic!("reading {}: {e}", unit.display()));
    let hostwall = bins().hostwall.display().to_string();
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix("ExecStart=") {
            Some(rest) => {
                let (_, args) = rest.split_once(' ').unwrap_or((rest, ""));
                format!("ExecStart={hostwall} {args}")
            }
            None => l.to_string(),
        })
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("ExecStart={hostwall} agent"))),
        "the unit has no `ExecStart=... agent` line: {text}"
    );
    let dir = std::env::temp_dir().join(unique_name("hwt-agent"));
    std::fs::create_dir_all(&dir).expect("creating a directory for the unit");
    let path = dir.join("hostwall.service");
    std::fs::write(&path, lines.join("\n") + "\n").expect("writing the unit");
    let out = Command::new(analyze).arg("verify").arg(&path).output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.expect("running systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify on dist/hostwall.service ({}): {said}",
        out.status
    );
    // Hardened: systemd rates the unit's exposure below 5.0 ("OK"), with
    // the bpffs its pins live on writable.
    let out = Command::new(which("systemd-analyze").expect("systemd-analyze"))
        .args(["--offline=true", "security"])
        .arg(&unit)
        .output()
        .expect("running systemd-analyze security");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let exposure: f64 = said
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for hostwall.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {said}"));
    assert!(exposure < 5.0, "exposure {exposure}:\n{said}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ReadWritePaths=") && l.contains("/sys/fs/bpf")),
        "the unit does not keep /sys/fs/bpf writable: {text}"
    );
}

/// `(status, body)` of `method path` with a JSON `body`.
fn send_json(socket: &Path, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, text) = raw(socket, request.as_bytes());
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
    (status, v)
}

#[test]
fn misspelled_fields_and_query_keys_are_refused_and_change_nothing() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let api = host.add_container("api", "hw-api", 12).expect("adding api");
    let _server = hostwall_tests::Node::serve(&api, &[], &[8053, 9053]).expect("echo servers in api");
    let agent = Agent::start(&host, POLICY).expect("starting the agent");
    let socket = agent.socket().to_path_buf();
    let generation = || agent.status().expect("status")["policy"]["generation"].as_u64();
    let before = generation();
    assert!(before.is_some(), "status has no policy generation");
    let flows = || {
        let (status, v) = send_json(&socket, "GET", "/v1/conntrack", "");
        assert_eq!(status, 200, "{v}");
        v["flows"].as_array().map_or(0, Vec::len)
    };
    assert_checks(
        "before the requests",
        &[
            Check::allowed(&web, Probe::Udp(8053), api.v4).labelled("api"),
            Check::denied(&web, Probe::Udp(9053), api.v4).labelled("api"),
        ],
    );
    let tracked = flows();
    assert!(tracked > 0, "the allowed exchange is tracked");

    // `port` for `ports`: read as "no ports", this would allow every port.
    for (group, direction, peer) in [("web", "egress", "group:api"), ("api", "ingress", "group:web")] {
        let body = format!(
            r#"{{"group": "{group}", "direction": "{direction}", "proto": "udp", "port": 9053, "peer": "{peer}"}}"#
        );
        let (status, v) = send_json(&socket, "POST", "/v1/rules", &body);
        assert_eq!(status, 422, "{v}");
        let message = v["error"].as_str().unwrap_or_default();
        assert!(message.contains("unknown field `port`"), "{message}");
    }
    // A removal that names a field no removal has.
    let (status, v) = send_json(&socket, "DELETE", "/v1/rules", r#"{"id": 1, "groupe": "web"}"#);
    assert_eq!(status, 422, "{v}");
    // `adr` for `addr`: read as "no filter", this would end every flow.
    let (status, v) = send_json(&socket, "DELETE", "/v1/conntrack?adr=10.99.99.99", "");
    assert_eq!(status, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("\"adr\""), "{v}");
    let (status, v) = send_json(&socket, "GET", "/v1/status?verbose=1", "");
    assert_eq!(status, 400, "{v}");

    assert_eq!(generation(), before, "a refused request changes no policy");
    assert_eq!(flows(), tracked, "a refused flush ends no flow");
    assert_checks(
        "after the refused requests",
        &[Check::denied(&web, Probe::Udp(9053), api.v4).labelled("api")],
    );

    // Control: the same requests spelled right do what they say.
    for (group, direction, peer) in [("web", "egress", "group:api"), ("api", "ingress", "group:web")] {
        let body = format!(
            r#"{{"group": "{group}", "direction": "{direction}", "proto": "udp", "ports": 9053, "peer": "{peer}"}}"#
        );
        let (status, v) = send_json(&socket, "POST", "/v1/rules", &body);
        assert_eq!(status, 200, "{v}");
    }
    assert_checks(
        "the rules spelled right",
        &[
            Check::allowed(&web, Probe::Udp(9053), api.v4).labelled("api"),
            Check::denied(&web, Probe::Udp(9054), api.v4).labelled("api"),
        ],
    );
    let (status, v) = send_json(&socket, "DELETE", "/v1/conntrack?addr=10.77.0.12", "");
    assert_eq!(status, 200, "{v}");
    assert!(v["flushed"].as_u64().unwrap_or(0) > 0, "{v}");
}

#[test]
fn policies_above_a_mebibyte_apply_and_requests_past_the_limit_are_refused() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let web = host.add_container("web", "hw-web", 11).expect("adding web");
    let api = host.add_container("api", "hw-api", 12).expect("adding api");
    let _server = hostwall_tests::Node::serve(&api, &[], &[8053, 9053]).expect("echo servers in api");
    let agent = Agent::start(&host, POLICY).expect("starting the agent");

    // 20,000 more rules (about 2 MiB of text), the last of which opens
    // 9053, through `hostwall apply`.
    let mut text = POLICY.replace(
        "      - {proto: udp, ports: 8053, from: [{group: web}]}\n",
        "      - {proto: udp, ports: 8053, from: [{group: web}]}\n      - {proto: udp, ports: 9053, from: [{group: web}]}\n",
    );
    let mut bulk = String::from("  bulk:\n    egress:\n");
    for i in 0..20_000u32 {
        bulk.push_str(&format!(
            "      - {{proto: tcp, ports: {}, to: [{{cidr: \"10.200.{}.{}/32\"}}], description: \"bulk rule {i} of the size test\"}}\n",
            1 + i % 60_000,
            i / 256,
            i % 256
        ));
    }
    text = text.replace("endpoints:\n", &format!("{bulk}endpoints:\n"));
    text = text.replace(
        "      - {proto: udp, ports: 8053, to: [{group: api}]}\n",
        "      - {proto: udp, ports: 8053, to: [{group: api}]}\n      - {proto: udp, ports: 9053, to: [{group: api}]}\n",
    );
    assert!(text.len() > 2 << 20, "{} bytes", text.len());
    let file = agent.scratch_path("large.yaml").expect("a scratch path");
    std::fs::write(&file, &text).expect("writing the policy");
    agent
        .cli(&["apply", file.to_str().expect("a UTF-8 path")])
        .expect("applying a policy of 2 MiB");
    assert_checks(
        "the large policy",
        &[Check::allowed(&web, Probe::Udp(9053), api.v4).labelled("api")],
    );

    // Past the limit: refused by size, naming the flag, before the body is
    // read.
    let (status, body) = raw(
        agent.socket(),
        format!("PUT /v1/policy HTTP/1.1\r\nContent-Length: {}\r\n\r\n", (64 << 20) + 1).as_bytes(),
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("--max-request-bytes"), "{body}");
    assert_serving(&agent, "after a request past the limit");
}

/// A bpffs mounted for one test, unmounted when dropped.
struct TempBpffs(PathBuf);

impl Drop for TempBpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap_or(&self.0));
    }
}

#[test]
fn an_unprivileged_agent_is_told_what_it_lacks() {
    let dir = std::env::temp_dir().join(unique_name("hwt-agent"));
    let bpffs = TempBpffs(dir.join("bpffs"));
    std::fs::create_dir_all(&bpffs.0).expect("creating the bpffs directory");
    let mounted = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&bpffs.0)
        .status()
        .expect("running mount");
    assert!(mounted.success(), "mounting a bpffs");
    std::fs::set_permissions(&bpffs.0, std::fs::Permissions::from_mode(0o777)).expect("opening the bpffs");
    let config = dir.join("policy.yaml");
    std::fs::write(&config, "version: 1\n").expect("writing the policy");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&bins().hostwall)
        .arg("agent")
        .arg("--config")
        .arg(&config)
        .arg("--bpffs")
        .arg(&bpffs.0)
        .arg("--socket")
        .arg(dir.join("hostwall.sock"))
        .output()
        .expect("running setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an unprivileged agent started: {stderr}");
    assert!(
        stderr.contains("the agent needs root, or CAP_BPF") && !stderr.contains("hostwall uninstall"),
        "the error names what is missing and does not send the user to uninstall: {stderr}"
    );
}

#[test]
fn the_served_schema_is_the_generated_one_and_every_reply_says_its_version() {
    let host = Host::builder(&bins()).build().expect("building the host namespace");
    let _web = host.add_container("web", "hw-web", 11).expect("adding web");
    let _api = host.add_container("api", "hw-api", 12).expect("adding api");
    let agent = Agent::start(&host, POLICY).expect("starting the agent");
    let socket = agent.socket().to_path_buf();

    // What the agent serves is what this build's types generate, and what
    // the repository documents.
    let served: serde_json::Value = serde_json::from_str(&agent.cli(&["get", "schema"]).expect("hostwall get schema"))
        .expect("the served schema is JSON");
    let out = Command::new(&bins().hostwall)
        .arg("schema")
        .output()
        .expect("running hostwall schema");
    assert!(out.status.success(), "hostwall schema failed");
    let generated: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the generated schema is JSON");
    assert!(
        served == generated,
        "the agent serves a schema other than the generated one"
    );
    let committed: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/api-schema.json"))
            .expect("reading dist/api-schema.json"),
    )
    .expect("dist/api-schema.json is JSON");
    assert!(
        committed == generated,
        "dist/api-schema.json is not the generated schema"
    );
    let routes: Vec<String> = served["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap_or(""),
                r["path"].as_str().unwrap_or("")
            )
        })
        .collect();
    for route in [
        "GET /v1/status",
        "POST /v1/rules",
        "DELETE /v1/conntrack",
        "GET /v1/schema",
    ] {
        assert!(
            routes.iter().any(|r| r == route),
            "the schema lists no {route}: {routes:?}"
        );
    }

    for path in ["/v1/status", "/v1/policy", "/v1/stats", "/v1/conntrack", "/v1/schema"] {
        let (status, v) = send_json(&socket, "GET", path, "");
        assert_eq!(status, 200, "GET {path}: {v}");
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "GET {path} says no version");
    }
    let (status, v) = send_json(
        &socket,
        "POST",
        "/v1/rules?dry_run=true",
        r#"{"group": "web", "direction": "egress", "proto": "tcp", "ports": 443, "peer": "host"}"#,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["version"],
        env!("CARGO_PKG_VERSION"),
        "a change reply says no version: {v}"
    );
    assert_eq!(v["dry_run"], true, "{v}");

    // A refused command's --json carries the agent's error kind and status
    // and an exit code that tells it apart.
    let out = agent
        .cli_output(&["--json", "rule", "remove", "--id", "987654321"])
        .expect("running rule remove");
    assert_eq!(out.status.code(), Some(2), "removing an unknown rule id");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--json error output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(v["kind"], "not_found", "{v}");
    assert_eq!(v["status"], 404, "{v}");
    assert_eq!(v["exit_code"], 2, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("987654321"), "{v}");
}
