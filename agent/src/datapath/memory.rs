//! The kernel memory of the maps, and the ceiling a policy must fit under
//! (`--max-map-memory`).
//!
//! The policy and peer maps are LPM tries, which allocate an entry when it
//! is written: their capacities are ceilings that cost nothing until used.
//! The maps allocated whole grow with the policy (`super::sizes`). What
//! bounds a policy is the memory its entries and those maps take beside
//! every other map's, checked before anything is written or grown.

/// `map_type` of an LPM trie in a map descriptor's fdinfo.
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;

/// What an LPM entry costs besides its key and value: the kernel's trie
/// node (40 bytes with Linux 6.1's RCU head, 24 from 6.x on; the larger is
/// counted).
pub const LPM_NODE_BYTES: u64 = 40;

/// Default of `--max-map-memory`.
pub const DEFAULT_MAX_MAP_MEMORY: u64 = 512 << 20;

struct FdInfo {
    map_type: u32,
    memlock: u64,
}

fn fdinfo(fd: i32) -> Option<FdInfo> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    let field = |name: &str| -> Option<u64> { text.lines().find_map(|l| l.strip_prefix(name))?.trim().parse().ok() };
    Some(FdInfo {
        map_type: field("map_type:")? as u32,
        memlock: field("memlock:")?,
    })
}

/// The kernel memory of the map behind `fd`.
pub fn memlock(fd: std::os::fd::BorrowedFd<'_>) -> Option<u64> {
    use std::os::fd::AsRawFd as _;
    fdinfo(fd.as_raw_fd()).map(|i| i.memlock)
}

/// The kernel memory of every map this process holds open but the LPM
/// tries: the maps whose size does not depend on the policy.
pub fn fixed() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(fdinfo)
        .filter(|i| i.map_type != BPF_MAP_TYPE_LPM_TRIE)
        .map(|i| i.memlock)
        .sum()
}

/// What `entries` LPM entries of a key and value size take.
pub fn lpm(entries: usize, key: usize, value: usize) -> u64 {
    entries as u64 * (LPM_NODE_BYTES + key as u64 + value as u64)
}

/// The policy's LPM tries in one slot holding `policy`, `peer4`, `peer6`,
/// `cidr4` and `cidr6` entries: (map, entries, kernel memory) of each.
pub fn policy_tries(
    policy: usize,
    peer4: usize,
    peer6: usize,
    cidr4: usize,
    cidr6: usize,
) -> [(&'static str, usize, u64); 5] {
    use hostwall_common::{CidrKey, CidrValue, PeerInfo, PolicyKey, PolicyValue};
    use std::mem::size_of;
    [
        (
            "HW_POLICY",
            policy,
            lpm(policy, size_of::<PolicyKey>(), size_of::<PolicyValue>()),
        ),
        ("HW_PEER4", peer4, lpm(peer4, 4, size_of::<PeerInfo>())),
        ("HW_PEER6", peer6, lpm(peer6, 16, size_of::<PeerInfo>())),
        (
            "HW_CIDR4",
            cidr4,
            lpm(cidr4, size_of::<CidrKey<4>>(), size_of::<CidrValue>()),
        ),
        (
            "HW_CIDR6",
            cidr6,
            lpm(cidr6, size_of::<CidrKey<16>>(), size_of::<CidrValue>()),
        ),
    ]
}

/// `1.5 MiB`-style.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

/// Parses a size: bytes, or a number with `K`, `M`, `G` (or `KiB`, `MiB`,
/// `GiB`; powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (like 512MiB)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => return Err(format!("{other:?} is not a unit of size (K, M, G, KiB, MiB, GiB)")),
    };
    n.checked_mul(1 << shift)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{text:?} is not a size above zero"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").unwrap_err().contains("not a unit"));
        assert!(parse_size("MiB").unwrap_err().contains("not a size"));
    }
}
