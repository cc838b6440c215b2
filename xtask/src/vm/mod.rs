//! `cargo xtask vm-test`: the integration scenarios on other kernels than
//! the host's, each in a QEMU VM booted from a Debian kernel package and an
//! initramfs built here.
//!
//! - Single host, once per kernel of [`KERNELS`]: the agent must pick the
//!   kernel's TC attach path, then the test executables of [`VM_TESTS`]
//!   run unchanged inside the VM.
//! - Two hosts, on [`TWO_HOST_KERNEL`]: two VMs joined by a QEMU stream
//!   netdev over a Unix socket, one agent each with `--uplink eth0`, one
//!   shared control file (`guest/two_host.rs` says what is checked).
//!
//! The VMs have no other network: `-nic none`, or the one NIC on the
//! socket between the two QEMU processes. The guest side is this same
//! program built for musl (`guest/`), run by the image's /init.

mod cpio;
pub mod guest;
mod image;
mod kernel;
mod qemu;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use image::GuestPrograms;
use kernel::KernelSpec;
use qemu::{Accel, Nic, Outcome, Vm};

/// The kernels the stage boots. To add one, give the Debian meta-package
/// that follows its series (`apt-cache search --names-only
/// '^linux-image-6\.[0-9]+-amd64$'`) and the attach path the agent must
/// choose on it (tcx from Linux 6.6).
pub const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        label: "6.1",
        meta_package: "linux-image-amd64",
        package_prefix: "linux-image-6.1.",
        hook: "clsact",
    },
    KernelSpec {
        label: "6.12",
        meta_package: "linux-image-6.12-amd64",
        package_prefix: "linux-image-6.12.",
        hook: "tcx",
    },
];

/// The kernel the two-host scenario runs on.
pub const TWO_HOST_KERNEL: &str = "6.12";

/// Integration tests run in every single-host VM: a test executable
/// (tests/tests/NAME.rs) and the tests of it to run, all when empty. Under
/// TCG a probe costs about 0.3 s of CPU (`ip netns exec`, `timeout`, the
/// probe), so the stage runs what the attach path can change and leaves
/// the rest to the host: the allowed/denied matrix over TCP, UDP and ICMP,
/// IPv4 and IPv6, with drop reasons, fail-static stop and uninstall;
/// stateful replies; an endpoint without groups; spoofed sources; SIGKILL
/// and restart under traffic.
pub const VM_TESTS: &[VmTest] = &[
    VmTest {
        binary: "matrix",
        tests: &[
            "allowed_paths_get_through",
            "denied_paths_are_dropped_with_their_reason",
            "replies_pass_without_a_rule_for_them",
            "endpoint_without_groups_neither_sends_nor_receives",
        ],
    },
    VmTest {
        binary: "identity",
        tests: &[],
    },
    VmTest {
        binary: "restart",
        tests: &[],
    },
];

pub struct VmTest {
    pub binary: &'static str,
    pub tests: &'static [&'static str],
}

impl VmTest {
    /// How the kernel command line names it: `binary` or
    /// `binary:test+test`.
    fn spec(&self) -> String {
        if self.tests.is_empty() {
            self.binary.to_string()
        } else {
            format!("{}:{}", self.binary, self.tests.join("+"))
        }
    }
}

const MUSL: &str = "x86_64-unknown-linux-musl";
/// Debian's busybox-static, copied into the images.
const BUSYBOX: &str = "/bin/busybox";
/// Test threads inside a single-host VM (it has two vCPUs).
const TEST_THREADS: u32 = 2;
const SINGLE_MEMORY_MIB: u32 = 2048;
const TWO_HOST_MEMORY_MIB: u32 = 1024;
/// Whole-VM deadlines under TCG: measured runs took 190-212 s for a
/// single host and 63 s for the two hosts.
const SINGLE_TIMEOUT: Duration = Duration::from_secs(600);
const TWO_HOST_TIMEOUT: Duration = Duration::from_secs(420);

pub struct Options {
    /// Kernel labels to run the single-host scenario on (all when empty).
    pub kernels: Vec<String>,
    /// Tests to run in the single-host VMs instead of [`VM_TESTS`]:
    /// `binary` (all its tests) or `binary:test+test`.
    pub tests: Vec<String>,
    pub single: bool,
    pub two_host: bool,
}

fn cargo_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(crate::repo_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "cargo {} failed ({}); the {MUSL} target comes with scripts/setup",
            args.join(" "),
            out.status
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the static programs for the images: the agent, the probe, this
/// xtask (the guest side) and the integration test executables.
fn build_programs(tests: &[String]) -> anyhow::Result<GuestPrograms> {
    crate::cargo(&[
        "build",
        "--target",
        MUSL,
        "-p",
        "hostwall",
        "-p",
        "hostwall-tests",
        "-p",
        "xtask",
        "--bins",
    ])?;
    // Only the integration tests the VMs run.
    let mut args = vec![
        "test",
        "--no-run",
        "--target",
        MUSL,
        "-p",
        "hostwall-tests",
        "--message-format=json",
    ];
    let names: Vec<&str> = tests
        .iter()
        .map(|spec| spec.split(':').next().unwrap_or_default())
        .collect();
    for name in &names {
        args.extend(["--test", name]);
    }
    let json = cargo_output(&args)?;
    let mut found = BTreeMap::new();
    for line in json.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let kinds = msg["target"]["kind"].as_array();
        let is_test = kinds.is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (is_test, msg["target"]["name"].as_str(), msg["executable"].as_str()) {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    let mut selected = BTreeMap::new();
    for spec in tests {
        let name = spec.split(':').next().unwrap_or_default();
        let exe = found
            .get(name)
            .with_context(|| format!("no integration test {name:?} in tests/tests/"))?;
        selected.insert(name.to_string(), exe.clone());
    }
    let dir = crate::repo_root().join("target").join(MUSL).join("debug");
    Ok(GuestPrograms {
        hostwall: dir.join("hostwall"),
        probe: dir.join("hostwall-probe"),
        guest: dir.join("xtask"),
        tests: selected,
    })
}

fn check_prerequisites() -> anyhow::Result<()> {
    for (program, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("apt-get", "apt"),
        ("dpkg-deb", "dpkg"),
        ("gzip", "gzip"),
        ("strip", "binutils"),
        ("ldd", "libc-bin"),
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("{program} is missing: install {package} (scripts/setup does)");
        }
    }
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: install busybox-static (scripts/setup does)");
    }
    Ok(())
}

/// Timings of the stage, printed at the end.
#[derive(Default)]
struct Timings(Vec<(String, Duration)>);

impl Timings {
    fn time<T>(&mut self, what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        let started = Instant::now();
        let r = f();
        self.0.push((what.to_string(), started.elapsed()));
        r
    }
}

fn print_log(o: &Outcome) {
    println!("---- console of VM {} ({}) ----", o.name, o.log.display());
    match std::fs::read(&o.log) {
        Ok(bytes) => println!("{}", String::from_utf8_lossy(&bytes)),
        Err(e) => println!("(cannot read it: {e})"),
    }
    println!("---- end of console of VM {} ----", o.name);
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let stage = Instant::now();
    check_prerequisites()?;
    let accel = Accel::from_env()?;
    let specs: Vec<&KernelSpec> = if !opts.single {
        println!("vm-test: the single-host scenarios were not asked for (--no-single)");
        Vec::new()
    } else if opts.kernels.is_empty() {
        KERNELS.iter().collect()
    } else {
        opts.kernels
            .iter()
            .map(|l| {
                KERNELS.iter().find(|k| k.label == l).with_context(|| {
                    let known: Vec<&str> = KERNELS.iter().map(|k| k.label).collect();
                    format!("no kernel {l:?} (known: {})", known.join(", "))
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let tests: Vec<String> = if opts.tests.is_empty() {
        VM_TESTS.iter().map(VmTest::spec).collect()
    } else {
        opts.tests.clone()
    };
    let root = crate::repo_root();
    let cache = root.join("target/vm-cache");
    let work = root.join("target/vm-test");
    std::fs::create_dir_all(&work)?;
    let mut timings = Timings::default();

    let programs = timings.time("build (musl)", || build_programs(&tests))?;
    let busybox = Path::new(BUSYBOX);
    let two_host_spec = KERNELS
        .iter()
        .find(|k| k.label == TWO_HOST_KERNEL)
        .expect("TWO_HOST_KERNEL is in KERNELS");
    let mut wanted: Vec<&KernelSpec> = specs.clone();
    if opts.two_host && !wanted.iter().any(|k| k.label == TWO_HOST_KERNEL) {
        wanted.push(two_host_spec);
    }
    let mut images = BTreeMap::new();
    for spec in &wanted {
        let kernel = timings.time(&format!("kernel {} (apt)", spec.label), || kernel::fetch(spec, &cache))?;
        let initrd = work.join(format!("initramfs-{}.cpio.gz", spec.label));
        let size = timings.time(&format!("initramfs {}", spec.label), || {
            image::build(&initrd, &kernel, &programs, busybox)
        })?;
        println!(
            "vm-test: Linux {} ({}): initramfs {:.1} MiB",
            kernel.release,
            kernel.package,
            size as f64 / (1 << 20) as f64
        );
        images.insert(spec.label, (kernel, initrd));
    }

    let mut outcomes = Vec::new();
    for spec in &specs {
        let (kernel, initrd) = &images[spec.label];
        let vm = Vm {
            name: spec.label.to_string(),
            kernel: kernel.vmlinuz.clone(),
            initrd: initrd.clone(),
            append: format!(
                "quiet hostwall.scenario=single hostwall.hook={} hostwall.tests={} hostwall.threads={TEST_THREADS}",
                spec.hook,
                tests.join(",")
            ),
            memory_mib: SINGLE_MEMORY_MIB,
            nic: None,
            timeout: SINGLE_TIMEOUT,
            log: work.join(format!("console-{}.log", spec.label)),
        };
        let o = timings.time(&format!("VM {} (single host)", spec.label), || {
            let running = qemu::start(&vm, accel)?;
            Ok(qemu::wait_all(vec![running], false))
        })?;
        outcomes.extend(o);
    }

    if opts.two_host {
        let (kernel, initrd) = &images[TWO_HOST_KERNEL];
        let socket = work.join("two-host.sock");
        let _ = std::fs::remove_file(&socket);
        let vm = |role: &str, server: bool, mac: &'static str| Vm {
            name: format!("{TWO_HOST_KERNEL} two-host {role}"),
            kernel: kernel.vmlinuz.clone(),
            initrd: initrd.clone(),
            append: format!("quiet hostwall.scenario=two-host hostwall.role={role}"),
            memory_mib: TWO_HOST_MEMORY_MIB,
            nic: Some(Nic {
                socket: socket.clone(),
                server,
                mac,
            }),
            timeout: TWO_HOST_TIMEOUT,
            log: work.join(format!("console-two-host-{role}.log")),
        };
        let o = timings.time(&format!("VMs {TWO_HOST_KERNEL} (two hosts)"), || {
            let mut a = qemu::start(&vm("a", true, "52:54:00:00:00:0a"), accel)?;
            qemu::wait_for_socket(&socket, &mut a)?;
            let b = qemu::start(&vm("b", false, "52:54:00:00:00:0b"), accel)?;
            Ok(qemu::wait_all(vec![a, b], true))
        })?;
        outcomes.extend(o);
        let _ = std::fs::remove_file(&socket);
    } else {
        println!("vm-test: the two-host scenario was not asked for (--no-two-host)");
    }

    for o in outcomes.iter().filter(|o| !o.passed) {
        print_log(o);
    }
    println!("vm-test: timings ({accel:?}):");
    for (what, d) in &timings.0 {
        println!("  {what:<32} {:>6.1} s", d.as_secs_f64());
    }
    println!("  {:<32} {:>6.1} s", "whole stage", stage.elapsed().as_secs_f64());
    for o in &outcomes {
        println!(
            "vm-test: VM {:<20} {} in {:.1} s",
            o.name,
            if o.passed {
                "passed".to_string()
            } else {
                format!("FAILED: {}", o.detail)
            },
            o.elapsed.as_secs_f64()
        );
    }
    let failed: Vec<&str> = outcomes.iter().filter(|o| !o.passed).map(|o| o.name.as_str()).collect();
    if !failed.is_empty() {
        bail!("VM tests failed: {}", failed.join(", "));
    }
    println!("vm-test: all VMs passed");
    Ok(())
}
