//! Running the VMs: one QEMU process each, its serial console read line by
//! line into a log file, the guest's `hostwall-vm:` lines shown as they
//! come, and the outcome taken from the marker line /init prints last.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// What the guest's lines start with.
pub const PREFIX: &str = "hostwall-vm: ";
const SUCCESS: &str = "hostwall-vm: success";
const FAILURE: &str = "hostwall-vm: failure";
/// How long QEMU may take to exit once the marker is out.
const POWER_OFF: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

impl Accel {
    /// `HOSTWALL_VM_ACCEL`: `tcg` (the default) or `kvm`.
    pub fn from_env() -> anyhow::Result<Accel> {
        match std::env::var("HOSTWALL_VM_ACCEL").as_deref() {
            Err(_) | Ok("") | Ok("tcg") => Ok(Accel::Tcg),
            Ok("kvm") => Ok(Accel::Kvm),
            Ok(other) => bail!("HOSTWALL_VM_ACCEL={other}: expected tcg or kvm"),
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            // One host thread for both vCPUs: with multi-threaded TCG a
            // guest that patches its own code (static keys flip when the
            // first tcx program attaches) could run a stale copy of it on
            // the other vCPU, and Linux 6.12 then oopsed on an int3 in
            // `__netif_receive_skb_core`.
            Accel::Tcg => &["-accel", "tcg,thread=single"],
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
        }
    }
}

/// A virtio NIC on a stream netdev over a Unix socket: the one link between
/// the two VMs, nothing else on it.
pub struct Nic {
    pub socket: PathBuf,
    /// The VM that listens; the other connects.
    pub server: bool,
    pub mac: &'static str,
}

pub struct Vm {
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line after `console=ttyS0 panic=-1`.
    pub append: String,
    pub memory_mib: u32,
    pub nic: Option<Nic>,
    pub timeout: Duration,
    pub log: PathBuf,
}

enum Event {
    Marker(bool),
    Closed,
}

pub struct Running {
    name: String,
    child: Child,
    started: Instant,
    deadline: Instant,
    events: Receiver<Event>,
    log: PathBuf,
}

#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub passed: bool,
    pub detail: String,
    pub elapsed: Duration,
    pub log: PathBuf,
}

/// Starts QEMU for `vm`.
pub fn start(vm: &Vm, accel: Accel) -> anyhow::Result<Running> {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(accel.args())
        .args(["-m", &vm.memory_mib.to_string(), "-smp", "2"])
        .args(["-nographic", "-monitor", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&vm.kernel)
        .arg("-initrd")
        .arg(&vm.initrd)
        .arg("-append")
        .arg(format!("console=ttyS0 panic=-1 {}", vm.append));
    match &vm.nic {
        None => {
            cmd.args(["-nic", "none"]);
        }
        Some(nic) => {
            cmd.arg("-netdev").arg(format!(
                "stream,id=n0,server={},addr.type=unix,addr.path={}",
                if nic.server { "on" } else { "off" },
                nic.socket.display()
            ));
            cmd.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={}", nic.mac)]);
        }
    }
    let log_file = std::fs::File::create(&vm.log).with_context(|| format!("creating {}", vm.log.display()))?;
    writeln!(&log_file, "# {cmd:?}")?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (scripts/setup installs qemu-system-x86)")?;
    let (tx, rx) = channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let name = vm.name.clone();
    let out_log = log_file.try_clone()?;
    std::thread::spawn(move || read_console(stdout, out_log, &name, tx));
    std::thread::spawn(move || copy_stderr(stderr, log_file));
    let started = Instant::now();
    Ok(Running {
        name: vm.name.clone(),
        child,
        started,
        deadline: started + vm.timeout,
        events: rx,
        log: vm.log.clone(),
    })
}

/// Waits for a Unix socket to appear (a listening QEMU), so the VM that
/// connects to it can start.
pub fn wait_for_socket(path: &Path, running: &mut Running) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        if let Some(status) = running.child.try_wait()? {
            bail!(
                "QEMU for {} exited ({status}) before listening on {}",
                running.name,
                path.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "QEMU for {} did not create {} within 20 s",
                running.name,
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn read_console(stdout: impl Read, mut log: std::fs::File, name: &str, tx: Sender<Event>) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let _ = log.write_all(&buf);
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end();
        // Kernel messages may share a line with the guest's output.
        if let Some(at) = line.find(PREFIX) {
            let text = &line[at..];
            println!("[{name}] {}", &text[PREFIX.len()..]);
            if text == SUCCESS || text == FAILURE {
                let _ = tx.send(Event::Marker(text == SUCCESS));
            }
        }
    }
    let _ = tx.send(Event::Closed);
}

fn copy_stderr(stderr: impl Read, mut log: std::fs::File) {
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let _ = writeln!(log, "[qemu stderr] {line}");
    }
}

impl Running {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A VM left behind by an error (its peer failed to start) must not keep
/// running.
impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// Waits for every VM to print its marker and power off, each within its
/// deadline. When `together` is set, the VMs depend on each other: the
/// first failure stops the rest rather than leaving them waiting for a peer
/// that is gone.
pub fn wait_all(mut vms: Vec<Running>, together: bool) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vms.iter().map(|_| None).collect();
    let mut markers: Vec<Option<(bool, Instant)>> = vms.iter().map(|_| None).collect();
    let mut closed = vec![false; vms.len()];
    while outcomes.iter().any(Option::is_none) {
        for (i, vm) in vms.iter_mut().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            while let Ok(ev) = vm.events.try_recv() {
                match ev {
                    Event::Marker(ok) => markers[i] = markers[i].or(Some((ok, Instant::now()))),
                    Event::Closed => closed[i] = true,
                }
            }
            let closed = closed[i];
            let exited = matches!(vm.child.try_wait(), Ok(Some(_)));
            let now = Instant::now();
            let (name, started, log) = (vm.name.clone(), vm.started, vm.log.clone());
            let finish = |passed: bool, detail: String| Outcome {
                name,
                passed,
                detail,
                elapsed: now - started,
                log,
            };
            outcomes[i] = match markers[i] {
                Some((ok, _)) if closed && exited => Some(finish(
                    ok,
                    if ok { "passed" } else { "the guest reported a failure" }.into(),
                )),
                Some((ok, at)) if now - at > POWER_OFF => {
                    vm.kill();
                    Some(finish(
                        false,
                        format!(
                            "printed {} but did not power off within {POWER_OFF:?}",
                            if ok { "success" } else { "failure" }
                        ),
                    ))
                }
                None if closed && exited => Some(finish(false, "QEMU exited without a success marker".into())),
                _ if now > vm.deadline => {
                    vm.kill();
                    Some(finish(
                        false,
                        format!("timed out after {:.0} s", (vm.deadline - vm.started).as_secs_f64()),
                    ))
                }
                _ => None,
            };
        }
        if together && outcomes.iter().flatten().any(|o| !o.passed) {
            for (i, vm) in vms.iter_mut().enumerate() {
                if outcomes[i].is_none() {
                    vm.kill();
                    outcomes[i] = Some(Outcome {
                        name: vm.name.clone(),
                        passed: false,
                        detail: "stopped: the other VM failed".into(),
                        elapsed: vm.started.elapsed(),
                        log: vm.log.clone(),
                    });
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    outcomes.into_iter().map(|o| o.expect("every VM finished")).collect()
}
