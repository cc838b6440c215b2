//! The control API's replies: one type per kind of answer, serialized by
//! the handlers and described by the served schema (`GET /v1/schema`).
//! Every reply also carries the agent's `version` (added by the server
//! where a type does not hold it).

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use crate::datapath::stats::{ConntrackTotals, ReasonCount};
use crate::policy::PolicyDiff;

/// The reply to a change: `PUT /v1/policy`, `POST /v1/reload`, `POST
/// /v1/rollback`, `POST` and `DELETE /v1/rules`, `POST /v1/endpoints`,
/// `DELETE /v1/endpoints/NAME`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ChangeReply {
    /// Whether the change was applied (false for a dry run).
    pub applied: bool,
    /// A dry run: what would change; nothing was changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// What changed, or would change (absent from a reload, which logs it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes: Option<PolicyDiff>,
    /// The generation of the enforced policy: one more with every change
    /// applied, counted across the agent's restarts.
    pub generation: u64,
}

/// `POST /v1/policy/diff`: what applying a policy would change.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct DiffReply {
    pub changes: PolicyDiff,
}

/// `DELETE /v1/conntrack`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct FlushReply {
    /// Tracked flows ended.
    pub flushed: usize,
    /// A dry run: how many flows the flush would end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub would_flush: Option<usize>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// `GET /v1/conntrack`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct FlowsReply {
    pub flows: Vec<Flow>,
}

/// One tracked flow, in the direction the rules allowed.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Flow {
    /// The IP protocol number.
    pub proto: u8,
    pub src: std::net::IpAddr,
    pub sport: u16,
    pub dst: std::net::IpAddr,
    pub dport: u16,
    /// `opened` (by a local endpoint) or `inbound` (towards one).
    pub table: String,
    pub midstream: bool,
    pub seen_reply: bool,
    pub closing: bool,
    pub idle_seconds: u64,
    /// The ids of the rules that admitted it (absent: no rule on that side).
    pub rule_egress: Option<u64>,
    pub rule_ingress: Option<u64>,
}

/// `GET /v1/stats`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct StatsReply {
    pub rules: Vec<RuleCounter>,
    pub drops: Vec<ReasonCount>,
    pub passes: Vec<ReasonCount>,
    /// `HW_CONNTRACK`: flows local endpoints opened.
    pub conntrack: ConntrackTotals,
    /// `HW_CT_INBOUND`: flows opened towards local endpoints.
    pub inbound: ConntrackTotals,
}

/// One rule's counters.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct RuleCounter {
    pub id: Option<u64>,
    pub group: String,
    pub direction: String,
    /// The rule's position in its group and direction.
    pub index: usize,
    /// The rule in words (`tcp 443 from cidr 10.0.0.0/8`).
    pub rule: String,
    pub packets: u64,
    pub bytes: u64,
    pub never_matched: bool,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct StatusReply {
    /// Every local endpoint whose interface is present has all its
    /// programs attached (as the kernel reports them).
    pub enforced: bool,
    pub policy: PolicyStatus,
    pub node: String,
    /// `tcx` or `clsact`.
    pub hook: String,
    /// The version of the pinned layout.
    pub layout: u32,
    /// Where the pins are.
    pub bpffs: std::path::PathBuf,
    pub pid: u32,
    pub uplink: Option<String>,
    pub endpoints: Vec<EndpointStatus>,
    pub quarantined: Vec<Quarantined>,
    pub maps: Vec<MapFill>,
    pub map_memory: MapMemory,
    pub last_error: Option<String>,
    /// RFC 3339.
    pub last_error_at: Option<String>,
    pub version: String,
    /// RFC 3339.
    pub started_at: String,
    pub uptime_seconds: u64,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct PolicyStatus {
    /// SHA-256 of the enforced policy in the control file's form.
    pub hash: String,
    /// Seconds since the Unix epoch.
    pub applied_at: u64,
    pub applied_at_rfc3339: String,
    pub generation: u64,
    /// The control file.
    pub file: std::path::PathBuf,
    /// Whether the enforced policy is the control file's (with
    /// `--write-back none`, API changes live in the agent's state until
    /// the file changes).
    pub matches_file: bool,
    /// `file` or `none`.
    pub write_back: String,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct EndpointStatus {
    pub name: String,
    pub interface: Option<String>,
    pub ifindex: Option<u32>,
    pub attached: bool,
    /// `enforced`, `waiting for interface`, `attach failed` or `programs
    /// missing from …`.
    pub state: String,
    pub groups: Vec<String>,
    /// The MAC its frames must have.
    pub mac: Option<String>,
    /// Why it has no MAC (all its frames are dropped meanwhile).
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Quarantined {
    pub interface: String,
    pub ifindex: u32,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
    pub capacity: u64,
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct MapMemory {
    /// Kernel memory of the policy maps now.
    pub bytes: u64,
    /// `--max-map-memory`.
    pub max: u64,
}

/// A reply as the JSON value the server sends.
pub fn json(reply: &impl Serialize) -> Value {
    serde_json::to_value(reply).expect("replies serialize")
}
