//! The control file: its model, parsing and validation.

pub mod model;
mod parse;

pub use model::*;
pub use parse::{PolicyError, load_file, parse_str};
