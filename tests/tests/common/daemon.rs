//! Helpers of the daemon tests (`daemon_*.rs`): polling, the CLI's JSON,
//! rule ids.

use std::time::{Duration, Instant};

use hostwall_tests::Agent;
use serde_json::Value;

/// Generous: the machine running the tests may be busy.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `f` every 100 ms until it returns `Some`, or panics after
/// `timeout` with `what` and the last state `describe` gives.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what}: not the case after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `f` every 100 ms until it says done or `timeout` passes; returns
/// its last value either way.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, v) = f();
        if done || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A CLI command's JSON output (`--json`); panics if it fails.
pub fn cli_json(agent: &Agent, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = agent
        .cli(&all)
        .unwrap_or_else(|e| panic!("`hostwall {}`: {e:#}", args.join(" ")));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("`hostwall {}` printed no JSON ({e}): {out}", args.join(" ")))
}

/// A CLI command that must fail: returns its exit code and stderr.
pub fn cli_fails(agent: &Agent, args: &[&str]) -> (i32, String) {
    let out = agent
        .cli_output(args)
        .unwrap_or_else(|e| panic!("running `hostwall {}`: {e:#}", args.join(" ")));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "`hostwall {}` succeeded but should have failed; it printed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.code().unwrap_or(-1), stderr)
}

/// The rules of `group`'s `direction` list in `hostwall get policy --json`.
pub fn rules_of(agent: &Agent, group: &str, direction: &str) -> Vec<Value> {
    let v = cli_json(agent, &["get", "policy"]);
    v["groups"][group][direction].as_array().cloned().unwrap_or_default()
}

/// The id of rule `index` of `group`'s `direction` list.
pub fn rule_id(agent: &Agent, group: &str, direction: &str, index: usize) -> u64 {
    let rules = rules_of(agent, group, direction);
    rules.get(index).and_then(|r| r["id"].as_u64()).unwrap_or_else(|| {
        panic!("no rule {group}/{direction}[{index}] with an id in `hostwall get policy`: {rules:?}")
    })
}

/// The tracked flows `hostwall conntrack list` shows with `filters`.
pub fn flows(agent: &Agent, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["conntrack", "list"];
    args.extend_from_slice(filters);
    cli_json(agent, &args)["flows"].as_array().cloned().unwrap_or_default()
}
