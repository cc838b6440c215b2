//! The control file: its model, parsing and validation.

mod diff;
pub mod model;
mod nesting;
mod parse;
mod write;

pub use diff::{PolicyDiff, RuleChange, diff};
pub use model::*;
pub use nesting::MAX_FLOW_DEPTH;
pub use parse::{PolicyError, load_file, parse_bytes, parse_rule, parse_str};
pub use write::{peer_flow, rule_flow, to_yaml};
