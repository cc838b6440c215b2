//! Builds the eBPF programs once more with the `mutants` feature: the
//! object the stateful differential test loads with one planted bug
//! switched on at a time (`ebpf/src/mutants.rs`), to show that it finds
//! each. The agent never loads it.

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    // Only the host's own test binaries run the differential tests; a
    // cross build (the VM images' musl binaries) gets an empty object.
    if std::env::var("TARGET")? != std::env::var("HOST")? {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("hostwall");
        std::fs::write(&out, b"").context("writing the empty object")?;
        return Ok(());
    }
    // As in agent/build.rs: the eBPF crate needs `-Z build-std=core`, and
    // this environment reaches only the cargo that aya-build spawns.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "hostwall-ebpf")
        .ok_or_else(|| anyhow!("hostwall-ebpf package not found"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root.as_str(),
        features: &["mutants"],
        ..Default::default()
    };
    // The programs are built from the shared types too; aya-build watches
    // only the eBPF crate.
    println!(
        "cargo::rerun-if-changed={}",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../common")
            .display()
    );
    aya_build::build_ebpf([package], Toolchain::Custom("1.98.0"))
}
