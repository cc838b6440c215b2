//! The control file: its model, parsing and validation.

mod check;
mod diff;
pub mod model;
mod nesting;
mod parse;
mod write;

pub use check::check;
pub use diff::{PolicyDiff, RuleChange, diff};
pub use model::*;
pub use nesting::MAX_FLOW_DEPTH;
pub use parse::{
    EndpointFields, PolicyError, RawPeer, RuleFields, Scalar, endpoint_from_fields, load_file, parse_bytes, parse_str,
    rule_from_fields,
};
pub use write::{peer_flow, rule_flow, to_yaml};
