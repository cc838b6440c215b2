//! The double-buffered policy maps. A new policy is written into the slot
//! no packet is reading, then `HW_ACTIVE` is flipped: a packet reads the
//! active slot once, so it is judged entirely by the old or entirely by
//! the new policy.

use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use hostwall_common::{EndpointInfo, PeerInfo, PolicyKey, PolicyValue, Settings, SrcKey};

use super::LoadError;
use crate::compile::Compiled;

/// How long to wait after a flip before the now-inactive slot may be
/// rewritten: programs hold a slot for the few microseconds a packet takes,
/// inside an RCU read-side section.
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

struct Slot {
    iface: HashMap<MapData, u32, EndpointInfo>,
    src: HashMap<MapData, SrcKey, u32>,
    peer4: LpmTrie<MapData, [u8; 4], PeerInfo>,
    peer6: LpmTrie<MapData, [u8; 16], PeerInfo>,
    policy: LpmTrie<MapData, PolicyKey, PolicyValue>,
}

pub struct Slots {
    active: Array<MapData, u32>,
    settings: Array<MapData, Settings>,
    slots: [Slot; 2],
    /// The slot programs read.
    current: u32,
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError> {
    let map = ebpf.take_map(name).ok_or(LoadError::Missing { name })?;
    T::try_from(map).map_err(|source| LoadError::MapType { name, source })
}

impl Slot {
    fn take(ebpf: &mut Ebpf, n: usize) -> Result<Slot, LoadError> {
        const NAMES: [[&str; 5]; 2] = [
            ["HW_IFACE_0", "HW_SRC_0", "HW_PEER4_0", "HW_PEER6_0", "HW_POLICY_0"],
            ["HW_IFACE_1", "HW_SRC_1", "HW_PEER4_1", "HW_PEER6_1", "HW_POLICY_1"],
        ];
        let [iface, src, peer4, peer6, policy] = NAMES[n];
        Ok(Slot {
            iface: take(ebpf, iface)?,
            src: take(ebpf, src)?,
            peer4: take(ebpf, peer4)?,
            peer6: take(ebpf, peer6)?,
            policy: take(ebpf, policy)?,
        })
    }

    fn clear(&mut self) -> Result<(), SlotError> {
        let w = |map: &'static str| move |source| SlotError::Write { map, source };
        let keys: Vec<u32> = self.iface.keys().filter_map(Result::ok).collect();
        for k in keys {
            self.iface.remove(&k).map_err(w("HW_IFACE"))?;
        }
        let keys: Vec<SrcKey> = self.src.keys().filter_map(Result::ok).collect();
        for k in keys {
            self.src.remove(&k).map_err(w("HW_SRC"))?;
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

    fn fill(&mut self, c: &Compiled) -> Result<(), SlotError> {
        let w = |map: &'static str| move |source| SlotError::Write { map, source };
        for ep in &c.endpoints {
            if let Some(ifindex) = ep.ifindex {
                self.iface.insert(&ifindex, &ep.info, 0).map_err(w("HW_IFACE"))?;
            }
        }
        for k in &c.src {
            self.src.insert(k, &ep_of(c, k), 0).map_err(w("HW_SRC"))?;
        }
        for (len, addr, info) in &c.peer4 {
            self.peer4
                .insert(&Key::new(*len, *addr), info, 0)
                .map_err(w("HW_PEER4"))?;
        }
        for (len, addr, info) in &c.peer6 {
            self.peer6
                .insert(&Key::new(*len, *addr), info, 0)
                .map_err(w("HW_PEER6"))?;
        }
        for (len, key, value) in &c.policy {
            self.policy
                .insert(&Key::new(*len, *key), value, 0)
                .map_err(w("HW_POLICY"))?;
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
    /// (map, entries, capacity) of the active slot's maps.
    pub fn fill(&self) -> Vec<(&'static str, usize, u32)> {
        use hostwall_common::*;
        let s = &self.slots[self.current as usize];
        vec![
            ("HW_IFACE", s.iface.keys().count(), MAX_ENDPOINT_INTERFACES),
            ("HW_SRC", s.src.keys().count(), MAX_SRC_ENTRIES),
            ("HW_PEER4", s.peer4.keys().count(), MAX_PEER_ENTRIES),
            ("HW_PEER6", s.peer6.keys().count(), MAX_PEER_ENTRIES),
            ("HW_POLICY", s.policy.keys().count(), MAX_POLICY_ENTRIES),
        ]
    }

    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Slots, LoadError> {
        Ok(Slots {
            active: take(ebpf, "HW_ACTIVE")?,
            settings: take(ebpf, "HW_SETTINGS")?,
            slots: [Slot::take(ebpf, 0)?, Slot::take(ebpf, 1)?],
            current: 0,
        }
        .with_current())
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
        let slot = &mut self.slots[next as usize];
        slot.clear()?;
        slot.fill(compiled)?;
        self.settings
            .set(next, &compiled.settings, 0)
            .map_err(|source| SlotError::Write {
                map: "HW_SETTINGS",
                source,
            })?;
        self.active.set(0, &next, 0).map_err(|source| SlotError::Write {
            map: "HW_ACTIVE",
            source,
        })?;
        self.current = next;
        std::thread::sleep(GRACE);
        Ok(())
    }
}
