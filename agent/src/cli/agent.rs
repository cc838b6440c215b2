use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use hostwall::daemon::{self, Options};

#[derive(clap::Args)]
pub struct Args {
    /// The control file.
    #[arg(long, required_unless_present = "cleanup")]
    config: Option<PathBuf>,
    /// Interface facing other hosts; gets the XDP early-drop filter.
    #[arg(long)]
    uplink: Option<String>,
    /// This host's node name (default: the hostname).
    #[arg(long)]
    node: Option<String>,
    /// Directory on a bpffs for pinned programs, links and maps (mounted
    /// if needed).
    #[arg(long, default_value = super::DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// A group whose members may use the control API besides root.
    #[arg(long)]
    admin_group: Option<String>,
    /// Kernel memory all of hostwall's maps may take together (both policy
    /// slots full, conntrack included): maps grow as policies need, and a
    /// policy that needs more than this is refused. Bytes, or with K, M, G
    /// (KiB, MiB, GiB).
    #[arg(long, default_value = "512MiB", value_parser = hostwall::datapath::memory::parse_size)]
    max_map_memory: u64,
    /// Overrides the policy tries' capacity (rule entries; by default a
    /// ceiling that costs nothing until used). Pinned maps keep the
    /// capacity they were created with.
    #[arg(long, default_value_t = hostwall_common::MAX_POLICY_ENTRIES, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    policy_entries: u32,
    /// Overrides each peer map's capacity (prefixes and addresses per
    /// family).
    #[arg(long, default_value_t = hostwall_common::MAX_PEER_ENTRIES, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    peer_entries: u32,
    /// Largest control API request, head and body together (`hostwall
    /// apply` sends the whole file): bytes, or with K, M, G.
    #[arg(long, default_value = "64MiB", value_parser = hostwall::datapath::memory::parse_size)]
    max_request_bytes: u64,
    /// Where a change through the API is saved: `file` writes it back to
    /// the control file; `none` leaves the control file alone (managed
    /// elsewhere) and keeps the change under --state-dir, until the
    /// control file itself changes.
    #[arg(long, value_enum, default_value_t = daemon::WriteBack::File)]
    write_back: daemon::WriteBack,
    /// The agent's own state (with --write-back none: the policy as
    /// changed through the API).
    #[arg(long, default_value = "/var/lib/hostwall")]
    state_dir: PathBuf,
    /// Detach and remove everything hostwall pinned, then exit.
    #[arg(long)]
    cleanup: bool,
}

fn group_id(name: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let c = std::ffi::CString::new(name)?;
    let gr = unsafe { libc::getgrnam(c.as_ptr()) };
    if gr.is_null() {
        anyhow::bail!("--admin-group: no group named {name}");
    }
    Ok(unsafe { (*gr).gr_gid })
}

pub fn run(args: Args, ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    if args.cleanup {
        let removed = daemon::lifecycle::uninstall(&args.bpffs)?;
        println!("{}", removed.summary(&args.bpffs));
        return Ok(ExitCode::SUCCESS);
    }
    let opts = Options {
        config: args.config.context("--config is required")?,
        uplink: args.uplink,
        node: args.node.unwrap_or_else(hostwall::host::hostname),
        bpffs: args.bpffs,
        socket: ctx.socket().to_path_buf(),
        admin_group: args.admin_group.as_deref().map(group_id).transpose()?,
        map_sizes: hostwall::datapath::MapSizes {
            policy: args.policy_entries,
            peer: args.peer_entries,
            max_memory: args.max_map_memory,
            ..Default::default()
        },
        max_request_bytes: usize::try_from(args.max_request_bytes).context("--max-request-bytes")?,
        write_back: args.write_back,
        state_dir: args.state_dir,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(daemon::run(opts))?;
    Ok(ExitCode::SUCCESS)
}
