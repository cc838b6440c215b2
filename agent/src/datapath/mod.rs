//! Loading the eBPF programs, attaching them to interfaces, and writing
//! compiled policy into their maps.

mod attach;
mod slots;
pub mod stats;

use std::path::{Path, PathBuf};

use aya::{Ebpf, EbpfLoader};

pub use attach::{AttachError, Attachments, HookKind};
pub use slots::{SlotError, Slots};

/// Names of the programs in the eBPF object.
pub const PROG_FROM_ENDPOINT: &str = "hostwall_from_endpoint";
pub const PROG_TO_ENDPOINT: &str = "hostwall_to_endpoint";
pub const PROG_UPLINK: &str = "hostwall_uplink";

/// Maps pinned under the bpffs directory so that `hostwall stats` can read
/// them while the agent runs.
pub const PINNED_MAPS: &[&str] = &["HW_DROPS", "HW_PASSES", "HW_RULE_STATS", "HW_CONNTRACK", "HW_CT_EVENTS"];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object failed")]
    Object(#[source] aya::EbpfError),
    #[error("the eBPF object has no program or map named {name}")]
    Missing { name: &'static str },
    #[error("the kernel refused program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name} has an unexpected type")]
    MapType {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning map {name} at {path}")]
    Pin {
        name: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
}

/// The loaded programs and maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub slots: Slots,
}

impl Datapath {
    /// Loads the object and its three programs (not yet attached).
    pub fn load() -> Result<Datapath, LoadError> {
        let mut ebpf = EbpfLoader::new().load(crate::EBPF_OBJECT).map_err(LoadError::Object)?;
        for name in [PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT] {
            let prog: &mut aya::programs::SchedClassifier = ebpf
                .program_mut(name)
                .ok_or(LoadError::Missing { name })?
                .try_into()
                .map_err(|source| LoadError::Program { name, source })?;
            prog.load().map_err(|source| LoadError::Program { name, source })?;
        }
        let xdp: &mut aya::programs::Xdp = ebpf
            .program_mut(PROG_UPLINK)
            .ok_or(LoadError::Missing { name: PROG_UPLINK })?
            .try_into()
            .map_err(|source| LoadError::Program {
                name: PROG_UPLINK,
                source,
            })?;
        xdp.load().map_err(|source| LoadError::Program {
            name: PROG_UPLINK,
            source,
        })?;
        let slots = Slots::take(&mut ebpf)?;
        Ok(Datapath { ebpf, slots })
    }

    /// Pins the observable maps under `dir` (which must be on a bpffs).
    pub fn pin_maps(&self, dir: &Path) -> Result<(), LoadError> {
        for name in PINNED_MAPS {
            let map = self.ebpf.map(name).ok_or(LoadError::Missing { name })?;
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            map.pin(&path).map_err(|source| LoadError::Pin { name, path, source })?;
        }
        Ok(())
    }
}
