use std::process::ExitCode;

use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand)]
pub enum Cmd {
    /// The applied policy, with rule ids.
    Policy,
    /// The API's JSON schema, as the running agent serves it.
    Schema,
}

pub fn run(ctx: &super::Ctx, cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Schema => {
            let v = ctx.call("GET", "/v1/schema", &[], None)?;
            println!("{}", serde_json::to_string_pretty(&v).expect("json values serialize"));
        }
        Cmd::Policy => {
            let v = ctx.call("GET", "/v1/policy", &[], None)?;
            ctx.print(&v, |v| {
                println!("generation {}", v["generation"]);
                for (name, g) in v["groups"].as_object().into_iter().flatten() {
                    println!("group {name}");
                    for dir in ["ingress", "egress"] {
                        for r in g[dir].as_array().into_iter().flatten() {
                            println!(
                                "  [{}] {dir:<7} {}",
                                r["id"].as_u64().unwrap_or(0),
                                r["rule"].as_str().unwrap_or("")
                            );
                        }
                    }
                }
                println!("endpoints");
                for e in v["endpoints"].as_array().into_iter().flatten() {
                    let list = |k: &str| {
                        e[k].as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    };
                    println!(
                        "  {:<20} {:<16} {:<40} groups: {}{}",
                        e["name"].as_str().unwrap_or(""),
                        e["interface"].as_str().unwrap_or("-"),
                        list("addresses"),
                        list("groups"),
                        if e["local"] == Value::Bool(true) {
                            ""
                        } else {
                            "  (remote)"
                        }
                    );
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
