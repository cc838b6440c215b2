//! `hostwall agent`: applies the control file and keeps it enforced while
//! interfaces and host addresses change.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::compile::{self, Compiled, HostView};
use crate::datapath::{Attachments, Datapath};
use crate::host;
use crate::policy::{self, Policy};

pub struct Options {
    pub config: PathBuf,
    pub uplink: Option<String>,
    pub node: String,
    pub bpffs: PathBuf,
}

/// How often interfaces and host addresses are checked for changes.
const RECONCILE_EVERY: Duration = Duration::from_millis(250);

struct Agent {
    opts: Options,
    datapath: Datapath,
    attachments: Attachments,
    policy: Policy,
    compiled: Compiled,
    host_addresses: BTreeSet<IpAddr>,
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let policy = policy::load_file(&opts.config)?;
    let mut datapath = Datapath::load().context("loading the datapath")?;
    host::ensure_bpffs(&opts.bpffs).with_context(|| format!("preparing bpffs directory {}", opts.bpffs.display()))?;
    datapath.pin_maps(&opts.bpffs)?;

    let mut attachments = Attachments::default();
    if let Some(uplink) = &opts.uplink {
        let ifindex = host::ifindex(uplink).with_context(|| format!("uplink interface {uplink} does not exist"))?;
        attachments.attach_uplink(&mut datapath.ebpf, uplink, ifindex)?;
        info!(interface = %uplink, "uplink filter attached");
    }

    let mut agent = Agent {
        opts,
        datapath,
        attachments,
        policy,
        compiled: Compiled::default(),
        host_addresses: BTreeSet::new(),
    };
    let result = agent.serve().await;
    agent.shutdown();
    result
}

impl Agent {
    async fn serve(&mut self) -> anyhow::Result<()> {
        self.host_addresses = host::addresses().context("reading the host's addresses")?;
        self.enforce().context("applying the policy")?;
        info!(
            config = %self.opts.config.display(),
            endpoints = self.compiled.endpoints.len(),
            attached = self.attachments.attached().count(),
            rules = self.compiled.rules.len(),
            policy_entries = self.compiled.policy.len(),
            "policy applied"
        );

        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut tick = tokio::time::interval(RECONCILE_EVERY);
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: stopping"); return Ok(()); }
                _ = int.recv() => { info!("SIGINT: stopping"); return Ok(()); }
                _ = hup.recv() => self.reload(),
                _ = tick.tick() => {
                    if let Err(e) = self.reconcile() {
                        error!(error = format!("{e:#}"), "reconciling failed; the last good policy stays enforced");
                    }
                }
            }
        }
    }

    /// Re-reads the control file; an invalid file changes nothing.
    fn reload(&mut self) {
        match policy::load_file(&self.opts.config) {
            Ok(p) => {
                let old = std::mem::replace(&mut self.policy, p);
                match self.enforce() {
                    Ok(()) => info!(rules = self.compiled.rules.len(), "policy applied"),
                    Err(e) => {
                        self.policy = old;
                        error!(
                            error = format!("{e:#}"),
                            "policy refused; the last good policy stays enforced"
                        );
                    }
                }
            }
            Err(e) => error!(
                error = format!("{:#}", anyhow::Error::new(e)),
                "policy refused; the last good policy stays enforced"
            ),
        }
    }

    /// Follows interface and host address changes.
    fn reconcile(&mut self) -> anyhow::Result<()> {
        let addresses = host::addresses()?;
        let interfaces_changed = self
            .compiled
            .endpoints
            .iter()
            .any(|e| host::ifindex(&e.interface) != e.ifindex);
        if addresses != self.host_addresses || interfaces_changed {
            self.host_addresses = addresses;
            self.enforce()?;
            info!(
                attached = self.attachments.attached().count(),
                "host changed; policy re-applied"
            );
        }
        Ok(())
    }

    /// Compiles the policy for the host as it is now, writes it to the
    /// maps, and attaches to every endpoint interface that exists.
    fn enforce(&mut self) -> anyhow::Result<()> {
        let addrs: Vec<IpAddr> = self.host_addresses.iter().copied().collect();
        let view = HostView {
            node: &self.opts.node,
            host_addresses: &addrs,
            ifindex: &host::ifindex,
        };
        let compiled = compile::compile(&self.policy, &view)?;
        self.datapath.slots.apply(&compiled)?;

        // Interfaces that vanished or are no longer endpoints.
        let wanted: BTreeSet<u32> = compiled.endpoints.iter().filter_map(|e| e.ifindex).collect();
        let stale: Vec<u32> = self
            .attachments
            .attached()
            .map(|(i, _)| i)
            .filter(|i| !wanted.contains(i))
            .collect();
        for ifindex in stale {
            self.attachments.detach_endpoint(&mut self.datapath.ebpf, ifindex);
        }
        for ep in &compiled.endpoints {
            match ep.ifindex {
                Some(ifindex) => {
                    if !self.attachments.is_attached(ifindex) {
                        self.attachments
                            .attach_endpoint(&mut self.datapath.ebpf, &ep.interface, ifindex)?;
                        info!(endpoint = %ep.name, interface = %ep.interface, ifindex, "attached");
                    }
                }
                None => {
                    warn!(endpoint = %ep.name, interface = %ep.interface, "interface not present; will attach when it appears")
                }
            }
        }
        self.compiled = compiled;
        Ok(())
    }

    fn shutdown(&mut self) {
        self.attachments.detach_all(&mut self.datapath.ebpf);
        for name in crate::datapath::PINNED_MAPS {
            let _ = std::fs::remove_file(self.opts.bpffs.join(name));
        }
        info!("detached; enforcement removed");
    }
}
