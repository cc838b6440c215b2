use std::path::Path;
use std::process::ExitCode;

use hostwall::policy;
use serde_json::json;

/// Exits 0 for a valid file; an invalid one is an error (exit 2) naming
/// the field, as JSON with `--json`.
pub fn run(ctx: &super::Ctx, file: &Path) -> anyhow::Result<ExitCode> {
    let p = policy::load_file(file)?;
    let rules: usize = p.groups.values().map(|g| g.ingress.len() + g.egress.len()).sum();
    let v = json!({
        "file": file,
        "valid": true,
        "groups": p.groups.len(),
        "rules": rules,
        "endpoints": p.endpoints.len(),
        "prefix_lists": p.prefix_lists.len(),
    });
    ctx.print(&v, |_| {
        println!(
            "{}: valid ({} groups, {} rules, {} endpoints, {} prefix lists)",
            file.display(),
            p.groups.len(),
            rules,
            p.endpoints.len(),
            p.prefix_lists.len()
        )
    });
    Ok(ExitCode::SUCCESS)
}
