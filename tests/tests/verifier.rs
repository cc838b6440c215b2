//! The programs stay well inside the verifier's budget. The kernel
//! verifies a program by walking its paths, up to one million instructions;
//! older kernels prune less (Linux 6.1 walks about twice what this kernel
//! does, the VM tests load the same object there), so each program must
//! verify here in under half of that.

use hostwall::datapath::{Datapath, PROGRAMS};

const BUDGET: u32 = 1_000_000;

#[test]
fn every_program_verifies_in_under_half_the_budget() {
    let dp = Datapath::load_unpinned().expect("the programs load");
    let mut over = Vec::new();
    for name in PROGRAMS {
        let info = dp
            .ebpf
            .program(name)
            .expect("a program of the object")
            .info()
            .expect("the program's info");
        let verified = info
            .verified_instruction_count()
            .expect("this kernel reports verified instructions");
        eprintln!("{name}: {verified} instructions verified");
        if verified > BUDGET / 2 {
            over.push(format!("{name}: {verified}"));
        }
    }
    assert!(
        over.is_empty(),
        "over half the verifier's budget of {BUDGET} instructions: {over:?}"
    );
}

/// Every map of the object is pinned, so that programs and agents of one
/// layout share it across restarts.
#[test]
fn every_map_is_pinned() {
    let dp = Datapath::load_unpinned().expect("the programs load");
    let unpinned: Vec<&str> = dp
        .ebpf
        .maps()
        .map(|(name, _)| name)
        .filter(|name| !hostwall::datapath::MAPS.contains(name) && !name.starts_with('.'))
        .collect();
    assert!(unpinned.is_empty(), "maps missing from datapath::MAPS: {unpinned:?}");
}
