use std::process::ExitCode;

pub fn run(ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    let v = ctx.change("POST", "/v1/reload", &[], None)?;
    ctx.print(&v, |v| {
        super::print_change(v, "reloaded", "reloading the control file would change")
    });
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    let v = ctx.change("POST", "/v1/rollback", &[], None)?;
    ctx.print(&v, |v| {
        super::print_change(v, "rolled back", "rolling back would change")
    });
    Ok(ExitCode::SUCCESS)
}
