use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    // The eBPF crate needs `-Z build-std=core`; aya-build passes this
    // script's environment on to the cargo it spawns, so the bootstrap flag
    // reaches that build only, never the workspace's own.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "hostwall-ebpf")
        .ok_or_else(|| anyhow!("hostwall-ebpf package not found"))?;
    let cargo_metadata::Package {
        name, manifest_path, ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
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
    aya_build::build_ebpf([ebpf_package], Toolchain::Custom("1.98.0"))
}
