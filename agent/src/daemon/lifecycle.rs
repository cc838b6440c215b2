//! Starting (fresh, after a restart or crash, or over an older pinned
//! layout) and uninstalling.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData};
use hostwall_common::{CT_FLIPPED, CT_ORIG_LOCAL, CtEntry, CtEntryV3, CtKey};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::rules::{Held, RuleRegistry};
use super::{Agent, Options};
use crate::compile::Compiled;
use crate::datapath::conntrack::{self, Table};
use crate::datapath::{Attachments, Datapath, HookKind, Layout, pinned_links, remove_all};
use crate::host;
use crate::policy::{self, Policy};

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn empty_policy() -> Policy {
    Policy {
        prefix_lists: BTreeMap::new(),
        groups: BTreeMap::new(),
        endpoints: Vec::new(),
        settings: Default::default(),
    }
}

/// Loads the datapath, adopting whatever an earlier agent left pinned, and
/// enforces the control file. Returns the agent and the older layouts to
/// remove once it serves.
pub fn start(opts: Options) -> anyhow::Result<(Agent, Vec<Layout>)> {
    let bytes = std::fs::read(&opts.config).with_context(|| format!("reading {}", opts.config.display()))?;
    let mut policy = policy::parse_bytes(&bytes, &opts.config.display().to_string())?;
    // With --write-back none, what the API changed since the control file
    // was last applied (as long as the file is still that one).
    let mut matches_file = true;
    if opts.write_back == super::WriteBack::None
        && let Some((path, saved)) = super::state::load(&opts.state_dir, &sha256_hex(&bytes))
    {
        policy = policy::parse_bytes(&saved, &path.display().to_string())?;
        matches_file = false;
        info!(state = %path.display(), "enforcing the policy as changed through the API, not the control file");
    }
    host::ensure_bpffs(&opts.bpffs).with_context(|| format!("preparing bpffs directory {}", opts.bpffs.display()))?;

    let layout = Layout::new(&opts.bpffs);
    let older = layout.older();
    let restarting = layout.exists();
    // Maps that are allocated whole are sized for the policy, with room to
    // double; pinned maps keep their sizes, and grow when a policy needs.
    let sizes = opts
        .map_sizes
        .for_needs(&crate::datapath::Needs::estimate(&policy, &opts.node));
    let mut datapath = Datapath::load(&layout, &sizes).context("loading the datapath")?;
    if restarting {
        info!(
            layout = layout.version(),
            "adopting the pinned datapath of an earlier agent"
        );
    } else if let Some(old) = older.first() {
        info!(
            from = old.version(),
            to = layout.version(),
            "upgrading the pinned layout"
        );
        migrate(old, &mut datapath);
    }
    let registry = read_rule_keys(&mut datapath);
    let generation = datapath.slots.policy_generation();
    let attachments = Attachments::new(&layout.links()).context("creating the links directory")?;
    let guard = match attachments.kind() {
        HookKind::Tcx => {
            let programs =
                crate::datapath::endpoint_program_fds(&datapath.ebpf).context("the endpoint programs' fds")?;
            Some(super::guard::Guard::start(programs).context("starting the quarantine guard")?)
        }
        HookKind::Clsact => None,
    };

    let mut agent = Agent {
        opts,
        layout: layout.clone(),
        datapath,
        attachments,
        policy: empty_policy(),
        compiled: Compiled::default(),
        registry,
        host_addresses: host::addresses().context("reading the host's addresses")?,
        quarantined: BTreeMap::new(),
        macs: Default::default(),
        applied_at: SystemTime::now(),
        file_hash: Some(sha256_hex(&bytes)),
        enforced_file_hash: Some(sha256_hex(&bytes)),
        matches_file,
        last_error: None,
        last_error_at: None,
        started_at: SystemTime::now(),
        // Counted on from where an earlier agent left the pinned maps.
        generation,
        previous: None,
        adopt_from: older.first().map(|l| l.links()),
        guard,
    };

    let uplink_ifindex = match &agent.opts.uplink {
        Some(uplink) => host::ifindex(uplink).with_context(|| format!("uplink interface {uplink} does not exist"))?,
        None => 0,
    };
    agent
        .datapath
        .set_uplink(uplink_ifindex)
        .context("writing the uplink's ifindex into HW_UPLINK")?;
    if let Some(uplink) = agent.opts.uplink.clone() {
        let ifindex = uplink_ifindex;
        let old = agent.adopt_from.clone();
        agent
            .attachments
            .attach_uplink(&mut agent.datapath.ebpf, &uplink, ifindex, old.as_deref())?;
        info!(interface = %uplink, "uplink filter attached");
    }
    if restarting {
        // MACs stay fixed across a restart: what the earlier agent enforced
        // is kept, not read again from the containers.
        let adopted = agent.macs.adopt(&super::macs::pinned(&layout.maps()));
        if adopted > 0 {
            info!(adopted, "kept the endpoint MACs the earlier agent fixed");
        }
    }
    agent.apply(policy, "startup", None)?;
    // Nothing to roll back to: the agent enforced nothing before.
    agent.previous = None;

    // Links pinned by an earlier agent for interfaces that are gone or no
    // longer endpoints.
    let attached: BTreeSet<u32> = agent.attachments.attached().map(|(i, _)| i).collect();
    for (name, ifindex) in pinned_links(&layout.links()) {
        if !attached.contains(&ifindex) {
            info!(link = %name, "removing a stale attachment");
            agent.attachments.remove_pin(&name);
        }
    }
    agent.datapath.pin_programs(&layout)?;
    Ok((agent, older))
}

/// Removes the layouts an upgrade replaced (their links were taken over).
pub fn finish_upgrade(agent: &mut Agent, older: &[Layout]) {
    if let Some(newest) = older.first() {
        carry_over_after_takeover(newest, &mut agent.datapath);
    }
    for old in older {
        remove_all(&old.links(), &[]);
        match old.remove() {
            Ok(()) => info!(layout = old.version(), "removed the older pinned layout"),
            Err(e) => warn!(layout = old.version(), error = %e, "removing the older pinned layout failed"),
        }
    }
    agent.adopt_from = None;
}

/// The rules' slots and ids an earlier agent left in `HW_RULE_KEYS` and
/// `HW_RULE_IDS`, and the slots tracked flows name.
fn read_rule_keys(datapath: &mut Datapath) -> RuleRegistry {
    let max = crate::datapath::sizes::CEILING - 1;
    let array = |name: &str| {
        let map = datapath.ebpf.map(name)?;
        let a = Array::<&MapData, u64>::try_from(map).ok()?;
        Some((0..a.len()).map(|i| a.get(&i, 0).unwrap_or(0)).collect::<Vec<u64>>())
    };
    let Some(keys) = array("HW_RULE_KEYS") else {
        return RuleRegistry::new(max);
    };
    let ids = array("HW_RULE_IDS").unwrap_or_default();
    let id = |slot: u32| ids.get(slot as usize).copied().unwrap_or(0);
    let held: Vec<Held> = (1..keys.len() as u32)
        .filter(|s| keys[*s as usize] != 0)
        .map(|slot| Held {
            slot,
            key: keys[slot as usize],
            id: id(slot),
        })
        .collect();
    let referenced = conntrack::rule_slots(&datapath.ebpf);
    RuleRegistry::from_held(max, held, id(0), &referenced)
}

fn open_pinned(dir: &Path, name: &str) -> Option<Map> {
    let data = MapData::from_pin(dir.join(name)).ok()?;
    Map::from_map_data(data).ok()
}

/// Carries tracked flows and rule ids over from an older layout, where
/// their format is unchanged. Rule counters follow once the old programs are
/// replaced (`finish_upgrade`), so that nothing they count in between is
/// lost.
fn migrate(old: &Layout, datapath: &mut Datapath) {
    let dir = old.maps();
    let mut flows = 0usize;
    for old_flow in old_flows(old) {
        if conntrack::insert(&mut datapath.ebpf, &old_flow) {
            flows += 1;
        }
    }
    for name in ["HW_RULE_KEYS", "HW_RULE_IDS"] {
        let (Some(from), Some(to)) = (open_pinned(&dir, name), datapath.ebpf.map_mut(name)) else {
            continue;
        };
        let (Ok(from), Ok(mut to)) = (
            Array::<MapData, u64>::try_from(from),
            Array::<&mut MapData, u64>::try_from(to),
        ) else {
            continue;
        };
        for id in 0..from.len().min(to.len()) {
            if let Ok(v) = from.get(&id, 0) {
                let _ = to.set(id, &v, 0);
            }
        }
    }
    info!(flows, "carried tracked flows over from the older layout");
}

/// Once every link runs the new programs, the old maps are final: their
/// rule counters are added to the new ones, and flows the old programs
/// began after `migrate` are copied.
fn carry_over_after_takeover(old: &Layout, datapath: &mut Datapath) {
    let dir = old.maps();
    if let Some(from) = open_pinned(&dir, "HW_RULE_STATS") {
        crate::datapath::stats::add_rule_counters(&from, &mut datapath.ebpf);
    }
    for old_flow in old_flows(old) {
        if !conntrack::contains(&datapath.ebpf, old_flow.table, &old_flow.key) {
            conntrack::insert(&mut datapath.ebpf, &old_flow);
        }
    }
}

/// The tracked flows of an older layout's maps, in this layout's form.
/// Layout 1 kept every flow in `HW_CONNTRACK` under the tuple of the packet
/// that made it: each is stored under its canonical key, in the table it
/// belongs to now (a flow its sender opened at a local endpoint's
/// interface goes on counting against that endpoint, any other against the
/// inbound share of its receiver). Later layouts keep their tables; entries
/// of layouts before 4 have learned no paths. The
/// checks the entries are used with (a SYN is never a reply, ICMP errors
/// only from a flow's parties) are made at lookup time, so entries made
/// under older rules get them too.
fn old_flows(old: &Layout) -> Vec<conntrack::Flow> {
    let dir = old.maps();
    let mut out = Vec::new();
    for t in Table::ALL {
        let Some(from) = open_pinned(&dir, t.map()) else {
            continue;
        };
        // Layouts before 4 kept entries without learned paths.
        let entries: Option<Vec<(CtKey, CtEntry)>> = if old.version() >= 4 {
            HashMap::<MapData, CtKey, CtEntry>::try_from(from)
                .ok()
                .map(|m| m.iter().filter_map(Result::ok).collect())
        } else {
            HashMap::<MapData, CtKey, CtEntryV3>::try_from(from)
                .ok()
                .map(|m| m.iter().filter_map(Result::ok).map(|(k, e)| (k, e.into())).collect())
        };
        let Some(entries) = entries else {
            warn!(
                map = t.map(),
                "tracked flows of the older layout have another format; flows are judged again"
            );
            continue;
        };
        for (key, mut entry) in entries {
            if old.version() >= 2 {
                out.push(conntrack::Flow { table: t, key, entry });
                continue;
            }
            let (key, flipped) = key.canonical();
            if flipped {
                entry.flags |= CT_FLIPPED;
            }
            let table = if entry.flags & CT_ORIG_LOCAL != 0 {
                Table::Opened
            } else {
                Table::Inbound
            };
            out.push(conntrack::Flow { table, key, entry });
        }
    }
    out
}

/// What [`uninstall`] removed.
pub struct Uninstalled {
    pub layouts: usize,
    /// cls_bpf filters (kernels without tcx).
    pub filters: usize,
}

impl Uninstalled {
    /// On kernels without tcx the programs sit in tc filters, which only a
    /// process in the agent's network namespace sees; pins live on bpffs,
    /// which any namespace sees. Removing a layout but no filter there means
    /// the filters may still be enforcing in another namespace (or that the
    /// agent had no endpoint attached).
    pub fn filters_maybe_elsewhere(&self) -> bool {
        HookKind::current() == HookKind::Clsact && self.layouts > 0 && self.filters == 0
    }

    /// One line for the CLI.
    pub fn summary(&self, bpffs: &Path) -> String {
        let mut s = format!("removed {} pinned layout(s) under {}", self.layouts, bpffs.display());
        if HookKind::current() == HookKind::Clsact {
            s.push_str(&format!(" and {} tc filter(s)", self.filters));
        }
        if self.filters_maybe_elsewhere() {
            s.push_str(
                "; no hostwall tc filter was found in this network namespace: on kernels without tcx \
                 they stay on the interfaces of the namespace the agent ran in, so run `hostwall uninstall` \
                 there (e.g. `ip netns exec NAME hostwall uninstall`)",
            );
        } else {
            s.push_str("; hostwall no longer filters");
        }
        s
    }
}

/// An uninstall that found nothing to remove (a mistyped `--bpffs`, say).
#[derive(Debug, thiserror::Error)]
pub enum NothingToUninstall {
    #[error("{0} does not exist: nothing was removed (is --bpffs the agent's?)")]
    Missing(std::path::PathBuf),
    #[error(
        "nothing of hostwall's is under {0}: no pinned layout (v<N>/), and no hostwall tc filter in this network namespace (is --bpffs the agent's?)"
    )]
    Nothing(std::path::PathBuf),
}

/// Removes every attachment and pin hostwall has under `bpffs` (and its tc
/// filters in this network namespace).
pub fn uninstall(bpffs: &Path) -> anyhow::Result<Uninstalled> {
    if !bpffs.exists() {
        return Err(NothingToUninstall::Missing(bpffs.to_path_buf()).into());
    }
    let interfaces: Vec<u32> = host::interfaces().into_iter().map(|(i, _)| i).collect();
    let layouts = Layout::all(bpffs);
    let mut filters = 0;
    for l in &layouts {
        filters += remove_all(&l.links(), &interfaces);
        l.remove().with_context(|| format!("removing {}", l.dir().display()))?;
    }
    if layouts.is_empty() {
        // Kernels without tcx keep filters without pins.
        filters += remove_all(Path::new("/nonexistent"), &interfaces);
    }
    if layouts.is_empty() && filters == 0 {
        return Err(NothingToUninstall::Nothing(bpffs.to_path_buf()).into());
    }
    Ok(Uninstalled {
        layouts: layouts.len(),
        filters,
    })
}
