use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

#[derive(clap::Args)]
pub struct Args {
    /// An endpoint name, an address, or host.
    #[arg(long)]
    from: String,
    /// An endpoint name, an address, or host.
    #[arg(long)]
    to: String,
    /// PROTO[/PORT] or icmp[/TYPE[/CODE]], e.g. tcp/443, udp/53, icmp/8.
    flow: String,
    /// Explain against this file instead of the running agent's policy.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// The node whose endpoints are local (with --policy; default: the
    /// hostname).
    #[arg(long)]
    node: Option<String>,
}

/// Exits 0 when the flow is allowed, 1 when it is denied.
pub fn run(ctx: &super::Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let v: Value = match &args.policy {
        Some(file) => {
            let policy = hostwall::policy::load_file(file)?;
            let node = args.node.unwrap_or_else(hostwall::host::hostname);
            let host: Vec<_> = hostwall::host::addresses()?.into_iter().collect();
            hostwall::explain::explain(&policy, &node, &host, &args.from, &args.to, &args.flow)
                .map_err(super::Invalid)?
        }
        None => ctx.call(
            "GET",
            "/v1/explain",
            &[
                ("from", args.from.clone()),
                ("to", args.to.clone()),
                ("flow", args.flow.clone()),
            ],
            None,
        )?,
    };
    ctx.print(&v, hostwall::explain::print);
    Ok(if v["allowed"] == Value::Bool(true) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::exit::NO)
    })
}
