//! Growing the maps that are allocated whole (interfaces, addresses, rule
//! slots) when a policy outgrows them, with no gap in enforcement.
//!
//! The agent loads its programs again with larger maps in place of those
//! and every other map shared: conntrack, the policy tries, the active
//! slot's index, the verdict counters. The larger maps get what the active
//! slot holds, so the new programs judge every packet as the old ones do,
//! under the same policy generation; the programs are then swapped into
//! each hook's link (an atomic replacement per hook). Only once every hook
//! runs them are the old maps final: their rule counters are added to the
//! new ones, the flows' counts are taken again from conntrack, and the new
//! maps' pins replace the old. The new policy is written and flipped to
//! after that, as any other.

use tracing::{info, warn};

use super::Agent;
use crate::datapath::{self, AttachError, MapSizes};

#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error(transparent)]
    Datapath(#[from] datapath::GrowError),
    #[error("swapping the programs with larger maps into the hooks (every hook runs the previous ones again)")]
    Attach(#[source] Box<AttachError>),
}

impl Agent {
    /// Swaps in maps of `sizes` (and programs using them) for those that
    /// are smaller. On error the maps in use stay, with every hook running
    /// their programs.
    pub(super) fn grow(&mut self, sizes: MapSizes) -> Result<(), GrowError> {
        let before = self.datapath.slots.sizes();
        let mut next = self.datapath.grow(&self.layout, &sizes)?;
        let hooks: Vec<(u32, String)> = self.attachments.attached().map(|(i, n)| (i, n.to_string())).collect();
        let uplink = self.attachments.uplink();
        let mut swapped = 0;
        let mut result = Ok(());
        for (ifindex, name) in &hooks {
            result = self.attachments.attach_endpoint(&mut next.ebpf, name, *ifindex);
            if result.is_err() {
                break;
            }
            swapped += 1;
        }
        if result.is_ok()
            && let Some((name, ifindex)) = &uplink
        {
            result = self.attachments.attach_uplink(&mut next.ebpf, name, *ifindex, None);
        }
        if let Err(e) = result {
            for (ifindex, name) in &hooks[..swapped] {
                if let Err(e) = self
                    .attachments
                    .attach_endpoint(&mut self.datapath.ebpf, name, *ifindex)
                {
                    warn!(interface = %name, error = %e, "putting the previous programs back failed");
                }
            }
            next.abandon_growth(&self.layout);
            return Err(GrowError::Attach(Box::new(e)));
        }
        let old = std::mem::replace(&mut self.datapath, next);
        self.datapath.finish_growth(old, &self.layout);
        if let Err(e) = self.datapath.pin_programs(&self.layout) {
            warn!(error = %e, "pinning the programs failed");
        }
        if let Some(guard) = &self.guard {
            match datapath::endpoint_program_fds(&self.datapath.ebpf) {
                Ok(programs) => guard.set_programs(programs),
                Err(e) => warn!(error = %e, "handing the new programs to the quarantine guard failed"),
            }
        }
        // The flows' counts, which the old programs went on counting in
        // the old maps while the hooks were swapped.
        self.conntrack_gc();
        let after = self.datapath.slots.sizes();
        info!(
            interfaces = format!("{} -> {}", before.interfaces, after.interfaces),
            addresses = format!("{} -> {}", before.src, after.src),
            host_addresses = format!("{} -> {}", before.local, after.local),
            rules = format!("{} -> {}", before.rules, after.rules),
            hooks = hooks.len(),
            "maps grown for the policy"
        );
        Ok(())
    }
}
