//! The reference evaluator: the documented semantics, read straight off the
//! parsed policy. It is deliberately naive (it scans every rule) and shares
//! nothing with the compiler but the policy types, so that the two can be
//! checked against each other.

use std::net::IpAddr;

use crate::compile::RuleRef;
use crate::policy::{Direction, Endpoint, Peer, Policy, Proto, Rule};

/// Where a packet enters hostwall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// From the interface of the local endpoint with this name.
    Endpoint(String),
    /// From anywhere else: the host's own stack, the uplink, a port that is
    /// not an endpoint.
    Elsewhere,
}

/// A new flow's first packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// TCP/UDP/SCTP destination port; ignored otherwise.
    pub port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// The source address is not one of the sending endpoint's.
    SpoofedSource,
    /// A local endpoint's address arriving not through its interface.
    LocalAddressWrongPath,
    /// The sender's egress rules do not allow it.
    Egress,
    /// The receiver's ingress rules do not allow it.
    Ingress,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `None`: allowed (or not hostwall's to judge: neither end is a local
    /// endpoint).
    pub denied: Option<Denial>,
    /// The sending endpoint's egress rules that allow it.
    pub egress: Vec<RuleRef>,
    /// The receiving endpoint's ingress rules that allow it.
    pub ingress: Vec<RuleRef>,
    pub sender: Option<String>,
    pub receiver: Option<String>,
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        self.denied.is_none()
    }
}

pub struct Reference<'a> {
    pub policy: &'a Policy,
    pub node: &'a str,
    pub host_addresses: &'a [IpAddr],
}

impl Reference<'_> {
    fn local(&self) -> impl Iterator<Item = &Endpoint> {
        self.policy.endpoints.iter().filter(|e| e.is_local(self.node))
    }

    fn peer_matches(&self, peer: &Peer, addr: IpAddr) -> bool {
        match peer {
            Peer::Group(g) => self
                .policy
                .endpoints
                .iter()
                .any(|e| e.groups.contains(g) && e.addresses.contains(&addr)),
            Peer::Cidr(net) => net.contains(&addr),
            Peer::PrefixList(name) => self
                .policy
                .prefix_lists
                .get(name)
                .into_iter()
                .flatten()
                .any(|n| n.contains(&addr)),
            Peer::Host => self.host_addresses.contains(&addr),
        }
    }

    fn rule_matches(&self, rule: &Rule, flow: &Flow, peer_addr: IpAddr) -> bool {
        let proto_ok = match rule.proto {
            Proto::All => true,
            Proto::ICMP => flow.proto == 1 && flow.src.is_ipv4(),
            Proto::ICMPV6 => flow.proto == 58 && flow.src.is_ipv6(),
            Proto::Number(n) => n == flow.proto,
        };
        if !proto_ok {
            return false;
        }
        if let Some(p) = rule.ports
            && !(p.first <= flow.port && flow.port <= p.last)
        {
            return false;
        }
        if let Some(icmp) = rule.icmp
            && (icmp.ty != flow.icmp_type || icmp.code.is_some_and(|c| c != flow.icmp_code))
        {
            return false;
        }
        rule.peers.iter().any(|p| self.peer_matches(p, peer_addr))
    }

    /// The rules of `endpoint`'s groups in `dir` that allow `flow` with
    /// `peer_addr` on the other end.
    fn allowing(&self, endpoint: &Endpoint, dir: Direction, flow: &Flow, peer_addr: IpAddr) -> Vec<RuleRef> {
        let mut out = Vec::new();
        for g in &endpoint.groups {
            let Some(group) = self.policy.groups.get(g) else {
                continue;
            };
            let rules = match dir {
                Direction::Ingress => &group.ingress,
                Direction::Egress => &group.egress,
            };
            for (index, rule) in rules.iter().enumerate() {
                if self.rule_matches(rule, flow, peer_addr) {
                    out.push(RuleRef {
                        group: g.clone(),
                        direction: dir,
                        index,
                    });
                }
            }
        }
        out
    }

    /// The ingress rules of the local endpoint `receiver` for `flow`,
    /// whatever its destination (a packet at the receiver's interface to
    /// an address it does not list: broadcast, multicast, unlisted).
    pub fn ingress(&self, receiver: &str, flow: &Flow) -> Verdict {
        let mut v = Verdict {
            denied: None,
            egress: Vec::new(),
            ingress: Vec::new(),
            sender: None,
            receiver: Some(receiver.to_string()),
        };
        if let Some(r) = self.local().find(|e| e.name == receiver) {
            v.ingress = self.allowing(r, Direction::Ingress, flow, flow.src);
        }
        if v.ingress.is_empty() {
            v.denied = Some(Denial::Ingress);
        }
        v
    }

    /// Judges the first packet of a flow entering at `origin`.
    pub fn judge(&self, origin: &Origin, flow: &Flow) -> Verdict {
        let mut v = Verdict {
            denied: None,
            egress: Vec::new(),
            ingress: Vec::new(),
            sender: None,
            receiver: None,
        };
        let sender = match origin {
            Origin::Endpoint(name) => self.local().find(|e| &e.name == name),
            Origin::Elsewhere => None,
        };
        match (origin, sender) {
            (Origin::Endpoint(_), Some(s)) if !s.addresses.contains(&flow.src) => {
                v.denied = Some(Denial::SpoofedSource);
                return v;
            }
            (Origin::Endpoint(_), None) => {
                // An interface no endpoint owns in this policy.
                v.denied = Some(Denial::SpoofedSource);
                return v;
            }
            (Origin::Elsewhere, _) if self.local().any(|e| e.addresses.contains(&flow.src)) => {
                v.denied = Some(Denial::LocalAddressWrongPath);
                return v;
            }
            _ => {}
        }
        let receiver = self.local().find(|e| e.addresses.contains(&flow.dst));
        v.sender = sender.map(|e| e.name.clone());
        v.receiver = receiver.map(|e| e.name.clone());
        if let Some(s) = sender {
            v.egress = self.allowing(s, Direction::Egress, flow, flow.dst);
            if v.egress.is_empty() {
                v.denied = Some(Denial::Egress);
                return v;
            }
        }
        if let Some(r) = receiver {
            v.ingress = self.allowing(r, Direction::Ingress, flow, flow.src);
            if v.ingress.is_empty() {
                v.denied = Some(Denial::Ingress);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::parse_str;

    const P: &str = r#"
version: 1
groups:
  ssh:
    ingress:
      - {proto: tcp, ports: 22, from: [{cidr: 10.0.0.0/8}]}
      - {proto: tcp, ports: 443, from: [{cidr: 10.1.0.0/16}]}
    egress:
      - {proto: icmp, icmp: {type: 8}, to: [host]}
endpoints:
  - {name: srv, interface: hw-srv, addresses: ["172.16.0.2"], groups: [ssh]}
  - {name: bare, interface: hw-bare, addresses: ["172.16.0.3"]}
"#;

    fn tcp(src: &str, dst: &str, port: u16) -> Flow {
        Flow {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            proto: 6,
            port,
            icmp_type: 0,
            icmp_code: 0,
        }
    }

    #[test]
    fn judges_by_the_documented_semantics() {
        let p = parse_str(P, "t").unwrap();
        let host: Vec<IpAddr> = vec!["172.16.0.1".parse().unwrap()];
        let r = Reference {
            policy: &p,
            node: "n",
            host_addresses: &host,
        };
        let v = r.judge(&Origin::Elsewhere, &tcp("10.1.2.3", "172.16.0.2", 22));
        assert!(v.allowed());
        assert_eq!(v.ingress.len(), 1);
        assert!(
            r.judge(&Origin::Elsewhere, &tcp("10.1.2.3", "172.16.0.2", 443))
                .allowed()
        );
        assert_eq!(
            r.judge(&Origin::Elsewhere, &tcp("10.2.0.1", "172.16.0.2", 443)).denied,
            Some(Denial::Ingress)
        );
        let ping = Flow {
            proto: 1,
            icmp_type: 8,
            ..tcp("172.16.0.2", "172.16.0.1", 0)
        };
        assert!(r.judge(&Origin::Endpoint("srv".into()), &ping).allowed());
        let spoof = Flow {
            src: "172.16.0.9".parse().unwrap(),
            ..ping
        };
        assert_eq!(
            r.judge(&Origin::Endpoint("srv".into()), &spoof).denied,
            Some(Denial::SpoofedSource)
        );
        assert_eq!(
            r.judge(&Origin::Elsewhere, &tcp("172.16.0.3", "172.16.0.2", 22)).denied,
            Some(Denial::LocalAddressWrongPath)
        );
        assert_eq!(
            r.judge(&Origin::Endpoint("bare".into()), &tcp("172.16.0.3", "10.0.0.1", 1))
                .denied,
            Some(Denial::Egress)
        );
    }
}
