//! The quarantine guard: a thread of its own that puts the endpoint
//! programs on a new interface matching `settings.quarantine` as soon as it
//! appears, whatever the agent's task is doing (compiling a large policy,
//! say). Until the agent has compiled the interface in as quarantined, the
//! programs find no entry for it and drop all its traffic (`no-endpoint`);
//! the agent then takes the guard's links over and pins them (they run the
//! programs it would attach itself). Links the agent has not taken are not
//! pinned: they end with the agent. tcx only (Linux 6.6 and later); with clsact
//! the agent's task quarantines alone.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aya::programs::ProgramFd;
use tracing::{info, warn};

use crate::datapath::{TcxHook, tcx_attach_first};
use crate::policy::Quarantine;

/// How often the guard looks even without a link event (and lets go of
/// interfaces the agent has taken over).
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// What the agent tells the guard after each policy it enforces.
struct Shared {
    pattern: Option<Quarantine>,
    /// Interfaces of local endpoints: never the guard's.
    endpoint_interfaces: BTreeSet<String>,
    /// Interfaces the agent's own programs are attached to.
    attached: BTreeSet<u32>,
    /// Interfaces the guard holds: ifindex -> (name, its tc ingress and tc
    /// egress links).
    held: BTreeMap<u32, (String, Vec<OwnedFd>)>,
    /// The endpoint programs it attaches (tc ingress, tc egress).
    programs: [(ProgramFd, TcxHook); 2],
}

pub struct Guard {
    shared: Arc<Mutex<Shared>>,
}

impl Guard {
    /// Starts the guard's thread with the endpoint programs (tc ingress,
    /// tc egress).
    pub fn start(programs: [(ProgramFd, TcxHook); 2]) -> io::Result<Guard> {
        let socket = crate::host::route_socket(libc::SOCK_CLOEXEC, libc::RTMGRP_LINK as u32)?;
        let shared = Arc::new(Mutex::new(Shared {
            pattern: None,
            endpoint_interfaces: BTreeSet::new(),
            attached: BTreeSet::new(),
            held: BTreeMap::new(),
            programs,
        }));
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("quarantine-guard".into())
            .spawn(move || run(&socket, &theirs))?;
        Ok(Guard { shared })
    }

    /// The programs to attach from now on (the agent's, after its maps
    /// grew).
    pub fn set_programs(&self, programs: [(ProgramFd, TcxHook); 2]) {
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.programs = programs;
    }

    /// What the agent enforces now.
    pub fn update(&self, pattern: Option<&Quarantine>, endpoint_interfaces: BTreeSet<String>, attached: BTreeSet<u32>) {
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.pattern = pattern.cloned();
        s.endpoint_interfaces = endpoint_interfaces;
        s.attached = attached;
    }

    /// The guard's links on `interface` (tc ingress, tc egress), handed
    /// over to the agent, which pins them: they run the same programs it
    /// would attach (tcx refuses a program twice on one hook), so taking
    /// them over leaves no gap.
    pub fn take(&self, ifindex: u32, interface: &str) -> Option<Vec<OwnedFd>> {
        let mut s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        match s.held.get(&ifindex) {
            Some((name, _)) if name == interface => {
                // The agent's from now on: not to be attached to again.
                s.attached.insert(ifindex);
                s.held.remove(&ifindex).map(|(_, links)| links)
            }
            _ => None,
        }
    }
}

/// Waits up to `LOOK_EVERY` for link events and drains them.
fn wait(socket: &OwnedFd) {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, LOOK_EVERY.as_millis() as i32) };
    if ready <= 0 {
        if ready < 0 {
            std::thread::sleep(LOOK_EVERY);
        }
        return;
    }
    let mut buf = [0u8; 16384];
    // SAFETY: reads into a buffer of its own length; MSG_DONTWAIT returns
    // once the socket is empty (ENOBUFS, events lost, is a change too).
    while unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    } > 0
    {}
}

fn run(socket: &OwnedFd, shared: &Mutex<Shared>) {
    // Interfaces it could not attach to (gone, say), not tried again.
    let mut failed: BTreeSet<u32> = BTreeSet::new();
    loop {
        let interfaces = crate::host::interfaces();
        {
            let mut guard = shared.lock().unwrap_or_else(|p| p.into_inner());
            let Shared {
                pattern,
                endpoint_interfaces,
                attached,
                held,
                programs,
            } = &mut *guard;
            let wanted = |ifindex: u32, name: &str| {
                pattern.as_ref().is_some_and(|q| q.matches(name))
                    && !endpoint_interfaces.contains(name)
                    && !attached.contains(&ifindex)
            };
            held.retain(|ifindex, (name, _)| {
                let keep = interfaces.iter().any(|(i, n)| i == ifindex && n == name) && wanted(*ifindex, name);
                if !keep {
                    tracing::debug!(interface = %name, "quarantine guard: the agent holds it now");
                }
                keep
            });
            failed.retain(|ifindex| interfaces.iter().any(|(i, _)| i == ifindex));
            for (ifindex, name) in &interfaces {
                if !wanted(*ifindex, name) || held.contains_key(ifindex) || failed.contains(ifindex) {
                    continue;
                }
                let links: io::Result<Vec<OwnedFd>> = programs
                    .iter()
                    .map(|(prog, hook)| tcx_attach_first(prog.as_fd(), *ifindex, *hook))
                    .collect();
                match links {
                    Ok(links) => {
                        info!(interface = %name, ifindex, "quarantined as it appeared, ahead of the policy");
                        held.insert(*ifindex, (name.clone(), links));
                    }
                    Err(e) => {
                        warn!(interface = %name, ifindex, error = %e, "quarantine guard: attaching failed");
                        failed.insert(*ifindex);
                    }
                }
            }
        }
        wait(socket);
    }
}
