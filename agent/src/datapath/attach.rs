//! Attaching the programs so that they outlive the agent: TC on both
//! directions of each endpoint interface (tcx links pinned on bpffs, first
//! in the chain, on Linux 6.6 and later; cls_bpf filters on a clsact qdisc
//! at a fixed priority and handle before that), XDP on the uplink (a pinned
//! link).
//!
//! A restarted or upgraded agent adopts what it finds: it swaps its new
//! programs into the existing links (`BPF_LINK_UPDATE`) or filters (netlink
//! replace) atomically, so enforcement never lapses.

use std::collections::BTreeMap;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{
        LinkOrder, ProgramFd, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttach, TcHandle},
        xdp::XdpLink,
    },
    util::KernelVersion,
};

use super::{PROG_FROM_ENDPOINT, PROG_TO_ENDPOINT, PROG_UPLINK};

/// cls_bpf priority and handle of hostwall's filters on kernels without
/// tcx. Priority 1 runs before any filter others add with the default.
const NL_PRIORITY: u16 = 1;
const NL_HANDLE: TcHandle = TcHandle::new(0, 0x4857);
/// The clsact qdisc's ingress and egress parents (`TC_H_CLSACT` with
/// `TC_H_MIN_INGRESS`, `TC_H_MIN_EGRESS`).
const CLSACT_INGRESS: u32 = 0xffff_fff2;
const CLSACT_EGRESS: u32 = 0xffff_fff3;

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
    #[error("pinning the {hook} link of {interface} at {path}")]
    Pin {
        hook: &'static str,
        interface: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// tcx links (Linux 6.6 and later).
    Tcx,
    /// cls_bpf filters on a clsact qdisc.
    Clsact,
}

impl HookKind {
    pub fn current() -> HookKind {
        match KernelVersion::current() {
            Ok(v) if v >= KernelVersion::new(6, 6, 0) => HookKind::Tcx,
            _ => HookKind::Clsact,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::Tcx => "tcx",
            HookKind::Clsact => "clsact",
        }
    }
}

/// What is attached where. The kernel objects live on without the agent;
/// this is the agent's view of them.
pub struct Attachments {
    links_dir: PathBuf,
    kind: HookKind,
    endpoints: BTreeMap<u32, String>,
    uplink: Option<(String, u32)>,
}

/// The name the uplink's XDP link is pinned under in the links directory.
fn uplink_link_name(ifindex: u32) -> String {
    format!("uplink{ifindex}")
}

fn hook_name(t: TcAttachType) -> &'static str {
    match t {
        TcAttachType::Ingress => "tc ingress",
        TcAttachType::Egress => "tc egress",
    }
}

fn suffix(t: TcAttachType) -> &'static str {
    match t {
        TcAttachType::Ingress => "ingress",
        TcAttachType::Egress => "egress",
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name)
        .expect("program loaded")
        .try_into()
        .expect("program is a classifier")
}

fn xdp(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(PROG_UPLINK)
        .expect("program loaded")
        .try_into()
        .expect("program is xdp")
}

impl Attachments {
    /// `links_dir` holds the pinned links (created if missing).
    pub fn new(links_dir: &Path) -> std::io::Result<Attachments> {
        std::fs::create_dir_all(links_dir)?;
        Ok(Attachments {
            links_dir: links_dir.to_path_buf(),
            kind: HookKind::current(),
            endpoints: BTreeMap::new(),
            uplink: None,
        })
    }

    pub fn kind(&self) -> HookKind {
        self.kind
    }

    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.endpoints.contains_key(&ifindex)
    }

    /// The uplink the XDP filter is attached to (name, ifindex).
    pub fn uplink(&self) -> Option<(String, u32)> {
        self.uplink.clone()
    }

    pub fn attached(&self) -> impl Iterator<Item = (u32, &str)> {
        self.endpoints.iter().map(|(i, n)| (*i, n.as_str()))
    }

    fn link_path(&self, interface: &str, ifindex: u32, t: TcAttachType) -> PathBuf {
        let _ = interface;
        self.links_dir.join(format!("if{ifindex}_{}", suffix(t)))
    }

    /// Puts both TC programs on an endpoint interface, taking over any
    /// hostwall attachment already there (from an earlier agent).
    pub fn attach_endpoint(&mut self, ebpf: &mut Ebpf, interface: &str, ifindex: u32) -> Result<(), AttachError> {
        self.attach_endpoint_from(ebpf, interface, ifindex, None)
    }

    /// Pins tcx links attached to `ifindex` by someone else in this
    /// process (the quarantine guard: tc ingress, then tc egress) where
    /// this agent's links of that interface are pinned, so that attaching
    /// adopts them.
    pub fn pin_taken_links(&self, interface: &str, ifindex: u32, links: Vec<OwnedFd>) -> Result<(), AttachError> {
        for (fd, t) in links.into_iter().zip([TcAttachType::Ingress, TcAttachType::Egress]) {
            let path = self.link_path(interface, ifindex, t);
            let _ = std::fs::remove_file(&path);
            pin_fd(fd.as_fd(), &path).map_err(|e| AttachError::Pin {
                hook: hook_name(t),
                interface: interface.into(),
                path: path.clone(),
                source: Box::new(e),
            })?;
        }
        Ok(())
    }

    /// Like `attach_endpoint`, also adopting links pinned under `old_links`
    /// (an older pinned layout being replaced).
    pub fn attach_endpoint_from(
        &mut self,
        ebpf: &mut Ebpf,
        interface: &str,
        ifindex: u32,
        old_links: Option<&Path>,
    ) -> Result<(), AttachError> {
        if self.kind == HookKind::Clsact {
            match tc::qdisc_add_clsact(ifindex) {
                Ok(()) | Err(tc::TcError::AlreadyAttached) => {}
                // An earlier agent's: its filters are replaced below.
                Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(source) => {
                    return Err(AttachError::Clsact {
                        interface: interface.into(),
                        source,
                    });
                }
            }
        }
        for (prog, t) in [
            (PROG_FROM_ENDPOINT, TcAttachType::Ingress),
            (PROG_TO_ENDPOINT, TcAttachType::Egress),
        ] {
            let path = self.link_path(interface, ifindex, t);
            let old = old_links.map(|d| d.join(path.file_name().expect("link file name")));
            self.attach_tc(ebpf, prog, t, interface, ifindex, &path, old.as_deref())?;
        }
        self.endpoints.insert(ifindex, interface.to_string());
        Ok(())
    }

    #[expect(clippy::too_many_arguments, reason = "one hook of one interface, fully described")]
    fn attach_tc(
        &self,
        ebpf: &mut Ebpf,
        prog: &str,
        t: TcAttachType,
        interface: &str,
        ifindex: u32,
        path: &Path,
        old: Option<&Path>,
    ) -> Result<(), AttachError> {
        let err = |source| AttachError::Attach {
            hook: hook_name(t),
            interface: interface.into(),
            ifindex,
            source,
        };
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| AttachError::Pin {
            hook: hook_name(t),
            interface: interface.into(),
            path: path.to_path_buf(),
            source,
        };
        match self.kind {
            HookKind::Tcx => {
                let existing = [Some(path), old]
                    .into_iter()
                    .flatten()
                    .find_map(|p| adopt_tc_link(p).ok());
                let program = classifier(ebpf, prog);
                let id = match existing {
                    Some(link) => program.attach_to_link(link).map_err(err)?,
                    None => program
                        .attach(
                            ifindex,
                            TcAttach::Tcx {
                                attach_type: t,
                                order: LinkOrder::first(),
                            },
                        )
                        .map_err(err)?,
                };
                let link = program.take_link(id).map_err(err)?;
                let fd: FdLink = link.try_into().map_err(|e: LinkError| pin_err(Box::new(e)))?;
                for p in [Some(path), old].into_iter().flatten() {
                    let _ = std::fs::remove_file(p);
                }
                fd.pin(path).map_err(|e| pin_err(Box::new(e)))?;
            }
            HookKind::Clsact => {
                let program = classifier(ebpf, prog);
                let existing = SchedClassifierLink::attached(ifindex, t.into(), NL_PRIORITY, NL_HANDLE, None).ok();
                let replaced = match existing {
                    Some(link) => program.attach_to_link(link).ok(),
                    None => None,
                };
                let id = match replaced {
                    Some(id) => id,
                    None => program
                        .attach(
                            ifindex,
                            TcAttach::Netlink {
                                parent: t.into(),
                                options: NlOptions {
                                    priority: NL_PRIORITY,
                                    handle: NL_HANDLE,
                                    ..Default::default()
                                },
                            },
                        )
                        .map_err(err)?,
                };
                // The filter holds the program; dropping the link handle
                // would detach it.
                std::mem::forget(program.take_link(id).map_err(err)?);
            }
        }
        Ok(())
    }

    /// The hooks of endpoint interface `ifindex` that do not run this
    /// agent's programs, as the kernel tells (tcx links queried, clsact
    /// filters dumped over netlink), not as pins say: empty when both do.
    /// Someone may have removed a link's pin (which ends the link), a
    /// filter or the qdisc.
    pub fn missing_hooks(&self, ebpf: &Ebpf, ifindex: u32) -> Result<Vec<&'static str>, String> {
        let mut missing = Vec::new();
        let mut rtnl = None;
        for (prog, t) in [
            (PROG_FROM_ENDPOINT, TcAttachType::Ingress),
            (PROG_TO_ENDPOINT, TcAttachType::Egress),
        ] {
            let ours = ebpf
                .program(prog)
                .ok_or_else(|| format!("program {prog} is not loaded"))?
                .info()
                .map_err(|e| format!("reading program {prog}: {e}"))?
                .id();
            let present: Vec<u32> = match self.kind {
                HookKind::Tcx => SchedClassifier::query_tcx(ifindex, t)
                    .map_err(|e| format!("querying the {} of ifindex {ifindex}: {e}", hook_name(t)))?
                    .1
                    .iter()
                    .map(|p| p.id())
                    .collect(),
                HookKind::Clsact => {
                    let socket = match &mut rtnl {
                        Some(s) => s,
                        None => rtnl
                            .insert(crate::host::rtnl::Socket::open().map_err(|e| format!("opening rtnetlink: {e}"))?),
                    };
                    let parent = match t {
                        TcAttachType::Ingress => CLSACT_INGRESS,
                        _ => CLSACT_EGRESS,
                    };
                    match socket.tc_filter_programs(ifindex, parent) {
                        Ok(ids) => ids,
                        // No clsact qdisc: no filters either.
                        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Vec::new(),
                        Err(e) => {
                            return Err(format!(
                                "listing the {} filters of ifindex {ifindex}: {e}",
                                hook_name(t)
                            ));
                        }
                    }
                }
            };
            if !present.contains(&ours) {
                missing.push(hook_name(t));
            }
        }
        Ok(missing)
    }

    /// Whether the uplink's XDP link is still pinned (its pin is what holds
    /// it: a removed pin ends the link).
    pub fn uplink_missing(&self) -> Option<(String, u32)> {
        let (name, ifindex) = self.uplink.clone()?;
        (!self.links_dir.join(uplink_link_name(ifindex)).exists()).then_some((name, ifindex))
    }

    /// Removes hostwall from an interface (or forgets one that is gone).
    pub fn detach_endpoint(&mut self, ifindex: u32) {
        let Some(interface) = self.endpoints.remove(&ifindex) else {
            return;
        };
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            let _ = std::fs::remove_file(self.link_path(&interface, ifindex, t));
            if self.kind == HookKind::Clsact
                && let Ok(link) = SchedClassifierLink::attached(ifindex, t.into(), NL_PRIORITY, NL_HANDLE, None)
            {
                drop(link_detach(link));
            }
        }
    }

    /// Attaches the XDP filter to the uplink, adopting a pinned link.
    pub fn attach_uplink(
        &mut self,
        ebpf: &mut Ebpf,
        interface: &str,
        ifindex: u32,
        old_links: Option<&Path>,
    ) -> Result<(), AttachError> {
        let name = uplink_link_name(ifindex);
        let path = self.links_dir.join(&name);
        let old = old_links.map(|d| d.join(&name));
        let err = |source| AttachError::Attach {
            hook: "xdp",
            interface: interface.into(),
            ifindex,
            source,
        };
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| AttachError::Pin {
            hook: "xdp",
            interface: interface.into(),
            path: path.clone(),
            source,
        };
        let existing = [Some(path.as_path()), old.as_deref()]
            .into_iter()
            .flatten()
            .find_map(|p| {
                let fd: FdLink = PinnedLink::from_pin(p).ok()?.into();
                XdpLink::try_from(fd).ok()
            });
        let program = xdp(ebpf);
        let id = match existing {
            Some(link) => program.attach_to_link(link).map_err(err)?,
            None => program.attach(ifindex, XdpMode::Default).map_err(err)?,
        };
        let link = program.take_link(id).map_err(err)?;
        match FdLink::try_from(link) {
            Ok(fd) => {
                for p in [Some(path.as_path()), old.as_deref()].into_iter().flatten() {
                    let _ = std::fs::remove_file(p);
                }
                fd.pin(&path).map_err(|e| pin_err(Box::new(e)))?;
            }
            Err(e) => return Err(pin_err(Box::new(e))),
        }
        self.uplink = Some((interface.to_string(), ifindex));
        Ok(())
    }

    /// Removes a pinned link by file name.
    pub fn remove_pin(&self, name: &str) {
        let _ = std::fs::remove_file(self.links_dir.join(name));
    }
}

/// Pinned TC links in a directory: (file name, ifindex).
pub fn pinned_links(dir: &Path) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let ifindex = parse_link_name(&name)?;
            Some((name, ifindex))
        })
        .collect()
}

/// The ifindex in a TC link's pin name (`if<ifindex>_ingress` or
/// `if<ifindex>_egress`, see `Attachments::link_path`).
fn parse_link_name(name: &str) -> Option<u32> {
    let (ifindex, dir) = name.strip_prefix("if")?.split_once('_')?;
    if dir != suffix(TcAttachType::Ingress) && dir != suffix(TcAttachType::Egress) {
        return None;
    }
    ifindex.parse().ok()
}

fn adopt_tc_link(path: &Path) -> Result<SchedClassifierLink, LinkError> {
    let pinned = PinnedLink::from_pin(path)?;
    SchedClassifierLink::try_from(FdLink::from(pinned))
}

fn link_detach(link: SchedClassifierLink) -> Result<(), aya::programs::ProgramError> {
    use aya::programs::links::Link as _;
    link.detach()
}

/// Removes every hostwall attachment recorded under `links_dir` and, on
/// clsact kernels, hostwall's filters on `interfaces`; returns how many
/// filters it removed.
pub fn remove_all(links_dir: &Path, interfaces: &[u32]) -> usize {
    if let Ok(entries) = std::fs::read_dir(links_dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let mut filters = 0;
    if HookKind::current() == HookKind::Clsact {
        for &ifindex in interfaces {
            for t in [TcAttachType::Ingress, TcAttachType::Egress] {
                if let Ok(link) = SchedClassifierLink::attached(ifindex, t.into(), NL_PRIORITY, NL_HANDLE, None)
                    && link_detach(link).is_ok()
                {
                    filters += 1;
                }
            }
        }
    }
    filters
}

/// The endpoint programs, as fds of their own that another thread may
/// attach with (`tcx_attach_first`): the program of tc ingress, then that
/// of tc egress.
pub fn endpoint_program_fds(ebpf: &Ebpf) -> Result<[(ProgramFd, TcxHook); 2], aya::programs::ProgramError> {
    let fd = |name: &str| -> Result<ProgramFd, aya::programs::ProgramError> {
        let program: &SchedClassifier = ebpf
            .program(name)
            .expect("program loaded")
            .try_into()
            .expect("program is a classifier");
        Ok(program.fd()?.try_clone()?)
    };
    Ok([
        (fd(PROG_FROM_ENDPOINT)?, TcxHook::Ingress),
        (fd(PROG_TO_ENDPOINT)?, TcxHook::Egress),
    ])
}

/// `BPF_OBJ_PIN`: pins the object `fd` refers to at `path` on bpffs.
fn pin_fd(fd: BorrowedFd<'_>, path: &Path) -> std::io::Result<()> {
    const BPF_OBJ_PIN: libc::c_long = 6;
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let attr = ObjPin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
        path_fd: 0,
    };
    // SAFETY: `attr` is a valid `obj_pin` attribute; the path outlives the
    // call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &attr as *const ObjPin,
            std::mem::size_of::<ObjPin>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A tcx hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcxHook {
    Ingress,
    Egress,
}

/// Attaches `program` first on `hook` of `ifindex` with a tcx link that
/// lives as long as the returned fd (it is not pinned).
pub fn tcx_attach_first(program: BorrowedFd<'_>, ifindex: u32, hook: TcxHook) -> std::io::Result<OwnedFd> {
    const BPF_LINK_CREATE: libc::c_long = 28;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    const BPF_F_BEFORE: u32 = 1 << 3;
    /// The `link_create` member of the kernel's `union bpf_attr`, with its
    /// `tcx` part.
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_ifindex: u32,
        attach_type: u32,
        flags: u32,
        relative_fd: u32,
        _pad: u32,
        expected_revision: u64,
    }
    let attr = LinkCreate {
        prog_fd: program.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: match hook {
            TcxHook::Ingress => BPF_TCX_INGRESS,
            TcxHook::Egress => BPF_TCX_EGRESS,
        },
        // Before every other program (relative to none: first).
        flags: BPF_F_BEFORE,
        relative_fd: 0,
        _pad: 0,
        expected_revision: 0,
    };
    // SAFETY: `attr` is a valid `link_create` attribute of the size passed;
    // the kernel reads it only during the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreate,
            std::mem::size_of::<LinkCreate>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_links_are_found_by_the_names_they_are_pinned_under() {
        let dir = std::env::temp_dir().join(format!("hostwall-links-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let attachments = Attachments::new(&dir).unwrap();
        for t in [TcAttachType::Ingress, TcAttachType::Egress] {
            std::fs::write(attachments.link_path("hw-a", 17, t), "").unwrap();
        }
        for other in ["uplink3", "if_ingress", "ifx_egress", "if4_sideways", "notes"] {
            std::fs::write(dir.join(other), "").unwrap();
        }
        let mut found = pinned_links(&dir);
        found.sort();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            found,
            vec![("if17_egress".to_string(), 17), ("if17_ingress".to_string(), 17)]
        );
    }
}
