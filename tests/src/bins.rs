//! Where the programs under test are.

use std::path::{Path, PathBuf};

use anyhow::bail;

/// The `hostwall` agent binary and the `hostwall-probe` traffic tool.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub hostwall: PathBuf,
    pub probe: PathBuf,
}

impl Binaries {
    /// Checks that both programs exist.
    pub fn new(hostwall: impl Into<PathBuf>, probe: impl Into<PathBuf>) -> anyhow::Result<Binaries> {
        let bins = Binaries {
            hostwall: hostwall.into(),
            probe: probe.into(),
        };
        if !bins.hostwall.is_file() {
            bail!(
                "the hostwall binary is not at {}: run `cargo build -p hostwall` first (or set HOSTWALL_BIN)",
                bins.hostwall.display()
            );
        }
        if !bins.probe.is_file() {
            bail!(
                "the hostwall-probe binary is not at {}: run `cargo build -p hostwall-tests --bins` first \
                 (or set HOSTWALL_PROBE_BIN)",
                bins.probe.display()
            );
        }
        Ok(bins)
    }

    /// `HOSTWALL_BIN` and `HOSTWALL_PROBE_BIN` if set; otherwise both from
    /// the target directory the running executable was built into (tests run
    /// from `target/<profile>/deps/`). `probe` overrides the probe's default
    /// location (integration tests pass `env!("CARGO_BIN_EXE_hostwall-probe")`).
    pub fn locate(probe: Option<&Path>) -> anyhow::Result<Binaries> {
        let profile_dir = profile_dir()?;
        let hostwall = std::env::var_os("HOSTWALL_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| profile_dir.join("hostwall"));
        let probe = match std::env::var_os("HOSTWALL_PROBE_BIN") {
            Some(p) => PathBuf::from(p),
            None => probe
                .map(Path::to_path_buf)
                .unwrap_or_else(|| profile_dir.join("hostwall-probe")),
        };
        Binaries::new(hostwall, probe)
    }
}

/// `hostwall-send`, the raw-frame sender: `HOSTWALL_SEND_BIN` if set, else
/// `default` (integration tests pass `env!("CARGO_BIN_EXE_hostwall-send")`),
/// else from the target directory the running executable was built into.
pub fn locate_sender(default: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("HOSTWALL_SEND_BIN") {
        Some(p) => PathBuf::from(p),
        None => match default {
            Some(p) => p.to_path_buf(),
            None => profile_dir()?.join("hostwall-send"),
        },
    };
    if !path.is_file() {
        bail!(
            "the hostwall-send binary is not at {}: run `cargo build -p hostwall-tests --bins` first \
             (or set HOSTWALL_SEND_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// `target/<profile>` of the running executable.
fn profile_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}
