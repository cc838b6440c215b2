//! Attaching the programs: TC on both directions of each endpoint
//! interface (tcx first in the chain where the kernel has it, clsact
//! before that), XDP on the uplink.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{self, SchedClassifierLinkId, TcAttach},
        xdp::XdpLinkId,
    },
    util::KernelVersion,
};

use super::{PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT, PROG_UPLINK};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("attaching {hook} to interface {interface} (ifindex {ifindex})")]
    Attach {
        hook: &'static str,
        interface: String,
        ifindex: u32,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("adding the clsact qdisc to {interface}")]
    Clsact {
        interface: String,
        #[source]
        source: tc::TcError,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// tcx links (Linux 6.6 and later).
    Tcx,
    /// cls_bpf filters on a clsact qdisc.
    Clsact,
}

struct Attached {
    interface: String,
    ingress: SchedClassifierLinkId,
    egress: SchedClassifierLinkId,
}

/// What is attached where, keyed by ifindex.
#[derive(Default)]
pub struct Attachments {
    endpoints: BTreeMap<u32, Attached>,
    uplink: Option<(String, XdpLinkId)>,
}

pub fn hook_kind() -> HookKind {
    match KernelVersion::current() {
        Ok(v) if v >= KernelVersion::new(6, 6, 0) => HookKind::Tcx,
        _ => HookKind::Clsact,
    }
}

impl Attachments {
    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.endpoints.contains_key(&ifindex)
    }

    pub fn attached(&self) -> impl Iterator<Item = (u32, &str)> {
        self.endpoints.iter().map(|(i, a)| (*i, a.interface.as_str()))
    }

    /// Attaches both TC programs to an endpoint interface. On tcx the
    /// programs go first in the chain, so no earlier program can pass what
    /// hostwall drops.
    pub fn attach_endpoint(&mut self, ebpf: &mut Ebpf, interface: &str, ifindex: u32) -> Result<(), AttachError> {
        if self.endpoints.contains_key(&ifindex) {
            return Ok(());
        }
        let kind = hook_kind();
        if kind == HookKind::Clsact {
            match tc::qdisc_add_clsact(ifindex) {
                Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
                Err(source) => {
                    return Err(AttachError::Clsact {
                        interface: interface.into(),
                        source,
                    });
                }
            }
        }
        let ingress = attach_tc(
            ebpf,
            PROG_FROM_ENDPOINT,
            TcAttachType::Ingress,
            kind,
            interface,
            ifindex,
        )?;
        let egress = match attach_tc(ebpf, PROG_TO_ENDPOINT, TcAttachType::Egress, kind, interface, ifindex) {
            Ok(link) => link,
            Err(e) => {
                let _ = classifier(ebpf, PROG_FROM_ENDPOINT).detach(ingress);
                return Err(e);
            }
        };
        self.endpoints.insert(
            ifindex,
            Attached {
                interface: interface.into(),
                ingress,
                egress,
            },
        );
        Ok(())
    }

    /// Forgets an interface that disappeared (its links went with it) or
    /// detaches one that is no longer an endpoint.
    pub fn detach_endpoint(&mut self, ebpf: &mut Ebpf, ifindex: u32) {
        if let Some(a) = self.endpoints.remove(&ifindex) {
            let _ = classifier(ebpf, PROG_FROM_ENDPOINT).detach(a.ingress);
            let _ = classifier(ebpf, PROG_TO_ENDPOINT).detach(a.egress);
        }
    }

    pub fn attach_uplink(&mut self, ebpf: &mut Ebpf, interface: &str, ifindex: u32) -> Result<(), AttachError> {
        let prog: &mut Xdp = ebpf.program_mut(PROG_UPLINK).expect("loaded").try_into().expect("xdp");
        let link = prog
            .attach(ifindex, XdpMode::Default)
            .map_err(|source| AttachError::Attach {
                hook: "xdp",
                interface: interface.into(),
                ifindex,
                source,
            })?;
        self.uplink = Some((interface.into(), link));
        Ok(())
    }

    /// Detaches everything.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        let all: Vec<u32> = self.endpoints.keys().copied().collect();
        for ifindex in all {
            self.detach_endpoint(ebpf, ifindex);
        }
        if let Some((_, link)) = self.uplink.take() {
            let prog: &mut Xdp = ebpf.program_mut(PROG_UPLINK).expect("loaded").try_into().expect("xdp");
            let _ = prog.detach(link);
        }
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name).expect("loaded").try_into().expect("classifier")
}

fn attach_tc(
    ebpf: &mut Ebpf,
    prog: &'static str,
    attach_type: TcAttachType,
    kind: HookKind,
    interface: &str,
    ifindex: u32,
) -> Result<SchedClassifierLinkId, AttachError> {
    let how = match kind {
        HookKind::Tcx => TcAttach::Tcx {
            attach_type,
            order: LinkOrder::first(),
        },
        HookKind::Clsact => TcAttach::Auto(attach_type),
    };
    let hook = match attach_type {
        TcAttachType::Ingress => "tc ingress",
        _ => "tc egress",
    };
    classifier(ebpf, prog)
        .attach(ifindex, how)
        .map_err(|source| AttachError::Attach {
            hook,
            interface: interface.into(),
            ifindex,
            source,
        })
}
