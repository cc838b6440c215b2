//! `GET /v1/explain?from=..&to=..&flow=..`: the reference verdict for a
//! flow under the applied policy.

use std::net::IpAddr;

use crate::api::http::Request;
use crate::api::{ErrorKind, Reply, error};
use crate::daemon::Agent;

pub fn get(agent: &mut Agent, req: &Request) -> Reply {
    let (Some(from), Some(to), Some(flow)) = (req.query("from"), req.query("to"), req.query("flow")) else {
        return error(ErrorKind::Invalid, "from, to and flow are required");
    };
    let host: Vec<IpAddr> = agent.host_addresses.iter().copied().collect();
    match crate::explain::explain(&agent.policy, &agent.opts.node, &host, from, to, flow) {
        Ok(v) => (200, v),
        Err(e) => error(ErrorKind::Invalid, e),
    }
}
