use std::process::ExitCode;

use clap::Subcommand;

#[derive(clap::Args)]
pub struct Filter {
    /// An address or CIDR at either end.
    #[arg(long)]
    addr: Option<String>,
    /// A port at either end.
    #[arg(long)]
    port: Option<u16>,
    /// tcp, udp, icmp, icmpv6, sctp or a number.
    #[arg(long)]
    proto: Option<String>,
    /// An endpoint's name: flows of any of its addresses.
    #[arg(long)]
    endpoint: Option<String>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// List tracked flows.
    List(Filter),
    /// End tracked flows (all, or those matching the filters).
    Flush(Filter),
}

fn query(f: &Filter) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(a) = &f.addr {
        q.push(("addr", a.clone()));
    }
    if let Some(p) = f.port {
        q.push(("port", p.to_string()));
    }
    if let Some(p) = &f.proto {
        q.push(("proto", p.clone()));
    }
    if let Some(e) = &f.endpoint {
        q.push(("endpoint", e.clone()));
    }
    q
}

pub fn run(ctx: &super::Ctx, cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::List(f) => {
            let v = ctx.call("GET", "/v1/conntrack", &query(&f), None)?;
            ctx.print(&v, |v| {
                println!(
                    "{:<6} {:<42} {:<42} {:<6} {:<8} {:>6}",
                    "PROTO", "SOURCE", "DESTINATION", "REPLY", "TABLE", "IDLE"
                );
                for fl in v["flows"].as_array().into_iter().flatten() {
                    let src = format!("{}:{}", fl["src"].as_str().unwrap_or(""), fl["sport"]);
                    let dst = format!("{}:{}", fl["dst"].as_str().unwrap_or(""), fl["dport"]);
                    // Mid-stream entries are marked: their allowed side has
                    // not been seen opening them.
                    let table = format!(
                        "{}{}",
                        fl["table"].as_str().unwrap_or(""),
                        if fl["midstream"].as_bool() == Some(true) {
                            "*"
                        } else {
                            ""
                        }
                    );
                    println!(
                        "{:<6} {:<42} {:<42} {:<6} {:<8} {:>5}s",
                        fl["proto"], src, dst, fl["seen_reply"], table, fl["idle_seconds"]
                    );
                }
            });
        }
        Cmd::Flush(f) => {
            let v = ctx.change("DELETE", "/v1/conntrack", &query(&f), None)?;
            ctx.print(&v, |v| {
                if v["dry_run"] == serde_json::Value::Bool(true) {
                    println!("dry run, nothing changed; {} flows would be flushed", v["would_flush"]);
                } else {
                    println!("flushed {} flows", v["flushed"]);
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
