use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use hostwall::api::types::{DirectionName, RuleAdd, RuleRemove, Scalar};
use serde_json::{Value, json};

#[derive(Clone, Copy, ValueEnum)]
pub enum Dir {
    Ingress,
    Egress,
}

#[derive(clap::Args)]
pub struct RuleArgs {
    /// The group (created when a rule is added to a new name).
    group: String,
    /// Which of the group's rule lists.
    #[arg(value_enum)]
    direction: Dir,
    /// tcp, udp, icmp, icmpv6, sctp, all, or a protocol number.
    #[arg(long)]
    proto: String,
    /// A port or a range N-M (tcp, udp, sctp).
    #[arg(long)]
    ports: Option<String>,
    #[arg(long)]
    icmp_type: Option<u8>,
    #[arg(long, requires = "icmp_type")]
    icmp_code: Option<u8>,
    /// group:NAME, cidr:CIDR, prefix-list:NAME or host.
    #[arg(long)]
    peer: String,
    #[arg(long)]
    description: Option<String>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Add a rule to a group.
    Add(RuleArgs),
    /// Remove a rule by id, or by its fields (revoking that peer).
    Remove(RemoveArgs),
}

#[derive(clap::Args)]
pub struct RemoveArgs {
    /// A rule id from `hostwall get policy`.
    #[arg(long, conflicts_with_all = ["group", "direction", "proto", "peer"])]
    id: Option<u64>,
    group: Option<String>,
    #[arg(value_enum)]
    direction: Option<Dir>,
    #[arg(long)]
    proto: Option<String>,
    #[arg(long)]
    ports: Option<String>,
    #[arg(long)]
    icmp_type: Option<u8>,
    #[arg(long, requires = "icmp_type")]
    icmp_code: Option<u8>,
    #[arg(long)]
    peer: Option<String>,
}

fn direction(d: Dir) -> DirectionName {
    match d {
        Dir::Ingress => DirectionName::Ingress,
        Dir::Egress => DirectionName::Egress,
    }
}

fn add_body(a: RuleArgs) -> Value {
    json!(RuleAdd {
        group: a.group,
        direction: direction(a.direction),
        proto: Scalar::Text(a.proto),
        ports: a.ports.map(Scalar::Text),
        icmp_type: a.icmp_type.map(|t| Scalar::Number(t.into())),
        icmp_code: a.icmp_code.map(|c| Scalar::Number(c.into())),
        peer: a.peer,
        description: a.description,
    })
}

pub fn run(ctx: &super::Ctx, cmd: Cmd) -> anyhow::Result<ExitCode> {
    let (method, body, what) = match cmd {
        Cmd::Add(a) => ("POST", add_body(a), "rule added"),
        Cmd::Remove(RemoveArgs { id: Some(id), .. }) => (
            "DELETE",
            json!(RuleRemove {
                id: Some(id),
                ..Default::default()
            }),
            "rule removed",
        ),
        Cmd::Remove(RemoveArgs {
            id: None,
            group: Some(group),
            direction: Some(dir),
            proto: Some(proto),
            ports,
            icmp_type,
            icmp_code,
            peer: Some(peer),
        }) => (
            "DELETE",
            json!(RuleRemove {
                id: None,
                group: Some(group),
                direction: Some(direction(dir)),
                proto: Some(Scalar::Text(proto)),
                ports: ports.map(Scalar::Text),
                icmp_type: icmp_type.map(|t| Scalar::Number(t.into())),
                icmp_code: icmp_code.map(|c| Scalar::Number(c.into())),
                peer: Some(peer),
            }),
            "rule removed",
        ),
        Cmd::Remove(_) => {
            return Err(super::Invalid(
                "name the rule: --id N, or GROUP DIRECTION --proto P --peer PEER [--ports ..]".into(),
            )
            .into());
        }
    };
    let v = ctx.change(method, "/v1/rules", &[], Some(body.to_string().as_bytes()))?;
    ctx.print(&v, |v| super::print_change(v, what, "it would change"));
    Ok(ExitCode::SUCCESS)
}
