//! The eBPF object of an earlier revision: the baseline that `compare.rs`
//! measures the object of this build against.
//!
//! The revision's tree is exported with `git archive` and only its eBPF
//! crate is built, with the command `aya_build::build_ebpf` runs from
//! `agent/build.rs` (aya-build 0.2.1): `rustup run TOOLCHAIN cargo build
//! --package hostwall-ebpf --bins --release --target bpfel-unknown-none -Z
//! build-std=core`, `RUSTC_BOOTSTRAP=1` for that command only, and aya-build's
//! `CARGO_ENCODED_RUSTFLAGS`. The object is kept under
//! `target/bench-baseline/COMMIT/`, so a revision is built once.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The revision the benchmark compares the eBPF object against unless
/// `cargo xtask bench --baseline REV` names another: 3af481f, the datapath
/// before stateful conntrack (one table, `HW_CONNTRACK`, for every flow,
/// looked up as-is then reversed; no inbound share, no mid-stream window).
pub const DEFAULT_REVISION: &str = "3af481f";

/// The toolchain `agent/build.rs` builds the eBPF crate with.
const TOOLCHAIN: &str = "1.98.0";
const TARGET: &str = "bpfel-unknown-none";
const PACKAGE: &str = "hostwall-ebpf";
/// The eBPF crate's binary: the object the agent embeds.
const BINARY: &str = "hostwall";

/// An eBPF object, held 8-byte aligned as the ELF parser wants it.
pub struct Object {
    /// The full commit hash.
    pub commit: String,
    /// Its abbreviation and subject line.
    pub short: String,
    pub subject: String,
    words: Vec<u64>,
    len: usize,
}

impl Object {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes, and u8 has
        // no alignment requirement.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

fn git(root: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether `rev` names a commit this repository has.
pub fn available(root: &Path, rev: &str) -> bool {
    git(
        root,
        &["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")],
    )
    .is_ok()
}

/// The eBPF object of `rev`, built on first use.
pub fn object(root: &Path, rev: &str) -> anyhow::Result<Object> {
    let commit = git(
        root,
        &["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")],
    )
    .with_context(|| format!("{rev} is not a commit of this repository"))?;
    let short = git(root, &["rev-parse", "--short", &commit])?;
    let subject = git(root, &["log", "-1", "--format=%s", &commit])?;
    let dir = root.join("target").join("bench-baseline").join(&commit);
    let cached = dir.join(format!("{BINARY}.bpf.o"));
    if !cached.is_file() {
        println!(
            "bench: building the eBPF object of {short} (once; kept in {})",
            dir.display()
        );
        build(root, &commit, &dir, &cached)?;
    }
    let bytes = std::fs::read(&cached).with_context(|| format!("reading {}", cached.display()))?;
    let mut words = vec![0u64; bytes.len().div_ceil(8)];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u64::from_ne_bytes(b);
    }
    Ok(Object {
        commit,
        short,
        subject,
        words,
        len: bytes.len(),
    })
}

/// Exports `commit`'s tree into `dir/src`, builds its eBPF crate into
/// `dir/target`, and keeps the object as `cached` (the tree and the build
/// directory are removed afterwards).
fn build(root: &Path, commit: &str, dir: &Path, cached: &Path) -> anyhow::Result<()> {
    let src = dir.join("src");
    let target_dir = dir.join("target");
    if src.exists() {
        std::fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    let mut archive = Command::new("git")
        .args(["archive", "--format=tar", commit])
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("running git archive")?;
    let tar = Command::new("tar")
        .arg("-x")
        .arg("-C")
        .arg(&src)
        .stdin(archive.stdout.take().context("git archive's stdout")?)
        .status()
        .context("running tar")?;
    if !archive.wait()?.success() || !tar.success() {
        bail!("exporting {commit} into {} failed", src.display());
    }

    // aya-build's flags: the BPF target architecture is the host's, debug
    // information and BTF for the loader.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
    ]
    .join("\x1f");
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", TOOLCHAIN, "cargo", "build", "--package", PACKAGE, "--bins"])
        .args(["--message-format=json", "--release", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&src)
        // `-Z build-std` needs it; this command's environment only.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    let mut child = cargo
        .spawn()
        .context("running rustup run cargo build (is rustup installed?)")?;
    let mut object = None;
    for line in std::io::BufReader::new(child.stdout.take().context("cargo's stdout")?).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        match msg["reason"].as_str() {
            Some("compiler-artifact") if msg["target"]["name"] == BINARY => {
                if let Some(exe) = msg["executable"].as_str() {
                    object = Some(exe.to_string());
                }
            }
            Some("compiler-message") => {
                if let Some(text) = msg["message"]["rendered"].as_str() {
                    eprint!("{text}");
                }
            }
            _ => {}
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("building the eBPF crate of {commit} failed ({status})");
    }
    let object = object.with_context(|| format!("the build of {commit} produced no {BINARY} binary"))?;
    let part = cached.with_extension("part");
    std::fs::copy(&object, &part).with_context(|| format!("copying {object}"))?;
    std::fs::rename(&part, cached)?;
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&target_dir);
    Ok(())
}
