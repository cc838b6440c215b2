use std::process::ExitCode;

use clap::Subcommand;
use hostwall::api::types::EndpointAdd;
use serde_json::json;

#[derive(Subcommand)]
pub enum Cmd {
    /// Add an endpoint (or replace the one of that name).
    Add {
        name: String,
        /// The host-side interface of its veth pair.
        #[arg(long)]
        interface: Option<String>,
        /// The MAC its frames must carry (default: read from the
        /// container's side of the veth pair when the interface appears).
        #[arg(long)]
        mac: Option<String>,
        #[arg(long = "address", num_args = 1..)]
        addresses: Vec<String>,
        #[arg(long = "group", num_args = 1..)]
        groups: Vec<String>,
        /// The node it runs on (default: wherever the file is read).
        #[arg(long)]
        node: Option<String>,
    },
    /// Remove an endpoint.
    Remove { name: String },
}

pub fn run(ctx: &super::Ctx, cmd: Cmd) -> anyhow::Result<ExitCode> {
    let v = match cmd {
        Cmd::Add {
            name,
            interface,
            mac,
            addresses,
            groups,
            node,
        } => {
            let body = json!(EndpointAdd {
                name,
                interface,
                mac,
                addresses,
                groups,
                node,
            });
            ctx.change("POST", "/v1/endpoints", &[], Some(body.to_string().as_bytes()))?
        }
        Cmd::Remove { name } => {
            let path = format!("/v1/endpoints/{}", hostwall::api::http::percent_encode(&name));
            ctx.change("DELETE", &path, &[], None)?
        }
    };
    ctx.print(&v, |v| super::print_change(v, "applied", "it would change"));
    Ok(ExitCode::SUCCESS)
}
