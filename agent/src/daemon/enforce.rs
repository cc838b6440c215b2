//! Applying a policy: compile, write the inactive slot, flip, attach; and
//! keeping it applied as interfaces and host addresses change.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use hostwall_common::{Counter, QUARANTINED};
use tracing::{error, info, warn};

use super::macs::{self, Wanted};
use super::rules::{Assignment, Held};
use super::{Agent, WriteBack};
use crate::api::Caller;
use crate::compile::{self, CompileError, Compiled, HostView, Lookup};
use crate::datapath::{MapSizes, Needs, SlotError, conntrack};
use crate::host;
use crate::policy::{OnPolicyChange, Policy, PolicyDiff};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("writing the policy maps; the last good policy stays enforced")]
    Slots(#[from] SlotError),
    #[error(transparent)]
    Memory(#[from] crate::datapath::MemoryError),
    #[error("growing the maps for the policy; the last good policy stays enforced")]
    Grow(#[source] Box<super::grow::GrowError>),
    #[error(
        "the policy has more rules than the {max} rule counters the datapath holds (counting those tracked flows still name)"
    )]
    RuleIds { max: u32 },
    #[error(
        "{path} changed since the agent last read it (an edit not saved yet, or one the agent refused: see `hostwall status`); nothing was applied. Save the edit or `hostwall reload`, then retry"
    )]
    Conflict { path: PathBuf },
    #[error("the policy was applied but writing it back to {path} failed; the previous policy was restored")]
    WriteBack {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A policy compiled for this host and checked against the maps' memory
/// ceiling (`Agent::compile_fitting`).
struct Fitted {
    compiled: Compiled,
    /// Quarantined interfaces: ifindex -> name.
    quarantine: BTreeMap<u32, String>,
    /// The sizes the maps must grow to for it, if any.
    grow: Option<MapSizes>,
}

impl Agent {
    /// Makes `new` the enforced policy: compiled, written to the inactive
    /// slot and switched to in one step. On error nothing changes.
    pub fn apply(&mut self, new: Policy, source: &str, caller: Option<&Caller>) -> Result<PolicyDiff, ApplyError> {
        let rules: usize = new.groups.values().map(|g| g.ingress.len() + g.egress.len()).sum();
        info!(source, rules, endpoints = new.endpoints.len(), "compiling a policy");
        let assignment = self.assign(&new)?;
        // Written with the policy, so that it survives a restart.
        self.generation += 1;
        let compiled = match self.enforce(&new, &assignment) {
            Ok(c) => c,
            Err(e) => {
                self.generation -= 1;
                return Err(e);
            }
        };
        self.registry.commit(&assignment);
        let change = crate::policy::diff(&self.policy, &new);
        let revalidate = new.settings.on_policy_change == OnPolicyChange::Revalidate && !change.is_empty();
        let old = std::mem::replace(&mut self.policy, new);
        if !change.is_empty() {
            self.previous = Some(old);
        }
        self.compiled = compiled;
        self.applied_at = SystemTime::now();
        self.last_error = None;
        self.last_error_at = None;
        if revalidate {
            let ended = self.revalidate_flows();
            info!(ended, "tracked flows the new policy does not allow were ended");
        }
        // Who and what: the items themselves (the first 50), not only how
        // many.
        let what = change.details(50);
        match caller {
            Some(c) => info!(uid = c.uid, pid = c.pid, source, changes = %change.summary(), %what, "policy changed"),
            None => info!(source, changes = %change.summary(), %what, "policy changed"),
        }
        self.compact();
        Ok(change)
    }

    /// Packs what an apply left the agent holding (the policy, its compiled
    /// form, the rule registry, the slot written) into fresh allocations
    /// and hands the freed pages to the kernel, so that its resident memory
    /// is what it holds rather than the last apply's peak. The previous
    /// policy was packed when it was applied. Done after the flip:
    /// enforcement does not wait for it.
    fn compact(&mut self) {
        use crate::memory::compact;
        compact(&mut self.policy);
        compact(&mut self.compiled);
        compact(&mut self.registry);
        self.datapath.slots.compact();
        crate::memory::release_freed();
    }

    /// Refuses a write-back that would overwrite an operator's change of
    /// the control file that the agent has not applied (none is written
    /// with `--write-back none`).
    fn check_file_unchanged(&self) -> Result<(), ApplyError> {
        if self.opts.write_back == WriteBack::File
            && let Ok(bytes) = std::fs::read(&self.opts.config)
            && Some(super::lifecycle::sha256_hex(&bytes)) != self.enforced_file_hash
        {
            return Err(ApplyError::Conflict {
                path: self.opts.config.clone(),
            });
        }
        Ok(())
    }

    /// What `apply_and_save` of `new` would change, checked as it would
    /// be (rule ids, compiling, map memory, the control file), with
    /// nothing written: a dry run.
    pub fn check(&mut self, new: &Policy) -> Result<PolicyDiff, ApplyError> {
        self.check_file_unchanged()?;
        let assignment = self.assign(new)?;
        let macs_before = self.macs.clone();
        let compiled = self.compile_fitting(new, &assignment);
        self.macs = macs_before;
        compiled?;
        Ok(crate::policy::diff(&self.policy, new))
    }

    /// `apply`, then writes the policy back to the control file. If the
    /// file cannot be written, the previous policy is applied again.
    pub fn apply_and_save(&mut self, new: Policy, source: &str, caller: &Caller) -> Result<PolicyDiff, ApplyError> {
        self.check_file_unchanged()?;
        let previous = self.policy.clone();
        let before_previous = self.previous.clone();
        let change = self.apply(new, source, Some(caller))?;
        let text = crate::policy::to_yaml(&self.policy);
        let (path, written) = match self.opts.write_back {
            WriteBack::File => (
                self.opts.config.clone(),
                write_atomically(&self.opts.config, text.as_bytes()),
            ),
            WriteBack::None => {
                let base = self.file_hash.clone().unwrap_or_default();
                (
                    self.opts.state_dir.clone(),
                    super::state::save(&self.opts.state_dir, &text, &base),
                )
            }
        };
        if let Err(e) = written {
            if let Err(again) = self.apply(previous, "restore after a failed write", Some(caller)) {
                error!(error = %again, "restoring the previous policy failed");
            }
            self.previous = before_previous;
            return Err(ApplyError::WriteBack { path, source: e });
        }
        if self.opts.write_back == WriteBack::None {
            self.matches_file = false;
            return Ok(change);
        }
        self.file_hash = Some(super::lifecycle::sha256_hex(text.as_bytes()));
        self.enforced_file_hash = self.file_hash.clone();
        Ok(change)
    }

    /// Re-applies the current policy if interfaces or host addresses moved.
    pub fn reconcile(&mut self) {
        let addresses = match host::addresses() {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "reading the host's addresses failed");
                return;
            }
        };
        let interfaces_moved = self
            .compiled
            .endpoints
            .iter()
            .any(|e| host::ifindex(&e.interface) != e.ifindex);
        let quarantine_moved = self.quarantine_candidates() != self.quarantined;
        let macs_moved = !interfaces_moved && self.macs_moved();
        if addresses == self.host_addresses && !interfaces_moved && !quarantine_moved && !macs_moved {
            return;
        }
        self.host_addresses = addresses;
        let policy = self.policy.clone();
        let assignment = match self.assign(&policy) {
            Ok(a) => a,
            Err(e) => return self.note_error(e),
        };
        match self.enforce(&policy, &assignment) {
            Ok(compiled) => {
                self.compiled = compiled;
                info!(
                    attached = self.attachments.attached().count(),
                    "host changed; policy re-applied"
                );
            }
            Err(e) => self.note_error(e),
        }
    }

    /// `policy` compiled for this host with the rules' slots of
    /// `assignment`, quarantined interfaces included, checked against the
    /// maps' memory ceiling (with the maps grown as it needs). The
    /// endpoints' MACs are decided on the way (`self.macs`).
    fn compile_fitting(&mut self, policy: &Policy, assignment: &Assignment) -> Result<Fitted, ApplyError> {
        let addrs: Vec<IpAddr> = self.host_addresses.iter().copied().collect();
        let macs = self.endpoint_macs(policy);
        let view = HostView {
            node: &self.opts.node,
            host_addresses: &addrs,
            ifindex: &host::ifindex,
            macs: &macs,
        };
        let sizes = self.datapath.slots.sizes();
        let mut compiled = compile::compile_with(policy, &view, &sizes.limits(), &assignment.ids)?;

        // Quarantine: computed against the new policy's endpoints.
        let saved = std::mem::replace(&mut self.policy, policy.clone());
        let quarantine = self.quarantine_candidates();
        self.policy = saved;
        for (ifindex, name) in &quarantine {
            compiled.endpoints.push(compile::LocalEndpoint {
                name: format!("quarantine:{name}"),
                interface: name.clone(),
                ifindex: Some(*ifindex),
                info: hostwall_common::EndpointInfo::new(QUARANTINED, [0; 6]),
            });
        }
        let grow = sizes.to_fit(&Needs::of(&compiled));
        let growth = grow
            .map(|grown| self.datapath.growth_memory(&grown))
            .unwrap_or_default();
        self.datapath.slots.check_memory(&compiled, &growth)?;
        Ok(Fitted {
            compiled,
            quarantine,
            grow,
        })
    }

    /// Slots and ids for `policy`'s rules. When every slot is taken or
    /// named by a tracked flow, conntrack is read to release the slots no
    /// flow names any more, once.
    fn assign(&mut self, policy: &Policy) -> Result<Assignment, ApplyError> {
        match self.registry.assign(policy) {
            Ok(a) => Ok(a),
            Err(_) => {
                let referenced = conntrack::rule_slots(&self.datapath.ebpf);
                self.registry.release_unreferenced(&referenced);
                self.registry
                    .assign(policy)
                    .map_err(|e| ApplyError::RuleIds { max: e.max })
            }
        }
    }

    fn note_error(&mut self, e: ApplyError) {
        error!(error = %format!("{e:#}"), "re-applying the policy failed; the last good state stays enforced");
        self.record_error(format!("{:#}", anyhow::Error::new(e)));
    }

    /// Interfaces that match `settings.quarantine` and are no endpoint.
    pub fn quarantine_candidates(&self) -> BTreeMap<u32, String> {
        let Some(q) = &self.policy.settings.quarantine else {
            return BTreeMap::new();
        };
        let endpoint_ifaces: BTreeSet<&str> = self
            .policy
            .endpoints
            .iter()
            .filter(|e| e.is_local(&self.opts.node))
            .filter_map(|e| e.interface.as_deref())
            .collect();
        host::interfaces()
            .into_iter()
            .filter(|(_, name)| q.matches(name) && !endpoint_ifaces.contains(name.as_str()))
            .collect()
    }

    /// Compiles `policy` for the host as it is, writes it to the maps and
    /// attaches to every endpoint (and quarantined) interface.
    pub(super) fn enforce(&mut self, policy: &Policy, assignment: &Assignment) -> Result<Compiled, ApplyError> {
        // MACs are fixed only by a policy that gets enforced.
        let macs_before = self.macs.clone();
        let Fitted {
            mut compiled,
            quarantine,
            grow,
        } = match self.compile_fitting(policy, assignment) {
            Ok(c) => c,
            Err(e) => {
                self.macs = macs_before;
                return Err(e);
            }
        };
        if let Some(sizes) = grow
            && let Err(e) = self.grow(sizes)
        {
            self.macs = macs_before;
            return Err(ApplyError::Grow(Box::new(e)));
        }
        self.prepare_rule_counters(assignment);
        compiled.settings.policy_generation = u32::try_from(self.generation).unwrap_or(u32::MAX);
        if let Err(e) = self.datapath.slots.apply(&compiled) {
            self.macs = macs_before;
            return Err(e.into());
        }
        self.record_rule_keys(assignment);

        let wanted: BTreeSet<u32> = compiled.endpoints.iter().filter_map(|e| e.ifindex).collect();
        let stale: Vec<u32> = self
            .attachments
            .attached()
            .map(|(i, _)| i)
            .filter(|i| !wanted.contains(i))
            .collect();
        for ifindex in stale {
            self.attachments.detach_endpoint(ifindex);
        }
        let old_links = self.adopt_from.clone();
        for ep in &compiled.endpoints {
            let Some(ifindex) = ep.ifindex else {
                let known_missing = self
                    .compiled
                    .endpoints
                    .iter()
                    .any(|e| e.name == ep.name && e.ifindex.is_none());
                if !known_missing {
                    warn!(endpoint = %ep.name, interface = %ep.interface, "interface not present; will attach when it appears");
                }
                continue;
            };
            if self.attachments.is_attached(ifindex) {
                continue;
            }
            if let Some(links) = self.guard.as_ref().and_then(|g| g.take(ifindex, &ep.interface))
                && let Err(e) = self.attachments.pin_taken_links(&ep.interface, ifindex, links)
            {
                warn!(interface = %ep.interface, error = %format!("{:#}", anyhow::Error::new(e)), "taking over the quarantine guard's links failed");
            }
            match self.attachments.attach_endpoint_from(
                &mut self.datapath.ebpf,
                &ep.interface,
                ifindex,
                old_links.as_deref(),
            ) {
                Ok(()) => info!(endpoint = %ep.name, interface = %ep.interface, ifindex, "attached"),
                Err(e) => {
                    let message = format!("{:#}", anyhow::Error::new(e));
                    error!(endpoint = %ep.name, error = %message, "attaching failed");
                    self.record_error(message);
                }
            }
        }
        self.quarantined = quarantine;
        if let Some(guard) = &self.guard {
            let endpoint_interfaces = compiled
                .endpoints
                .iter()
                .filter(|e| !self.quarantined.contains_key(&e.ifindex.unwrap_or(0)))
                .map(|e| e.interface.clone())
                .collect();
            let attached = self.attachments.attached().map(|(i, _)| i).collect();
            guard.update(policy.settings.quarantine.as_ref(), endpoint_interfaces, attached);
        }
        if self.datapath.slots.active_tables().is_some() {
            compiled.release_tables();
        }
        Ok(compiled)
    }

    /// The MAC fixed for each local endpoint's interface (by ifindex):
    /// decided for interfaces seen for the first time (and those whose MAC
    /// was not known yet), kept for the others. A refused interface has
    /// none.
    fn endpoint_macs(&mut self, policy: &Policy) -> BTreeMap<u32, [u8; 6]> {
        let wanted = wanted_macs(policy, &self.opts.node);
        self.macs.update(
            &wanted,
            &mut |w| macs::read_peer(w.interface, w.ifindex),
            &mut host::link_macs,
        );
        self.macs.fixed()
    }

    /// Whether an endpoint MAC that was not known has become known, so
    /// that the policy must be written again.
    fn macs_moved(&mut self) -> bool {
        if !self.macs.waiting() {
            return false;
        }
        let wanted = wanted_macs(&self.policy, &self.opts.node);
        self.macs.update(
            &wanted,
            &mut |w| macs::read_peer(w.interface, w.ifindex),
            &mut host::link_macs,
        );
        let fixed = self.macs.fixed();
        self.compiled.endpoints.iter().any(|e| {
            e.info.endpoint != QUARANTINED
                && e.ifindex
                    .is_some_and(|i| fixed.get(&i).copied().unwrap_or([0; 6]) != e.info.mac)
        })
    }

    /// Fresh rule ids start counting from zero.
    fn prepare_rule_counters(&mut self, assignment: &Assignment) {
        let Some(map) = self.datapath.ebpf.map_mut("HW_RULE_STATS") else {
            return;
        };
        let Ok(mut stats) = PerCpuArray::<&mut MapData, Counter>::try_from(map) else {
            return;
        };
        let ncpus = aya::util::nr_cpus().map(|n| n.get() as usize).unwrap_or(1);
        for fresh in &assignment.fresh {
            if let Ok(zero) = PerCpuValues::try_from(vec![Counter::default(); ncpus]) {
                let _ = stats.set(fresh.slot, zero, 0);
            }
        }
    }

    /// Each slot's rule in `HW_RULE_KEYS`, its id in `HW_RULE_IDS`, and
    /// the next id at `HW_RULE_IDS[0]`.
    fn record_rule_keys(&mut self, assignment: &Assignment) {
        for (name, value) in [
            ("HW_RULE_KEYS", (|h: &Held| h.key) as fn(&Held) -> u64),
            ("HW_RULE_IDS", |h: &Held| h.id),
        ] {
            let Some(map) = self.datapath.ebpf.map_mut(name) else {
                continue;
            };
            let Ok(mut map) = Array::<&mut MapData, u64>::try_from(map) else {
                continue;
            };
            for slot in &assignment.freed {
                let _ = map.set(*slot, &0, 0);
            }
            for fresh in &assignment.fresh {
                let _ = map.set(fresh.slot, &value(fresh), 0);
            }
            if name == "HW_RULE_IDS" {
                let _ = map.set(0, &assignment.next_id, 0);
            }
        }
    }

    /// Ends tracked flows the enforced policy does not allow; returns how
    /// many.
    pub fn revalidate_flows(&mut self) -> usize {
        let lookup = match self.datapath.slots.active_tables() {
            Some(tables) => Lookup::over(tables, &self.compiled),
            None => Lookup::new(&self.compiled),
        };
        let doomed: Vec<_> = conntrack::flows(&self.datapath.ebpf)
            .into_iter()
            .filter(|f| !lookup.allows(&f.allowed()))
            .collect();
        conntrack::remove(&mut self.datapath.ebpf, &doomed)
    }
}

/// The local endpoints of `policy` whose interface exists, in policy
/// order.
fn wanted_macs<'a>(policy: &'a Policy, node: &str) -> Vec<Wanted<'a>> {
    policy
        .endpoints
        .iter()
        .filter(|e| e.is_local(node))
        .filter_map(|e| {
            let interface = e.interface.as_deref()?;
            Some(Wanted {
                endpoint: &e.name,
                interface,
                ifindex: host::ifindex(interface)?,
                configured: e.mac,
            })
        })
        .collect()
}

/// Writes `bytes` to `path` so that readers see the old or the new file,
/// never a part: a temporary file beside it, fsync, rename, fsync the
/// directory. The file's mode is kept.
/// Replaces the file at `path` (the file a symlink there points to) with
/// `bytes`: a temporary file beside it with its owner, group and mode,
/// fsync, rename, fsync of the directory. A symlinked control file (a
/// GitOps checkout) stays a symlink.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let resolved;
    let is_symlink = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta.file_type().is_symlink(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    };
    let path = if is_symlink {
        resolved = std::fs::canonicalize(path)?;
        resolved.as_path()
    } else {
        path
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the control file path has no file name"))?;
    let tmp = dir.join(format!(".{}.hostwall-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::MetadataExt as _;
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
            f.set_permissions(meta.permissions())?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
