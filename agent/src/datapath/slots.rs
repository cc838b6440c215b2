//! The double-buffered policy maps. A new policy is written into the slot
//! no packet is reading, then `HW_ACTIVE` is flipped: a packet reads the
//! active slot once, so it is judged entirely by the old or entirely by
//! the new policy.
//!
//! Writing a slot costs one system call per entry, so the agent remembers
//! what each slot holds and writes only the difference: entries the new
//! policy no longer has are removed, new and changed ones written. A policy
//! change of one rule is then a handful of writes, whatever the size of
//! the policy. A slot whose contents are unknown (maps adopted from an
//! earlier agent, or a write that failed half-way) is cleared and written
//! whole.

use std::collections::HashMap as StdHashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use hostwall_common::{
    EndpointInfo, LocalAddr, LocalKey, MIDSTREAM_ALWAYS, MIDSTREAM_NEVER, PeerInfo, PolicyKey, PolicyValue, Settings,
    SrcKey,
};

use super::LoadError;
use crate::compile::Compiled;
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
}

/// What one slot's maps hold, as written by this agent.
#[derive(Clone, Debug, Default, PartialEq)]
struct Contents {
    iface: StdHashMap<u32, EndpointInfo>,
    src: StdHashMap<SrcKey, u32>,
    local: StdHashMap<LocalKey, LocalAddr>,
    peer4: StdHashMap<(u32, [u8; 4]), PeerInfo>,
    peer6: StdHashMap<(u32, [u8; 16]), PeerInfo>,
    policy: StdHashMap<(u32, PolicyKey), PolicyValue>,
}

impl Contents {
    fn of(c: &Compiled) -> Contents {
        Contents {
            iface: c
                .endpoints
                .iter()
                .filter_map(|ep| ep.ifindex.map(|i| (i, ep.info)))
                .collect(),
            src: c.src.iter().map(|k| (*k, ep_of(c, k))).collect(),
            local: c.local.iter().copied().collect(),
            peer4: c.peer4.iter().map(|(len, a, i)| ((*len, *a), *i)).collect(),
            peer6: c.peer6.iter().map(|(len, a, i)| ((*len, *a), *i)).collect(),
            policy: c.policy.iter().map(|(len, k, v)| ((*len, *k), *v)).collect(),
        }
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

struct Slot {
    iface: IfaceMap,
    src: HashMap<MapData, SrcKey, u32>,
    /// `HW_LOCAL_s`; absent only in objects of earlier builds.
    local: Option<HashMap<MapData, LocalKey, LocalAddr>>,
    peer4: LpmTrie<MapData, [u8; 4], PeerInfo>,
    peer6: LpmTrie<MapData, [u8; 16], PeerInfo>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
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
}

/// `HW_IFACE_s`, or in objects of builds before endpoints had MACs (which
/// the benchmark loads as its baseline) its shorter form.
enum IfaceMap {
    Current(HashMap<MapData, u32, EndpointInfo>),
    WithoutMac(HashMap<MapData, u32, [u32; 2]>),
}

impl IfaceMap {
    fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<IfaceMap, LoadError> {
        let map = ebpf.take_map(name).ok_or(LoadError::Missing { name })?;
        let short = value_size(&map) == Some(std::mem::size_of::<[u32; 2]>());
        let err = |source| LoadError::MapType { name, source };
        Ok(if short {
            IfaceMap::WithoutMac(HashMap::try_from(map).map_err(err)?)
        } else {
            IfaceMap::Current(HashMap::try_from(map).map_err(err)?)
        })
    }

    fn keys(&self) -> Vec<u32> {
        match self {
            IfaceMap::Current(m) => m.keys().filter_map(Result::ok).collect(),
            IfaceMap::WithoutMac(m) => m.keys().filter_map(Result::ok).collect(),
        }
    }

    fn remove(&mut self, k: &u32) -> Result<(), MapError> {
        match self {
            IfaceMap::Current(m) => m.remove(k),
            IfaceMap::WithoutMac(m) => m.remove(k),
        }
    }

    fn insert(&mut self, k: &u32, v: &EndpointInfo) -> Result<(), MapError> {
        match self {
            IfaceMap::Current(m) => m.insert(k, v, 0),
            IfaceMap::WithoutMac(m) => m.insert(k, &[v.policy, v.endpoint], 0),
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
        const NAMES: [[&str; 6]; 2] = [
            [
                "HW_IFACE_0",
                "HW_SRC_0",
                "HW_LOCAL_0",
                "HW_PEER4_0",
                "HW_PEER6_0",
                "HW_POLICY_0",
            ],
            [
                "HW_IFACE_1",
                "HW_SRC_1",
                "HW_LOCAL_1",
                "HW_PEER4_1",
                "HW_PEER6_1",
                "HW_POLICY_1",
            ],
        ];
        let [iface, src, local, peer4, peer6, policy] = NAMES[n];
        Ok(Slot {
            iface: IfaceMap::take(ebpf, iface)?,
            src: take(ebpf, src)?,
            local: take(ebpf, local).ok(),
            peer4: take(ebpf, peer4)?,
            peer6: take(ebpf, peer6)?,
            policy: take(ebpf, policy)?,
        })
    }

    fn clear(&mut self) -> Result<(), SlotError> {
        let w = |map: &'static str| move |source| SlotError::Write { map, source };
        for k in self.iface.keys() {
            self.iface.remove(&k).map_err(w("HW_IFACE"))?;
        }
        let keys: Vec<SrcKey> = self.src.keys().filter_map(Result::ok).collect();
        for k in keys {
            self.src.remove(&k).map_err(w("HW_SRC"))?;
        }
        if let Some(local) = &mut self.local {
            let keys: Vec<LocalKey> = local.keys().filter_map(Result::ok).collect();
            for k in keys {
                local.remove(&k).map_err(w("HW_LOCAL"))?;
            }
        }
        let keys: Vec<Key<[u8; 4]>> = self.peer4.keys().filter_map(Result::ok).collect();
        for k in keys {
            self.peer4.remove(&k).map_err(w("HW_PEER4"))?;
        }
        let keys: Vec<Key<[u8; 16]>> = self.peer6.keys().filter_map(Result::ok).collect();
        for k in keys {
            self.peer6.remove(&k).map_err(w("HW_PEER6"))?;
        }
        let keys: Vec<Key<PolicyKey>> = self.policy.keys().filter_map(Result::ok).collect();
        for k in keys {
            self.policy.remove(&k).map_err(w("HW_POLICY"))?;
        }
        Ok(())
    }

    /// Writes the difference between `old` (what the slot holds) and `new`.
    /// Removals come first, so that a full map has room for what replaces
    /// them.
    fn write(&mut self, old: &Contents, new: &Contents) -> Result<(), SlotError> {
        let w = |map: &'static str| move |source| SlotError::Write { map, source };
        let (gone, write) = delta(&old.iface, &new.iface);
        for k in gone {
            self.iface.remove(&k).map_err(w("HW_IFACE"))?;
        }
        let (gone_src, write_src) = delta(&old.src, &new.src);
        for k in gone_src {
            self.src.remove(&k).map_err(w("HW_SRC"))?;
        }
        let (gone_local, write_local) = delta(&old.local, &new.local);
        if let Some(local) = &mut self.local {
            for k in gone_local {
                local.remove(&k).map_err(w("HW_LOCAL"))?;
            }
        }
        let (gone4, write4) = delta(&old.peer4, &new.peer4);
        for (len, a) in gone4 {
            self.peer4.remove(&Key::new(len, a)).map_err(w("HW_PEER4"))?;
        }
        let (gone6, write6) = delta(&old.peer6, &new.peer6);
        for (len, a) in gone6 {
            self.peer6.remove(&Key::new(len, a)).map_err(w("HW_PEER6"))?;
        }
        let (gone_policy, write_policy) = delta(&old.policy, &new.policy);
        for (len, k) in gone_policy {
            self.policy.remove(&Key::new(len, k)).map_err(w("HW_POLICY"))?;
        }
        for (k, v) in write {
            self.iface.insert(&k, &v).map_err(w("HW_IFACE"))?;
        }
        for (k, v) in write_src {
            self.src.insert(&k, &v, 0).map_err(w("HW_SRC"))?;
        }
        if let Some(local) = &mut self.local {
            for (k, v) in write_local {
                local.insert(&k, &v, 0).map_err(w("HW_LOCAL"))?;
            }
        }
        for ((len, a), v) in write4 {
            self.peer4.insert(&Key::new(len, a), &v, 0).map_err(w("HW_PEER4"))?;
        }
        for ((len, a), v) in write6 {
            self.peer6.insert(&Key::new(len, a), &v, 0).map_err(w("HW_PEER6"))?;
        }
        for ((len, k), v) in write_policy {
            self.policy.insert(&Key::new(len, k), &v, 0).map_err(w("HW_POLICY"))?;
        }
        Ok(())
    }
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

    /// (map, entries, capacity) of the active slot's maps.
    pub fn fill(&self) -> Vec<(&'static str, usize, u32)> {
        use hostwall_common::*;
        let s = &self.slots[self.current as usize];
        vec![
            ("HW_IFACE", s.iface.keys().len(), MAX_ENDPOINT_INTERFACES),
            ("HW_SRC", s.src.keys().count(), MAX_SRC_ENTRIES),
            (
                "HW_LOCAL",
                s.local.as_ref().map_or(0, |m| m.keys().count()),
                MAX_LOCAL_ENTRIES,
            ),
            ("HW_PEER4", s.peer4.keys().count(), self.sizes.peer),
            ("HW_PEER6", s.peer6.keys().count(), self.sizes.peer),
            ("HW_POLICY", s.policy.keys().count(), self.sizes.policy),
        ]
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
            sizes: super::MapSizes::default(),
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

    /// Writes `compiled` into the inactive slot and makes it the active one.
    /// If writing fails, the active slot is untouched and stays enforced.
    pub fn apply(&mut self, compiled: &Compiled) -> Result<(), SlotError> {
        let next = 1 - self.current;
        let wait = GRACE.saturating_sub(self.flipped_at.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let new = Contents::of(compiled);
        let slot = &mut self.slots[next as usize];
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
