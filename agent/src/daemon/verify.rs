//! What the agent enforces is checked against the kernel every reconcile
//! tick: a pin someone removed is pinned again, and programs someone took
//! off an endpoint's or quarantined interface (a removed link pin ends a
//! tcx link; a filter or the clsact qdisc may be deleted) or off the uplink
//! are attached again, each logged. Status reports what the kernel says.

use tracing::{debug, error, info, warn};

use super::Agent;

impl Agent {
    pub fn verify_enforcement(&mut self) {
        for path in self.datapath.restore_pins(&self.layout) {
            warn!(path = %path.display(), "a pin of hostwall's was removed; pinned again");
        }
        let attached: Vec<(u32, String)> = self
            .attachments
            .attached()
            .map(|(ifindex, name)| (ifindex, name.to_string()))
            .collect();
        for (ifindex, interface) in attached {
            let missing = match self.attachments.missing_hooks(&self.datapath.ebpf, ifindex) {
                Ok(missing) if missing.is_empty() => continue,
                Ok(missing) => missing,
                // Most likely the interface is going away; the next
                // reconcile forgets it.
                Err(e) => {
                    debug!(interface, error = %e, "checking an interface's programs failed");
                    continue;
                }
            };
            warn!(
                interface,
                ifindex,
                hooks = %missing.join(", "),
                "hostwall's programs were removed from an interface; attaching them again"
            );
            match self
                .attachments
                .attach_endpoint(&mut self.datapath.ebpf, &interface, ifindex)
            {
                Ok(()) => info!(interface, "programs attached again"),
                Err(e) => {
                    let message = format!(
                        "attaching the programs to {interface} again: {:#}",
                        anyhow::Error::new(e)
                    );
                    error!(error = %message, "an interface is not enforced");
                    self.record_error(message);
                }
            }
        }
        if let Some((interface, ifindex)) = self.attachments.uplink_missing() {
            warn!(interface, "the uplink's XDP link was removed; attaching it again");
            match self
                .attachments
                .attach_uplink(&mut self.datapath.ebpf, &interface, ifindex, None)
            {
                Ok(()) => info!(interface, "uplink filter attached again"),
                Err(e) => {
                    error!(interface, error = %format!("{:#}", anyhow::Error::new(e)), "attaching the uplink filter again failed")
                }
            }
        }
    }
}
