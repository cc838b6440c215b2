//! Reading a compiled policy the way the datapath does, in userspace: used
//! to re-judge tracked flows after a policy change, and by the tests.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use hostwall_common::{
    CIDR_FIXED_BITS, CidrKey, CidrValue, CtKey, DIR_EGRESS, DIR_INGRESS, FAMILY_V4, Groups, MAX_RANGE_STEPS,
    POLICY_FIXED_BITS, POLICY_PROTO_BITS, PeerInfo, PolicyKey, PolicyValue, TIER_ANY, TIER_EXACT, TIER_RANGES,
    foreign_icmp,
};

use super::Compiled;

/// The peer, policy and CIDR tries' entries by (prefix length, key): what
/// a slot was written with, and what `Lookup` probes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tables {
    pub peer4: HashMap<(u32, [u8; 4]), PeerInfo>,
    pub peer6: HashMap<(u32, [u8; 16]), PeerInfo>,
    pub policy: HashMap<(u32, PolicyKey), PolicyValue>,
    pub cidr4: HashMap<(u32, CidrKey<4>), CidrValue>,
    pub cidr6: HashMap<(u32, CidrKey<16>), CidrValue>,
}

impl Tables {
    pub fn of(c: &Compiled) -> Tables {
        fn by_key<K: Copy + Eq + Hash, V: Copy>(entries: &[(u32, K, V)]) -> HashMap<(u32, K), V> {
            entries.iter().map(|(len, k, v)| ((*len, *k), *v)).collect()
        }
        Tables {
            peer4: by_key(&c.peer4),
            peer6: by_key(&c.peer6),
            policy: by_key(&c.policy),
            cidr4: by_key(&c.cidr4),
            cidr6: by_key(&c.cidr6),
        }
    }
}

/// Longest-prefix lookups over a policy's tables, by probing each prefix
/// length.
pub struct Lookup<'a> {
    tables: Cow<'a, Tables>,
    /// By endpoint id: the groups in its interface's entry.
    groups: HashMap<u32, Groups>,
}

fn mask<const N: usize>(addr: [u8; N], len: u32) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, byte) in addr.iter().enumerate() {
        let bits = len.saturating_sub(i as u32 * 8).min(8);
        out[i] = if bits == 0 { 0 } else { byte & (0xffu8 << (8 - bits)) };
    }
    out
}

fn groups_of(c: &Compiled) -> HashMap<u32, Groups> {
    c.endpoints.iter().map(|e| (e.info.endpoint, e.info.groups)).collect()
}

impl Lookup<'static> {
    /// Over `c`'s own entries.
    pub fn new(c: &Compiled) -> Lookup<'static> {
        Lookup {
            tables: Cow::Owned(Tables::of(c)),
            groups: groups_of(c),
        }
    }
}

impl<'a> Lookup<'a> {
    /// Over `tables`, the entries `c` was written as (`c`'s endpoints).
    pub fn over(tables: &'a Tables, c: &Compiled) -> Lookup<'a> {
        Lookup {
            tables: Cow::Borrowed(tables),
            groups: groups_of(c),
        }
    }

    /// An address's peer entry (`PeerInfo::NONE` when no prefix covers it).
    pub fn peer(&self, addr: IpAddr) -> PeerInfo {
        match addr {
            IpAddr::V4(a) => (0..=32)
                .rev()
                .find_map(|len| self.tables.peer4.get(&(len, mask(a.octets(), len))).copied())
                .unwrap_or(PeerInfo::NONE),
            IpAddr::V6(a) => (0..=128)
                .rev()
                .find_map(|len| self.tables.peer6.get(&(len, mask(a.octets(), len))).copied())
                .unwrap_or(PeerInfo::NONE),
        }
    }

    /// A local endpoint's groups, as its interface's entry holds them (none
    /// when it has none).
    pub fn groups(&self, endpoint: u32) -> Groups {
        self.groups.get(&endpoint).copied().unwrap_or_default()
    }

    /// The rule allowing (direction, family, protocol, port) for an
    /// endpoint of `groups` and a peer at `addr` with `peer`'s labels, as
    /// the datapath's lookups find it: for each group, the labels, then the
    /// CIDR tiers; the first hit wins, each lookup the longest match.
    #[allow(clippy::too_many_arguments)]
    pub fn rule(
        &self,
        groups: &Groups,
        peer: &PeerInfo,
        addr: IpAddr,
        dir: u8,
        family: u8,
        proto: u8,
        port: u16,
    ) -> Option<u32> {
        let foreign = foreign_icmp(family, proto);
        for &group in &groups.ids[..groups.n as usize] {
            for &label in &peer.labels[..peer.n_labels as usize] {
                let key = |proto: u8, port: u16| PolicyKey::entry(group, label, dir, proto, port);
                let specific = (!foreign)
                    .then(|| {
                        (0..=16).rev().find_map(|bits| {
                            let m = if bits == 0 { 0 } else { u16::MAX << (16 - bits) };
                            self.tables
                                .policy
                                .get(&(POLICY_PROTO_BITS + bits, key(proto, port & m)))
                                .map(|v| v.rule)
                        })
                    })
                    .flatten();
                if let Some(rule) =
                    specific.or_else(|| self.tables.policy.get(&(POLICY_FIXED_BITS, key(0, 0))).map(|v| v.rule))
                {
                    return Some(rule);
                }
            }
            if let Some(rule) = self.cidr_rule(group, addr, dir, foreign, proto, port) {
                return Some(rule);
            }
        }
        None
    }

    /// The CIDR tiers' answer for one group, as `hw_cidr` finds it.
    fn cidr_rule(&self, group: u32, addr: IpAddr, dir: u8, foreign: bool, proto: u8, port: u16) -> Option<u32> {
        // The longest entry of (tier, foreign, proto, port) at most
        // `max_len` bits of address long that holds `addr`.
        let find = |tier: u8, foreign: u8, proto: u8, port: u16, max_len: u32| -> Option<CidrValue> {
            match addr {
                IpAddr::V4(a) => (0..=max_len.min(32)).rev().find_map(|len| {
                    let mut k = CidrKey::entry(group, tier, dir, proto, port, mask(a.octets(), len));
                    k.foreign = foreign;
                    self.tables.cidr4.get(&(CIDR_FIXED_BITS + len, k)).copied()
                }),
                IpAddr::V6(a) => (0..=max_len.min(128)).rev().find_map(|len| {
                    let mut k = CidrKey::entry(group, tier, dir, proto, port, mask(a.octets(), len));
                    k.foreign = foreign;
                    self.tables.cidr6.get(&(CIDR_FIXED_BITS + len, k)).copied()
                }),
            }
        };
        if let Some(v) = find(TIER_EXACT, foreign as u8, proto, port, 128) {
            return Some(v.rule);
        }
        if let Some(v) = find(TIER_ANY, 0, 0, 0, 128) {
            return Some(v.rule);
        }
        let (mut tier, mut max_len) = (TIER_RANGES, 128);
        for _ in 0..MAX_RANGE_STEPS {
            let v = find(tier, foreign as u8, proto, 0, max_len)?;
            if let Some(run) = v
                .runs
                .iter()
                .take_while(|r| r.rule != 0)
                .find(|r| r.first <= port && port <= r.last)
            {
                return Some(run.rule);
            }
            if v.next == 0 {
                return None;
            }
            tier = (v.next >> 8) as u8;
            max_len = (v.next & 0xff) - 1;
        }
        None
    }

    /// Whether the rules allow the flow that opened conntrack entry `key`
    /// (both sides' rules where they are local endpoints).
    pub fn allows(&self, key: &CtKey) -> bool {
        let addr = |b: &[u8; 16]| -> IpAddr {
            if key.family == FAMILY_V4 {
                IpAddr::from([b[0], b[1], b[2], b[3]])
            } else {
                IpAddr::from(*b)
            }
        };
        let (src, dst) = (self.peer(addr(&key.src)), self.peer(addr(&key.dst)));
        // ICMP echo flows are keyed by identifier and request type; the
        // rules see `type << 8 | code`.
        let port = if key.proto == 1 || key.proto == 58 {
            key.dport << 8
        } else {
            key.dport
        };
        if src.local_endpoint == 0 && dst.local_endpoint == 0 {
            return false;
        }
        // A local endpoint's groups come with its address's entry.
        let judge = |owner: &PeerInfo, other: &PeerInfo, other_addr: IpAddr, dir: u8| {
            owner.local_endpoint == 0
                || self
                    .rule(&owner.groups, other, other_addr, dir, key.family, key.proto, port)
                    .is_some()
        };
        judge(&src, &dst, addr(&key.dst), DIR_EGRESS) && judge(&dst, &src, addr(&key.src), DIR_INGRESS)
    }
}
