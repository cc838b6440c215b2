//! How deeply a document nests flow collections (`[...]`, `{...}`),
//! found before it is parsed. The YAML scanner's work per token grows with
//! the number of flow collections open around it (each keeps a possible
//! key), so a document of 100,000 nested brackets took seconds to refuse.
//! The same scanner is run here alone and stopped at the first collection
//! past the limit: its work stays linear in the text.

use std::mem::MaybeUninit;

use unsafe_libyaml as unsafe_yaml;

/// Flow collections a control file may nest (the parser refuses any
/// nesting past 128 levels anyway).
pub const MAX_FLOW_DEPTH: usize = 64;

/// Where a document first nests flow collections deeper than `max`:
/// (line, column), both from 1. `None` when it never does, or when the
/// scanner stops at a syntax error first (the parser then reports it).
pub fn too_deep(text: &str, max: usize) -> Option<(usize, usize)> {
    // Fewer openers than the limit cannot nest past it.
    if text.bytes().filter(|b| matches!(b, b'[' | b'{')).count() <= max {
        return None;
    }
    let mut parser = MaybeUninit::<unsafe_yaml::yaml_parser_t>::uninit();
    // SAFETY: the parser is initialized before use and deleted once; the
    // input outlives it; each token is deleted after its type and mark are
    // read. This is how serde_yaml_ng drives the same functions.
    unsafe {
        if !unsafe_yaml::yaml_parser_initialize(parser.as_mut_ptr()).ok {
            return None;
        }
        let parser = parser.as_mut_ptr();
        unsafe_yaml::yaml_parser_set_input_string(parser, text.as_ptr(), text.len() as u64);
        let mut depth = 0usize;
        let mut found = None;
        loop {
            let mut token = MaybeUninit::<unsafe_yaml::yaml_token_t>::uninit();
            if !unsafe_yaml::yaml_parser_scan(parser, token.as_mut_ptr()).ok {
                break;
            }
            let token = token.as_mut_ptr();
            let kind = (*token).type_;
            let mark = (*token).start_mark;
            unsafe_yaml::yaml_token_delete(token);
            match kind {
                unsafe_yaml::YAML_FLOW_SEQUENCE_START_TOKEN | unsafe_yaml::YAML_FLOW_MAPPING_START_TOKEN => {
                    depth += 1;
                    if depth > max {
                        found = Some((mark.line as usize + 1, mark.column as usize + 1));
                        break;
                    }
                }
                unsafe_yaml::YAML_FLOW_SEQUENCE_END_TOKEN | unsafe_yaml::YAML_FLOW_MAPPING_END_TOKEN => {
                    depth = depth.saturating_sub(1);
                }
                unsafe_yaml::YAML_STREAM_END_TOKEN | unsafe_yaml::YAML_NO_TOKEN => break,
                _ => {}
            }
        }
        unsafe_yaml::yaml_parser_delete(parser);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_is_found_where_it_passes_the_limit() {
        let nested = |n: usize| format!("version: 1\ngroups: {}{}\n", "[".repeat(n), "]".repeat(n));
        assert_eq!(too_deep(&nested(4), 4), None);
        assert_eq!(too_deep(&nested(5), 4), Some((2, 13)));
        let maps = format!("a: {}1{}\n", "{b: ".repeat(6), "}".repeat(6));
        assert_eq!(too_deep(&maps, 5), Some((1, 24)));
        // Brackets inside quoted and plain scalars and comments open
        // nothing.
        let quoted = format!(
            "a: \"{}\"\nb: '{}'\nc: x{}\n# {}\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100),
            "[".repeat(100)
        );
        assert_eq!(too_deep(&quoted, 4), None);
        // A closer inside a quote does not hide the openers around it.
        let hidden = format!("a: {}\n", "[\"]\", ".repeat(10));
        assert_eq!(too_deep(&hidden, 4), Some((1, 28)));
    }

    /// 200,000 nested brackets took the scanner minutes; stopped at the
    /// limit it answers at once (in a thread: a scan that never returns
    /// fails the test).
    #[test]
    fn deep_documents_are_refused_without_scanning_them_whole() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let text = format!("version: 1\ngroups: {}{}\n", "[".repeat(200_000), "]".repeat(200_000));
            let _ = tx.send(too_deep(&text, MAX_FLOW_DEPTH));
        });
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(30)),
            Ok(Some((2, 9 + MAX_FLOW_DEPTH)))
        );
    }
}
