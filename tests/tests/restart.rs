//! The agent killed with SIGKILL under traffic and started again: the
//! programs, their attachments and the maps outlive the process, so what
//! the rules allow keeps getting through and what they deny stays dropped
//! the whole time, and the new agent adopts the pinned datapath (counters
//! included) instead of building a fresh one.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{SHOP_POLICY, shop};
use hostwall_tests::{Agent, Check, DropReason, Probe, assert_checks, run_checks};

#[test]
fn sigkill_and_restart_under_traffic_change_nothing() {
    let shop = shop();
    let mut agent = Agent::start(&shop.host, SHOP_POLICY).expect("starting the agent");
    let mut allowed = Vec::new();
    let mut egress_denied = Vec::new();
    let mut ingress_denied = Vec::new();
    for a in shop.families() {
        allowed.push(Check::allowed(&shop.web, Probe::Tcp(8080), a.api).labelled("api"));
        allowed.push(Check::allowed(&shop.web, Probe::Udp(8053), a.api).labelled("api"));
        allowed.push(Check::allowed(&shop.web, Probe::Ping, a.api).labelled("api"));
        allowed.push(Check::allowed(&shop.host, Probe::Tcp(80), a.web).labelled("web"));
        egress_denied.push(Check::denied(&shop.web, Probe::Tcp(5432), a.db).labelled("db"));
        egress_denied.push(Check::denied(&shop.lonely, Probe::Tcp(80), a.web).labelled("web"));
        ingress_denied.push(Check::denied(&shop.api, Probe::Tcp(6000), a.db).labelled("db"));
        ingress_denied.push(Check::denied(&shop.host, Probe::Ping, a.api).labelled("api"));
    }
    let all: Vec<Check> = [allowed.as_slice(), &egress_denied, &ingress_denied].concat();
    assert_checks("before the kill", &all);
    let before_kill = agent.stats().expect("reading counters");

    // Rounds of the same traffic run from before the kill until after the
    // restart; every round must come out as the rules say.
    let stop = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);
    let wrong: Mutex<Vec<String>> = Mutex::new(Vec::new());
    /// Ends the rounds when the test's side of the scope ends, also when
    /// an assertion fails there (the scope waits for the rounds' thread).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        let _stop = Stop(&stop);
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let reports = run_checks(&all);
                let round = rounds.load(Ordering::SeqCst) + 1;
                for (c, r) in all.iter().zip(&reports).filter(|(_, r)| !r.ok) {
                    wrong.lock().unwrap().push(format!(
                        "  round {round}: {c}: expected {}, got {}",
                        c.expect, r.outcome
                    ));
                }
                rounds.store(round, Ordering::SeqCst);
            }
        });
        let wait_rounds = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(120);
            while rounds.load(Ordering::SeqCst) < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_rounds(1);

        agent.kill9().expect("killing the agent");
        let killed_at = rounds.load(Ordering::SeqCst);
        assert_checks("the agent killed", &all);
        // At least one whole round ran with no agent at all.
        wait_rounds(killed_at + 2);

        agent.restart().expect("restarting the agent");
        assert_eq!(
            agent.count_log(&["adopting the pinned datapath"]),
            1,
            "the restarted agent did not adopt the pinned datapath; its log:\n{}",
            agent.log()
        );
        // While the agent was gone, the kernel counted at least one drop
        // per egress-denied check of `the agent killed` and of one whole
        // round. Adopted (pinned) counters hold those on top of what was
        // counted before the kill; fresh ones, read now, could hold only
        // what the round in flight added (at most two SYNs per check).
        let after_restart = agent.stats().expect("reading counters after the restart");
        let floor = before_kill.dropped(DropReason::EgressDenied) + 2 * egress_denied.len() as u64;
        assert!(
            after_restart.dropped(DropReason::EgressDenied) >= floor,
            "egress-denied went from {} before the kill to {} after the restart (at least {floor} expected): \
             the counters were not adopted",
            before_kill.dropped(DropReason::EgressDenied),
            after_restart.dropped(DropReason::EgressDenied)
        );
        assert_checks("after the restart", &all);
        let restarted_at = rounds.load(Ordering::SeqCst);
        wait_rounds(restarted_at + 2);
        stop.store(true, Ordering::SeqCst);
    });
    let wrong = wrong.into_inner().unwrap();
    assert!(
        wrong.is_empty(),
        "{} checks went wrong while the agent was killed and restarted:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // The restarted agent follows the control file again.
    let narrower = SHOP_POLICY.replace("      - {proto: udp, ports: 8053, to: [{group: api}]}\n", "");
    assert_ne!(narrower, SHOP_POLICY, "the policy edit did not apply");
    agent.reload(&narrower).expect("reloading after the restart");
    // Flows tracked under the removed rule go on until they time out (the
    // README's semantics); the probes below must open new ones, whatever
    // source port they happen to get.
    for a in shop.families() {
        agent
            .cli(&["conntrack", "flush", "--addr", &a.api.to_string()])
            .expect("ending api's tracked flows");
    }
    let udp: Vec<Check> = shop
        .families()
        .map(|a| Check::denied(&shop.web, Probe::Udp(8053), a.api).labelled("api"))
        .into();
    assert_checks("web's udp/8053 rule removed after the restart", &udp);
}
