//! The Ethernet address each local endpoint's frames must carry.
//!
//! It is fixed the first time the endpoint's interface is seen: the
//! endpoint's `mac:` if the control file gives one, else the address of the
//! container's side of the veth pair, read once. Later changes inside the
//! container are not followed while the interface (its ifindex) lasts. A
//! MAC that the host's own links or another endpoint use is refused: the
//! endpoint then has none, and the datapath drops all its frames.

use std::collections::BTreeMap;
use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData};
use hostwall_common::EndpointInfo;
use tracing::{info, warn};

use crate::host::LinkMac;
use crate::policy::format_mac;

/// What the agent knows about the MAC of one endpoint interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MacState {
    /// Every frame from the endpoint must carry this source MAC.
    Fixed([u8; 6]),
    /// Not known yet (the container's side is not in a namespace of its
    /// own or not up, or the interface is no veth): read again whenever
    /// the agent looks at its interfaces.
    Unknown(String),
    /// Refused for as long as the interface lasts; `reason` completes
    /// "MAC ... ", as in "is used by br0".
    Refused { mac: [u8; 6], reason: String },
}

/// The MAC of one endpoint interface and whom it was fixed for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMac {
    pub endpoint: String,
    pub interface: String,
    /// The endpoint's `mac:` when the state was decided; a different one
    /// in a later policy decides afresh.
    pub configured: Option<[u8; 6]>,
    pub state: MacState,
}

impl EndpointMac {
    pub fn fixed(&self) -> Option<[u8; 6]> {
        match self.state {
            MacState::Fixed(mac) => Some(mac),
            _ => None,
        }
    }

    /// Why the endpoint has no MAC (and so no network), for `status`.
    pub fn problem(&self) -> Option<String> {
        match &self.state {
            MacState::Fixed(_) => None,
            MacState::Unknown(reason) => Some(format!(
                "no MAC yet: {reason}; all its frames are dropped until it has one"
            )),
            MacState::Refused { mac, reason } => {
                Some(format!("MAC {} {reason}; all its frames are dropped", format_mac(mac)))
            }
        }
    }
}

/// A local endpoint whose interface exists.
#[derive(Clone, Debug)]
pub struct Wanted<'a> {
    pub endpoint: &'a str,
    pub interface: &'a str,
    pub ifindex: u32,
    /// Its `mac:`.
    pub configured: Option<[u8; 6]>,
}

/// What reading the container's side of an interface gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reading {
    Mac([u8; 6]),
    /// Why there is none (yet).
    Unknown(String),
}

/// Endpoint interfaces (by ifindex) and their MACs.
#[derive(Clone, Debug, Default)]
pub struct Macs {
    entries: BTreeMap<u32, EndpointMac>,
}

impl Macs {
    pub fn get(&self, ifindex: u32) -> Option<&EndpointMac> {
        self.entries.get(&ifindex)
    }

    /// The fixed MACs, as the compiler takes them.
    pub fn fixed(&self) -> BTreeMap<u32, [u8; 6]> {
        self.entries
            .iter()
            .filter_map(|(i, e)| e.fixed().map(|m| (*i, m)))
            .collect()
    }

    /// Whether some interface still waits for its MAC to be known.
    pub fn waiting(&self) -> bool {
        self.entries.values().any(|e| matches!(e.state, MacState::Unknown(_)))
    }

    /// MACs an earlier agent fixed (from the pinned maps it enforced): kept
    /// as if fixed by this agent, so that a restart does not read them
    /// again. Those of interfaces no endpoint has are dropped at the next
    /// update.
    pub fn adopt(&mut self, pinned: &BTreeMap<u32, [u8; 6]>) -> usize {
        let mut adopted = 0;
        for (ifindex, mac) in pinned {
            if *mac == [0; 6] || self.entries.contains_key(ifindex) {
                continue;
            }
            self.entries.insert(
                *ifindex,
                EndpointMac {
                    endpoint: String::new(),
                    interface: String::new(),
                    configured: None,
                    state: MacState::Fixed(*mac),
                },
            );
            adopted += 1;
        }
        adopted
    }

    /// Brings the entries in line with `wanted` (in policy order): entries
    /// of interfaces no local endpoint has any more are dropped, new
    /// interfaces and those still unknown are decided. `read` reads an
    /// interface's container side; `links` lists the MACs of the agent's
    /// namespace (asked for at most once, and only if something is
    /// decided). A change of state is logged once.
    pub fn update(
        &mut self,
        wanted: &[Wanted<'_>],
        read: &mut dyn FnMut(&Wanted<'_>) -> Reading,
        links: &mut dyn FnMut() -> std::io::Result<Vec<LinkMac>>,
    ) {
        self.entries.retain(|ifindex, e| {
            wanted
                .iter()
                .any(|w| w.ifindex == *ifindex && (w.configured == e.configured || adopted(e)))
        });
        // Entries kept get the names the policy gives now. One adopted
        // after a restart is kept unless the policy gives another `mac:`.
        for w in wanted {
            let Some(e) = self.entries.get_mut(&w.ifindex) else {
                continue;
            };
            if adopted(e) && w.configured.is_some_and(|c| e.fixed() != Some(c)) {
                self.entries.remove(&w.ifindex);
                continue;
            }
            e.endpoint = w.endpoint.to_string();
            e.interface = w.interface.to_string();
            e.configured = w.configured;
        }
        let mut host: Option<Result<Vec<LinkMac>, String>> = None;
        for w in wanted {
            if self
                .entries
                .get(&w.ifindex)
                .is_some_and(|e| !matches!(e.state, MacState::Unknown(_)))
            {
                continue;
            }
            let reading = match w.configured {
                Some(mac) => Reading::Mac(mac),
                None => read(w),
            };
            let state = match reading {
                Reading::Unknown(reason) => MacState::Unknown(reason),
                Reading::Mac(mac) => {
                    let host = host.get_or_insert_with(|| {
                        links().map_err(|e| format!("the MACs of the host's interfaces cannot be read ({e})"))
                    });
                    match host {
                        Ok(links) => self.judge(w, mac, links),
                        Err(reason) => MacState::Unknown(reason.clone()),
                    }
                }
            };
            let previous = self.entries.get(&w.ifindex).map(|e| &e.state);
            if previous != Some(&state) {
                log(w, &state);
            }
            self.entries.insert(
                w.ifindex,
                EndpointMac {
                    endpoint: w.endpoint.to_string(),
                    interface: w.interface.to_string(),
                    configured: w.configured,
                    state,
                },
            );
        }
    }

    /// Whether `mac` may be `w`'s.
    fn judge(&self, w: &Wanted<'_>, mac: [u8; 6], host: &[LinkMac]) -> MacState {
        let refuse = |reason: String| MacState::Refused { mac, reason };
        if mac == [0; 6] {
            return refuse("is all zeros".into());
        }
        if mac[0] & 1 != 0 {
            return refuse("is a multicast address".into());
        }
        let users: Vec<&str> = host.iter().filter(|l| l.mac == mac).map(|l| l.name.as_str()).collect();
        if !users.is_empty() {
            return refuse(format!(
                "is used by {} in the host's network namespace",
                users.join(", ")
            ));
        }
        if let Some(other) = self
            .entries
            .iter()
            .find(|(i, e)| **i != w.ifindex && e.fixed() == Some(mac))
            .map(|(_, e)| e)
        {
            return refuse(format!(
                "is already the MAC of endpoint {} ({})",
                other.endpoint, other.interface
            ));
        }
        MacState::Fixed(mac)
    }
}

/// An entry an earlier agent fixed, not yet matched with an endpoint.
fn adopted(e: &EndpointMac) -> bool {
    e.endpoint.is_empty()
}

fn log(w: &Wanted<'_>, state: &MacState) {
    let (endpoint, interface) = (w.endpoint, w.interface);
    match state {
        MacState::Fixed(mac) => info!(endpoint, interface, mac = %format_mac(mac), "MAC fixed"),
        MacState::Unknown(reason) => warn!(
            endpoint,
            interface,
            reason = %reason,
            "the endpoint's MAC is not known; all its frames are dropped until it has one"
        ),
        MacState::Refused { mac, reason } => warn!(
            endpoint,
            interface,
            mac = %format_mac(mac),
            "MAC refused: it {reason}; all the endpoint's frames are dropped"
        ),
    }
}

/// What the container's side of `ifindex` says about its MAC.
pub fn read_peer(interface: &str, ifindex: u32) -> Reading {
    let unknown = Reading::Unknown;
    match crate::host::veth_peer(ifindex) {
        Err(e) => unknown(format!("the container's side of {interface} cannot be read ({e})")),
        Ok(None) => unknown(format!(
            "{interface} is no veth pair, so the MAC of its far side cannot be read; give the endpoint a mac"
        )),
        Ok(Some(p)) if p.netnsid.is_none() => unknown(format!(
            "the far side of {interface} ({}) is in the host's own network namespace, not yet in a container's",
            p.name
        )),
        Ok(Some(p)) => match p.mac {
            None => unknown(format!("the container's side of {interface} has no Ethernet address")),
            Some(_) if !p.up => unknown(format!("the container's side of {interface} is not up yet")),
            Some(mac) => Reading::Mac(mac),
        },
    }
}

/// The MACs of the active policy slot an earlier agent left pinned in
/// `maps` (by ifindex); empty when there is none or it cannot be read.
pub fn pinned(maps: &Path) -> BTreeMap<u32, [u8; 6]> {
    let open = |name: &str| {
        let data = MapData::from_pin(maps.join(name)).ok()?;
        Map::from_map_data(data).ok()
    };
    let Some(active) = open("HW_ACTIVE").and_then(|m| Array::<MapData, u32>::try_from(m).ok()) else {
        return BTreeMap::new();
    };
    let slot = match active.get(&0, 0) {
        Ok(1) => "HW_IFACE_1",
        _ => "HW_IFACE_0",
    };
    let Some(iface) = open(slot).and_then(|m| HashMap::<MapData, u32, EndpointInfo>::try_from(m).ok()) else {
        return BTreeMap::new();
    };
    iface
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, info)| info.mac != [0; 6])
        .map(|(ifindex, info)| (ifindex, info.mac))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [0x02, 0x42, 0x0a, 0x4d, 0, 0x0b];
    const B: [u8; 6] = [0x02, 0x42, 0x0a, 0x4d, 0, 0x0c];
    const BRIDGE: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    fn wanted(endpoint: &'static str, ifindex: u32) -> Wanted<'static> {
        let interface: &'static str = Box::leak(format!("hw-{endpoint}").into_boxed_str());
        Wanted {
            endpoint,
            interface,
            ifindex,
            configured: None,
        }
    }

    fn bridge() -> std::io::Result<Vec<LinkMac>> {
        Ok(vec![LinkMac {
            ifindex: 2,
            name: "br0".into(),
            mac: BRIDGE,
        }])
    }

    /// Updates with `macs` as what the container sides read, counting
    /// the reads.
    fn update(m: &mut Macs, wanted: &[Wanted<'_>], macs: &BTreeMap<u32, Reading>) -> usize {
        let mut reads = 0;
        m.update(
            wanted,
            &mut |w| {
                reads += 1;
                macs.get(&w.ifindex).cloned().unwrap_or(Reading::Unknown("gone".into()))
            },
            &mut bridge,
        );
        reads
    }

    #[test]
    fn a_mac_is_read_once_and_kept_while_the_interface_lasts() {
        let mut m = Macs::default();
        let w = [wanted("web", 10)];
        assert_eq!(update(&mut m, &w, &[(10, Reading::Mac(A))].into()), 1);
        assert_eq!(m.fixed(), [(10, A)].into());
        // Changed inside the container: not followed.
        assert_eq!(update(&mut m, &w, &[(10, Reading::Mac(B))].into()), 0);
        assert_eq!(m.fixed(), [(10, A)].into());
        assert!(!m.waiting());
        // The interface is gone: so is its MAC; a new one is read afresh.
        update(&mut m, &[], &BTreeMap::new());
        assert!(m.fixed().is_empty());
        let w = [wanted("web", 11)];
        update(&mut m, &w, &[(11, Reading::Mac(B))].into());
        assert_eq!(m.fixed(), [(11, B)].into());
    }

    #[test]
    fn an_unknown_mac_is_read_again_until_it_is_known() {
        let mut m = Macs::default();
        let w = [wanted("web", 10)];
        update(&mut m, &w, &[(10, Reading::Unknown("not up yet".into()))].into());
        assert!(m.fixed().is_empty());
        assert!(m.waiting());
        assert_eq!(
            m.get(10).unwrap().problem().as_deref(),
            Some("no MAC yet: not up yet; all its frames are dropped until it has one")
        );
        assert_eq!(update(&mut m, &w, &[(10, Reading::Mac(A))].into()), 1);
        assert_eq!(m.fixed(), [(10, A)].into());
        assert_eq!(m.get(10).unwrap().problem(), None);
    }

    #[test]
    fn the_hosts_macs_are_refused_for_good() {
        let mut m = Macs::default();
        let w = [wanted("web", 10), wanted("api", 11)];
        update(&mut m, &w, &[(10, Reading::Mac(BRIDGE)), (11, Reading::Mac(B))].into());
        assert_eq!(m.fixed(), [(11, B)].into());
        let web = m.get(10).unwrap();
        assert_eq!(
            web.state,
            MacState::Refused {
                mac: BRIDGE,
                reason: "is used by br0 in the host's network namespace".into()
            }
        );
        assert_eq!(
            web.problem().as_deref(),
            Some("MAC 02:00:00:00:00:01 is used by br0 in the host's network namespace; all its frames are dropped")
        );
        // Changing it afterwards does not help.
        assert_eq!(
            update(&mut m, &w, &[(10, Reading::Mac(A)), (11, Reading::Mac(B))].into()),
            0
        );
        assert_eq!(m.fixed(), [(11, B)].into());
    }

    #[test]
    fn the_first_endpoint_keeps_a_shared_mac() {
        let mut m = Macs::default();
        update(&mut m, &[wanted("web", 10)], &[(10, Reading::Mac(A))].into());
        let w = [wanted("api", 12), wanted("web", 10), wanted("db", 11)];
        update(
            &mut m,
            &w,
            &[(10, Reading::Mac(A)), (11, Reading::Mac(A)), (12, Reading::Mac(A))].into(),
        );
        assert_eq!(m.fixed(), [(10, A)].into());
        for i in [11, 12] {
            assert_eq!(
                m.get(i).unwrap().problem().as_deref(),
                Some("MAC 02:42:0a:4d:00:0b is already the MAC of endpoint web (hw-web); all its frames are dropped")
            );
        }
        // Among new ones, the first in policy order.
        let mut m = Macs::default();
        let w = [wanted("db", 11), wanted("web", 10)];
        update(&mut m, &w, &[(10, Reading::Mac(A)), (11, Reading::Mac(A))].into());
        assert_eq!(m.fixed(), [(11, A)].into());
    }

    #[test]
    fn a_configured_mac_is_used_instead_of_reading() {
        let mut m = Macs::default();
        let mut w = [wanted("web", 10)];
        w[0].configured = Some(B);
        assert_eq!(update(&mut m, &w, &[(10, Reading::Mac(A))].into()), 0);
        assert_eq!(m.fixed(), [(10, B)].into());
        // A new `mac:` is followed; dropping it reads the container.
        w[0].configured = Some([0x02, 0, 0, 0, 0, 0x99]);
        update(&mut m, &w, &BTreeMap::new());
        assert_eq!(m.fixed(), [(10, [0x02, 0, 0, 0, 0, 0x99])].into());
        w[0].configured = None;
        assert_eq!(update(&mut m, &w, &[(10, Reading::Mac(A))].into()), 1);
        assert_eq!(m.fixed(), [(10, A)].into());
        // A configured MAC the bridge has is refused all the same.
        w[0].configured = Some(BRIDGE);
        update(&mut m, &w, &BTreeMap::new());
        assert!(m.fixed().is_empty());
    }

    #[test]
    fn unfit_macs_are_refused() {
        let mut m = Macs::default();
        let w = [wanted("web", 10), wanted("api", 11)];
        update(
            &mut m,
            &w,
            &[(10, Reading::Mac([0; 6])), (11, Reading::Mac([0x33, 0x33, 0, 0, 0, 1]))].into(),
        );
        assert!(m.fixed().is_empty());
        assert_eq!(
            m.get(11).unwrap().problem().as_deref(),
            Some("MAC 33:33:00:00:00:01 is a multicast address; all its frames are dropped")
        );
    }

    #[test]
    fn unreadable_host_links_leave_the_mac_unknown() {
        let mut m = Macs::default();
        let w = [wanted("web", 10)];
        m.update(&w, &mut |_| Reading::Mac(A), &mut || {
            Err(std::io::Error::other("no netlink"))
        });
        assert!(m.fixed().is_empty());
        assert!(m.waiting());
        m.update(&w, &mut |_| Reading::Mac(A), &mut bridge);
        assert_eq!(m.fixed(), [(10, A)].into());
    }

    #[test]
    fn adopted_macs_are_not_read_again() {
        let mut m = Macs::default();
        assert_eq!(m.adopt(&[(10, A), (13, [0; 6])].into()), 1);
        let w = [wanted("web", 10)];
        assert!(!m.waiting());
        assert_eq!(update(&mut m, &w, &[(10, Reading::Mac(B))].into()), 0);
        assert_eq!(m.fixed(), [(10, A)].into());
        assert_eq!(m.get(10).unwrap().endpoint, "web");
        // Adopted, then claimed by another endpoint's interface: refused.
        let w = [wanted("web", 10), wanted("api", 11)];
        update(&mut m, &w, &[(11, Reading::Mac(A))].into());
        assert_eq!(m.fixed(), [(10, A)].into());
        // Also by one that comes first in the policy: the refusal names
        // the adopted entry's endpoint.
        let mut m = Macs::default();
        m.adopt(&[(10, A)].into());
        let w = [wanted("api", 11), wanted("web", 10)];
        update(&mut m, &w, &[(11, Reading::Mac(A))].into());
        assert_eq!(m.fixed(), [(10, A)].into());
        assert_eq!(
            m.get(11).unwrap().problem().as_deref(),
            Some("MAC 02:42:0a:4d:00:0b is already the MAC of endpoint web (hw-web); all its frames are dropped")
        );
        // A `mac:` other than the adopted MAC decides afresh.
        let mut m = Macs::default();
        m.adopt(&[(10, A)].into());
        let mut w = [wanted("web", 10)];
        w[0].configured = Some(B);
        update(&mut m, &w, &BTreeMap::new());
        assert_eq!(m.fixed(), [(10, B)].into());
    }
}
