//! Loading the eBPF programs, pinning them with their maps and links on a
//! bpffs, attaching them, and writing compiled policy into their maps.

mod attach;
mod batch;
pub mod conntrack;
pub mod layout;
pub mod memory;
mod slots;
pub mod stats;

use std::path::PathBuf;

use aya::{Ebpf, EbpfLoader, programs::SchedClassifier};

pub use attach::{
    AttachError, Attachments, HookKind, TcxHook, endpoint_program_fds, pinned_links, remove_all, tcx_attach_first,
};
pub use layout::Layout;
pub use slots::{MemoryError, SlotError, Slots};

/// Names of the programs in the eBPF object.
pub const PROG_FROM_ENDPOINT: &str = "hostwall_from_endpoint";
pub const PROG_TO_ENDPOINT: &str = "hostwall_to_endpoint";
pub const PROG_UPLINK: &str = "hostwall_uplink";
pub const PROGRAMS: [&str; 3] = [PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT, PROG_UPLINK];

/// Every map of the eBPF object; all are pinned.
pub const MAPS: [&str; 32] = [
    "HW_ACTIVE",
    "HW_SETTINGS",
    "HW_IFACE_0",
    "HW_IFACE_1",
    "HW_SRC_0",
    "HW_SRC_1",
    "HW_LOCAL_0",
    "HW_LOCAL_1",
    "HW_POLICY_SCAN",
    "HW_PEER4_0",
    "HW_PEER4_1",
    "HW_PEER6_0",
    "HW_PEER6_1",
    "HW_POLICY_0",
    "HW_POLICY_1",
    "HW_CIDR4_0",
    "HW_CIDR4_1",
    "HW_CIDR6_0",
    "HW_CIDR6_1",
    "HW_CONNTRACK",
    "HW_CT_INBOUND",
    "HW_MIDSTREAM",
    "HW_UPLINK",
    "HW_FRAGS",
    "HW_RULE_STATS",
    "HW_DROPS",
    "HW_PASSES",
    "HW_CT_EVENTS",
    "HW_RULE_KEYS",
    "HW_RULE_IDS",
    "HW_CT_COUNT",
    "HW_CT_COUNT_IN",
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "loading the eBPF object failed (pinned maps under {dir} may be from an incompatible build; `hostwall uninstall` removes them)"
    )]
    Object {
        dir: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error(
        "loading the eBPF object: the kernel refused to create maps or programs (EPERM): the agent needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (and on kernels before 5.11 a memlock limit it may raise, CAP_SYS_RESOURCE)"
    )]
    Permission {
        #[source]
        source: Box<aya::EbpfError>,
    },
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
    #[error("creating {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether loading failed for want of privilege (EPERM somewhere in the
/// error's chain), not because of what is pinned.
fn denied(e: &aya::EbpfError) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        cur = err.source();
    }
    // Some of aya's errors carry the system call's error only in their
    // text.
    format!("{e:?}").contains("code: 1, kind: PermissionDenied")
}

/// Capacities of the policy maps that depend on the policy's size. The
/// LPM tries allocate entries as they are written, so their capacities
/// are ceilings that cost nothing until used (`--policy-entries`,
/// `--peer-entries` override them); `max_memory` (`--max-map-memory`) is
/// what bounds a policy. Pinned maps keep their capacities: other ones
/// take `hostwall uninstall` and a fresh start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// `HW_POLICY_0`/`_1` and each of `HW_CIDR4_*`/`HW_CIDR6_*`: rule
    /// entries (rules × own peers × port blocks).
    pub policy: u32,
    /// `HW_PEER4_*`/`HW_PEER6_*`: prefixes and addresses per family.
    pub peer: u32,
    /// Kernel memory all maps together may take, both slots full.
    pub max_memory: u64,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            policy: hostwall_common::MAX_POLICY_ENTRIES,
            peer: hostwall_common::MAX_PEER_ENTRIES,
            max_memory: memory::DEFAULT_MAX_MAP_MEMORY,
        }
    }
}

impl MapSizes {
    /// The compiler's limits for these sizes.
    pub fn limits(&self) -> crate::compile::Limits {
        crate::compile::Limits {
            policy_entries: self.policy as usize,
            peer_entries: self.peer as usize,
            ..Default::default()
        }
    }
}

/// The loaded programs and maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub slots: Slots,
    /// Every pinned map, opened again from its pin: what a pin someone
    /// removed is made again from.
    pins: Vec<(PathBuf, aya::maps::MapData)>,
}

impl Datapath {
    /// Loads the object with every map pinned under `layout` (reusing maps
    /// already pinned there, so policy, conntrack and counters carry over)
    /// and loads the three programs (not yet attached).
    pub fn load(layout: &Layout, sizes: &MapSizes) -> Result<Datapath, LoadError> {
        let maps = layout.maps();
        std::fs::create_dir_all(&maps).map_err(|source| LoadError::Dir {
            path: maps.clone(),
            source,
        })?;
        let mut loader = EbpfLoader::new();
        for name in [
            "HW_POLICY_0",
            "HW_POLICY_1",
            "HW_CIDR4_0",
            "HW_CIDR4_1",
            "HW_CIDR6_0",
            "HW_CIDR6_1",
        ] {
            loader.map_max_entries(name, sizes.policy);
        }
        for name in ["HW_PEER4_0", "HW_PEER4_1", "HW_PEER6_0", "HW_PEER6_1"] {
            loader.map_max_entries(name, sizes.peer);
        }
        let paths: Vec<(&'static str, PathBuf)> = MAPS.iter().map(|m| (*m, maps.join(m))).collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader.load(crate::EBPF_OBJECT).map_err(|source| {
            if denied(&source) {
                LoadError::Permission {
                    source: Box::new(source),
                }
            } else {
                LoadError::Object {
                    dir: maps.clone(),
                    source: Box::new(source),
                }
            }
        })?;
        let mut datapath = Datapath::with_programs(ebpf)?;
        for (_, path) in paths {
            let map = aya::maps::MapData::from_pin(&path).map_err(|source| LoadError::Object {
                dir: maps.clone(),
                source: Box::new(aya::EbpfError::MapError(source)),
            })?;
            datapath.pins.push((path, map));
        }
        datapath.slots.set_sizes(*sizes);
        datapath.slots.set_fixed_memory(memory::fixed());
        Ok(datapath)
    }

    /// Loads programs and maps with nothing pinned: for packet tests and
    /// benchmarks, whose maps die with the process.
    pub fn load_unpinned() -> Result<Datapath, LoadError> {
        Datapath::load_object_unpinned(crate::EBPF_OBJECT)
    }

    /// As `load_unpinned`, from another eBPF object (8-byte aligned): the
    /// benchmark loads an earlier build's object beside this one and writes
    /// the same compiled policy into both.
    pub fn load_object_unpinned(object: &[u8]) -> Result<Datapath, LoadError> {
        let ebpf = EbpfLoader::new().load(object).map_err(|source| LoadError::Object {
            dir: PathBuf::new(),
            source: Box::new(source),
        })?;
        Datapath::with_programs(ebpf)
    }

    /// As `load_object_unpinned`, with the object's global `u32` `global`
    /// set to `value` (the tests' object with planted bugs selects one this
    /// way).
    pub fn load_object_unpinned_with(object: &[u8], global: &str, value: u32) -> Result<Datapath, LoadError> {
        let ebpf = EbpfLoader::new()
            .override_global(global, &value, true)
            .load(object)
            .map_err(|source| LoadError::Object {
                dir: PathBuf::new(),
                source: Box::new(source),
            })?;
        Datapath::with_programs(ebpf)
    }

    fn with_programs(mut ebpf: Ebpf) -> Result<Datapath, LoadError> {
        for name in [PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT] {
            let prog: &mut SchedClassifier = ebpf
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
        let mut slots = Slots::take(&mut ebpf)?;
        slots.set_fixed_memory(memory::fixed());
        Ok(Datapath {
            ebpf,
            slots,
            pins: Vec::new(),
        })
    }

    /// Tells the programs which interface is the uplink (0: none), so that
    /// at an endpoint's interface they look for the flows of packets from
    /// there, or from the host's stack, among the flows opened towards the
    /// endpoint first.
    pub fn set_uplink(&mut self, ifindex: u32) -> Result<(), aya::maps::MapError> {
        let map = self.ebpf.map_mut("HW_UPLINK").ok_or(aya::maps::MapError::InvalidName {
            name: "HW_UPLINK".into(),
        })?;
        aya::maps::Array::<&mut aya::maps::MapData, u32>::try_from(map)?.set(0, &ifindex, 0)
    }

    /// Pins again what someone removed of the maps' and programs' pins
    /// (the maps' are what a restarted agent finds its flows, counters and
    /// policy in); returns the paths pinned again.
    pub fn restore_pins(&mut self, layout: &Layout) -> Vec<PathBuf> {
        let mut restored = Vec::new();
        for (path, map) in &self.pins {
            if !path.exists() {
                let _ = std::fs::create_dir_all(layout.maps());
                if map.pin(path).is_ok() {
                    restored.push(path.clone());
                }
            }
        }
        let progs = layout.progs();
        let missing: Vec<PathBuf> = PROGRAMS
            .iter()
            .map(|name| progs.join(name))
            .filter(|p| !p.exists())
            .collect();
        if !missing.is_empty() && self.pin_programs(layout).is_ok() {
            restored.extend(missing.into_iter().filter(|p| p.exists()));
        }
        restored
    }

    /// Pins the programs (for inspection with bpftool; links keep them
    /// alive).
    pub fn pin_programs(&mut self, layout: &Layout) -> Result<(), LoadError> {
        let dir = layout.progs();
        std::fs::create_dir_all(&dir).map_err(|source| LoadError::Dir {
            path: dir.clone(),
            source,
        })?;
        for name in PROGRAMS {
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            if let Some(p) = self.ebpf.program_mut(name) {
                let _ = p.pin(&path);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_map_of_the_object_is_pinned() {
        let obj = aya_obj::Object::parse(crate::EBPF_OBJECT).expect("the eBPF object parses");
        let mut in_object: Vec<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|n| !n.starts_with('.'))
            .collect();
        in_object.sort();
        let mut listed: Vec<&str> = super::MAPS.to_vec();
        listed.sort();
        assert_eq!(
            in_object, listed,
            "datapath::MAPS must name every map of the eBPF object"
        );
    }
}
