use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

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
    id: Option<u32>,
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

fn body(a: &RuleArgs) -> Value {
    let mut m = Map::new();
    m.insert("group".into(), json!(a.group));
    m.insert(
        "direction".into(),
        json!(match a.direction {
            Dir::Ingress => "ingress",
            Dir::Egress => "egress",
        }),
    );
    m.insert("proto".into(), json!(a.proto));
    m.insert("peer".into(), json!(a.peer));
    if let Some(p) = &a.ports {
        m.insert("ports".into(), json!(p));
    }
    if let Some(t) = a.icmp_type {
        m.insert("icmp_type".into(), json!(t));
    }
    if let Some(c) = a.icmp_code {
        m.insert("icmp_code".into(), json!(c));
    }
    if let Some(d) = &a.description {
        m.insert("description".into(), json!(d));
    }
    Value::Object(m)
}

pub fn run(ctx: &super::Ctx, cmd: Cmd) -> anyhow::Result<ExitCode> {
    let (method, body, what) = match cmd {
        Cmd::Add(a) => ("POST", body(&a), "rule added"),
        Cmd::Remove(RemoveArgs { id: Some(id), .. }) => ("DELETE", json!({ "id": id }), "rule removed"),
        Cmd::Remove(RemoveArgs {
            id: None,
            group: Some(group),
            direction: Some(direction),
            proto: Some(proto),
            ports,
            icmp_type,
            icmp_code,
            peer: Some(peer),
        }) => {
            let a = RuleArgs {
                group,
                direction,
                proto,
                ports,
                icmp_type,
                icmp_code,
                peer,
                description: None,
            };
            ("DELETE", body(&a), "rule removed")
        }
        Cmd::Remove(_) => anyhow::bail!("name the rule: --id N, or GROUP DIRECTION --proto P --peer PEER [--ports ..]"),
    };
    let v = ctx.call(method, "/v1/rules", &[], Some(body.to_string().as_bytes()))?;
    ctx.print(&v, |v| {
        println!("{what} (generation {})", v["generation"]);
        super::print_changes(&v["changes"]);
    });
    Ok(ExitCode::SUCCESS)
}
