//! Reading a compiled policy the way the datapath does, in userspace: used
//! to re-judge tracked flows after a policy change.

use std::collections::HashMap;
use std::net::IpAddr;

use hostwall_common::{CLASS_WORLD, CtKey, DIR_EGRESS, DIR_INGRESS, FAMILY_V4, POLICY_FIXED_BITS, PeerInfo, PolicyKey};

use super::Compiled;

/// Hash indexes over a `Compiled`, for longest-prefix lookups by probing
/// each prefix length.
pub struct Lookup {
    peer4: HashMap<(u32, [u8; 4]), PeerInfo>,
    peer6: HashMap<(u32, [u8; 16]), PeerInfo>,
    policy: HashMap<(u32, PolicyKey), u32>,
}

fn mask<const N: usize>(addr: [u8; N], len: u32) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, byte) in addr.iter().enumerate() {
        let bits = len.saturating_sub(i as u32 * 8).min(8);
        out[i] = if bits == 0 { 0 } else { byte & (0xffu8 << (8 - bits)) };
    }
    out
}

const WORLD: PeerInfo = PeerInfo {
    class: CLASS_WORLD,
    local_policy: 0,
    local_endpoint: 0,
    flags: 0,
};

impl Lookup {
    pub fn new(c: &Compiled) -> Lookup {
        Lookup {
            peer4: c.peer4.iter().map(|(len, a, i)| ((*len, *a), *i)).collect(),
            peer6: c.peer6.iter().map(|(len, a, i)| ((*len, *a), *i)).collect(),
            policy: c.policy.iter().map(|(len, k, v)| ((*len, *k), v.rule)).collect(),
        }
    }

    pub fn peer(&self, addr: IpAddr) -> PeerInfo {
        match addr {
            IpAddr::V4(a) => (0..=32)
                .rev()
                .find_map(|len| self.peer4.get(&(len, mask(a.octets(), len))).copied())
                .unwrap_or(WORLD),
            IpAddr::V6(a) => (0..=128)
                .rev()
                .find_map(|len| self.peer6.get(&(len, mask(a.octets(), len))).copied())
                .unwrap_or(WORLD),
        }
    }

    /// The rule allowing (policy, class, direction, protocol, port), as the
    /// datapath's two policy lookups find it.
    pub fn rule(&self, policy: u32, class: u32, dir: u8, proto: u8, port: u16) -> Option<u32> {
        if policy == 0 || class == CLASS_WORLD {
            return None;
        }
        let exact = (0..=16).rev().find_map(|bits| {
            let m = if bits == 0 { 0 } else { u16::MAX << (16 - bits) };
            let key = PolicyKey {
                policy,
                class,
                dir,
                any_proto: 0,
                proto,
                _pad: 0,
                port_be: (port & m).to_be_bytes(),
                _tail: [0; 2],
            };
            self.policy.get(&(POLICY_FIXED_BITS + bits, key)).copied()
        });
        exact.or_else(|| {
            let key = PolicyKey {
                policy,
                class,
                dir,
                any_proto: 1,
                proto: 0,
                _pad: 0,
                port_be: [0; 2],
                _tail: [0; 2],
            };
            self.policy.get(&(POLICY_FIXED_BITS, key)).copied()
        })
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
        if src.local_policy == 0 && dst.local_policy == 0 {
            return false;
        }
        let egress_ok = src.local_policy == 0
            || self
                .rule(src.local_policy, dst.class, DIR_EGRESS, key.proto, port)
                .is_some();
        let ingress_ok = dst.local_policy == 0
            || self
                .rule(dst.local_policy, src.class, DIR_INGRESS, key.proto, port)
                .is_some();
        egress_ok && ingress_ok
    }
}
