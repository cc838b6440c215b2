use which::which;

/// Rebuild when bpf-linker changes: it is the linker of this crate.
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found in PATH; run ./scripts/setup");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
