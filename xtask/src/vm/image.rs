//! The VMs' initramfs: busybox for the shell tools, Debian's `ip`, `ping`
//! and `timeout` with the shared libraries they load, the static (musl)
//! hostwall binaries and test executables, the kernel's modules, and
//! `/init`.
//!
//! ```text
//! /init                      init.sh: mounts, insmod, runs the scenario
//! /bin/busybox, /bin/<applet> -> busybox   (not ip, ping or timeout)
//! /usr/bin/{ip,ping,timeout} Debian's, with /lib*/… from ldd
//! /bin/hostwall, /bin/hostwall-probe
//! /bin/hostwall-vm            this xtask, run as `hostwall-vm vm-guest`
//! /tests/<name>               integration test executables
//! /lib/modules/<name>.ko      decompressed; load order in /etc/hostwall-vm/modules
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use super::cpio;
use super::kernel::Kernel;

/// PID 1 of every VM.
const INIT: &str = include_str!("init.sh");

/// Tools the harness runs that busybox's applets cannot replace: `ip netns`
/// and veth/bridge set-up need iproute2, and the probes pass `ping` options
/// (`-W` with a fraction, `-n`) that only iputils' ping takes. `timeout`
/// too: Debian's busybox runs its own applet in preference to a program of
/// the same name, so its `timeout ping` would run busybox's ping.
const DEBIAN_TOOLS: &[&str] = &["ip", "ping", "timeout"];
/// Busybox applets that must not shadow those (`ping6` would be busybox's).
const NOT_APPLETS: &[&str] = &["ip", "ping", "ping6", "timeout"];

/// The static programs that go into every image.
pub struct GuestPrograms {
    pub hostwall: PathBuf,
    pub probe: PathBuf,
    /// The xtask binary itself, built for musl: the guest side.
    pub guest: PathBuf,
    /// Integration test executables by test name (`matrix` for
    /// tests/tests/matrix.rs).
    pub tests: BTreeMap<String, PathBuf>,
}

enum Entry {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
}

#[derive(Default)]
struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Tree {
    fn parents(&mut self, path: &str) {
        let mut dir = Path::new(path).parent();
        while let Some(d) = dir.filter(|d| *d != Path::new("/")) {
            self.entries
                .entry(d.to_string_lossy().into_owned())
                .or_insert(Entry::Dir);
            dir = d.parent();
        }
    }

    fn dir(&mut self, path: &str) {
        self.parents(path);
        self.entries.insert(path.to_string(), Entry::Dir);
    }

    fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.parents(path);
        self.entries.insert(path.to_string(), Entry::File { mode, data });
    }

    fn copy(&mut self, path: &str, mode: u32, from: &Path) -> anyhow::Result<()> {
        let data = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        self.file(path, mode, data);
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.entries
            .insert(path.to_string(), Entry::Symlink(target.to_string()));
    }

    /// Sorted by path, so every directory comes before what it holds.
    fn write(&self, out: impl std::io::Write) -> anyhow::Result<()> {
        let mut w = cpio::Writer::new(out);
        for (path, entry) in &self.entries {
            match entry {
                Entry::Dir => w.dir(path)?,
                Entry::File { mode, data } => w.file(path, *mode, data)?,
                Entry::Symlink(target) => w.symlink(path, target)?,
            }
        }
        std::io::Write::flush(&mut w.finish()?)?;
        Ok(())
    }
}

fn find_tool(name: &str) -> anyhow::Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("no {name} on this machine (scripts/setup installs it)"))
}

/// The shared libraries and the dynamic loader `ldd` lists for `program`.
fn shared_libraries(program: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .with_context(|| format!("running ldd {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        // `libbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x…)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some("not") => bail!("ldd {}: a library is missing: {line}", program.display()),
            _ => {}
        }
    }
    Ok(libs)
}

/// A copy of `from` without debug information (a debug build of the agent
/// is 90 MB with it, 13 MB without).
fn stripped(from: &Path, scratch: &Path) -> anyhow::Result<Vec<u8>> {
    let name = from.file_name().context("a program path without a file name")?;
    let to = scratch.join(name);
    let status = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&to)
        .arg(from)
        .status()
        .context("running strip (binutils)")?;
    if !status.success() {
        bail!("strip {} failed ({status})", from.display());
    }
    std::fs::read(&to).with_context(|| format!("reading {}", to.display()))
}

/// Writes the initramfs for `kernel` to `out` (gzip-compressed cpio) and
/// returns its size in bytes.
pub fn build(out: &Path, kernel: &Kernel, programs: &GuestPrograms, busybox: &Path) -> anyhow::Result<u64> {
    let scratch = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let mut tree = Tree::default();
    for d in ["/proc", "/sys", "/dev", "/tmp", "/run", "/root", "/etc", "/tests"] {
        tree.dir(d);
    }
    // `ip netns` keeps its names under /run/netns (or /var/run/netns).
    tree.symlink("/var/run", "../run");
    tree.file("/init", 0o755, INIT.as_bytes().to_vec());

    tree.copy("/bin/busybox", 0o755, busybox)?;
    let list = Command::new(busybox).arg("--list").output().context("busybox --list")?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if !NOT_APPLETS.contains(&applet) && applet != "busybox" {
            tree.symlink(&format!("/bin/{applet}"), "busybox");
        }
    }

    for tool in DEBIAN_TOOLS {
        let path = find_tool(tool)?;
        tree.copy(&format!("/usr/bin/{tool}"), 0o755, &path)?;
        for lib in shared_libraries(&path)? {
            tree.copy(&lib.to_string_lossy(), 0o755, &lib)?;
        }
    }

    for (path, from) in [
        ("/bin/hostwall", &programs.hostwall),
        ("/bin/hostwall-probe", &programs.probe),
        ("/bin/hostwall-vm", &programs.guest),
    ] {
        tree.file(path, 0o755, stripped(from, &scratch)?);
    }
    for (name, from) in &programs.tests {
        tree.file(&format!("/tests/{name}"), 0o755, stripped(from, &scratch)?);
    }

    let modules = kernel.modules(busybox)?;
    let mut order = String::new();
    for m in &modules {
        order.push_str(&m.name);
        order.push('\n');
        tree.file(&format!("/lib/modules/{}.ko", m.name), 0o644, m.data.clone());
    }
    tree.file("/etc/hostwall-vm/modules", 0o644, order.into_bytes());

    let mut gzip = Command::new("gzip")
        .arg("-1")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?)
        .spawn()
        .context("running gzip")?;
    tree.write(std::io::BufWriter::new(gzip.stdin.take().expect("piped stdin")))?;
    let status = gzip.wait()?;
    if !status.success() {
        bail!("gzip failed ({status})");
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(std::fs::metadata(out)?.len())
}
