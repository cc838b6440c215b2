//! Port ranges to LPM blocks.

/// A prefix-aligned block of the 16-bit port field: `start` with its top
/// `prefix_bits` bits fixed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortBlock {
    pub start: u16,
    pub prefix_bits: u32,
    pub rule: u32,
}

/// Splits overlapping inclusive ranges `(first, last, rule)` into disjoint
/// prefix-aligned blocks. A port covered by several ranges is credited to
/// the range listed first.
pub fn port_blocks(ranges: &[(u16, u16, u32)]) -> Vec<PortBlock> {
    if let [(first, last, rule)] = ranges {
        return blocks(&[(*first as u32, *last as u32, *rule)]);
    }
    blocks(&runs(ranges))
}

/// Overlapping inclusive ranges `(first, last, rule)` as disjoint runs in
/// ascending order, adjacent runs of one rule merged. A port covered by
/// several ranges is credited to the range listed first.
pub fn port_runs(ranges: &[(u16, u16, u32)]) -> Vec<(u16, u16, u32)> {
    runs(ranges)
        .into_iter()
        .map(|(lo, hi, rule)| (lo as u16, hi as u16, rule))
        .collect()
}

fn runs(ranges: &[(u16, u16, u32)]) -> Vec<(u32, u32, u32)> {
    // Elementary intervals between all range boundaries.
    let mut bounds: Vec<u32> = Vec::with_capacity(ranges.len() * 2);
    for &(first, last, _) in ranges {
        bounds.push(first as u32);
        bounds.push(last as u32 + 1);
    }
    bounds.sort_unstable();
    bounds.dedup();

    // Disjoint (first, last, rule) runs, adjacent runs of one rule merged.
    let mut runs: Vec<(u32, u32, u32)> = Vec::new();
    for w in bounds.windows(2) {
        let (lo, hi) = (w[0], w[1] - 1);
        let Some(&(_, _, rule)) = ranges.iter().find(|(f, l, _)| *f as u32 <= lo && hi <= *l as u32) else {
            continue;
        };
        match runs.last_mut() {
            Some(last) if last.2 == rule && last.1 + 1 == lo => last.1 = hi,
            _ => runs.push((lo, hi, rule)),
        }
    }
    runs
}

/// Disjoint runs `(first, last, rule)` as prefix-aligned blocks.
fn blocks(runs: &[(u32, u32, u32)]) -> Vec<PortBlock> {
    let mut blocks = Vec::new();
    for &(lo, hi, rule) in runs {
        let mut start = lo;
        while start <= hi {
            // The largest aligned block that starts at `start` and fits.
            let mut size: u32 = if start == 0 {
                1 << 16
            } else {
                1 << start.trailing_zeros().min(16)
            };
            while start + size - 1 > hi {
                size >>= 1;
            }
            blocks.push(PortBlock {
                start: start as u16,
                prefix_bits: 16 - size.trailing_zeros(),
                rule,
            });
            start += size;
        }
    }
    blocks
}
