//! The double-buffered policy maps. A new policy is written into the slot
//! no packet is reading, then `HW_ACTIVE` is flipped: a packet reads the
//! active slot once, so it is judged entirely by the old or entirely by
//! the new policy.
//!
//! Writing a slot costs time per entry, so the agent remembers
//! what each slot holds and writes only the difference: entries the new
//! policy no longer has are removed, new and changed ones written. A policy
//! change of one rule is then a handful of writes, whatever the size of
//! the policy. A slot whose contents are unknown (maps adopted from an
//! earlier agent, or a write that failed half-way) is cleared and written
//! whole.

use std::collections::HashMap as StdHashMap;
use std::hash::Hash;
use std::os::fd::AsFd as _;
use std::time::{Duration, Instant};

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, IterableMap as _, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use hostwall_common::{
    CidrKey, CidrValue, EndpointInfo, LocalAddr, LocalKey, MIDSTREAM_ALWAYS, MIDSTREAM_NEVER, PeerInfo, PolicyKey,
    PolicyValue, Settings, SrcKey,
};

use super::LoadError;
use super::batch::{self, Batched};
use crate::compile::Compiled;
// The peer, policy and CIDR tries' contents in this build's form.
use crate::compile::Tables as Current;
use crate::compile::legacy::{LegacyPeerInfo, LegacyPolicyKey};
use crate::policy::Midstream;

/// How long a slot must have been inactive before it may be rewritten:
/// programs hold a slot for the few microseconds a packet takes, inside an
/// RCU read-side section. Only a write that follows a flip this closely
/// waits.
const GRACE: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("writing map {map}")]
    Write {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the eBPF object is of a build before layout 5 and needs the policy compiled in its form too")]
    OlderForm,
}

/// What one slot's maps hold, as written by this agent.
#[derive(Clone, Debug, Default, PartialEq)]
struct Contents {
    /// By ifindex: the endpoint and, for objects before layout 5, its
    /// policy id.
    iface: StdHashMap<u32, (EndpointInfo, u32)>,
    src: StdHashMap<SrcKey, u32>,
    local: StdHashMap<LocalKey, LocalAddr>,
    tables: Tables,
}

/// The peer and policy maps' contents, in the form of the slot's object.
#[derive(Clone, Debug, PartialEq)]
enum Tables {
    Current(Current),
    Legacy {
        peer4: StdHashMap<(u32, [u8; 4]), LegacyPeerInfo>,
        peer6: StdHashMap<(u32, [u8; 16]), LegacyPeerInfo>,
        policy: StdHashMap<(u32, LegacyPolicyKey), PolicyValue>,
    },
}

impl Tables {
    /// The kernel memory the LPM tries take for these contents.
    fn memory(&self) -> u64 {
        match self {
            Tables::Current(t) => super::memory::policy_tries(
                t.policy.len(),
                t.peer4.len(),
                t.peer6.len(),
                t.cidr4.len(),
                t.cidr6.len(),
            )
            .iter()
            .map(|t| t.2)
            .sum(),
            Tables::Legacy { .. } => 0,
        }
    }
}

impl Default for Tables {
    fn default() -> Self {
        Tables::Current(Current::default())
    }
}

impl Contents {
    fn of(c: &Compiled, legacy: bool) -> Result<Contents, SlotError> {
        let tables = if legacy {
            let l = c.legacy.as_deref().ok_or(SlotError::OlderForm)?;
            Tables::Legacy {
                peer4: l.peer4.iter().map(|(len, a, i)| ((*len, *a), *i)).collect(),
                peer6: l.peer6.iter().map(|(len, a, i)| ((*len, *a), *i)).collect(),
                policy: l.policy.iter().map(|(len, k, v)| ((*len, *k), *v)).collect(),
            }
        } else {
            Tables::Current(Current::of(c))
        };
        let policy_id = |endpoint: u32| {
            c.legacy
                .as_deref()
                .and_then(|l| l.policy_ids.get(&endpoint).copied())
                .unwrap_or(0)
        };
        Ok(Contents {
            iface: c
                .endpoints
                .iter()
                .filter_map(|ep| ep.ifindex.map(|i| (i, (ep.info, policy_id(ep.info.endpoint)))))
                .collect(),
            src: c.src.iter().map(|k| (*k, ep_of(c, k))).collect(),
            local: c.local.iter().copied().collect(),
            tables,
        })
    }
}

/// The changes that turn `old` into `new`: keys to remove, entries to write.
fn delta<'a, K: Eq + Hash + Copy, V: PartialEq + Copy>(
    old: &'a StdHashMap<K, V>,
    new: &'a StdHashMap<K, V>,
) -> (Vec<K>, Vec<(K, V)>) {
    let gone = old.keys().filter(|k| !new.contains_key(k)).copied().collect();
    let write = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    (gone, write)
}

fn write_error(map: &'static str) -> impl Fn(MapError) -> SlotError {
    move |source| SlotError::Write { map, source }
}

/// Brings hash map `map` from `old` to `new`, removals first so that a full
/// map has room for what replaces them.
fn sync_hash<K: Pod + Eq + Hash, V: Pod + PartialEq>(
    map: &mut HashMap<MapData, K, V>,
    name: &'static str,
    old: &StdHashMap<K, V>,
    new: &StdHashMap<K, V>,
) -> Result<(), SlotError> {
    let (gone, write) = delta(old, new);
    for k in gone {
        map.remove(&k).map_err(write_error(name))?;
    }
    for (k, v) in write {
        map.insert(&k, &v, 0).map_err(write_error(name))?;
    }
    Ok(())
}

/// As `sync_hash`, for an LPM trie keyed by (prefix length, data); in one
/// system call for the removals and one for the writes where the kernel
/// batches tries.
fn sync_lpm<K: Pod + Eq + Hash, V: Pod + PartialEq>(
    map: &mut LpmTrie<MapData, K, V>,
    name: &'static str,
    old: &StdHashMap<(u32, K), V>,
    new: &StdHashMap<(u32, K), V>,
) -> Result<(), SlotError> {
    let (gone, write) = delta(old, new);
    let gone: Vec<Key<K>> = gone.into_iter().map(|(len, k)| Key::new(len, k)).collect();
    remove_lpm(map, name, &gone)?;
    let write: Vec<(Key<K>, V)> = write.into_iter().map(|((len, k), v)| (Key::new(len, k), v)).collect();
    let fd = map.map().fd().as_fd();
    if batch::update(fd, &write).map_err(write_error(name))? == Batched::Unsupported {
        for (k, v) in &write {
            map.insert(k, v, 0).map_err(write_error(name))?;
        }
    }
    Ok(())
}

/// Removes `keys`, all present, from an LPM trie.
fn remove_lpm<K: Pod, V: Pod>(
    map: &mut LpmTrie<MapData, K, V>,
    name: &'static str,
    keys: &[Key<K>],
) -> Result<(), SlotError> {
    let fd = map.map().fd().as_fd();
    if batch::delete(fd, keys).map_err(write_error(name))? == Batched::Unsupported {
        for k in keys {
            map.remove(k).map_err(write_error(name))?;
        }
    }
    Ok(())
}

fn clear_hash<K: Pod, V: Pod>(map: &mut HashMap<MapData, K, V>, name: &'static str) -> Result<(), SlotError> {
    let keys: Vec<K> = map.keys().filter_map(Result::ok).collect();
    for k in keys {
        map.remove(&k).map_err(write_error(name))?;
    }
    Ok(())
}

fn clear_lpm<K: Pod, V: Pod>(map: &mut LpmTrie<MapData, K, V>, name: &'static str) -> Result<(), SlotError> {
    let keys: Vec<Key<K>> = map.keys().filter_map(Result::ok).collect();
    remove_lpm(map, name, &keys)
}

struct Slot {
    iface: IfaceMap,
    src: HashMap<MapData, SrcKey, u32>,
    /// `HW_LOCAL_s`; absent only in objects of earlier builds.
    local: Option<HashMap<MapData, LocalKey, LocalAddr>>,
    maps: TableMaps,
}

/// The peer and policy maps, in this build's form or, in objects of builds
/// before layout 5 (which the benchmark loads as its baseline), the older
/// one.
#[allow(clippy::large_enum_variant)]
enum TableMaps {
    Current(CurrentMaps),
    Legacy {
        peer4: LpmTrie<MapData, [u8; 4], LegacyPeerInfo>,
        peer6: LpmTrie<MapData, [u8; 16], LegacyPeerInfo>,
        policy: LpmTrie<MapData, LegacyPolicyKey, PolicyValue>,
    },
}

/// The peer, policy and CIDR tries of this build's object.
struct CurrentMaps {
    peer4: LpmTrie<MapData, [u8; 4], PeerInfo>,
    peer6: LpmTrie<MapData, [u8; 16], PeerInfo>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
    cidr4: LpmTrie<MapData, CidrKey<4>, CidrValue>,
    cidr6: LpmTrie<MapData, CidrKey<16>, CidrValue>,
}

impl CurrentMaps {
    fn clear(&mut self) -> Result<(), SlotError> {
        clear_lpm(&mut self.peer4, "HW_PEER4")?;
        clear_lpm(&mut self.peer6, "HW_PEER6")?;
        clear_lpm(&mut self.policy, "HW_POLICY")?;
        clear_lpm(&mut self.cidr4, "HW_CIDR4")?;
        clear_lpm(&mut self.cidr6, "HW_CIDR6")
    }

    /// Each trie has a lock of its own in the kernel: the CIDR tries are
    /// written on a second thread while this one writes the others.
    fn sync(&mut self, old: &Current, new: &Current) -> Result<(), SlotError> {
        let CurrentMaps {
            peer4,
            peer6,
            policy,
            cidr4,
            cidr6,
        } = self;
        std::thread::scope(|scope| {
            let cidrs = scope.spawn(|| {
                sync_lpm(cidr4, "HW_CIDR4", &old.cidr4, &new.cidr4)?;
                sync_lpm(cidr6, "HW_CIDR6", &old.cidr6, &new.cidr6)
            });
            let rest = sync_lpm(peer4, "HW_PEER4", &old.peer4, &new.peer4)
                .and_then(|()| sync_lpm(peer6, "HW_PEER6", &old.peer6, &new.peer6))
                .and_then(|()| sync_lpm(policy, "HW_POLICY", &old.policy, &new.policy));
            let cidrs = cidrs.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            rest.and(cidrs)
        })
    }

    /// (map, entries, capacity) of each.
    fn fill(&self, sizes: &super::MapSizes) -> [(&'static str, usize, u32); 5] {
        [
            ("HW_PEER4", self.peer4.keys().count(), sizes.peer),
            ("HW_PEER6", self.peer6.keys().count(), sizes.peer),
            ("HW_POLICY", self.policy.keys().count(), sizes.policy),
            ("HW_CIDR4", self.cidr4.keys().count(), sizes.policy),
            ("HW_CIDR6", self.cidr6.keys().count(), sizes.policy),
        ]
    }
}

pub struct Slots {
    active: Array<MapData, u32>,
    settings: SettingsMap,
    /// `HW_MIDSTREAM`; absent only in objects of earlier builds, which the
    /// benchmark loads as its baseline.
    midstream: Option<Array<MapData, u64>>,
    /// `CLOCK_MONOTONIC` (the programs' clock) when the agent started: the
    /// start of `settings.conntrack.midstream: startup`'s window.
    started_ns: u64,
    slots: [Slot; 2],
    /// The slot programs read.
    current: u32,
    /// What each slot holds; `None` when unknown.
    held: [Option<Contents>; 2],
    /// When the inactive slot stopped being the active one.
    flipped_at: Instant,
    /// The capacities the maps were created with.
    sizes: super::MapSizes,
    /// Kernel memory of the maps whose size does not depend on the policy.
    fixed_memory: u64,
}

/// A policy whose maps would take more kernel memory than
/// `--max-map-memory` allows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the policy needs {} of kernel memory in maps with both slots written, more than --max-map-memory allows ({}); {map} alone takes {} for {entries} entries",
    super::memory::human(*needed),
    super::memory::human(*ceiling),
    super::memory::human(*map_bytes)
)]
pub struct MemoryError {
    pub needed: u64,
    pub ceiling: u64,
    /// The largest of the policy's maps.
    pub map: &'static str,
    pub map_bytes: u64,
    pub entries: usize,
}

/// `HW_IFACE_s`, or in objects of earlier builds (which the benchmark loads
/// as its baseline) their forms: with a policy id, and before endpoints had
/// MACs without one.
enum IfaceMap {
    Current(HashMap<MapData, u32, EndpointInfo>),
    WithPolicy(HashMap<MapData, u32, [u32; 4]>),
    WithoutMac(HashMap<MapData, u32, [u32; 2]>),
}

impl IfaceMap {
    fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<IfaceMap, LoadError> {
        let map = ebpf.take_map(name).ok_or(LoadError::Missing { name })?;
        let size = value_size(&map);
        let err = |source| LoadError::MapType { name, source };
        Ok(if size == Some(std::mem::size_of::<[u32; 2]>()) {
            IfaceMap::WithoutMac(HashMap::try_from(map).map_err(err)?)
        } else if size == Some(std::mem::size_of::<[u32; 4]>()) {
            IfaceMap::WithPolicy(HashMap::try_from(map).map_err(err)?)
        } else {
            IfaceMap::Current(HashMap::try_from(map).map_err(err)?)
        })
    }

    /// Whether the object is of a build before layout 5, whose peer and
    /// policy maps have the older form.
    fn legacy(&self) -> bool {
        !matches!(self, IfaceMap::Current(_))
    }

    fn keys(&self) -> Vec<u32> {
        match self {
            IfaceMap::Current(m) => m.keys().filter_map(Result::ok).collect(),
            IfaceMap::WithPolicy(m) => m.keys().filter_map(Result::ok).collect(),
            IfaceMap::WithoutMac(m) => m.keys().filter_map(Result::ok).collect(),
        }
    }

    fn remove(&mut self, k: &u32) -> Result<(), MapError> {
        match self {
            IfaceMap::Current(m) => m.remove(k),
            IfaceMap::WithPolicy(m) => m.remove(k),
            IfaceMap::WithoutMac(m) => m.remove(k),
        }
    }

    /// Every entry, in this build's form only.
    fn entries(&self) -> Result<Vec<(u32, EndpointInfo)>, SlotError> {
        match self {
            IfaceMap::Current(m) => Ok(m.iter().filter_map(Result::ok).collect()),
            _ => Err(SlotError::OlderForm),
        }
    }

    /// `policy`: the endpoint's policy id, for the older forms.
    fn insert(&mut self, k: &u32, v: &EndpointInfo, policy: u32) -> Result<(), MapError> {
        match self {
            IfaceMap::Current(m) => m.insert(k, v, 0),
            IfaceMap::WithPolicy(m) => {
                let mac = |i: usize| u32::from_ne_bytes([v.mac[i], v.mac[i + 1], v.mac[i + 2], v.mac[i + 3]]);
                let tail = u32::from_ne_bytes([v.mac[4], v.mac[5], 0, 0]);
                m.insert(k, &[policy, v.endpoint, mac(0), tail], 0)
            }
            IfaceMap::WithoutMac(m) => m.insert(k, &[policy, v.endpoint], 0),
        }
    }
}

/// `HW_SETTINGS`, or in objects of builds before conntrack learned paths
/// (which the benchmark loads as its baseline) its shorter form, without a
/// generation.
enum SettingsMap {
    Current(Array<MapData, Settings>),
    WithoutGeneration(Array<MapData, [u8; SETTINGS_WITHOUT_GENERATION]>),
}

const SETTINGS_WITHOUT_GENERATION: usize = 64;

impl SettingsMap {
    fn take(ebpf: &mut Ebpf) -> Result<SettingsMap, LoadError> {
        let name = "HW_SETTINGS";
        let map = ebpf.take_map(name).ok_or(LoadError::Missing { name })?;
        let short = value_size(&map) == Some(SETTINGS_WITHOUT_GENERATION);
        let err = |source| LoadError::MapType { name, source };
        Ok(if short {
            SettingsMap::WithoutGeneration(Array::try_from(map).map_err(err)?)
        } else {
            SettingsMap::Current(Array::try_from(map).map_err(err)?)
        })
    }

    /// The generation slot `index` holds (0 when none).
    fn generation(&self, index: u32) -> u32 {
        match self {
            SettingsMap::Current(m) => m.get(&index, 0).map_or(0, |s| s.generation),
            SettingsMap::WithoutGeneration(_) => 0,
        }
    }

    /// The agent's policy generation slot `index` holds (0 when none).
    fn policy_generation(&self, index: u32) -> u32 {
        match self {
            SettingsMap::Current(m) => m.get(&index, 0).map_or(0, |s| s.policy_generation),
            SettingsMap::WithoutGeneration(_) => 0,
        }
    }

    fn set(&mut self, index: u32, v: &Settings) -> Result<(), MapError> {
        match self {
            SettingsMap::Current(m) => m.set(index, v, 0),
            SettingsMap::WithoutGeneration(m) => {
                // SAFETY: `Settings` is `repr(C)` plain data without
                // padding bytes; the older form is its first 64 bytes.
                let bytes = unsafe { &*(v as *const Settings as *const [u8; size_of::<Settings>()]) };
                let mut short = [0; SETTINGS_WITHOUT_GENERATION];
                short.copy_from_slice(&bytes[..SETTINGS_WITHOUT_GENERATION]);
                m.set(index, &short, 0)
            }
        }
    }
}

/// The value size a hash or array map was created with, which tells an
/// older object's form of a map from this build's.
fn value_size(map: &aya::maps::Map) -> Option<usize> {
    let data = match map {
        aya::maps::Map::HashMap(data) | aya::maps::Map::Array(data) => data,
        _ => return None,
    };
    data.info().ok().map(|i| i.value_size() as usize)
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::Missing { name })?;
    T::try_from(map).map_err(|source| LoadError::MapType { name, source })
}

impl Slot {
    fn take(ebpf: &mut Ebpf, n: usize) -> Result<Slot, LoadError> {
        const NAMES: [[&str; 8]; 2] = [
            [
                "HW_IFACE_0",
                "HW_SRC_0",
                "HW_LOCAL_0",
                "HW_PEER4_0",
                "HW_PEER6_0",
                "HW_POLICY_0",
                "HW_CIDR4_0",
                "HW_CIDR6_0",
            ],
            [
                "HW_IFACE_1",
                "HW_SRC_1",
                "HW_LOCAL_1",
                "HW_PEER4_1",
                "HW_PEER6_1",
                "HW_POLICY_1",
                "HW_CIDR4_1",
                "HW_CIDR6_1",
            ],
        ];
        let [iface, src, local, peer4, peer6, policy, cidr4, cidr6] = NAMES[n];
        let iface = IfaceMap::take(ebpf, iface)?;
        let maps = if iface.legacy() {
            TableMaps::Legacy {
                peer4: take(ebpf, peer4)?,
                peer6: take(ebpf, peer6)?,
                policy: take(ebpf, policy)?,
            }
        } else {
            TableMaps::Current(CurrentMaps {
                peer4: take(ebpf, peer4)?,
                peer6: take(ebpf, peer6)?,
                policy: take(ebpf, policy)?,
                cidr4: take(ebpf, cidr4)?,
                cidr6: take(ebpf, cidr6)?,
            })
        };
        Ok(Slot {
            iface,
            src: take(ebpf, src)?,
            local: take(ebpf, local).ok(),
            maps,
        })
    }

    fn legacy(&self) -> bool {
        matches!(self.maps, TableMaps::Legacy { .. })
    }

    /// Copies into this slot's hash maps of the kinds in `grown` (new,
    /// larger maps) what `other`'s hold; the others are the same maps.
    fn copy_hashes(&mut self, other: &Slot, grown: &Grown) -> Result<(), SlotError> {
        if grown.iface {
            for (k, v) in other.iface.entries()? {
                self.iface.insert(&k, &v, 0).map_err(write_error("HW_IFACE"))?;
            }
        }
        if grown.src {
            for (k, v) in other.src.iter().filter_map(Result::ok) {
                self.src.insert(&k, &v, 0).map_err(write_error("HW_SRC"))?;
            }
        }
        if grown.local
            && let (Some(to), Some(from)) = (&mut self.local, &other.local)
        {
            for (k, v) in from.iter().filter_map(Result::ok) {
                to.insert(&k, &v, 0).map_err(write_error("HW_LOCAL"))?;
            }
        }
        Ok(())
    }

    fn clear(&mut self) -> Result<(), SlotError> {
        for k in self.iface.keys() {
            self.iface.remove(&k).map_err(write_error("HW_IFACE"))?;
        }
        clear_hash(&mut self.src, "HW_SRC")?;
        if let Some(local) = &mut self.local {
            clear_hash(local, "HW_LOCAL")?;
        }
        match &mut self.maps {
            TableMaps::Current(maps) => maps.clear()?,
            TableMaps::Legacy { peer4, peer6, policy } => {
                clear_lpm(peer4, "HW_PEER4")?;
                clear_lpm(peer6, "HW_PEER6")?;
                clear_lpm(policy, "HW_POLICY")?;
            }
        }
        Ok(())
    }

    /// Writes the difference between `old` (what the slot holds) and `new`.
    fn write(&mut self, old: &Contents, new: &Contents) -> Result<(), SlotError> {
        let (gone, write) = delta(&old.iface, &new.iface);
        for k in gone {
            self.iface.remove(&k).map_err(write_error("HW_IFACE"))?;
        }
        for (k, (info, policy)) in write {
            self.iface.insert(&k, &info, policy).map_err(write_error("HW_IFACE"))?;
        }
        sync_hash(&mut self.src, "HW_SRC", &old.src, &new.src)?;
        if let Some(local) = &mut self.local {
            sync_hash(local, "HW_LOCAL", &old.local, &new.local)?;
        }
        let empty = Tables::default();
        // A slot whose contents were unknown was cleared: nothing of the
        // older form is held.
        let old_tables = if std::mem::discriminant(&old.tables) == std::mem::discriminant(&new.tables) {
            &old.tables
        } else {
            &empty
        };
        match (&mut self.maps, old_tables, &new.tables) {
            (TableMaps::Current(maps), Tables::Current(old), Tables::Current(new)) => maps.sync(old, new)?,
            (
                TableMaps::Legacy { peer4, peer6, policy },
                old,
                Tables::Legacy {
                    peer4: n4,
                    peer6: n6,
                    policy: np,
                },
            ) => {
                let none = (StdHashMap::new(), StdHashMap::new(), StdHashMap::new());
                let (o4, o6, op) = match old {
                    Tables::Legacy { peer4, peer6, policy } => (peer4, peer6, policy),
                    Tables::Current(_) => (&none.0, &none.1, &none.2),
                };
                sync_lpm(peer4, "HW_PEER4", o4, n4)?;
                sync_lpm(peer6, "HW_PEER6", o6, n6)?;
                sync_lpm(policy, "HW_POLICY", op, np)?;
            }
            _ => return Err(SlotError::OlderForm),
        }
        Ok(())
    }
}

/// Which of a slot's hash maps a growth replaced by larger ones.
struct Grown {
    iface: bool,
    src: bool,
    local: bool,
}

/// The endpoint id that owns a source-guard entry.
fn ep_of(c: &Compiled, k: &SrcKey) -> u32 {
    c.endpoints
        .iter()
        .find(|e| e.ifindex == Some(k.ifindex))
        .map(|e| e.info.endpoint)
        .unwrap_or(0)
}

impl Slots {
    pub(super) fn set_sizes(&mut self, sizes: super::MapSizes) {
        self.sizes = sizes;
    }

    /// The capacities of the maps that depend on the policy's size.
    pub fn sizes(&self) -> super::MapSizes {
        self.sizes
    }

    /// Takes over the state of `old`, the slots of a datapath whose maps
    /// these share but for the larger ones (those whose capacity differs):
    /// the active slot's larger maps get what the old ones hold, so that
    /// these programs judge as the old ones do; the inactive slot's larger
    /// maps are empty.
    pub(super) fn adopt(&mut self, old: &Slots) -> Result<(), SlotError> {
        let grown = Grown {
            iface: self.sizes.interfaces != old.sizes.interfaces,
            src: self.sizes.src != old.sizes.src,
            local: self.sizes.local != old.sizes.local,
        };
        let c = old.current as usize;
        self.slots[c].copy_hashes(&old.slots[c], &grown)?;
        self.current = old.current;
        self.started_ns = old.started_ns;
        self.flipped_at = old.flipped_at;
        self.held = old.held.clone();
        if let Some(inactive) = &mut self.held[1 - c] {
            if grown.iface {
                inactive.iface.clear();
            }
            if grown.src {
                inactive.src.clear();
            }
            if grown.local {
                inactive.local.clear();
            }
        }
        Ok(())
    }

    /// (map, entries, capacity) of the active slot's maps.
    pub fn fill(&self) -> Vec<(&'static str, usize, u32)> {
        let s = &self.slots[self.current as usize];
        let mut fill = vec![
            ("HW_IFACE", s.iface.keys().len(), self.sizes.interfaces),
            ("HW_SRC", s.src.keys().count(), self.sizes.src),
            (
                "HW_LOCAL",
                s.local.as_ref().map_or(0, |m| m.keys().count()),
                self.sizes.local,
            ),
        ];
        match &s.maps {
            TableMaps::Current(maps) => fill.extend(maps.fill(&self.sizes)),
            TableMaps::Legacy { peer4, peer6, policy } => fill.extend([
                ("HW_PEER4", peer4.keys().count(), self.sizes.peer),
                ("HW_PEER6", peer6.keys().count(), self.sizes.peer),
                ("HW_POLICY", policy.keys().count(), self.sizes.policy),
            ]),
        }
        fill
    }

    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Slots, LoadError> {
        Ok(Slots {
            active: take(ebpf, "HW_ACTIVE")?,
            settings: SettingsMap::take(ebpf)?,
            midstream: take(ebpf, "HW_MIDSTREAM").ok(),
            started_ns: super::stats::monotonic_ns(),
            slots: [Slot::take(ebpf, 0)?, Slot::take(ebpf, 1)?],
            current: 0,
            held: [None, None],
            // Maps adopted from an earlier agent may have been flipped just
            // before it stopped.
            flipped_at: Instant::now(),
            sizes: super::MapSizes::of_object(),
            fixed_memory: 0,
        }
        .with_current())
    }

    /// Moves the start of the mid-stream window (`CLOCK_MONOTONIC` ns);
    /// it opens when the maps are loaded. Takes effect at the next apply.
    pub fn set_started(&mut self, ns: u64) {
        self.started_ns = ns;
    }

    /// Until when mid-stream packets may create entries under `compiled`.
    fn midstream_until(&self, compiled: &Compiled) -> u64 {
        match compiled.midstream {
            Midstream::Allow => MIDSTREAM_ALWAYS,
            Midstream::Deny => MIDSTREAM_NEVER,
            Midstream::Startup(window) => self
                .started_ns
                .saturating_add(window.as_nanos().min(u64::MAX as u128) as u64),
        }
    }

    /// Reads which slot is active (maps reused from an earlier agent).
    fn with_current(mut self) -> Slots {
        self.current = match self.active.get(&0, 0) {
            Ok(1) => 1,
            _ => 0,
        };
        self
    }

    pub(super) fn set_fixed_memory(&mut self, bytes: u64) {
        self.fixed_memory = bytes;
    }

    /// What the active slot was written with, when this agent wrote it in
    /// this build's form.
    /// The latest policy generation written to either slot: where an
    /// agent that adopts pinned maps goes on counting.
    pub fn policy_generation(&self) -> u64 {
        u64::from(
            self.settings
                .policy_generation(0)
                .max(self.settings.policy_generation(1)),
        )
    }

    /// Copies what the active slot was written with into fresh allocations
    /// and frees the originals ([`crate::memory::compact`]); the inactive
    /// slot's were compacted when it was the active one.
    pub fn compact(&mut self) {
        crate::memory::compact(&mut self.held[self.current as usize]);
    }

    pub fn active_tables(&self) -> Option<&Current> {
        match &self.held[self.current as usize].as_ref()?.tables {
            Tables::Current(t) => Some(t),
            Tables::Legacy { .. } => None,
        }
    }

    /// Kernel memory of every map now (bytes), and `--max-map-memory`. The
    /// LPM tries' share is worked out from what each slot holds (kernels
    /// before 6.4 report a trie's memory from its capacity, not its
    /// entries).
    pub fn memory(&self) -> (u64, u64) {
        let lpm: u64 = self.held.iter().flatten().map(|c| c.tables.memory()).sum();
        (self.fixed_memory + lpm, self.sizes.max_memory)
    }

    /// Whether writing `compiled` keeps the maps' kernel memory under
    /// `--max-map-memory`: the maps of fixed size, the active slot's policy
    /// (when the active slot's contents are unknown, as after a restart, as
    /// much again as `compiled`'s) and `compiled` in the other slot.
    /// `growth`: what larger maps the policy needs would add (bytes) and
    /// the largest of them (map, its bytes, its capacity).
    pub fn check_memory(&self, compiled: &Compiled, growth: &super::Growth) -> Result<u64, MemoryError> {
        if self.slots[self.current as usize].legacy() {
            return Ok(0);
        }
        let parts = super::memory::policy_tries(
            compiled.policy.len(),
            compiled.peer4.len(),
            compiled.peer6.len(),
            compiled.cidr4.len(),
            compiled.cidr6.len(),
        );
        let new: u64 = parts.iter().map(|p| p.2).sum();
        let held = match &self.held[self.current as usize] {
            Some(c) => c.tables.memory(),
            None => new,
        };
        let needed = self.fixed_memory + growth.added + held + new;
        let ceiling = self.sizes.max_memory;
        if needed > ceiling {
            let (map, entries, map_bytes) = parts
                .into_iter()
                .chain(growth.largest)
                .max_by_key(|p| p.2)
                .expect("three maps");
            return Err(MemoryError {
                needed,
                ceiling,
                map,
                map_bytes,
                entries,
            });
        }
        Ok(needed)
    }

    /// Writes `compiled` into the inactive slot and makes it the active one.
    /// If writing fails, the active slot is untouched and stays enforced.
    pub fn apply(&mut self, compiled: &Compiled) -> Result<(), SlotError> {
        let next = 1 - self.current;
        let wait = GRACE.saturating_sub(self.flipped_at.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let slot = &mut self.slots[next as usize];
        let new = Contents::of(compiled, slot.legacy())?;
        // Until the write completes, what the slot holds is unknown.
        let old = match self.held[next as usize].take() {
            Some(old) => old,
            None => {
                slot.clear()?;
                Contents::default()
            }
        };
        slot.write(&old, &new)?;
        // A generation no entry has learned paths under: one past both
        // slots' (maps adopted from an earlier agent included).
        let generation = self
            .settings
            .generation(0)
            .max(self.settings.generation(1))
            .wrapping_add(1)
            .max(1);
        let settings = Settings {
            generation,
            ..compiled.settings
        };
        self.settings.set(next, &settings).map_err(|source| SlotError::Write {
            map: "HW_SETTINGS",
            source,
        })?;
        let until = self.midstream_until(compiled);
        if let Some(m) = &mut self.midstream {
            m.set(next, &until, 0).map_err(|source| SlotError::Write {
                map: "HW_MIDSTREAM",
                source,
            })?;
        }
        self.held[next as usize] = Some(new);
        self.active.set(0, &next, 0).map_err(|source| SlotError::Write {
            map: "HW_ACTIVE",
            source,
        })?;
        self.current = next;
        self.flipped_at = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_removes_what_is_gone_and_writes_what_is_new_or_changed() {
        let old: StdHashMap<u32, u32> = [(1, 10), (2, 20), (3, 30)].into();
        let new: StdHashMap<u32, u32> = [(2, 20), (3, 31), (4, 40)].into();
        let (mut gone, mut write) = delta(&old, &new);
        gone.sort_unstable();
        write.sort_unstable();
        assert_eq!(gone, vec![1]);
        assert_eq!(write, vec![(3, 31), (4, 40)]);
        let (gone, write) = delta(&new, &new);
        assert!(gone.is_empty() && write.is_empty());
    }
}
