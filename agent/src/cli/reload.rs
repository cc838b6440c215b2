use std::process::ExitCode;

pub fn run(ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    let v = ctx.call("POST", "/v1/reload", &[], None)?;
    ctx.print(&v, |v| println!("reloaded (generation {})", v["generation"]));
    Ok(ExitCode::SUCCESS)
}
