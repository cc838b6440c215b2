//! Debian kernels for the VMs: the package a meta-package currently points
//! at, downloaded with `apt-get download` and unpacked with `dpkg-deb` into
//! a cache directory (never installed), and the modules the tests need with
//! everything they depend on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

/// A kernel the VM stage boots.
pub struct KernelSpec {
    /// How output and `--kernel` name it.
    pub label: &'static str,
    /// The Debian meta-package that depends on the current package of the
    /// series; its dependency gives the package name, which changes with
    /// every ABI bump.
    pub meta_package: &'static str,
    /// What the resolved package name must start with, so a meta-package
    /// that moves on to another series is noticed.
    pub package_prefix: &'static str,
    /// The TC attach path the agent must choose on it (`hook=` in its
    /// `policy applied` log line).
    pub hook: &'static str,
}

/// Modules the scenarios need: veth pairs and the bridge for the test
/// hosts, the clsact qdisc and cls_bpf for the TC path before tcx, and the
/// virtio NIC of the two-host link. On a kernel that has one built in it is
/// skipped; a kernel with neither is an error.
pub const MODULES: &[&str] = &["veth", "bridge", "sch_ingress", "cls_bpf", "virtio_pci", "virtio_net"];

/// An unpacked kernel package.
pub struct Kernel {
    pub package: String,
    /// `uname -r`, the directory under lib/modules.
    pub release: String,
    pub vmlinuz: PathBuf,
    modules_dir: PathBuf,
}

/// A module to load, decompressed.
pub struct Module {
    pub name: String,
    pub data: Vec<u8>,
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package `spec.meta_package` depends on, per the local apt lists.
fn resolve(spec: &KernelSpec) -> anyhow::Result<String> {
    let text = output(Command::new("apt-cache").args(["depends", spec.meta_package]))?;
    let found: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .collect();
    match found.as_slice() {
        [one] if one.starts_with(spec.package_prefix) => Ok(one.to_string()),
        [one] => bail!(
            "{} now depends on {one}, not on a {}* package: update the kernel table in xtask/src/vm/mod.rs",
            spec.meta_package,
            spec.package_prefix
        ),
        _ => bail!(
            "apt-cache finds no kernel package behind {} (apt-cache depends said: {:?})",
            spec.meta_package,
            text.trim()
        ),
    }
}

/// Resolves, downloads and unpacks the kernel of `spec` under `cache`,
/// skipping whatever is already there. An unknown package or a failed
/// download (stale package lists) is retried once after `apt-get update`.
pub fn fetch(spec: &KernelSpec, cache: &Path) -> anyhow::Result<Kernel> {
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    match resolve(spec).and_then(|p| unpack(&p, cache)) {
        Ok(k) => Ok(k),
        Err(first) => {
            eprintln!("vm-test: {first:#}; running apt-get update and trying again");
            output(Command::new("apt-get").args(["update", "-qq"]))?;
            let package = resolve(spec)?;
            unpack(&package, cache).with_context(|| format!("after apt-get update (first attempt: {first:#})"))
        }
    }
}

fn unpack(package: &str, cache: &Path) -> anyhow::Result<Kernel> {
    let dir = cache.join(package);
    let stamp = dir.join(".unpacked");
    if !stamp.exists() {
        let deb = match find_deb(cache, package)? {
            Some(deb) => deb,
            None => {
                println!("vm-test: downloading {package}");
                // Root's apt drops privileges to _apt for downloads, which
                // cannot write into a directory under the work tree.
                output(
                    Command::new("apt-get")
                        .args(["download", "-q", "-o", "APT::Sandbox::User=root", package])
                        .current_dir(cache),
                )?;
                find_deb(cache, package)?.with_context(|| format!("apt-get download left no {package}_*.deb"))?
            }
        };
        let _ = std::fs::remove_dir_all(&dir);
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
        std::fs::write(&stamp, b"")?;
    }
    let modules_root = dir.join("lib/modules");
    let release = std::fs::read_dir(&modules_root)
        .with_context(|| format!("reading {}", modules_root.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .with_context(|| format!("{package} has no lib/modules/<release>"))?;
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!("{package} has no {}", vmlinuz.display());
    }
    Ok(Kernel {
        package: package.to_string(),
        modules_dir: modules_root.join(&release),
        release,
        vmlinuz,
    })
}

fn find_deb(cache: &Path, package: &str) -> anyhow::Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    Ok(std::fs::read_dir(cache)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        }))
}

/// Module names use `_` where file names may use `-`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl Kernel {
    /// `MODULES` that are not built in, and what they depend on, in an
    /// order `insmod` can load them.
    pub fn modules(&self, busybox: &Path) -> anyhow::Result<Vec<Module>> {
        let builtin: BTreeSet<String> = std::fs::read_to_string(self.modules_dir.join("modules.builtin"))
            .context("reading modules.builtin")?
            .lines()
            .filter_map(module_name)
            .collect();
        let mut files = BTreeMap::new();
        index(&self.modules_dir.join("kernel"), &mut files)?;
        let mut loaded = Vec::new();
        let mut seen = BTreeSet::new();
        for name in MODULES {
            let name = normalize(name);
            if builtin.contains(&name) {
                continue;
            }
            if !files.contains_key(&name) {
                bail!(
                    "Linux {} has neither a module nor a built-in {name}, which the VM scenarios need",
                    self.release
                );
            }
            self.visit(&name, &files, &builtin, busybox, &mut seen, &mut loaded)?;
        }
        Ok(loaded)
    }

    /// Depth first: a module's dependencies are pushed before it.
    fn visit(
        &self,
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        builtin: &BTreeSet<String>,
        busybox: &Path,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<Module>,
    ) -> anyhow::Result<()> {
        if !seen.insert(name.to_string()) || builtin.contains(name) {
            return Ok(());
        }
        let path = files
            .get(name)
            .with_context(|| format!("Linux {}: no module file for {name}", self.release))?;
        let data = read_module(path, busybox)?;
        let depends = modinfo(&data, "depends").with_context(|| format!("reading {}", path.display()))?;
        for dep in depends.iter().flat_map(|d| d.split(',')).filter(|d| !d.is_empty()) {
            self.visit(&normalize(dep), files, builtin, busybox, seen, out)?;
        }
        out.push(Module {
            name: name.to_string(),
            data,
        });
        Ok(())
    }
}

/// `kernel/net/bridge/bridge.ko` (or `.ko.xz`) → `bridge`.
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let (stem, _) = file.split_once(".ko")?;
    Some(normalize(stem))
}

fn index(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            index(&path, out)?;
        } else if let Some(name) = path.to_str().and_then(module_name) {
            out.insert(name, path);
        }
    }
    Ok(())
}

/// The module's ELF image; Debian compresses modules with xz from 6.12 on
/// (busybox's `unxz` reads them, so the host needs no xz-utils).
fn read_module(path: &Path, busybox: &Path) -> anyhow::Result<Vec<u8>> {
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        return std::fs::read(path).with_context(|| format!("reading {name}"));
    }
    if name.ends_with(".ko.xz") {
        let out = Command::new(busybox)
            .args(["unxz", "-c"])
            .arg(path)
            .output()
            .with_context(|| format!("running {} unxz", busybox.display()))?;
        if !out.status.success() {
            bail!("unxz {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        return Ok(out.stdout);
    }
    bail!("{name}: unknown module compression (expected .ko or .ko.xz)")
}

/// A field of the module's `.modinfo` section (NUL-separated `key=value`
/// strings); `None` when the module has no such field.
fn modinfo(elf: &[u8], key: &str) -> anyhow::Result<Option<String>> {
    let section = elf_section(elf, ".modinfo")?.context("no .modinfo section")?;
    let prefix = format!("{key}=");
    Ok(section
        .split(|b| *b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .find_map(|s| s.strip_prefix(&prefix).map(str::to_string)))
}

/// The bytes of a section of a 64-bit little-endian ELF file.
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> anyhow::Result<Option<&'a [u8]>> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a 64-bit little-endian ELF file");
    }
    let truncated = || anyhow::anyhow!("truncated ELF file");
    let shoff = u64_at(0x28).ok_or_else(truncated)?;
    let shentsize = u16_at(0x3a).ok_or_else(truncated)?;
    let shnum = u16_at(0x3c).ok_or_else(truncated)?;
    let shstrndx = u16_at(0x3e).ok_or_else(truncated)?;
    let header = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(header(shstrndx) + 0x18).ok_or_else(truncated)?;
    for i in 0..shnum {
        let h = header(i);
        let name_off = u32_at(h).ok_or_else(truncated)?;
        let name = elf
            .get(strtab + name_off..)
            .and_then(|s| s.split(|b| *b == 0).next())
            .ok_or_else(truncated)?;
        if name == wanted.as_bytes() {
            let offset = u64_at(h + 0x18).ok_or_else(truncated)?;
            let size = u64_at(h + 0x20).ok_or_else(truncated)?;
            return Ok(Some(elf.get(offset..offset + size).ok_or_else(truncated)?));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_from_paths() {
        assert_eq!(module_name("kernel/net/bridge/bridge.ko").as_deref(), Some("bridge"));
        assert_eq!(
            module_name("kernel/net/sched/sch_ingress.ko.xz").as_deref(),
            Some("sch_ingress")
        );
        assert_eq!(module_name("kernel/drivers/x/a-b.ko").as_deref(), Some("a_b"));
        assert_eq!(module_name("modules.order"), None);
    }
}
