//! Loading the eBPF programs, pinning them with their maps and links on a
//! bpffs, attaching them, and writing compiled policy into their maps.

mod attach;
mod batch;
pub mod conntrack;
pub mod layout;
pub mod memory;
pub mod sizes;
mod slots;
pub mod stats;

use std::os::fd::AsFd as _;
use std::path::PathBuf;

use aya::{Ebpf, EbpfLoader, programs::SchedClassifier};

pub use attach::{
    AttachError, Attachments, HookKind, TcxHook, endpoint_program_fds, pinned_links, remove_all, tcx_attach_first,
};
pub use layout::Layout;
pub use sizes::{MapSizes, Needs};
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

/// The loaded programs and maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub slots: Slots,
    /// Every pinned map (name, pin path), opened again from its pin: what
    /// a pin someone removed is made again from.
    pins: Vec<(&'static str, PathBuf, aya::maps::MapData)>,
    /// The maps this datapath created larger than the pinned ones, while
    /// it is being swapped in (`grow`).
    grown: Vec<&'static str>,
}

impl Datapath {
    /// Loads the object with every map pinned under `layout` (reusing maps
    /// already pinned there, so policy, conntrack and counters carry over)
    /// and loads the three programs (not yet attached). Pinned maps keep
    /// their capacities; the others are created at `sizes`.
    pub fn load(layout: &Layout, sizes: &MapSizes) -> Result<Datapath, LoadError> {
        Datapath::load_with(layout, sizes, &[])
    }

    /// As `load`, with the maps named in `fresh` created anew at `sizes`
    /// and pinned under the layout's growth directory instead of reusing
    /// the pinned ones; `finish_growth` moves their pins into place.
    fn load_with(layout: &Layout, sizes: &MapSizes, fresh: &[&str]) -> Result<Datapath, LoadError> {
        let maps = layout.maps();
        let growth = layout.growth();
        let dirs = if fresh.is_empty() {
            vec![&maps]
        } else {
            vec![&maps, &growth]
        };
        for dir in dirs {
            std::fs::create_dir_all(dir).map_err(|source| LoadError::Dir {
                path: dir.clone(),
                source,
            })?;
        }
        let pin_of = |name: &str| {
            if fresh.contains(&name) {
                growth.join(name)
            } else {
                maps.join(name)
            }
        };
        for name in fresh {
            let _ = std::fs::remove_file(growth.join(name));
        }
        if fresh.is_empty() {
            // What a growth the agent did not finish left.
            let _ = std::fs::remove_dir_all(&growth);
        }
        // Pinned maps keep their capacities, each its own (a growth that
        // stopped half-way may leave maps of one kind at two sizes); the
        // smaller of a kind is what the compiled policy must fit.
        let pinned: Vec<(&'static str, u32)> = MAPS
            .iter()
            .filter(|n| sizes.capacity(n).is_some())
            .filter_map(|name| {
                let info = aya::maps::MapData::from_pin(pin_of(name)).ok()?.info().ok()?;
                Some((*name, info.max_entries()))
            })
            .collect();
        let mut loader = EbpfLoader::new();
        for name in MAPS {
            let own = pinned.iter().find(|(n, _)| *n == name).map(|(_, c)| *c);
            if let Some(capacity) = own.or_else(|| sizes.capacity(name)) {
                loader.map_max_entries(name, capacity);
            }
        }
        let mut by_size = pinned.clone();
        by_size.sort_by_key(|(_, c)| std::cmp::Reverse(*c));
        let sizes = sizes.with_pinned(by_size);
        let paths: Vec<(&'static str, PathBuf)> = MAPS.iter().map(|m| (*m, pin_of(m))).collect();
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
        for (name, path) in paths {
            let map = aya::maps::MapData::from_pin(&path).map_err(|source| LoadError::Object {
                dir: maps.clone(),
                source: Box::new(aya::EbpfError::MapError(source)),
            })?;
            // Where the map is pinned once it is in use.
            datapath.pins.push((name, maps.join(name), map));
        }
        datapath.slots.set_sizes(sizes);
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
            grown: Vec::new(),
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
        for (_, path, map) in &self.pins {
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

/// What growing maps adds to their kernel memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct Growth {
    /// Bytes the larger maps take beyond the ones they replace.
    pub added: u64,
    /// The largest of the larger maps: (map, capacity, bytes).
    pub largest: Option<(&'static str, usize, u64)>,
}

/// A datapath whose programs use larger maps, being swapped in.
#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error("loading the programs with larger maps")]
    Load(#[from] LoadError),
    #[error("copying the enforced policy into the larger maps")]
    Copy(#[from] SlotError),
}

impl Datapath {
    /// What growing the maps to `sizes` adds to their kernel memory: each
    /// map that grows takes its present memory times its growth (a
    /// preallocated map's memory is its capacity's).
    pub fn growth_memory(&self, sizes: &MapSizes) -> Growth {
        let now = self.slots.sizes();
        let mut growth = Growth::default();
        for (name, _, map) in &self.pins {
            let (Some(from), Some(to)) = (now.capacity(name), sizes.capacity(name)) else {
                continue;
            };
            if to <= from || MapSizes::lpm(name) {
                continue;
            }
            let Some(bytes) = memory::memlock(map.fd().as_fd()) else {
                continue;
            };
            let grown = bytes.saturating_mul(u64::from(to)) / u64::from(from.max(1));
            growth.added += grown - bytes;
            if growth.largest.is_none_or(|(_, _, b)| grown > b) {
                growth.largest = Some((name, to as usize, grown));
            }
        }
        growth
    }

    /// Loads the programs again with the maps whose capacity differs at
    /// `sizes` created anew at that size, every other map shared with this
    /// datapath (conntrack, counters of verdicts, the policy tries, the
    /// active slot's index). The active slot's contents of the new maps, the
    /// rules' keys and ids and the flow counts are copied, so that the new
    /// programs judge every packet as these do. Nothing is attached.
    pub fn grow(&self, layout: &Layout, sizes: &MapSizes) -> Result<Datapath, GrowError> {
        let fresh = sizes.differing(&self.slots.sizes(), &MAPS);
        let mut next = Datapath::load_with(layout, sizes, &fresh)?;
        next.slots.adopt(&self.slots)?;
        for name in ["HW_RULE_KEYS", "HW_RULE_IDS"] {
            if fresh.contains(&name) {
                copy_array(&self.ebpf, &mut next.ebpf, name);
            }
        }
        for name in ["HW_CT_COUNT", "HW_CT_COUNT_IN"] {
            if fresh.contains(&name) {
                copy_counts(&self.ebpf, &mut next.ebpf, name);
            }
        }
        next.grown = fresh;
        Ok(next)
    }

    /// Once every hook runs this datapath's programs, the maps of `old`
    /// that were replaced are final: their rule counters are added to the
    /// new ones, and the new maps' pins replace theirs.
    pub fn finish_growth(&mut self, old: Datapath, layout: &Layout) {
        if self.grown.contains(&"HW_RULE_STATS")
            && let Some(from) = old.ebpf.map("HW_RULE_STATS")
        {
            stats::add_rule_counters(from, &mut self.ebpf);
        }
        for name in std::mem::take(&mut self.grown) {
            let (from, to) = (layout.growth().join(name), layout.maps().join(name));
            if let Err(e) = std::fs::rename(&from, &to) {
                tracing::warn!(map = name, error = %e, "moving the larger map's pin into place failed");
            }
        }
        let _ = std::fs::remove_dir_all(layout.growth());
        // The old maps go with the old datapath.
        drop(old);
        self.slots.set_fixed_memory(memory::fixed());
    }

    /// Drops the pins of a growth that did not happen.
    pub fn abandon_growth(self, layout: &Layout) {
        drop(self);
        let _ = std::fs::remove_dir_all(layout.growth());
    }
}

/// Copies the `u64` array `name` of `from` into `to`'s (as far as both
/// reach).
fn copy_array(from: &Ebpf, to: &mut Ebpf, name: &str) {
    let (Some(f), Some(t)) = (from.map(name), to.map_mut(name)) else {
        return;
    };
    let (Ok(f), Ok(mut t)) = (
        aya::maps::Array::<&aya::maps::MapData, u64>::try_from(f),
        aya::maps::Array::<&mut aya::maps::MapData, u64>::try_from(t),
    ) else {
        return;
    };
    for i in 0..f.len().min(t.len()) {
        if let Ok(v) = f.get(&i, 0)
            && v != 0
        {
            let _ = t.set(i, &v, 0);
        }
    }
}

/// Copies the flow counts `name` (owner -> flows) of `from` into `to`'s.
fn copy_counts(from: &Ebpf, to: &mut Ebpf, name: &str) {
    let (Some(f), Some(t)) = (from.map(name), to.map_mut(name)) else {
        return;
    };
    let (Ok(f), Ok(mut t)) = (
        aya::maps::HashMap::<&aya::maps::MapData, u32, u32>::try_from(f),
        aya::maps::HashMap::<&mut aya::maps::MapData, u32, u32>::try_from(t),
    ) else {
        return;
    };
    for (k, v) in f.iter().filter_map(Result::ok) {
        let _ = t.insert(&k, &v, 0);
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
