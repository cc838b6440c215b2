use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

pub fn apply(ctx: &super::Ctx, file: &Path) -> anyhow::Result<ExitCode> {
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let v = ctx.change("PUT", "/v1/policy", &[], Some(&body))?;
    ctx.print(&v, |v| {
        super::print_change(
            v,
            &format!("applied {}", file.display()),
            &format!("applying {} would change", file.display()),
        )
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
    // Like diff(1): 1 when there are changes.
    let changed = v["changes"].as_object().is_some_and(|c| {
        c.values()
            .any(|x| x.as_array().is_some_and(|a| !a.is_empty()) || x.as_bool() == Some(true))
    });
    Ok(ExitCode::from(if changed { super::exit::NO } else { super::exit::OK }))
}
