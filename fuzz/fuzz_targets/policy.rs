//! The control file's parser and validator, then the compiler, on any
//! text: neither may panic; a policy the validator accepts must compile
//! (or be refused as too large) and must read back equal once written out.
#![no_main]

use std::net::IpAddr;

use hostwall::compile::{CompileError, HostView, compile};
use hostwall::policy::{parse_str, to_yaml};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = parse_str(text, "fuzz.yaml") else {
        return;
    };
    let written = to_yaml(&policy);
    let again = parse_str(&written, "written.yaml").unwrap_or_else(|e| panic!("{e}\n{written}"));
    assert_eq!(again, policy, "{written}");

    let host: [IpAddr; 2] = ["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()];
    let ifindex = |name: &str| Some(name.len() as u32 + 1);
    let view = HostView {
        node: "fuzz",
        host_addresses: &host,
        ifindex: &ifindex,
        macs: &Default::default(),
    };
    match compile(&policy, &view) {
        Ok(_) | Err(CompileError::MapFull { .. }) => {}
        Err(e) => panic!("a valid policy does not compile: {e}"),
    }
});
