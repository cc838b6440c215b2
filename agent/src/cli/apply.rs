use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

pub fn apply(ctx: &super::Ctx, file: &Path) -> anyhow::Result<ExitCode> {
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let v = ctx.call("PUT", "/v1/policy", &[], Some(&body))?;
    ctx.print(&v, |v| {
        println!("applied {} (generation {})", file.display(), v["generation"]);
        super::print_changes(&v["changes"]);
    });
    Ok(ExitCode::SUCCESS)
}

pub fn diff(ctx: &super::Ctx, file: &Path) -> anyhow::Result<ExitCode> {
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let v = ctx.call("POST", "/v1/policy/diff", &[], Some(&body))?;
    ctx.print(&v, |v| {
        println!("changes if {} were applied:", file.display());
        super::print_changes(&v["changes"]);
    });
    Ok(ExitCode::SUCCESS)
}
