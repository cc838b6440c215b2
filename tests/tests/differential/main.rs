//! Differential tests: generated policies and packets, each packet run
//! through the real eBPF programs with BPF_PROG_TEST_RUN at its hook (from
//! an endpoint's interface, to one, the uplink), each answer compared with
//! the reference evaluator (`hostwall::reference`) and the README's
//! conntrack semantics (`model.rs`).
//!
//! Kept out of the rules-judged space on purpose, since the datapath
//! answers them by other steps that the packet tables cover: ICMP errors,
//! ND and MLD, fragments. TCP packets carry SYN except in the tests of the
//! reverse-flow rule and of conntrack.
//!
//! `cargo xtask fuzz-datapath --cases N --seed S` runs [`long_run`] for as
//! many packets as asked.

mod adversarial;
mod generate;
mod harness;
mod model;
mod regressions;
mod stateful;

use hostwall::compile::Mutation;
use proptest::strategy::Strategy;

use harness::{Compiler, Plan, Report};

/// The seed of the suite's run; `HOSTWALL_DIFF_SEED` picks another.
const SEED: u64 = 0x686f_7374_7761_6c6c;

fn seed() -> u64 {
    match std::env::var("HOSTWALL_DIFF_SEED") {
        Ok(s) => parse_u64(&s).expect("HOSTWALL_DIFF_SEED is a number"),
        Err(_) => SEED,
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn assert_agree(report: &Report) {
    let shown: Vec<String> = report.failures.iter().take(5).map(|f| f.to_string()).collect();
    assert!(
        report.failures.is_empty(),
        "{} disagreements in {} cases:\n{}\n{}",
        report.disagreements(),
        report.failures.len(),
        shown.join("\n"),
        report.coverage.summary()
    );
}

/// Over 100,000 packets in over 500 policies, every answer as the
/// reference gives it, and the generator strong enough to matter.
#[test]
fn the_datapath_agrees_with_the_reference() {
    let report = harness::run(&Plan {
        seed: seed(),
        first: 0,
        policies: 520,
        packets: 180..=220,
        compiler: Compiler::Real,
        shrink: 1,
        progress: 0,
    });
    eprintln!("{}\nin {:.1?}", report.coverage.summary(), report.elapsed);
    assert_agree(&report);
    assert!(report.coverage.policies >= 500, "{}", report.coverage.policies);
    assert!(report.coverage.packets >= 100_000, "{}", report.coverage.packets);
    report.coverage.assert_strong();
}

/// The same check finds a compiler bug planted on purpose, each kind within
/// a few dozen policies.
#[test]
fn planted_compiler_bugs_are_found() {
    for mutation in [
        Mutation::OffByOneRange,
        Mutation::AnyTierSkipped,
        Mutation::FirstGroupOnly,
    ] {
        let report = harness::run(&Plan {
            seed: seed(),
            first: 0,
            policies: 40,
            packets: 100..=100,
            compiler: Compiler::Mutated(mutation),
            shrink: 0,
            progress: 0,
        });
        eprintln!(
            "{mutation:?}: {} disagreements in {} of {} policies",
            report.disagreements(),
            report.failures.len(),
            report.coverage.policies
        );
        assert!(
            report.disagreements() > 0,
            "{mutation:?} went unnoticed:\n{}",
            report.coverage.summary()
        );
    }
}

/// Random sequences between every kind of party, each packet at every
/// hook it meets and conntrack shared across the sequence, against the
/// model of SECURITY.md: over 200,000 packets, none judged otherwise, and
/// each attack the guarantees are about met often.
#[test]
fn stateful_sequences_hold_every_guarantee() {
    let (first, cases) = match std::env::var("HOSTWALL_ADVERSARIAL_CASE") {
        Ok(c) => (
            c.parse().expect("HOSTWALL_ADVERSARIAL_CASE is a number"),
            std::env::var("HOSTWALL_ADVERSARIAL_CASES").map_or(1, |n| n.parse().expect("a number")),
        ),
        Err(_) => (0, 1_400),
    };
    let report = adversarial::run(&adversarial::Plan {
        seed: seed(),
        first,
        cases,
        steps_per_case: 150,
        object: adversarial::Object::Real,
        stop_at_first: false,
    });
    let t = &report.tally;
    eprintln!(
        "{t:?}
in {:.1?}",
        report.elapsed
    );
    assert!(
        report.failures.is_empty(),
        "{} disagreeing cases:\n{}",
        report.failures.len(),
        report.failures.iter().take(3).cloned().collect::<Vec<_>>().join("\n\n")
    );
    if std::env::var_os("HOSTWALL_ADVERSARIAL_CASE").is_some() {
        return;
    }
    assert!(t.steps >= 200_000, "only {} packets", t.steps);
    for (what, n) in [
        ("SYNs or INITs meeting a flow they would reply to", t.opens_on_reply),
        (
            "ICMP errors from a non-party quoting a live flow",
            t.error_from_non_party,
        ),
        ("mid-stream packets outside the startup window", t.midstream_closed),
        (
            "flows opened while the opener's inbound share was full",
            t.opened_with_inbound_full,
        ),
        ("related ICMP errors", t.related),
        ("non-first fragments passed", t.fragments),
        ("mid-stream admissions", t.mid_stream),
        ("new flows beyond a share", t.share_full),
        ("addresses of this host arriving the wrong way", t.wrong_path),
        (
            "packets judged but never tracked (group, unlisted, local)",
            t.never_tracked,
        ),
        ("frames with another endpoint's or no one's MAC", t.mac_spoofed),
        ("neighbour advertisements claiming another's address", t.nd_spoofed),
        ("router advertisements from an undeclared port", t.router_wrong_path),
    ] {
        assert!(n >= MIN_COVERAGE, "only {n} {what}: {t:?}");
    }
}

/// Each case the stateful test must meet at least this often per run.
const MIN_COVERAGE: u64 = 200;

/// The same test finds each planted bug of `ebpf/src/mutants.rs`.
#[test]
fn planted_stateful_bugs_are_found() {
    for mutant in hostwall_mutants::Mutant::ALL {
        let report = adversarial::run(&adversarial::Plan {
            seed: seed(),
            first: 0,
            cases: 300,
            steps_per_case: 150,
            object: adversarial::Object::Mutant(mutant),
            stop_at_first: true,
        });
        eprintln!(
            "{mutant:?}: found after {} packets in {} cases, {:.1?}",
            report.tally.steps, report.tally.cases, report.elapsed
        );
        assert!(
            !report.failures.is_empty(),
            "{mutant:?} went unnoticed in {} packets: {:?}",
            report.tally.steps,
            report.tally
        );
    }
}

/// Flows sent again, answered, answered unasked, seen at their other
/// hooks, and left to expire: conntrack as the README describes it.
#[test]
fn conntrack_follows_the_documented_semantics() {
    let plan = Plan {
        seed: seed(),
        first: 0,
        policies: 60,
        packets: 0..=0,
        compiler: Compiler::Real,
        shrink: 1,
        progress: 0,
    };
    let report = harness::run_with(&plan, stateful::script, stateful::check);
    let c = &report.coverage;
    eprintln!("{}\nin {:.1?}", c.summary(), report.elapsed);
    assert_agree(&report);
    for (what, n) in [
        ("passed as established", c.established),
        ("passed as replies", c.replies),
        ("replies without a request dropped", c.replies_dropped),
        ("judged again after their timeout", c.expired),
        ("TCP without SYN admitted as a reverse flow", c.reverse),
    ] {
        assert!(n >= 10, "only {n} packets {what}:\n{}", c.summary());
    }
}

/// TCP without SYN whose own direction the rules deny passes (and is
/// tracked as the reverse flow) when the rules allow the reverse flow.
#[test]
fn tcp_without_syn_is_admitted_as_the_reverse_of_an_allowed_flow() {
    let plan = Plan {
        seed: seed(),
        first: 0,
        policies: 60,
        packets: 100..=100,
        compiler: Compiler::Real,
        shrink: 1,
        progress: 0,
    };
    let report = without_syn(&plan);
    let c = &report.coverage;
    eprintln!("{}\nin {:.1?}", c.summary(), report.elapsed);
    assert_agree(&report);
    assert!(
        c.reverse >= 50,
        "only {} reverse admissions:\n{}",
        c.reverse,
        c.summary()
    );
}

/// The plan's cases with every TCP packet's SYN taken away.
fn without_syn(plan: &Plan) -> Report {
    let no_syn = || {
        generate::case(plan.packets.clone(), false).prop_map(|mut case| {
            for (i, p) in case.packets.iter_mut().enumerate() {
                if let generate::Transport::Tcp { flags, .. } = &mut p.l4 {
                    *flags = [generate::ACK, 0, generate::FIN | generate::ACK, generate::RST][i % 4];
                }
            }
            case
        })
    };
    harness::run_with(plan, no_syn, |f, case, cov| {
        harness::check_stateless(f, case, Compiler::Real, cov)
    })
}

/// A long run for `cargo xtask fuzz-datapath`: `HOSTWALL_DIFF_CASES`
/// packets (about 200 a policy) from `HOSTWALL_DIFF_SEED`, or only case
/// `HOSTWALL_DIFF_CASE` of it.
#[test]
#[ignore = "long; run by cargo xtask fuzz-datapath"]
fn long_run() {
    let env = |name: &str| std::env::var(name).ok().map(|v| parse_u64(&v).expect("a number"));
    let (first, policies) = match env("HOSTWALL_DIFF_CASE") {
        Some(case) => (case, 1),
        None => (0, env("HOSTWALL_DIFF_CASES").unwrap_or(1_000_000).div_ceil(200).max(1)),
    };
    let plan = Plan {
        seed: seed(),
        first,
        policies,
        packets: 180..=220,
        compiler: Compiler::Real,
        shrink: 3,
        progress: (policies / 20).max(1),
    };
    let report = harness::run(&plan);
    eprintln!(
        "seed {:#x}: {}\nin {:.1?}",
        seed(),
        report.coverage.summary(),
        report.elapsed
    );
    assert_agree(&report);
    // A tenth as many cases without SYN, and conntrack scripts (which
    // pause for real now and then) for a fiftieth.
    let report = without_syn(&Plan {
        policies: policies.div_ceil(10),
        progress: 0,
        ..plan.clone()
    });
    eprintln!("without SYN: {}\nin {:.1?}", report.coverage.summary(), report.elapsed);
    assert_agree(&report);
    let scripts = Plan {
        policies: policies.div_ceil(50),
        progress: 0,
        ..plan
    };
    let report = harness::run_with(&scripts, stateful::script, stateful::check);
    eprintln!("conntrack: {}\nin {:.1?}", report.coverage.summary(), report.elapsed);
    assert_agree(&report);
}
